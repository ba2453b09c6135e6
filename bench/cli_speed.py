"""How fast the everyday commands answer: `ouroboros --help`, `status`, and `log` of a long run.

    python bench/cli_speed.py [--rows 10000] [--repeats 5]

`status` and `log` read a synthetic ledger of one run with --rows experiments, written through the
ledger (so the chain verifies), with a chain key in a temporary config folder. Each command is
started as a fresh process, as a user would, with its output to a file (so `log` prints its
tab-separated rows), after one untimed start that writes the bytecode caches an installed package
has (PYTHONDONTWRITEBYTECODE is unset for the children) and the record of the last verified entry.
"first status" deletes that record before each start: the first `status` or `log` after a run checks
the whole chain. The table shows the median wall time and the median CPU time (user + system) of
the child, which moves less with the machine's load, beside `python -c pass` (the floor).
Targets: --help and status under 0.3 s, log of 10,000 rows under 1 s.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
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


def timed(argv: list[str], repeats: int, out: Path, before=lambda: None) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["COLUMNS"] = "160"
    walls, cpus = [], []
    for i in range(repeats + 1):  # the first start writes the caches and is not counted
        before()
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        with open(out, "w") as f:
            proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(f"{argv} failed:\n{out.read_text()[-2000:]}")
        if i:
            walls.append(wall)
            cpus.append(after.ru_utime - cpu.ru_utime + after.ru_stime - cpu.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["OUROBOROS_CONFIG_DIR"] = str(Path(tmp) / "config")  # the key and records of this bench only
        task = from_template(Path(tmp) / "quadratic", "quadratic")
        fill(task, args.rows)
        cli = [sys.executable, "-m", "ouroboros.cli"]
        out = Path(tmp) / "out.txt"
        loads = [os.getloadavg()[0]]

        def forget() -> None:
            for anchor in (Path(tmp) / "config" / "heads").glob("*.verified"):
                anchor.unlink()

        results = {
            "python -c pass": timed([sys.executable, "-c", "pass"], args.repeats, out),
            "ouroboros --help": timed([*cli, "--help"], args.repeats, out),
            "ouroboros status": timed([*cli, "status", "-C", str(task)], args.repeats, out),
            "ouroboros status, first": timed([*cli, "status", "-C", str(task)], args.repeats, out, forget),
            f"ouroboros log ({args.rows} rows)": timed([*cli, "log", "-C", str(task)], args.repeats, out),
        }
        lines = out.read_text().count("\n")
        if "do not verify" in out.read_text():
            raise SystemExit("the synthetic ledger does not verify: " + out.read_text()[:500])
        loads.append(os.getloadavg()[0])
    print(f"command: python bench/cli_speed.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"machine: {os.cpu_count()} cores, load average {min(loads):.1f} to {max(loads):.1f}; "
          f"median of {args.repeats} fresh processes; log printed {lines} lines")
    print(f"{'':<32} {'wall':>8} {'CPU':>8}")
    for name, (wall, cpu) in results.items():
        print(f"{name:<32} {wall:6.2f} s {cpu:6.2f} s")


if __name__ == "__main__":
    main()
