"""Ouroboros's whole experiment cycle against two peers', on the same no-op task, interleaved.

    python bench/peers.py [--experiments 30] [--repeats 5] [--venvs DIR]

Peers (from PyPI, pinned, each installed into its own virtual environment under --venvs, a
temporary folder unless given; a given folder is reused on the next call):

- autoresearch-kernel 0.2.1 (`ark`): the agent is a process speaking the kernel's HTTP API. Ours is
  a stdlib script in an agent folder (agent.yaml + run.py, the kernel's own agent format) that
  writes solution.py, POSTs /submit, polls /submit/<id> every 2 ms until it is scored (the bundled
  agents poll every 200 to 300 ms, which would hide everything else) and puts the best file back
  when the score did not improve (keep/revert is agent policy in the kernel). The kernel runs
  in-process (`autoresearch.run.start_run`) with its only runner that works here, `local` (a
  subprocess, no isolation). The eval command writes a constant to /result/metrics.json.
- autoresearch-cli 0.2.5 (`ars`): its loop (`runner.loop.run_loop`) asks an LLM through two module
  functions, `_get_llm_client` and `_propose_change`; the driver replaces both with a scripted
  proposal (a new solution.py, its content differing every time so the loop's eval cache never
  skips an eval) and calls `run_loop` with plateau detection off. It is installed with --no-deps:
  its dependencies are the three LLM SDKs (anthropic, openai, google-generativeai) and the CLI's
  (click, rich...), none imported on the path driven here. The eval command prints a constant.
- Ouroboros: bench/overhead.py's scripted agent and no-op sealed task (run and evaluate are `echo`)
  at each isolation level that works here.

Every harness is timed by its proposer: one cycle runs from one proposal to the next, so the whole
experiment counts (commit, eval, keep/revert, records, console). The metric never improves, so
every experiment after the first is reverted in all three. Each repeat runs every harness once, in
a rotated order, each in a fresh process and folder; a repeat's ratio is Ouroboros's median cycle
over the peer's, and the table shows the median ratio over the repeats and its range.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = {"kernel": "autoresearch-kernel==0.2.1", "cli": "autoresearch-cli==0.2.5"}

KERNEL_AGENT = '''\
import json, os, sys, time, urllib.request, urllib.error
from pathlib import Path

API = os.environ["AR_API_URL"].rstrip("/")
SOLUTION = Path(os.environ["AR_WORKSPACE"]) / "solution.py"

def call(method, path, body=None):
    req = urllib.request.Request(API + path, method=method, headers={"Content-Type": "application/json"},
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())

stamps, best_text, best = [], SOLUTION.read_text(), None
for n in range(int(os.environ["BENCH_N"])):
    stamps.append(time.perf_counter())
    SOLUTION.write_text(f"LEARNING_RATE = {n + 1}\\nWIDTH = 64\\n")
    status, body = call("POST", "/submit", {"notes": f"set LEARNING_RATE to {n + 1}"})
    if status != 200:
        sys.exit(f"submit refused: {status} {body}")
    while True:
        status, rec = call("GET", f"/submit/{body['submit_id']}")
        if rec["status"] in ("scored", "failed"):
            break
        time.sleep(0.002)
    if rec["status"] != "scored":
        sys.exit(f"submit failed: {rec}")
    value = rec["metric"]["value"]
    if best is None or value > best:
        best, best_text = value, SOLUTION.read_text()
    else:
        SOLUTION.write_text(best_text)
stamps.append(time.perf_counter())
Path(os.environ["BENCH_OUT"]).write_text(json.dumps([b - a for a, b in zip(stamps, stamps[1:])]))
'''

KERNEL_DRIVER = '''\
import os, sys
from pathlib import Path
from autoresearch.run import start_run

root, n = Path(sys.argv[1]), int(sys.argv[2])
exp, agent = root / "exp", root / "agent"
(exp / "seed").mkdir(parents=True)
(exp / "eval").mkdir()
agent.mkdir()
(exp / "experiment.yaml").write_text(f"""\\
name: noop
description: no-op
objective:
  metric: score
  direction: maximize
  mode: official
  eval_command: "echo '{{\\\\"score\\\\": 1}}' > /result/metrics.json"
  metric_path: metrics.json:score
  timeout_seconds: 60
submit:
  signature:
    notes: {{type: string, required: true}}
environment:
  resources: {{cpu: 2, mem_gb: 4, gpu: 0, net: false}}
stop:
  max_submits: {n + 1}
""")
(exp / "rules.md").write_text("no-op\\n")
(exp / "seed" / "solution.py").write_text("LEARNING_RATE = 0\\nWIDTH = 64\\n")
(agent / "agent.yaml").write_text(f"name: scripted\\ncommand: {sys.executable} /agent/run.py\\n")
(agent / "run.py").write_text(sys.stdin.read())
os.chdir(root)
result = start_run(exp, str(agent), runner_name="local", run_name="bench", runs_root=root / "runs", quiet=True,
                   agent_env={"BENCH_N": str(n), "BENCH_OUT": str(root / "cycles.json")})
if not (root / "cycles.json").exists():
    sys.exit(f"the scripted agent did not finish: {result.reason}; see {root}/runs/bench/agent.log")
print((root / "cycles.json").read_text())
'''

CLI_DRIVER = '''\
import json, subprocess, sys, time
from pathlib import Path
import runner.loop as loop

root, n = Path(sys.argv[1]), int(sys.argv[2])
ws = root / "ws"
ws.mkdir(parents=True)
(ws / "solution.py").write_text("LEARNING_RATE = 0\\nWIDTH = 64\\n")
(ws / "program.md").write_text("no-op\\n")
for cmd in (["init", "-q", "-b", "main"], ["add", "-A"],
            ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "baseline"]):
    subprocess.run(["git", *cmd], cwd=ws, check=True)
subprocess.run(["git", "config", "user.name", "b"], cwd=ws, check=True)
subprocess.run(["git", "config", "user.email", "b@b"], cwd=ws, check=True)
stamps = []

def propose(*args, **kwargs):  # the LLM call, scripted
    stamps.append(time.perf_counter())
    return f"LEARNING_RATE = {len(stamps)}\\nWIDTH = 64\\n", f"set LEARNING_RATE to {len(stamps)}"

loop._get_llm_client = lambda provider: None
loop._propose_change = propose
results = loop.run_loop(workspace=ws, target_file="solution.py", provider="anthropic", model="scripted",
                        max_experiments=n + 1, eval_command="echo accuracy_pct: 1", plateau_detection=False)
if len(stamps) != n + 1 or any(r.crashed for r in results.results):
    sys.exit(f"the loop did not run {n + 1} clean experiments: {len(stamps)} proposals")
print(json.dumps([b - a for a, b in zip(stamps, stamps[1:])]))
'''

OUROBOROS_DRIVER = '''\
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from overhead import cycles
rows = cycles(Path(sys.argv[1]), sys.argv[3], int(sys.argv[2]) + 1)
print(json.dumps([r["cycle"] for r in rows]))
'''


def ensure_venv(venvs: Path, name: str) -> Path:
    env = venvs / name
    py = env / "bin" / "python"
    marker = env / ".installed"
    if not marker.exists() or marker.read_text() != PEERS[name]:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
        extra = ["--no-deps"] if name == "cli" else []
        subprocess.run([str(py), "-m", "pip", "install", "-q", *extra, PEERS[name]], check=True)
        marker.write_text(PEERS[name])
    return py


def run_one(harness: str, n: int, tmp: Path, pythons: dict[str, Path]) -> list[float]:
    """One fresh run of a harness: n cycles (n + 1 proposals), the per-cycle wall times in seconds."""
    root = Path(tempfile.mkdtemp(dir=tmp, prefix=harness.replace(":", "-") + "-"))
    if harness == "kernel":
        argv, stdin = [str(pythons["kernel"]), "-c", KERNEL_DRIVER, str(root), str(n)], KERNEL_AGENT
    elif harness == "cli":
        argv, stdin = [str(pythons["cli"]), "-c", CLI_DRIVER, str(root), str(n)], ""
    else:
        level = harness.split(":", 1)[1]
        argv, stdin = [sys.executable, "-c", OUROBOROS_DRIVER, str(root / "noop"), str(n), level, str(HERE)], ""
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, cwd=root)
    if proc.returncode != 0:
        raise SystemExit(f"{harness} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiments", type=int, default=30, help="cycles timed per harness per repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--venvs", type=Path, default=None, help="where the peers' environments live (reused)")
    args = ap.parse_args()
    from ouroboros import isolation

    levels = [lv for lv in isolation.LEVELS if isolation.available(lv)]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        venvs = args.venvs or tmp / "venvs"
        venvs.mkdir(parents=True, exist_ok=True)
        pythons = {name: ensure_venv(venvs, name) for name in PEERS}
        harnesses = ["kernel", "cli", *(f"ouroboros:{lv}" for lv in levels)]
        loads = [os.getloadavg()[0]]
        medians: dict[str, list[float]] = {h: [] for h in harnesses}
        for rep in range(args.repeats):
            order = harnesses[rep % len(harnesses):] + harnesses[:rep % len(harnesses)]
            for h in order:
                medians[h].append(statistics.median(run_one(h, args.experiments, tmp, pythons)))
            loads.append(os.getloadavg()[0])
    print(f"command: python bench/peers.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"machine: {os.cpu_count()} cores; load average (1 min) {min(loads):.1f} to {max(loads):.1f} during the "
          f"runs; {args.experiments} cycles x {args.repeats} interleaved repeats per harness")
    print(f"peers: {', '.join(PEERS.values())}")
    print(f"{'harness':<20} {'cycle ms (median)':>18}  {'/ kernel':>18}  {'/ cli':>18}")

    def ratio(h: str, peer: str) -> str:
        r = [a / b for a, b in zip(medians[h], medians[peer], strict=True)]
        return f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})"

    for h in harnesses:
        print(f"{h:<20} {statistics.median(medians[h]) * 1000:18.1f}  {ratio(h, 'kernel'):>18}  {ratio(h, 'cli'):>18}")


if __name__ == "__main__":
    main()
