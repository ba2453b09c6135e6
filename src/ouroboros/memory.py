"""What an agent is told: the program, the bound, the editable files, the results so far, the notes
the agent keeps, the person's guidance, and the log tail of the last failure.

Notes (`notes.md`) and guidance (`guidance.md`) live in the run's records folder, outside the
worktree, so a reset never loses them; `artifacts/` beside them is the agent's to keep files in.
"""

from __future__ import annotations

from pathlib import Path

from ouroboros.ledger import Experiment, fmt_metric, one_line
from ouroboros.sandbox import tail_text
from ouroboros.task import Task

MAX_FILE_CHARS = 60_000
LOG_TAIL_LINES = 40


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(tail_text(path).splitlines()[-lines:]) if path.exists() else ""


def results_table(task: Task, history: list[Experiment]) -> str:
    rows = [f"| n | {task.metric.name} | status | description |", "| --- | --- | --- | --- |"]
    for e in history:
        metric = fmt_metric(e.metric)
        why = f" ({one_line(e.reason)})" if e.status in ("crash", "timeout", "violation") and e.reason else ""
        rows.append(f"| {e.n} | {metric} | {e.status} | {one_line(e.description)}{why} |")
    return "\n".join(rows)


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
        text = (worktree_task / rel).read_text(errors="replace")
        if len(text) > MAX_FILE_CHARS:
            text = text[:MAX_FILE_CHARS] + "\n[... truncated ...]"
        parts.append(f"## {rel}\n\n```\n{text}\n```")
    parts.append(f"# Results so far\n\n{results_table(task, history)}")
    notes, guidance = run_dir / "notes.md", run_dir / "guidance.md"
    if notes.exists() and notes.read_text().strip():
        parts.append(f"# Your notes (notes.md, kept across experiments)\n\n{notes.read_text().strip()}")
    if guidance.exists() and guidance.read_text().strip():
        parts.append(f"# Guidance from a person (guidance.md)\n\n{guidance.read_text().strip()}")
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
