"""Knobs: top-level `ALL_CAPS = literal` assignments in editable files, the zero-config search space.

A knob is rewritten by replacing the literal's exact source span, so comments, spacing and every
other byte of the file stay as they were.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from ouroboros.errors import OuroborosError
from ouroboros.task import KnobSpec, Task

_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
Value = int | float | bool | str


@dataclass(frozen=True)
class Knob:
    name: str  # unique key: NAME, or path:NAME where two files define the same NAME
    path: str
    var: str
    value: Value
    line: int


def _literal(node: ast.expr) -> tuple[bool, Any]:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, bool, str)):
        return True, node.value
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float)):
        return True, -node.operand.value
    return False, None


def _assignments(source: str) -> list[tuple[str, ast.expr]]:
    out = []
    for stmt in ast.parse(source).body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            out.append((stmt.targets[0].id, stmt.value))
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            out.append((stmt.target.id, stmt.value))
    return [(name, value) for name, value in out if _NAME.match(name)]


def extract(root: Path, files: list[str], read: Callable[[str], str] | None = None) -> list[Knob]:
    """All knobs in the given task-relative files, in file order (read from root, or with read)."""
    raw: list[Knob] = []
    for rel in files:
        if not rel.endswith(".py"):
            continue
        try:
            source = read(rel) if read else (root / rel).read_text()
            assigns = _assignments(source)
        except SyntaxError as exc:
            raise OuroborosError(f"{rel} does not parse ({exc.msg}, line {exc.lineno}); fix it before "
                                 "searching its knobs") from exc
        for var, node in assigns:
            ok, value = _literal(node)
            if ok:
                raw.append(Knob(var, rel, var, value, node.lineno))
    seen: dict[str, int] = {}
    for k in raw:
        seen[k.var] = seen.get(k.var, 0) + 1
    return [Knob(f"{k.path}:{k.var}" if seen[k.var] > 1 else k.var, k.path, k.var, k.value, k.line) for k in raw]


def format_value(value: Value) -> str:
    if isinstance(value, bool) or isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        return repr(float(f"{value:.4g}"))
    return repr(value)


def rewrite(source: str, changes: dict[str, Value]) -> str:
    """Replace the literals of the named top-level knobs; every other byte stays as it was."""
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line.encode()))
    data = source.encode()
    spans = []
    for var, node in _assignments(source):
        if var in changes and _literal(node)[0]:
            start = offsets[node.lineno - 1] + node.col_offset
            end = offsets[node.end_lineno - 1] + node.end_col_offset  # type: ignore[operator]
            spans.append((start, end, format_value(changes[var]).encode()))
    for start, end, text in sorted(spans, reverse=True):
        data = data[:start] + text + data[end:]
    return data.decode()


def apply(root: Path, knobs: list[Knob], params: dict[str, Value]) -> None:
    """Write the given knob values into the files under root."""
    by_file: dict[str, dict[str, Value]] = {}
    for knob in knobs:
        if knob.name in params:
            by_file.setdefault(knob.path, {})[knob.var] = params[knob.name]
    for rel, changes in by_file.items():
        path = root / rel
        path.write_text(rewrite(path.read_text(), changes))


def infer(knob: Knob, spec: KnobSpec | None = None) -> BaseDistribution | None:
    """The search distribution for a knob: the override if given, else inferred from its value.

    Positive numbers search a log scale from a quarter to four times the value (capped at 1 for
    values below 1, which are usually fractions); bools search both; a string is searched only
    with `choices`. Returns None for a knob with nothing to search.
    """
    v = knob.value
    if spec is not None:
        if spec.choices is not None:
            return CategoricalDistribution(spec.choices) if len(spec.choices) > 1 else None
        low, high = spec.low, spec.high
        assert low is not None and high is not None
        if isinstance(v, int) and not isinstance(v, bool) and float(low).is_integer() and float(high).is_integer():
            return IntDistribution(int(low), int(high), log=bool(spec.log), step=int(spec.step or 1))
        if spec.log and spec.step:
            raise OuroborosError(f"knob {knob.name}: log and step cannot be combined; drop one")
        return FloatDistribution(low, high, log=bool(spec.log), step=spec.step)
    if isinstance(v, bool):
        return CategoricalDistribution([False, True])
    if isinstance(v, int):
        if v > 0:
            return IntDistribution(max(1, v // 4), v * 4, log=True) if v > 1 else IntDistribution(1, 4, log=True)
        return IntDistribution(4 * v, 4, log=False) if v < 0 else IntDistribution(0, 4)
    if isinstance(v, float):
        if v > 0:
            high = min(v * 4, 1.0) if v < 1 else v * 4
            return FloatDistribution(v / 4, high, log=True)
        return FloatDistribution(4 * v, -v / 4, log=False) if v < 0 else FloatDistribution(0.0, 1.0)
    return None


def space(task: Task, root: Path | None = None,
          read: Callable[[str], str] | None = None) -> tuple[list[Knob], dict[str, BaseDistribution]]:
    """The knobs of a task's editable files and their distributions; unknown overrides are errors.

    Ranges are inferred from the values in `read` (the baseline's files) when given, so that a
    resumed run searches the same space as it started with.
    """
    root = root or task.root
    knobs = extract(root, task.editable_files(root), read)
    names = {k.name for k in knobs} | {k.var for k in knobs}
    unknown = sorted(set(task.knobs) - names)
    if unknown:
        raise OuroborosError(f"[knobs] names {', '.join(unknown)}, but the editable files define no such "
                             f"top-level ALL_CAPS literal; known knobs: {', '.join(sorted(names)) or 'none'}")
    dists = {}
    for knob in knobs:
        dist = infer(knob, task.knobs.get(knob.name) or task.knobs.get(knob.var))
        if dist is not None:
            dists[knob.name] = dist
    if not dists:
        raise OuroborosError("the editable files have no searchable knobs (top-level ALL_CAPS = number/bool "
                             "literals, or strings with [knobs] choices); add some, or use a cmd: agent")
    return knobs, dists


def close(a: Value, b: Value) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b
