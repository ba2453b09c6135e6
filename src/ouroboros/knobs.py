"""Knobs: top-level `ALL_CAPS = constant` assignments in editable files, the zero-config search space.

What is a knob: a top-level ALL_CAPS assignment whose value is a number, bool or string literal, a
constant expression of numbers (`2**19`, `8 * 1024`, `-0.5`), or a tuple of those (`ADAM_BETAS =
(0.8, 0.95)`: each element is its own knob, `ADAM_BETAS[0]`, `ADAM_BETAS[1]`). Not searched by
default, and listed with the reason by `ouroboros knobs`: names in `[knobs] exclude`, and names
that hold a hardware constant, a seed or a time budget (`PEAK`, `FLOPS`, `SEED`, `BUDGET` in the
name): changing them changes the reported numbers or the noise, not the model. A `[knobs.NAME]`
table makes any of them searchable again.

A knob is rewritten by replacing its own source span only, in the literal's style (quotes, exponent
notation, underscores, `2**k` and `a * b` forms where the new value fits them), with full
precision; writing a knob's own value back changes no byte.
"""

from __future__ import annotations

import ast
import fnmatch
import math
import operator
import re
from collections.abc import Callable, Mapping
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
NOT_SEARCHED = re.compile(r"PEAK|FLOPS|SEED|BUDGET")
Value = int | float | bool | str


@dataclass(frozen=True)
class Knob:
    name: str  # unique key: VAR or VAR[i], prefixed with path: where two files define the same VAR
    path: str
    var: str
    value: Value
    line: int
    index: int | None = None  # the element of a tuple


@dataclass(frozen=True)
class Skipped:
    """A top-level ALL_CAPS assignment that is not searched, and why."""
    name: str
    path: str
    line: int
    why: str


# -- constant expressions ------------------------------------------------------------------------
_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_CMPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge}


class _NotConstant(Exception):
    pass


def evaluate(node: ast.AST, names: Mapping[str, Any] | None = None) -> Any:
    """Evaluate an expression made only of numbers, the given names, arithmetic, comparisons and
    `and`/`or`/`not`; anything else (calls, attributes, huge powers) raises _NotConstant.

    The files are the agent's: nothing here executes code, and sizes are bounded.
    """
    if isinstance(node, ast.Expression):
        return evaluate(node.body, names)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
        return node.value
    if isinstance(node, ast.Name) and names is not None and node.id in names:
        return names[node.id]
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and names is not None \
            and isinstance(node.slice, ast.Constant) and type(node.slice.value) is int:
        key = f"{node.value.id}[{node.slice.value}]"
        if key in names:
            return names[key]
    if isinstance(node, ast.UnaryOp):
        v = evaluate(node.operand, names)
        if isinstance(node.op, ast.USub):
            return -v
        if isinstance(node.op, ast.UAdd):
            return +v
        if isinstance(node.op, ast.Not):
            return not v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = evaluate(node.left, names), evaluate(node.right, names)
        if isinstance(node.op, ast.Pow) and (abs(b) > 256 or abs(a) > 2**32):
            raise _NotConstant("power too large")
        try:
            out = _BINOPS[type(node.op)](a, b)
        except (ZeroDivisionError, OverflowError, ValueError) as exc:
            raise _NotConstant(str(exc)) from exc
        if isinstance(out, int) and out.bit_length() > 1024 or isinstance(out, complex):
            raise _NotConstant("value too large")
        return out
    if isinstance(node, ast.BoolOp):
        values = [evaluate(v, names) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Compare) and all(type(op) in _CMPS for op in node.ops):
        left = evaluate(node.left, names)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = evaluate(comp, names)
            if not _CMPS[type(op)](left, right):
                return False
            left = right
        return True
    raise _NotConstant(type(node).__name__)


def _value(node: ast.expr) -> tuple[bool, Any]:
    """A knob's value: a str/bool literal, or a numeric constant expression."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, bool)):
        return True, node.value
    try:
        v = evaluate(node)
    except _NotConstant:
        return False, None
    return (type(v) in (int, float) and (not isinstance(v, float) or math.isfinite(v))), v


def _assignments(source: str) -> list[tuple[str, ast.expr]]:
    out = []
    for stmt in ast.parse(source).body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            out.append((stmt.targets[0].id, stmt.value))
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            out.append((stmt.target.id, stmt.value))
    return [(name, value) for name, value in out if _NAME.match(name)]


def _parts(var: str, node: ast.expr) -> tuple[list[tuple[str, int | None, ast.expr, Value]], str | None]:
    """The knobs of one assignment (name, tuple index, node, value), or the reason there are none."""
    if isinstance(node, ast.Tuple):
        if not node.elts:
            return [], "an empty tuple"
        out = []
        for i, elt in enumerate(node.elts):
            ok, v = _value(elt)
            if not ok or isinstance(v, str):
                return [], f"element {i} of the tuple is not a number or bool"
            out.append((f"{var}[{i}]", i, elt, v))
        return out, None
    ok, v = _value(node)
    if not ok:
        return [], "not a constant (it calls, reads or builds something)"
    return [(var, None, node, v)], None


def _scan(root: Path, files: list[str], read: Callable[[str], str] | None) -> tuple[list[Knob], list[Skipped]]:
    raw: list[Knob] = []
    skipped: list[Skipped] = []
    for rel in files:
        if not rel.endswith(".py"):
            continue
        try:
            source = read(rel) if read else (root / rel).read_text()
            assigns = _assignments(source)
        except SyntaxError as exc:
            raise OuroborosError(f"{rel} does not parse ({exc.msg}, line {exc.lineno}); fix it before "
                                 "searching its knobs") from exc
        except UnicodeDecodeError as exc:
            raise OuroborosError(f"{rel} is not UTF-8 (byte {exc.start}); Python source must be, fix it before "
                                 "searching its knobs") from exc
        for var, node in assigns:
            parts, why = _parts(var, node)
            if why:
                skipped.append(Skipped(var, rel, node.lineno, why))
            raw.extend(Knob(name, rel, var, v, elt.lineno, i) for name, i, elt, v in parts)
    files_of: dict[str, set[str]] = {}
    for k in raw:
        files_of.setdefault(k.var, set()).add(k.path)
    return [Knob(f"{k.path}:{k.name}" if len(files_of[k.var]) > 1 else k.name, k.path, k.var, k.value, k.line,
                 k.index) for k in raw], skipped


def extract(root: Path, files: list[str], read: Callable[[str], str] | None = None) -> list[Knob]:
    """All knobs in the given task-relative files, in file order (read from root, or with read)."""
    return _scan(root, files, read)[0]


def format_value(value: Value) -> str:
    """A value for people to read (descriptions); `rewrite` writes the exact value."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value)


# -- rewriting -----------------------------------------------------------------------------------
def _float_text(v: float, original: str) -> str:
    text = repr(v)
    if "e" not in original.lower():
        return text
    for digits in range(17):  # exponent notation, as short as still exact
        candidate = f"{v:.{digits}e}"
        if float(candidate) == v:
            break
    mantissa, exp = candidate.split("e")
    exp = str(int(exp))
    return f"{mantissa}{'E' if 'E' in original else 'e'}{exp}"


def _literal_text(v: Value, original: str) -> str:
    """v written as a literal in the style of `original` (its source text)."""
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, str):
        quote = original[:1] if original[:1] in "'\"" else "'"
        if quote == '"' and '"' not in v and "\\" not in v and v.isprintable():
            return f'"{v}"'
        return repr(v)
    if isinstance(v, int):
        if original.lower().startswith("0x") and v >= 0:
            return hex(v)
        return f"{v:_}" if "_" in original else str(v)
    return _float_text(float(v), original)


def _edit(source: str, node: ast.expr, new: Value) -> tuple[ast.expr, str] | None:
    """The node to replace and its new text; None when the value is already there."""
    ok, old = _value(node)
    if ok and type(old) is type(new) and old == new:
        return None
    seg = ast.get_source_segment(source, node) or ""
    if isinstance(new, int) and not isinstance(new, bool) and isinstance(node, ast.BinOp):
        left, right = node.left, node.right
        if isinstance(node.op, ast.Pow) and isinstance(left, ast.Constant) and type(left.value) is int \
                and left.value > 1 and isinstance(right, ast.Constant) and type(right.value) is int and new > 0:
            k = round(math.log(new, left.value))
            if left.value ** k == new:  # 2**19 -> 2**20
                return right, str(k)
        if isinstance(node.op, ast.Mult) and isinstance(right, ast.Constant) and type(right.value) is int \
                and right.value and new % right.value == 0 and isinstance(left, ast.Constant):
            return left, _literal_text(new // right.value, ast.get_source_segment(source, left) or "")
        return node, str(new)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
            and not isinstance(new, (str, bool)) and new < 0:
        return node.operand, _literal_text(-new, ast.get_source_segment(source, node.operand) or "")
    if isinstance(node, ast.Constant) or isinstance(node, ast.UnaryOp):
        return node, _literal_text(new, seg if isinstance(node, ast.Constant) else seg.lstrip("-+ "))
    return node, _literal_text(new, "")


def rewrite(source: str, changes: Mapping[str, Value]) -> str:
    """Replace the values of the named top-level knobs (VAR or VAR[i]); every other byte stays."""
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line.encode()))
    data = source.encode()
    spans = []
    for var, node in _assignments(source):
        parts, _ = _parts(var, node)
        for name, _i, elt, _v in parts:
            if name not in changes:
                continue
            edit = _edit(source, elt, changes[name])
            if edit is None:
                continue
            target, text = edit
            # ast's column offsets count UTF-8 bytes, as `offsets` and `data` do
            start = offsets[target.lineno - 1] + target.col_offset
            end = offsets[target.end_lineno - 1] + target.end_col_offset  # type: ignore[index, operator]
            spans.append((start, end, text.encode()))
    for start, end, text in sorted(spans, reverse=True):
        data = data[:start] + text + data[end:]
    return data.decode()


def apply(root: Path, knobs: list[Knob], params: Mapping[str, Value]) -> None:
    """Write the given knob values into the files under root."""
    by_file: dict[str, dict[str, Value]] = {}
    for knob in knobs:
        if knob.name in params:
            key = knob.var if knob.index is None else f"{knob.var}[{knob.index}]"
            by_file.setdefault(knob.path, {})[key] = params[knob.name]
    for rel, changes in by_file.items():
        path = root / rel
        text = path.read_text()
        new = rewrite(text, changes)
        if new != text:
            path.write_text(new)


# -- the search space ----------------------------------------------------------------------------
def _power_of_two(v: int) -> bool:
    return v >= 16 and v & (v - 1) == 0


def infer(knob: Knob, spec: KnobSpec | None = None) -> BaseDistribution | None:
    """The search distribution for a knob: the override if given, else inferred from its value.

    Powers of two from 16 up stay powers of two (a quarter to four times the value: sizes that
    hardware and batch arithmetic want). Other positive numbers search a log scale from a quarter
    to four times the value (capped at 1 for values below 1, which are usually fractions); bools
    search both; a string is searched only with `choices`. None for a knob with nothing to search.
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
        if _power_of_two(v):
            return CategoricalDistribution([v >> 2, v >> 1, v, v << 1, v << 2])
        if v > 0:
            return IntDistribution(max(1, v // 4), v * 4, log=True) if v > 1 else IntDistribution(1, 4, log=True)
        return IntDistribution(4 * v, 4, log=False) if v < 0 else IntDistribution(0, 4)
    if isinstance(v, float):
        if v > 0:
            high = min(v * 4, 1.0) if v < 1 else v * 4
            return FloatDistribution(v / 4, high, log=True)
        return FloatDistribution(4 * v, -v / 4, log=False) if v < 0 else FloatDistribution(0.0, 1.0)
    return None


def _spec(task: Task, knob: Knob) -> KnobSpec | None:
    specs = task.knobs.specs
    return specs.get(knob.name) or specs.get(knob.name.rpartition(":")[2])


def _excluded(task: Task, knob: Knob) -> str | None:
    if _spec(task, knob) is not None:
        return None
    short = knob.name.rpartition(":")[2]
    for pattern in task.knobs.exclude:
        if fnmatch.fnmatchcase(knob.name, pattern) or fnmatch.fnmatchcase(short, pattern) \
                or fnmatch.fnmatchcase(knob.var, pattern):
            return f"excluded by [knobs] exclude ({pattern!r})"
    if NOT_SEARCHED.search(knob.var):
        return ("a hardware constant, seed or time budget (PEAK/FLOPS/SEED/BUDGET in the name); "
                f"add [knobs.{short}] to search it")
    return None


@dataclass
class Space:
    """Everything `ouroboros knobs` shows and the search agents use."""
    knobs: list[Knob]  # every knob of the editable files, searched or not
    dists: dict[str, BaseDistribution]  # the searched ones
    skipped: list[Skipped]  # ALL_CAPS assignments that are not knobs, or not searched, and why
    constraints: list[tuple[str, ast.Expression]]

    def values(self, params: Mapping[str, Value]) -> dict[str, Value]:
        """Every knob's value (by name and by its short name) with params applied."""
        out: dict[str, Value] = {}
        for k in self.knobs:
            v = params.get(k.name, k.value)
            out[k.name] = v
            out.setdefault(k.name.rpartition(":")[2], v)
        return out

    def violated(self, params: Mapping[str, Value]) -> list[str]:
        """The constraints these knob values break (the others keep their values as written)."""
        names = self.values(params)
        bad = []
        for text, expr in self.constraints:
            try:
                ok = evaluate(expr, names)
            except (_NotConstant, TypeError) as exc:
                bad.append(f"{text} (cannot be evaluated: {exc})")
                continue
            if not ok:
                bad.append(text)
        return bad


def _constraint(text: str, known: set[str]) -> ast.Expression:
    try:
        expr = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise OuroborosError(f"[knobs] constraint {text!r} is not a Python expression ({exc.msg}); write e.g. "
                             "'TOTAL_BATCH_SIZE % (DEVICE_BATCH_SIZE * 2048) == 0'") from exc
    names = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)}
    unknown = sorted(names - {k.split("[")[0] for k in known})
    if unknown:
        raise OuroborosError(f"[knobs] constraint {text!r} names {', '.join(unknown)}, which the editable files do not "
                             f"define as constants; known: {', '.join(sorted(known))}")
    try:
        evaluate(expr, dict.fromkeys(known, 1))
    except _NotConstant as exc:
        raise OuroborosError(f"[knobs] constraint {text!r} uses {exc}, which constraints do not allow (numbers, knob "
                             "names, arithmetic, comparisons, and/or/not)") from exc
    except (TypeError, ZeroDivisionError, OverflowError, ValueError):
        pass
    return expr


def space_of(task: Task, root: Path | None = None, read: Callable[[str], str] | None = None) -> Space:
    """The task's knob space, checked: unknown overrides and bad constraints are errors."""
    root = root or task.root
    found, skipped = _scan(root, task.editable_files(root), read)
    names = {k.name for k in found} | {k.name.rpartition(":")[2] for k in found}
    unknown = sorted(set(task.knobs.specs) - names)
    if unknown:
        raise OuroborosError(f"[knobs] names {', '.join(unknown)}, but the editable files define no such "
                             f"top-level ALL_CAPS constant; known knobs: {', '.join(sorted(names)) or 'none'}")
    dists = {}
    for knob in found:
        why = _excluded(task, knob)
        dist = None if why else infer(knob, _spec(task, knob))
        if dist is not None:
            dists[knob.name] = dist
        elif not why and isinstance(knob.value, str):
            why = f"a string: give [knobs.{knob.name}] choices = [...] to search it"
        elif not why:
            why = "nothing to search (one choice)"
        if why:
            skipped.append(Skipped(knob.name, knob.path, knob.line, why))
    constraints = [(text, _constraint(text, names)) for text in task.knobs.constraints]
    sp = Space(found, dists, sorted(skipped, key=lambda s: (s.path, s.line)), constraints)
    broken = sp.violated({})
    if broken:
        raise OuroborosError(f"the baseline's own knob values break [knobs] constraint {broken[0]!r}; fix the "
                             "constraint in ouroboros.toml")
    return sp


def space(task: Task, root: Path | None = None,
          read: Callable[[str], str] | None = None) -> tuple[list[Knob], dict[str, BaseDistribution]]:
    """The knobs of a task's editable files and their distributions (see `space_of`)."""
    sp = space_of(task, root, read)
    if not sp.dists:
        raise OuroborosError("the editable files have no searchable knobs (top-level ALL_CAPS = number/bool "
                             "constants, or strings with [knobs] choices); see `ouroboros knobs`, or use a cmd: agent")
    return sp.knobs, sp.dists


def describe(dist: BaseDistribution) -> tuple[str, bool]:
    """A distribution as (range or choices, log scale) for people."""
    if isinstance(dist, CategoricalDistribution):
        return "{" + ", ".join(format_value(c) for c in dist.choices) + "}", False
    assert isinstance(dist, (IntDistribution, FloatDistribution))
    step = f" step {dist.step:g}" if dist.step not in (None, 1) else ""
    return f"[{format_value(dist.low)}, {format_value(dist.high)}]{step}", dist.log


def close(a: Value, b: Value) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


_BUDGET_NAME = re.compile(r"^(TIME_BUDGET|TIME_LIMIT|BUDGET_S|BUDGET_SECONDS|[A-Z_]*_TIME_BUDGET)$")


def code_budget(source: str) -> tuple[str, float, int] | None:
    """(name, seconds, line) of a top-level time budget the code defines itself (TIME_BUDGET = 300), if any."""
    try:
        assigns = _assignments(source)
    except SyntaxError:
        return None
    for var, node in assigns:
        ok, v = _value(node)
        if _BUDGET_NAME.match(var) and ok and type(v) in (int, float) and v > 0:
            return var, float(v), node.lineno
    return None
