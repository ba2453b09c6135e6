"""The search's own settings (ouroboros/policy.py), read as data: the file is parsed, never executed.

policy.py is the self task's editable file, so whatever it holds was written by an agent. Importing
it would run that agent's code in the harness that proposes, runs and records (the inner harness of
the delta benchmark, the outer loop of `run --self`). Here it is parsed with `ast` and only a
docstring, comments and `NAME = literal` assignments with known ALL_CAPS names and numbers of the
right type are accepted; anything else is refused with an OuroborosError naming the line.

    values()            the settings of the installation in use (cached per file state)
    read(path)          the settings in any policy.py (a kept version's, a candidate's)
    parse(text, where)  the same from text
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

from ouroboros.errors import OuroborosError

FILE = Path(__file__).resolve().parent / "policy.py"

# name -> (type, low, high): the values a proposer can use (the self task's [knobs] search inside these)
SETTINGS: dict[str, tuple[type, float, float]] = {
    "MUTATE_KNOBS": (int, 1, 1000),
    "MUTATE_SCALE": (float, 0.0, 10.0),
    "EXPLORE": (float, 0.0, 1.0),
    "STARTUP": (int, 0, 10_000),
    "TPE_STARTUP": (int, 1, 10_000),
    "TREE_PRIOR": (float, 1e-6, 1e6),
}

_cache: dict[tuple[str, int, int], dict[str, float]] = {}


def _number(node: ast.expr) -> float | None:
    sign = 1
    while isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):  # a loop: signs nest deep
        sign = -sign if isinstance(node.op, ast.USub) else sign
        node = node.operand
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return sign * node.value
    return None


def parse(text: str, where: str = "policy.py") -> dict[str, float]:
    """Every setting in `text`; OuroborosError for anything that is not a literal ALL_CAPS assignment."""
    expected = "only a docstring and `NAME = number` lines for " + ", ".join(SETTINGS)
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError) as exc:
        raise OuroborosError(f"{where} is not valid Python ({exc}); it must hold {expected}") from None
    except (RecursionError, MemoryError):  # nesting past the parser's limits: no policy file needs it
        raise OuroborosError(f"{where} nests too deep to read; it must hold {expected}") from None
    found: dict[str, float] = {}
    for i, stmt in enumerate(tree.body):
        line = f"{where} line {stmt.lineno}"
        if i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) \
                and isinstance(stmt.value.value, str):
            continue  # the docstring
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else \
            stmt.target if isinstance(stmt, ast.AnnAssign) and stmt.value is not None else None
        if not isinstance(target, ast.Name):
            raise OuroborosError(f"{line}: a {type(stmt).__name__} statement; the policy file is read as data, "
                                 f"never run, so it may hold {expected}")
        name = target.id
        if name not in SETTINGS:
            raise OuroborosError(f"{line}: unknown setting {name!r}; the policy file may hold {expected}")
        value = _number(stmt.value)  # type: ignore[union-attr]
        kind, low, high = SETTINGS[name]
        if value is None or isinstance(value, bool) or (kind is int and not isinstance(value, int)) \
                or not math.isfinite(value) or not low <= value <= high:
            raise OuroborosError(f"{line}: {name} must be a literal {kind.__name__} in [{low:g}, {high:g}], "
                                 f"not {ast.get_source_segment(text, stmt.value) or '?'}")  # type: ignore[arg-type]
        if name in found:
            raise OuroborosError(f"{line}: {name} is set twice; set each setting once")
        found[name] = value
    missing = [n for n in SETTINGS if n not in found]
    if missing:
        raise OuroborosError(f"{where} does not set {', '.join(missing)}; it must hold {expected}")
    return found


def read(path: Path) -> dict[str, float]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OuroborosError(f"cannot read the policy file {path}: {exc.strerror or exc}") from None
    return parse(data.decode(errors="replace"), str(path))


def values(path: Path = FILE) -> dict[str, float]:
    """The settings of `path` (default: this installation's policy.py), re-read when the file changes."""
    try:
        st = path.stat()
    except OSError as exc:
        raise OuroborosError(f"cannot read the policy file {path}: {exc.strerror or exc}") from None
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _cache:
        _cache.clear()
        _cache[key] = read(path)
    return dict(_cache[key])
