"""Local executor scaling: experiments per hour with K slots against one slot, on a sleep-bound task.

    python bench/parallel_scaling.py [--slots 2] [--experiments 6] [--sleep 1.0]

A quadratic task whose run sleeps `--sleep` seconds (so the CPU is not the limit) is studied with
K repeats of one condition, once on 1 slot and once on K slots. Throughput counts every recorded
experiment, baselines included, over the study's wall-clock time. Target: ratio >= 0.9 * K.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from ouroboros.scaffold import from_template
from ouroboros.study.runner import run_study
from ouroboros.study.spec import load_study
from ouroboros.workspace import git

STUDY = """\
name = "scale{slots}"
task = "task"
repeats = {repeats}
[limits]
max_experiments = {n}
[resources]
slots = {slots}
[[conditions]]
name = "random"
agent = "random"
"""


def throughput(folder: Path, slots: int, repeats: int, n: int) -> float:
    path = folder / f"scale{slots}.toml"
    path.write_text(STUDY.format(slots=slots, repeats=repeats, n=n))
    start = time.perf_counter()
    results = run_study(load_study(path), folder / f"out{slots}", gpus=[], echo=lambda s: None)
    elapsed = time.perf_counter() - start
    assert all(r["status"] == "finished" for r in results), results
    return repeats * (n + 1) / elapsed * 3600


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--experiments", type=int, default=6)
    ap.add_argument("--sleep", type=float, default=1.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        task = from_template(folder / "task", "quadratic")
        train = task / "train.py"
        train.write_text(train.read_text().replace("def main():", f"def main():\n    import time\n"
                                                   f"    time.sleep({args.sleep})", 1))
        git(task, "commit", "-qam", "sleep-bound run")
        one = throughput(folder, 1, args.slots, args.experiments)
        many = throughput(folder, args.slots, args.slots, args.experiments)
    ratio = many / one
    print(f"command: python {' '.join(sys.argv)}")
    print(f"1 slot: {one:.0f} experiments/hour; {args.slots} slots: {many:.0f} experiments/hour; "
          f"ratio {ratio:.2f} (target >= {0.9 * args.slots:.2f}: {'ok' if ratio >= 0.9 * args.slots else 'MISSED'})")


if __name__ == "__main__":
    main()
