"""The self task's run phase: the candidate version (the worktree's src/) as the inner harness on
the suite. Untrusted: it is the candidate's own code that runs here; it leaves the inner runs in
.self/work/ for the trusted evaluator (task_eval.py), which believes none of it without checking.

    PYTHONPATH=src python -m ouroboros.self.task_run
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from ouroboros import policyfile, readfile
from ouroboros.errors import OuroborosError
from ouroboros.self.delta import benchmark_runs, export_inner
from ouroboros.self.settings import WORK, load_settings


def main(root: Path) -> int:
    cfg = load_settings(root)
    work = root / WORK
    readfile.clear(work)
    try:
        policyfile.read(root / "src" / "ouroboros" / "policy.py")  # data only: refused before anything runs
        # the inner repos live outside the worktree (no .git may be written in it); their ledgers and
        # kept params are copied in for the evaluator
        with tempfile.TemporaryDirectory(prefix="ouroboros-inner-") as tmp:
            for dest, _, _ in benchmark_runs(root / "src", Path(tmp), cfg.seeds, cfg.experiments, "public",
                                             cfg.tasks, cfg.agent, cfg.search, cfg.jobs):
                export_inner(dest, work / dest.name)
    except OuroborosError as exc:
        print(f"error: {exc}", flush=True)
        return 1
    print(f"inner runs done: {work}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path.cwd()))
