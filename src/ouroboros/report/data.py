"""The data behind each figure, as pure functions of runs read from the ledger (see load.py).

Nothing here reads files or draws: each function takes `RunData` and returns numbers, so the tests
check what every figure shows without looking at pixels.

Conventions:
- "best" is the harness's best: the running best over keeps (the baseline is the first keep), so a
  curve moves only when the judge kept something. A run whose baseline failed has no curve.
- experiment indices count the baseline as 0; runs of unequal length are carried forward at their
  last best, so a condition's median at x covers all its runs.
- "gain" is measured against the run's own baseline (its experiment 0), oriented so that positive is
  better whatever the direction: baseline noise (the same code measured under another load) moves
  the raw metric of a whole run, not its gain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

VALID = ("keep", "discard")


@dataclass(frozen=True)
class Attempt:
    n: int
    status: str
    metric: float | None
    description: str = ""
    params: dict = field(default_factory=dict)
    started: float = 0.0
    finished: float | None = None
    session: int = 0
    diff: str | None = None  # the proposal's diff.patch, where it was read
    tokens_in: int = 0  # what the proposal cost in model tokens (API and CLI agents that report it)
    tokens_out: int = 0


@dataclass(frozen=True)
class RunData:
    tag: str
    condition: str
    direction: str = "minimize"
    seed: int = 0
    sessions: int = 0
    budget: float | None = None
    attempts: tuple[Attempt, ...] = ()
    metric: str = "metric"
    noise_sigma: float | None = None  # the noise floor `ouroboros noise` stored for the run's baseline
    agent: str = ""

    @property
    def minimize(self) -> bool:
        return self.direction == "minimize"


def better(a: float, b: float, minimize: bool) -> bool:
    return a < b if minimize else a > b


def best_so_far(run: RunData) -> list[float]:
    """The best kept metric after each attempt; empty when the baseline was never kept."""
    out: list[float] = []
    best: float | None = None
    for a in run.attempts:
        if a.status == "keep" and a.metric is not None and (best is None or better(a.metric, best, run.minimize)):
            best = a.metric
        if best is not None:
            out.append(best)
    return out


def final(run: RunData) -> float | None:
    curve = best_so_far(run)
    return curve[-1] if curve else None


def baseline(run: RunData) -> float | None:
    """The run's own experiment 0, where it was measured and kept."""
    first = run.attempts[0] if run.attempts else None
    return first.metric if first is not None and first.n == 0 and first.status == "keep" else None


def gain(value: float, base: float, minimize: bool) -> float:
    """How much better value is than base (positive: better)."""
    return base - value if minimize else value - base


def gain_curve(run: RunData) -> list[float]:
    """Best so far as a gain over the run's own baseline, after each attempt (starts at 0)."""
    base = baseline(run)
    return [] if base is None else [gain(v, base, run.minimize) for v in best_so_far(run)]


def relative(g: float, base: float) -> float | None:
    """A gain as a fraction of the baseline's magnitude; None for a baseline of 0."""
    return g / abs(base) if base else None


def final_gain(run: RunData) -> tuple[float, float | None] | None:
    """(absolute, relative) gain of the run's final best over its own baseline."""
    base, curve = baseline(run), gain_curve(run)
    if base is None or not curve:
        return None
    return curve[-1], relative(curve[-1], base)


@dataclass(frozen=True)
class GainLines:
    """Per-run curves relative to each run's own baseline, in one of two scales:

    `ratio` (best / baseline, drawn on a log axis) where every value is positive and the runs span
    more than two decades (losses shrinking toward 0); otherwise `percent`, the gain in % of the
    baseline (or `absolute` where a baseline is 0)."""

    scale: str  # ratio | percent | absolute
    lines: dict[str, list[tuple[str, list[float]]]]  # condition -> [(tag, values per experiment)]
    median: dict[str, list[float]]


def gain_lines(runs: list[RunData]) -> GainLines:
    per: dict[str, list[tuple[str, list[float], float]]] = {}
    for cond, group in by_condition(runs).items():
        for r in group:
            base = baseline(r)
            if base is not None:
                per.setdefault(cond, []).append((r.tag, best_so_far(r), base))
    values = [v for rows in per.values() for _, vs, _ in rows for v in vs]
    bases = [b for rows in per.values() for _, _, b in rows]
    scale = "percent" if all(bases) else "absolute"
    if values and min(values) > 0 and min(bases) > 0:
        ratios = [v / b for rows in per.values() for _, vs, b in rows for v in vs]
        if max(ratios) / min(ratios) > 100:
            scale = "ratio"
    lines: dict[str, list[tuple[str, list[float]]]] = {}
    median: dict[str, list[float]] = {}
    minimize = runs[0].minimize if runs else True
    for cond, rows in per.items():
        out = []
        for tag, vs, b in rows:
            if scale == "ratio":
                out.append((tag, [v / b for v in vs]))
            elif scale == "percent":
                out.append((tag, [100 * gain(v, b, minimize) / abs(b) for v in vs]))
            else:
                out.append((tag, [gain(v, b, minimize) for v in vs]))
        lines[cond] = out
        grid = _pad([vs for _, vs in out])
        median[cond] = np.median(grid, axis=0).tolist()
    return GainLines(scale, lines, median)


@dataclass(frozen=True)
class Curve:
    """One condition's best-so-far band: median and quartiles per experiment index, and its best run."""

    condition: str
    x: list[int]
    median: list[float]
    q25: list[float]
    q75: list[float]
    runs: int
    best_tag: str
    best_line: list[float]
    best_at: tuple[int, float]  # where the best run first reached its final value


def _pad(series: list[list[float]]) -> np.ndarray:
    length = max(len(s) for s in series)
    return np.array([s + [s[-1]] * (length - len(s)) for s in series])


def curves(runs: list[RunData]) -> dict[str, Curve]:
    out = {}
    for cond, group in by_condition(runs).items():
        series = [(r, best_so_far(r)) for r in group]
        series = [(r, s) for r, s in series if s]
        if not series:
            continue
        grid = _pad([s for _, s in series])
        q25, med, q75 = np.percentile(grid, [25, 50, 75], axis=0)
        minimize = series[0][0].minimize
        top_run, top = min(series, key=lambda rs: rs[1][-1] if minimize else -rs[1][-1])
        at = next(i for i, v in enumerate(top) if v == top[-1])
        out[cond] = Curve(cond, list(range(grid.shape[1])), med.tolist(), q25.tolist(), q75.tolist(), len(series),
                          top_run.tag, top, (at, top[-1]))
    return out


def by_condition(runs: list[RunData]) -> dict[str, list[RunData]]:
    groups: dict[str, list[RunData]] = {}
    for r in runs:
        groups.setdefault(r.condition, []).append(r)
    return groups


# -- per-run numbers for the box plots ---------------------------------------------------------
def acceptance(run: RunData) -> float | None:
    """Keeps / experiments, the baseline left out of both; None for a run with no experiments."""
    exps = [a for a in run.attempts if a.n > 0]
    return sum(a.status == "keep" for a in exps) / len(exps) if exps else None


def sessions_after_first(run: RunData) -> int | None:
    """Agent sessions beyond the first (restarts after a session ended early); None for an agent
    without sessions (random, tpe, one call per experiment), where 0 would say nothing."""
    seen = {a.session for a in run.attempts if a.n > 0 and a.session}
    total = max(run.sessions, len(seen))
    return total - 1 if total > 0 else None


def keeps_after_baseline(run: RunData) -> int:
    return sum(a.status == "keep" for a in run.attempts if a.n > 0)


def valid_vs_max(run: RunData) -> tuple[int, float, float] | None:
    """(valid experiments, theoretical maximum, their ratio) for the run's window.

    Valid means measured (keep or discard). The window is wall-clock time from the baseline's end to
    the last attempt's end; the maximum is how many budget-long experiments fit in it, so 1.0 means
    no time went to crashes, timeouts, violations or overhead. Tasks whose runs stop before their
    budget can exceed 1.
    """
    exps = [a for a in run.attempts if a.n > 0 and a.finished is not None]
    base = next((a for a in run.attempts if a.n == 0 and a.finished is not None), None)
    if not exps or base is None or not run.budget:
        return None
    window = max(a.finished for a in exps) - base.finished  # type: ignore[type-var, operator]
    theoretical = max(window / run.budget, 1.0)
    valid = sum(a.status in VALID for a in exps)
    return valid, theoretical, valid / theoretical


def _relative_final(run: RunData) -> float | None:
    g = final_gain(run)
    return None if g is None or g[1] is None else 100 * g[1]


BOXES = {
    "gain": ("final gain over own baseline (% of experiment 0)", _relative_final),
    "acceptance": ("acceptance rate (keeps / experiments)", acceptance),
    "sessions": ("sessions after the first", sessions_after_first),
    "valid": ("valid experiments / theoretical maximum", lambda r: (v := valid_vs_max(r)) and v[2]),
}


def box_notes(runs: list[RunData]) -> dict[str, dict[str, str]]:
    """For each box plot, the conditions for which it carries no information, and why: drawn as
    words in place of a row of zeros."""
    notes: dict[str, dict[str, str]] = {key: {} for key in BOXES}
    for cond, group in by_condition(runs).items():
        if all(sessions_after_first(r) is None for r in group):
            notes["sessions"][cond] = "no sessions: one agent call per experiment"
        exps = sum(len([a for a in r.attempts if a.n > 0]) for r in group)
        if exps and not any(keeps_after_baseline(r) for r in group):
            notes["acceptance"][cond] = f"nothing kept in {exps} experiments"
        if all(final_gain(r) is None or final_gain(r)[1] is None for r in group):  # type: ignore[index]
            notes["gain"][cond] = "no baseline measured"
        elif all(final_gain(r) is not None and final_gain(r)[0] == 0 for r in group):  # type: ignore[index]
            notes["gain"][cond] = "no run improved on its baseline"
        if all(valid_vs_max(r) is None for r in group):
            notes["valid"][cond] = "no experiments with a budget"
    return notes


def boxes(runs: list[RunData]) -> dict[str, dict[str, list[tuple[str, float]]]]:
    """For each box plot, each condition's (tag, value) per run; runs without a value are left out."""
    out: dict[str, dict[str, list[tuple[str, float]]]] = {}
    for key, (_, fn) in BOXES.items():
        out[key] = {}
        for cond, group in by_condition(runs).items():
            values = [(r.tag, fn(r)) for r in group]  # type: ignore[operator]
            out[key][cond] = [(t, float(v)) for t, v in values if v is not None and v is not False]
    return out


# -- idea categories ----------------------------------------------------------------------------
_TAG = re.compile(r"^\s*\[([^\]]{1,40})\]")
_KNOB_LINE = re.compile(r"^[+-]([A-Z][A-Z0-9_]*)\s*(?::[^=]*)?=(?!=)")
_HUNK = re.compile(r"^@@ [^@]* @@ ?(?:.*?\b(?:def|class)\s+(\w+))?")


def categories(attempt: Attempt, previous_params: dict | None = None) -> set[str]:
    """What kind of idea an attempt was, in this order of trust:

    1. the agent's own tag: a description starting with `[tag]`;
    2. its diff: `knob:NAME` for each changed top-level ALL_CAPS assignment, and
       `code:<file>:<function>` for other changed lines (`<top>` outside any function);
    3. its params against the best's params at the time: `knob:NAME` for each that differs;
    4. otherwise `other`.
    """
    m = _TAG.match(attempt.description or "")
    if m:
        return {m.group(1).strip().lower()}
    if attempt.diff:
        found: set[str] = set()
        file, func = "?", "<top>"
        for line in attempt.diff.splitlines():
            if line.startswith("+++ "):
                file = line[4:].removeprefix("b/").split("/")[-1]
            elif line.startswith("@@"):
                h = _HUNK.match(line)
                func = f"{h.group(1)}" if h and h.group(1) else "<top>"
            elif line[:1] in "+-" and not line.startswith(("+++", "---")):
                k = _KNOB_LINE.match(line)
                if k:
                    found.add(f"knob:{k.group(1)}")
                elif line[1:].strip():
                    found.add(f"code:{file}:{func}")
        if found:
            return found
    if attempt.params and previous_params is not None:
        changed = {f"knob:{k}" for k, v in attempt.params.items() if previous_params.get(k) != v}
        if changed:
            return changed
    return {"other"}


@dataclass(frozen=True)
class CategoryStat:
    runs: int  # runs in the condition
    tried: int  # runs that tried it at least once
    improved: int  # runs in which it improved the best at least once
    attempts: int
    share: float  # improved / runs
    mean_gain: float | None  # mean gain over the keeps it was part of (positive is better)


def category_stats(runs: list[RunData]) -> dict[str, dict[str, CategoryStat]]:
    """For each condition and idea category: in how many runs it improved the best, and by how much."""
    out: dict[str, dict[str, CategoryStat]] = {}
    for cond, group in by_condition(runs).items():
        tried: dict[str, set[str]] = {}
        improved: dict[str, set[str]] = {}
        gains: dict[str, list[float]] = {}
        attempts: dict[str, int] = {}
        for r in group:
            best: float | None = None
            params: dict = {}
            for a in r.attempts:
                if a.n == 0:
                    best, params = (a.metric if a.status == "keep" else None), dict(a.params)
                    continue
                cats = categories(a, params)
                for c in cats:
                    tried.setdefault(c, set()).add(r.tag)
                    attempts[c] = attempts.get(c, 0) + 1
                if a.status == "keep" and a.metric is not None:
                    if best is not None and better(a.metric, best, r.minimize):
                        for c in cats:
                            improved.setdefault(c, set()).add(r.tag)
                            gains.setdefault(c, []).append(abs(best - a.metric))
                        best = a.metric
                    params = {**params, **a.params}
        out[cond] = {c: CategoryStat(len(group), len(tried[c]), len(improved.get(c, ())), attempts[c],
                                     len(improved.get(c, ())) / len(group),
                                     float(np.mean(gains[c])) if gains.get(c) else None)
                     for c in sorted(tried)}
    return out


def category_notes(runs: list[RunData]) -> dict[str, str]:
    """Conditions whose categories say nothing, and why (written on the figure instead of bars)."""
    notes = {}
    for cond, group in by_condition(runs).items():
        seen: list[frozenset[str]] = []
        for r in group:
            params: dict = {}
            for a in r.attempts:
                if a.n == 0:
                    params = dict(a.params)
                    continue
                seen.append(frozenset(categories(a, params)))
        if not any(keeps_after_baseline(r) for r in group):
            notes[cond] = f"{cond}: nothing was kept after the baseline, so no idea improved the best"
        elif len(set(seen)) == 1 and len(seen[0]) > 1:
            notes[cond] = (f"{cond}: every proposal changed the same {len(seen[0])} categories together, so each keep "
                           "credits all of them alike")
    return notes


# -- one run ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunView:
    """Every measured attempt (grey dots), the running best as steps, and the keeps with labels."""

    tag: str
    metric: str
    attempts: list[tuple[int, float, str]]  # (n, metric, status) for attempts with a metric
    failed: list[tuple[int, str]]  # (n, status) for crashes, timeouts, violations
    steps: list[tuple[int, float]]
    keeps: list[tuple[int, float, str]]  # (n, metric, description)


def run_view(run: RunData) -> RunView:
    measured = [(a.n, a.metric, a.status) for a in run.attempts if a.metric is not None and a.status in VALID]
    failed = [(a.n, a.status) for a in run.attempts if a.status not in VALID and a.status != "running"]
    curve = best_so_far(run)
    ns = [a.n for a in run.attempts][-len(curve):] if curve else []
    best: float | None = None
    keeps = []
    for a in run.attempts:
        if a.status == "keep" and a.metric is not None and (best is None or better(a.metric, best, run.minimize)):
            best = a.metric
            keeps.append((a.n, a.metric, a.description))
    return RunView(run.tag, run.metric, measured, failed, list(zip(ns, curve, strict=True)), keeps)
