"""Harness overhead per experiment: wall time minus run and evaluate time, on a no-op task.

    python bench/overhead.py [--experiments 200] [--sealed]

The task's run is `true`-cheap (a shell echo); the agent is `random` over two knobs. What is
left of each experiment's wall time after its run and evaluation is the harness: proposing,
guarding, committing, recording, resetting.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ouroboros.ledger import Ledger
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task

TASK = """\
[task]
name = "noop"
editable = ["train.py"]
run = "echo score: 1"
{evaluate}
budget = 10

[metric]
name = "score"
"""


def make_task(root: Path, sealed: bool) -> Path:
    root.mkdir(parents=True)
    evaluate = 'evaluate = "echo score: 1"' if sealed else ""
    (root / "ouroboros.toml").write_text(TASK.format(evaluate=evaluate))
    (root / "program.md").write_text("no-op\n")
    (root / "train.py").write_text("LEARNING_RATE = 0.01\nWIDTH = 64\n")
    (root / ".gitignore").write_text(".ouroboros/\n")
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"],
                ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "baseline"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiments", type=int, default=200)
    ap.add_argument("--sealed", action="store_true", help="also run a (no-op) evaluate command")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_task(Path(tmp) / "noop", args.sealed)
        start = time.monotonic()
        Loop(load_task(root), Options(agent="random", tag="bench", max_experiments=args.experiments)).run()
        total = time.monotonic() - start
        exps = Ledger(root / ".ouroboros").experiments("bench")[1:]
    overhead = sorted((e.wall_s - e.run_s - e.eval_s) * 1000 for e in exps)
    p90 = overhead[int(0.9 * len(overhead))]
    print(f"command: python bench/overhead.py --experiments {args.experiments}{' --sealed' if args.sealed else ''}")
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    print(f"experiments: {len(exps)}, total {total:.1f} s, isolation {exps[0].isolation}")
    print(f"overhead per experiment: median {statistics.median(overhead):.1f} ms, p90 {p90:.1f} ms")
    print(f"run time per experiment: median {statistics.median(e.run_s for e in exps) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
