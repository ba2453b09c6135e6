"""How fast the dashboard answers for a big run, and whether its memory stays flat while a run streams.

    PYTHONPATH=src python bench/dashboard_speed.py                 # both parts
    PYTHONPATH=src python bench/dashboard_speed.py --part speed --experiments 5000
    PYTHONPATH=src python bench/dashboard_speed.py --part memory --hours 1 --speedup 100

speed:  a synthetic ledger with N experiments (diffs and logs on disk); the server in a subprocess;
        the run page (HTML) and the run page's data (/api/run/<tag>: the run and every table row)
        requested R times each; median and 95th percentile of the wall time, client included.
memory: a writer appends one experiment every --period seconds of simulated time and grows the
        running experiment's run.log, while one event-stream client follows the run page; the
        server polls the ledger every 0.5 s of simulated time. --speedup compresses the clock
        (100: an hour in 36 s). The server's RSS is sampled all along; flat means the last
        sample is within a few MB of the first after warm-up.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

from ouroboros.ledger import Experiment, Ledger, Run

TOKEN = "bench-token"
SERVER = """
import sys, uvicorn
from pathlib import Path
from ouroboros.dashboard.app import create_app
app = create_app(Path(sys.argv[1]), token=sys.argv[3], poll_s=float(sys.argv[4]))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(task: Path, poll_s: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(task), str(port), TOKEN, str(poll_s)])
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            fetch(base + "/api/runs")
            return proc, base
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the dashboard did not start")


def fetch(url: str) -> bytes:
    req = urllib.request.Request(url, headers={"X-Ouroboros-Token": TOKEN})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()


def experiment(tag: str, n: int, best: float, rng: random.Random, t: float) -> Experiment:
    m = best * rng.uniform(0.9, 1.15)
    status = "keep" if n == 0 or m < best else rng.choice(["discard"] * 8 + ["crash", "timeout"])
    return Experiment(tag, n, commit_sha=f"{n:040x}", parent="0" * 40, status=status,
                      metric=None if status in ("crash", "timeout") else m, wall_s=5.0, run_s=4.0,
                      description=f"LEARNING_RATE {rng.random():.4g} -> {rng.random():.4g}, STEPS {rng.randint(50, 500)}",
                      agent="random", started=t, finished=t + 5.0)


def synthetic(task: Path, n: int) -> None:
    rng = random.Random(0)
    ledger = Ledger(task / ".ouroboros")
    ledger.save_run(Run("big", agent="random", metric="loss", status="finished", config={"max_experiments": n}))
    best, t = 10.0, time.time() - 5 * n
    ledger.db.execute("BEGIN")
    for i in range(n + 1):
        e = experiment("big", i, best, rng, t + 5 * i)
        if e.status == "keep":
            best = e.metric
        ledger.begin(e)
    ledger.db.execute("COMMIT")
    for i in range(1, n + 1):
        d = ledger.exp_dir("big", i)
        (d / "diff.patch").write_text("--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-X = 1\n+X = 2\n")
        (d / "run.log").write_text("step 1 loss 1.0\n" * 50)
    ledger.close()


def speed(experiments: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        task = Path(tmp)
        synthetic(task, experiments)
        proc, base = start_server(task, 0.5)
        try:
            for name, path in (("run page (HTML)", "/run/big"), ("run page data (/api/run/big)", "/api/run/big"),
                               ("one experiment (/api/run/big/exp/4000)", f"/api/run/big/exp/{min(4000, experiments)}"),
                               ("runs page data (/api/runs)", "/api/runs")):
                fetch(base + path)  # warm
                times, size = [], 0
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    size = len(fetch(base + path))
                    times.append((time.perf_counter() - t0) * 1000)
                times.sort()
                p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
                print(f"{name:42s} median {statistics.median(times):6.1f} ms  p95 {p95:6.1f} ms  "
                      f"({size / 1024:.0f} KB, {experiments} experiments, {repeats} requests)")
        finally:
            proc.terminate()
            proc.wait(10)


def memory(hours: float, speedup: float, period: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        task = Path(tmp)
        ledger = Ledger(task / ".ouroboros")
        ledger.save_run(Run("live", agent="random", metric="loss", status="running", config={"max_experiments": None}))
        rng = random.Random(1)
        ledger.finish(experiment("live", 0, 10.0, rng, time.time()))
        proc, base = start_server(task, 0.5 / speedup)
        events = {"count": 0, "bytes": 0}
        stop = threading.Event()

        def follow() -> None:
            req = urllib.request.Request(base + "/api/run/live/events", headers={"X-Ouroboros-Token": TOKEN})
            with urllib.request.urlopen(req, timeout=60) as r:
                while not stop.is_set():
                    line = r.readline()
                    if not line:
                        return
                    events["bytes"] += len(line)
                    events["count"] += line.startswith(b"event:")

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        server = psutil.Process(proc.pid)
        samples: list[tuple[float, float]] = []
        simulated, n, best = 0.0, 0, 10.0
        t0 = time.monotonic()
        next_exp = period
        try:
            while simulated < hours * 3600:
                simulated = (time.monotonic() - t0) * speedup
                if simulated >= next_exp:  # one experiment finishes, the next starts with a growing log
                    next_exp += period
                    n += 1
                    e = experiment("live", n, best, rng, time.time())
                    best = e.metric if e.status == "keep" and e.metric else best
                    ledger.finish(e)
                    ledger.begin(Experiment("live", n + 1, status="running", started=time.time()))
                log = ledger.exp_dir("live", n + 1) / "run.log"
                with open(log, "a") as f:
                    f.write(f"step {int(simulated)} loss {rng.random():.4f}\n")
                samples.append((simulated, server.memory_info().rss / 2**20))
                time.sleep(0.05)
        finally:
            stop.set()
            proc.terminate()
            proc.wait(10)
            ledger.close()
        warm = [m for s, m in samples if s >= 0.1 * hours * 3600]
        print(f"simulated {hours:g} h ({time.monotonic() - t0:.0f} s wall, speedup {speedup:g}): {n} experiments, "
              f"{events['count']} events ({events['bytes'] / 2**20:.1f} MB) streamed to one client")
        print(f"server RSS: {warm[0]:.1f} MB after warm-up (10% of the hour), {warm[-1]:.1f} MB at the end, "
              f"max {max(warm):.1f} MB")
        for frac in (0.1, 0.25, 0.5, 0.75, 1.0):
            s, m = min(samples, key=lambda sm: abs(sm[0] - frac * hours * 3600))
            print(f"  at {s / 60:5.1f} min simulated: {m:.1f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["speed", "memory", "both"], default="both")
    ap.add_argument("--experiments", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--speedup", type=float, default=100.0)
    ap.add_argument("--period", type=float, default=5.0, help="simulated seconds per experiment")
    args = ap.parse_args()
    print(f"load average {psutil.getloadavg()[0]:.1f} on {psutil.cpu_count()} CPUs; {json.dumps(vars(args))}")
    if args.part in ("speed", "both"):
        speed(args.experiments, args.repeats)
    if args.part in ("memory", "both"):
        memory(args.hours, args.speedup, args.period)


if __name__ == "__main__":
    main()
