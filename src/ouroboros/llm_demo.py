"""`make demo-llm`: the api agent with the local model on a quadratic task, and what its replies were.

`demo` starts `ouroboros serve-model` (a child process it stops again), waits until it answers,
runs `ouroboros run --agent api:local` on the task, and prints `summary`: per experiment what the
model proposed, whether its replies parsed and applied, tokens, seconds and the verdict, then the
parse and apply rates over all calls (retries included). `summary` reads only the run's records
(agent.log of each experiment, the ledger), so it works on any finished api run:

    python -m ouroboros.llm_demo summary -C TASK --run TAG

With `--url http://127.0.0.1:8090` it uses a server already running instead of starting one.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ouroboros.errors import OuroborosError
from ouroboros.ledger import Ledger, fmt_metric, one_line
from ouroboros.task import load_task


def calls(exp_dir: Path) -> list[dict]:
    """The agent.log records of one experiment that are model replies (not transport errors)."""
    log = exp_dir / "agent.log"
    if not log.exists():
        return []
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "reply" in rec:
            out.append(rec)
    return out


def summary(task_dir: Path, tag: str, echo: Callable[[str], None] = print, replies: bool = True) -> dict:
    """Print each experiment's replies and verdict; return the totals (calls, parsed, applied, ...)."""
    task = load_task(task_dir)
    ledger = Ledger(task.root / ".ouroboros")
    try:
        exps = ledger.experiments(tag, finished_only=True)
        tot = {"proposals": 0, "calls": 0, "parsed": 0, "applied": 0, "proposals_applied": 0,
               "tokens_in": [], "tokens_out": [], "latency_s": [], "agent_s": []}
        for e in exps:
            if e.n == 0:
                echo(f"#0 baseline: {task.metric.name} {fmt_metric(e.metric)}")
                continue
            recs = calls(ledger.exp_dir(tag, e.n))
            tot["proposals"] += 1
            tot["agent_s"].append(e.agent_s)
            tot["proposals_applied"] += any(r.get("applied") for r in recs)
            for r in recs:
                tot["calls"] += 1
                tot["parsed"] += bool(r.get("parsed"))
                tot["applied"] += bool(r.get("applied"))
                tot["tokens_in"].append(r.get("tokens_in", 0))
                tot["tokens_out"].append(r.get("tokens_out", 0))
                tot["latency_s"].append(r.get("latency_s", 0.0))
            echo(f"#{e.n} {e.status} {task.metric.name} {fmt_metric(e.metric)}: {one_line(e.description)[:200]}")
            for r in recs:
                echo(f"   try {r.get('attempt', 0) + 1}: parsed={'yes' if r.get('parsed') else 'no'} "
                     f"applied={'yes' if r.get('applied') else 'no'} tokens {r.get('tokens_in')} in / "
                     f"{r.get('tokens_out')} out, {r.get('latency_s', 0):.1f} s"
                     + (f"; error: {one_line(r['error'])[:160]}" if r.get("error") else ""))
                if replies:
                    echo("   | " + "\n   | ".join(str(r.get("reply", "")).splitlines()[:30]))
        if tot["calls"]:
            lat, tin, tout = tot["latency_s"], tot["tokens_in"], tot["tokens_out"]
            echo(f"{tot['proposals']} proposals, {tot['calls']} model calls: {tot['parsed']}/{tot['calls']} replies "
                 f"parsed, {tot['applied']}/{tot['calls']} applied; {tot['proposals_applied']}/{tot['proposals']} "
                 f"proposals applied. Per call: median {statistics.median(tin):.0f} tokens in, "
                 f"{statistics.median(tout):.0f} out, median {statistics.median(lat):.0f} s "
                 f"(range {min(lat):.0f}-{max(lat):.0f} s). Per proposal: median "
                 f"{statistics.median(tot['agent_s']):.0f} s.")
        return tot
    finally:
        ledger.close()


def answers(url: str) -> bool:
    """Whether a serve-model server answers at url (without /v1)."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise OuroborosError(f"serve-model exited with status {proc.returncode} before it was ready; "
                                 "its output is above")
        if answers(url):
            return
        time.sleep(2)
    raise OuroborosError(f"serve-model did not answer at {url} within {timeout:.0f} s")


def demo(task_dir: Path, experiments: int = 10, port: int = 8091, tag: str = "llm", threads: int = 2,
         url: str | None = None, echo: Callable[[str], None] = print) -> dict:
    """Start a server (unless url names one already serving), run the loop, print the summary."""
    cli = [sys.executable, "-m", "ouroboros.cli"]
    server = None

    def stop(signum, frame):  # SIGTERM (make stopped, a time limit) ends the demo through `finally`: the
        raise KeyboardInterrupt  # server it started (9 GB) must not outlive it

    signal.signal(signal.SIGTERM, stop)
    if url is None:
        server = subprocess.Popen([*cli, "serve-model", "--port", str(port), "--threads", str(threads)],
                                  start_new_session=True)
        url = f"http://127.0.0.1:{port}"
    url = url.removesuffix("/").removesuffix("/v1")
    try:
        t = time.monotonic()
        if server is not None:
            wait_ready(url, server, timeout=1800)
            echo(f"server ready after {time.monotonic() - t:.0f} s")
        elif not answers(url):
            raise OuroborosError(f"no serve-model server answers at {url}; start one or leave out --url")
        t = time.monotonic()
        subprocess.run([*cli, "run", "-C", str(task_dir), "--agent", "api:local", "--base-url", url + "/v1",
                        "--max-experiments", str(experiments), "--tag", tag, "--agent-timeout", "1800"], check=True)
        echo(f"run took {time.monotonic() - t:.0f} s")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the server's stop short
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)  # the server we started, and only it
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            finally:  # however the wait ended (a timeout, an interrupt), a server still up is killed
                if server.poll() is None:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()
    echo("")
    return summary(task_dir, tag, echo)


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m ouroboros.llm_demo")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo")
    d.add_argument("task", type=Path)
    d.add_argument("-n", type=int, default=10)
    d.add_argument("--port", type=int, default=8091)
    d.add_argument("--url", help="a serve-model server already running (http://127.0.0.1:8090)")
    s = sub.add_parser("summary")
    s.add_argument("-C", dest="task", type=Path, default=Path("."))
    s.add_argument("--run", required=True)
    s.add_argument("--no-replies", action="store_true")
    a = p.parse_args(argv)
    try:
        if a.cmd == "demo":
            demo(a.task, a.n, a.port, url=a.url)
        else:
            summary(a.task, a.run, replies=not a.no_replies)
    except OuroborosError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
