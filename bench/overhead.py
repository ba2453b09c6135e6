"""The whole experiment cycle on a no-op task, and the harness's share of it beside run and evaluate.

    python bench/overhead.py [--experiments 200] [--levels bwrap,unshare,process] [--trust sealed|stdout]
                             [--profile PREFIX]

With --profile, each level's experiments run under cProfile and the stats go to PREFIX.<level> (read
them with `python -m pstats`); the function-call counts it prints do not move with the machine's load,
the times do (and cProfile inflates them).

A scripted agent (no LLM, no optuna) writes a new value into the task's one editable file each time
it is asked. The clock is the agent's: one cycle runs from one proposal to the next, so it counts
everything the harness does for an experiment: guard, commit, diff, run, evaluate, judge, record,
the revert to the best commit, `observe`, and the console line (printed through the CLI's own
`views.Live` to /dev/null). The task's run and evaluate are `echo` (the metric is the same every
time, so every experiment is a discard and is reverted, the common case). What is left of a cycle
after its run and evaluate (as the sandbox timed them) is the harness.

`cycles()` is shared with bench/peers.py.
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

from rich.console import Console

from ouroboros import isolation, views
from ouroboros.agents import Agent, Proposal
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

[bound]
isolation = "{level}"
"""


class Scripted(Agent):
    """Writes a new constant into train.py on every call and notes when it was called."""

    name = "scripted"
    writes_code = False  # it writes one constant, like random and tpe: level process may run it

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def propose(self, ctx) -> Proposal:
        self.stamps.append(time.perf_counter())
        (ctx.worktree / "train.py").write_text(f"LEARNING_RATE = {ctx.n}\nWIDTH = 64\n")
        return Proposal(f"set LEARNING_RATE to {ctx.n}")


def make_task(root: Path, level: str, sealed: bool) -> Path:
    root.mkdir(parents=True)
    evaluate = 'evaluate = "echo score: 1"' if sealed else ""
    (root / "ouroboros.toml").write_text(TASK.format(evaluate=evaluate, level=level))
    (root / "program.md").write_text("no-op\n")
    (root / "train.py").write_text("LEARNING_RATE = 0\nWIDTH = 64\n")
    (root / ".gitignore").write_text(".ouroboros/\n")
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"],
                ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "baseline"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
    return root


def cycles(root: Path, level: str, experiments: int, sealed: bool = True) -> list[dict[str, float]]:
    """Run `experiments` no-op experiments at an isolation level in a new task under root; for each
    experiment but the last (whose cycle has no next proposal to end it): cycle, run, eval, agent, in s."""
    task = load_task(make_task(root, level, sealed))
    agent = Scripted()
    with open(os.devnull, "w") as null:
        live = views.Live(Console(file=null, highlight=False, soft_wrap=True, force_terminal=True), task)
        loop = Loop(task, Options(agent="scripted", tag="bench", max_experiments=experiments), agent=agent,
                    on_experiment=live.line)
        loop.run()
    exps = loop.finished[1:]
    loop.ledger.close()
    out = []
    for e, a, b in zip(exps, agent.stamps, agent.stamps[1:], strict=False):  # the last has no next
        out.append({"cycle": b - a, "run": e.run_s, "eval": e.eval_s, "agent": e.agent_s})
    return out


def ms(values) -> float:
    return statistics.median(values) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiments", type=int, default=200)
    ap.add_argument("--levels", default=",".join(isolation.LEVELS))
    ap.add_argument("--trust", choices=("sealed", "stdout"), default="sealed",
                    help="sealed: run and a (no-op) evaluate command; stdout: the metric read from the run")
    ap.add_argument("--profile", metavar="PREFIX", help="run under cProfile, stats to PREFIX.<level>")
    args = ap.parse_args()
    print(f"command: python bench/overhead.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start, "
          f"python {sys.version.split()[0]}")
    print(f"{'level':<8} {'cycle ms':>9} {'p90':>7} {'run ms':>7} {'eval ms':>8} {'harness ms':>11} {'share':>6}")
    for level in args.levels.split(","):
        if not isolation.available(level):
            print(f"{level:<8} not available here")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            if args.profile:
                import cProfile
                import pstats

                profile = cProfile.Profile()
                rows = profile.runcall(cycles, Path(tmp) / "noop", level, args.experiments, args.trust == "sealed")
                profile.dump_stats(f"{args.profile}.{level}")
                print(f"{level:<8} cProfile: {pstats.Stats(profile).total_calls} function calls in "
                      f"{args.experiments} experiments, stats in {args.profile}.{level}")
            else:
                rows = cycles(Path(tmp) / "noop", level, args.experiments, args.trust == "sealed")
        cyc = sorted(r["cycle"] for r in rows)
        harness = [r["cycle"] - r["run"] - r["eval"] for r in rows]
        print(f"{level:<8} {ms(cyc):9.1f} {cyc[int(0.9 * len(cyc))] * 1000:7.1f} {ms(r['run'] for r in rows):7.1f} "
              f"{ms(r['eval'] for r in rows):8.1f} {ms(harness):11.1f} {ms(harness) / ms(cyc):6.0%}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end; {args.experiments} experiments per level, medians")


if __name__ == "__main__":
    main()
