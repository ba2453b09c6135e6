"""How fast the everyday commands answer: `ouroboros --help`, `status`, and `log` of a long run.

    python bench/cli_speed.py [--rows 10000] [--repeats 5]

`status` and `log` read a synthetic ledger of one run with --rows experiments, written through the
ledger (so the chain verifies). Each command is started as a fresh process, as a user would, with
its output to a file; the table shows the median wall time, beside `python -c pass` (the floor).
Targets: --help and status under 0.3 s, log of 10,000 rows under 1 s.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ouroboros.ledger import Experiment, Ledger, Run
from ouroboros.scaffold import from_template


def fill(task_dir: Path, rows: int) -> None:
    rng = random.Random(0)
    ledger = Ledger(task_dir / ".ouroboros")
    ledger.save_run(Run("long", task="quadratic", agent="random", metric="loss", status="finished"))
    ledger.db.execute("BEGIN")  # one transaction: the fill is setup, not what is timed
    best = 10.0
    for n in range(rows + 1):
        m = best * rng.uniform(0.9, 1.1)
        keep = n == 0 or m < best
        best = m if keep else best
        exp = Experiment("long", n, commit_sha=f"{n:040x}", status="keep" if keep else "discard", metric=m,
                         description=f"set LEARNING_RATE to {rng.uniform(0, 1):.4f}", agent="random",
                         run_s=0.5, wall_s=0.6, finished=time.time())
        from ouroboros import chain
        from ouroboros.ledger import _encode

        row = _encode(exp)
        ledger.db.execute(f"INSERT INTO experiments ({','.join(row)}) VALUES ({','.join('?' * len(row))})",
                          list(row.values()))
        stored = ledger.db.execute("SELECT * FROM experiments WHERE tag=? AND n=?", ("long", n)).fetchone()
        if ledger._key is None:
            ledger._key = chain.key()
        chain.append(ledger, ledger._key, "exp", "long", n, chain.digest(stored))
    ledger.db.execute("COMMIT")
    ledger.close()


def timed(argv: list[str], repeats: int, out: Path) -> float:
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        with open(out, "w") as f:
            proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "160"})
        samples.append(time.perf_counter() - t)
        if proc.returncode != 0:
            raise SystemExit(f"{argv} failed:\n{out.read_text()[-2000:]}")
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        task = from_template(Path(tmp) / "quadratic", "quadratic")
        fill(task, args.rows)
        cli = [sys.executable, "-m", "ouroboros.cli"]
        out = Path(tmp) / "out.txt"
        loads = [os.getloadavg()[0]]
        results = {
            "python -c pass": timed([sys.executable, "-c", "pass"], args.repeats, out),
            "ouroboros --help": timed([*cli, "--help"], args.repeats, out),
            "ouroboros status": timed([*cli, "status", "-C", str(task)], args.repeats, out),
            f"ouroboros log ({args.rows} rows)": timed([*cli, "log", "-C", str(task)], args.repeats, out),
        }
        lines = out.read_text().count("\n")
        loads.append(os.getloadavg()[0])
    print(f"command: python bench/cli_speed.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"machine: {os.cpu_count()} cores, load average {min(loads):.1f} to {max(loads):.1f}; "
          f"median of {args.repeats} fresh processes; log printed {lines} lines")
    for name, seconds in results.items():
        print(f"{name:<28} {seconds:6.2f} s")


if __name__ == "__main__":
    main()
