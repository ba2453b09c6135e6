"""Isolation levels for run and evaluate: how an experiment's processes are wrapped.

Level `process` (always available): its own process group and session, a scrubbed environment,
the harness's time, memory and log limits. It does not stop file access outside the worktree or
network use.
"""

from __future__ import annotations

from pathlib import Path

from ouroboros.task import Task


class Isolation:
    """Wraps argv for one phase. `level` is recorded with every experiment."""

    level = "process"

    def __init__(self, task: Task, worktree: Path, records: Path):
        self.task, self.worktree, self.records = task, worktree, records

    def wrap(self, argv: list[str], phase: str, writable: list[Path] | None = None) -> tuple[list[str], str]:
        return argv, self.level


def choose(task: Task, worktree: Path, records: Path) -> Isolation:
    return Isolation(task, worktree, records)
