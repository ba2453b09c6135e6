"""What an agent is told: the program, the bound, the editable files, the results so far, the notes
the agent keeps, the person's guidance, and the log tail of the last failure.

Notes (`notes.md`) and guidance (`guidance.md`) live in the run's records folder, outside the
worktree, so a reset never loses them; `artifacts/` beside them is the agent's to keep files in.
"""

from __future__ import annotations

from pathlib import Path

from ouroboros.ledger import Experiment, fmt_metric, one_line
from ouroboros.readfile import read_regular
from ouroboros.sandbox import tail_text
from ouroboros.task import Task

MAX_FILE_CHARS = 60_000
LOG_TAIL_LINES = 40


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(tail_text(path).splitlines()[-lines:]) if path.exists() else ""


def _read(path: Path) -> str:
    """A text file an agent (or a person) wrote, whatever bytes it holds; empty when there is none."""
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def _row(e: Experiment, limit: int) -> str:
    why = f" ({one_line(e.reason, limit)})" if e.status in ("crash", "timeout", "violation") and e.reason else ""
    return f"| {e.n} | {fmt_metric(e.metric)} | {e.status} | {one_line(e.description, limit)}{why} |"


def results_table(task: Task, history: list[Experiment], limit: int = 300) -> str:
    rows = [f"| n | {task.metric.name} | status | description |", "| --- | --- | --- | --- |"]
    rows += [_row(e, limit) for e in history]
    return "\n".join(rows)


def _better(task: Task, a: float, b: float) -> bool:
    return a < b if task.minimize else a > b


def summary(task: Task, older: list[Experiment], top: int = 3, knobs: int = 6, limit: int = 80) -> str:
    """What the experiments before the recent ones came to, in a size that does not grow with their
    number: counts by verdict, the best, the top keeps with their descriptions, the knobs tried."""
    counts: dict[str, int] = {}
    for e in older:
        counts[e.status] = counts.get(e.status, 0) + 1
    lines = [f"Experiments {older[0].n} to {older[-1].n}: {len(older)} in all ("
             + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) + ")."]
    scored = [e for e in older if e.metric is not None and e.metric == e.metric]
    keeps = sorted((e for e in scored if e.status == "keep"), key=lambda e: e.metric if task.minimize else -e.metric)
    if scored:
        best = min(scored, key=lambda e: e.metric if task.minimize else -e.metric)
        lines.append(f"Best {task.metric.name} among them: {fmt_metric(best.metric)} at experiment {best.n} "
                     f"({best.status}: {one_line(best.description, limit)}).")
    if keeps:
        lines.append(f"Top keeps ({min(top, len(keeps))} of {len(keeps)}):")
        lines += [f"- {e.n}: {fmt_metric(e.metric)}, {one_line(e.description, limit)}" for e in keeps[:top]]
    tried: dict[str, list[Experiment]] = {}
    for e in older:
        for name in e.params or {}:
            tried.setdefault(str(name), []).append(e)
    if tried:
        lines.append("Knobs tried (how often, values, keeps, best with it):")
        for name, exps in sorted(tried.items(), key=lambda kv: -len(kv[1]))[:knobs]:
            values = [e.params[name] for e in exps]
            nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            span = f"{min(nums):.4g} to {max(nums):.4g}" if nums else \
                ", ".join(sorted({one_line(str(v), 20) for v in values})[:4])
            kept = [e for e in exps if e.status == "keep"]
            good = [e for e in exps if e.metric is not None and e.metric == e.metric]
            top_e = min(good, key=lambda e: e.metric if task.minimize else -e.metric) if good else None
            best_with = f", best {fmt_metric(top_e.metric)} with {one_line(str(top_e.params[name]), 20)}" \
                if top_e else ""
            lines.append(f"- {one_line(name, 40)}: {len(exps)} tries, {span}, {len(kept)} keeps{best_with}")
        if len(tried) > knobs:
            lines.append(f"- and {len(tried) - knobs} other knobs")
    return "\n".join(lines)


def results_section(task: Task, history: list[Experiment], recent: int = 20, max_chars: int = 8000) -> str:
    """The results part of the prompt: every experiment while there are at most `recent`, then a summary of
    the older ones and the last `recent` in full; never more than `max_chars` characters, however long the
    run (the summary, then the rows, then each row's text are shortened until it fits)."""
    if len(history) <= recent:
        older, last = [], history
    else:
        older, last = history[:-recent], history[-recent:]
    text = ""
    for top, knobs, limit, rows in ((3, 6, 300, len(last)), (3, 6, 120, len(last)), (3, 5, 80, len(last)),
                                    (3, 5, 60, max(len(last) // 2, 1)), (1, 3, 40, max(len(last) // 4, 1)),
                                    (0, 0, 30, 1)):
        shown = last[-rows:]
        hidden = older + last[:-rows] if rows < len(last) else older
        head = f"## Earlier experiments (summary)\n\n{summary(task, hidden, top, knobs, min(limit, 80))}\n\n" \
               f"## The last {len(shown)}\n\n" if hidden else ""
        text = head + results_table(task, shown, limit)
        if len(text) <= max_chars:
            return text
    return text[:max_chars - 15] + "\n[... cut ...]"


def bound_text(task: Task) -> str:
    b = task.bound
    lines = [f"- You may edit only: {', '.join(task.task.editable)}",
             f"- Never change (checked by hash; a change is a violation and is reverted): "
             f"{', '.join(task.protected_patterns)}",
             f"- Dependency files are frozen: {', '.join(b.frozen)}"]
    if b.allow_new_files:
        lines.append(f"- New files only where they match: {', '.join(b.allow_new_files)}")
    if b.max_diff_lines:
        lines.append(f"- At most {b.max_diff_lines} changed lines per experiment")
    lines.append(f"- Each run gets a hard budget of {task.task.budget:g} s; it is killed at "
                 f"{task.task.budget + task.task.grace_s:g} s")
    if not b.network:
        lines.append("- Runs have no network access")
    lines += [f"- Never: {rule}" for rule in b.never]
    lines += [f"- Iron law: {rule}" for rule in b.iron_laws]
    return "\n".join(lines)


def build_prompt(task: Task, worktree_task: Path, history: list[Experiment], run_dir: Path,
                 extra: str = "") -> str:
    """The full prompt for one proposal. Deterministic for the same inputs."""
    program = (task.root / task.task.program).read_text(errors="replace")
    parts = [f"# Program\n\n{program.strip()}",
             f"# Rules (enforced by the harness)\n\n{bound_text(task)}",
             f"# Metric\n\n{task.metric.name}, {'lower' if task.minimize else 'higher'} is better.",
             "# Editable files"]
    for rel in task.editable_files(worktree_task):
        text = read_regular(worktree_task / rel, 4 * MAX_FILE_CHARS)  # never through a link a run left
        if text is None:
            text = "[not a regular file: the harness does not read it]"
        if len(text) > MAX_FILE_CHARS:
            text = text[:MAX_FILE_CHARS] + "\n[... truncated ...]"
        parts.append(f"## {rel}\n\n```\n{text}\n```")
    results = results_section(task, history, task.agent.prompt_results, task.agent.prompt_results_chars)
    parts.append(f"# Results so far\n\n{results}")
    notes, guidance = run_dir / "notes.md", run_dir / "guidance.md"
    if text := _read(notes):
        parts.append(f"# Your notes (notes.md, kept across experiments)\n\n{text}")
    if text := _read(guidance):
        parts.append(f"# Guidance from a person (guidance.md)\n\n{text}")
    failed = next((e for e in reversed(history) if e.status in ("crash", "timeout", "violation")), None)
    if failed is not None:
        log = run_dir / "exp" / str(failed.n) / ("eval.log" if "evaluat" in failed.reason else "run.log")
        parts.append(f"# Last failure: experiment {failed.n} ({failed.status}: {failed.reason})\n\n"
                     f"```\n{tail(log)}\n```")
    if extra:
        parts.append(extra)
    parts.append("# Your task\n\nPropose ONE change to the editable files that you expect to improve the "
                 "metric. Edit the files in place. Keep it small and testable.")
    return "\n\n".join(parts) + "\n"


COMPACT_RESULTS = 5
COMPACT_PROGRAM_CHARS = 800
COMPACT_FILE_CHARS = 6000


def compact_prompt(task: Task, worktree_task: Path, history: list[Experiment], last: int = COMPACT_RESULTS) -> str:
    """A short prompt for small local models, where prompt length dominates latency: the program's
    start, the rules in three lines, the editable files, the baseline, best and last few results."""
    program = (task.root / task.task.program).read_text(errors="replace").strip()
    if len(program) > COMPACT_PROGRAM_CHARS:
        program = program[:COMPACT_PROGRAM_CHARS] + " [...]"
    direction = "lower" if task.minimize else "higher"
    parts = [program,
             f"Rules: edit only {', '.join(task.task.editable)}; never touch "
             f"{', '.join(task.protected_patterns)}; each run gets {task.task.budget:g} s. "
             f"Metric: {task.metric.name}, {direction} is better."]
    for rel in task.editable_files(worktree_task):
        text = read_regular(worktree_task / rel, 4 * COMPACT_FILE_CHARS)  # capped: a file left huge is not read whole
        if text is None:
            text = "[not a regular file: the harness does not read it]"
        if len(text) > COMPACT_FILE_CHARS:
            text = text[:COMPACT_FILE_CHARS] + "\n[... truncated ...]"
        parts.append(f"{rel} (current):\n```\n{text}\n```")
    shown = history[:1] + [e for e in history[1:][-last:]]
    best = min((e for e in history if e.metric is not None), default=None,
               key=lambda e: e.metric if task.minimize else -e.metric)  # type: ignore[operator]
    if best is not None and best not in shown:
        shown.append(best)
    rows = []
    for e in sorted(shown, key=lambda e: e.n):
        why = f" ({one_line(e.reason)[:120]})" if e.status in ("crash", "timeout", "violation") and e.reason else ""
        rows.append(f"{e.n}. {task.metric.name}={fmt_metric(e.metric)} {e.status}: {one_line(e.description)[:160]}{why}")
    parts.append("Results (baseline first; the file above is the best so far):\n" + "\n".join(rows))
    parts.append("Propose ONE small change that you expect to improve the metric.")
    return "\n\n".join(parts) + "\n"
