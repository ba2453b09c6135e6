"""The whole experiment cycle on a no-op task, and the harness's share of it beside run and evaluate.

    python bench/overhead.py [--experiments 200] [--levels bwrap,unshare,process] [--trust sealed|stdout]
                             [--profile PREFIX] [--count]

Beside wall times, the table shows the CPU time of a cycle, which the machine's load moves far less:
the harness process's own (user + sys, from getrusage) and that of the processes it started and reaped
(git, the sandbox's wrappers, run and evaluate), medians. With --count, each level is run a second
time to count, per cycle, the processes the harness starts by kind (git subcommands, wrappers) and its
file-system calls by kind (through Python's audit hooks, which slow it down, hence the second run:
opens for reading and for writing, mkdir, rename, unlink, rmdir, listings...), means over the cycles,
setup and baseline left out; these counts do not depend on the load at all.
For the system calls of every process, child or not, run the bench under strace:
`strace -f -c -o FILE python bench/overhead.py --experiments 40 --levels process` and subtract a run
of 20 experiments to leave the setup out.

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
import collections
import os
import resource
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
        self.cpu: list[tuple[float, float]] = []  # (the harness's own CPU s, its reaped children's) at each call
        self.counts: list[collections.Counter] = []  # what _Counter saw up to each call

    def propose(self, ctx) -> Proposal:
        self.stamps.append(time.perf_counter())
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu.append((me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime))
        if _COUNTER.on:
            self.counts.append(collections.Counter(_COUNTER.seen))
        (ctx.worktree / "train.py").write_text(f"LEARNING_RATE = {ctx.n}\nWIDTH = 64\n")
        return Proposal(f"set LEARNING_RATE to {ctx.n}")


class _Counter:
    """Processes started and file-system calls made by the harness, by kind, through Python's audit hooks
    (sys.addaudithook: a hook cannot be removed, so it is installed once and counts only while `on`)."""

    _FS = {"os.mkdir": "mkdir", "os.rename": "rename", "os.remove": "unlink", "os.rmdir": "rmdir",
           "os.listdir": "list", "os.scandir": "list", "os.chmod": "chmod", "os.chown": "chown",
           "os.utime": "utime", "os.symlink": "symlink", "os.link": "link", "os.truncate": "truncate",
           "os.listxattr": "xattr", "os.removexattr": "xattr", "shutil.copyfile": "copyfile"}

    def __init__(self) -> None:
        self.on = False
        self.seen: collections.Counter = collections.Counter()
        self.installed = False

    def install(self) -> None:
        if not self.installed:
            sys.addaudithook(self._hook)
            self.installed = True
        self.on = True

    def _hook(self, event: str, args: tuple) -> None:
        if not self.on:
            return
        if event == "subprocess.Popen":
            argv = [str(a) for a in args[1]] if args[1] else [str(args[0])]
            self.seen["process " + _kind(argv)] += 1
        elif event == "open":
            if isinstance(args[0], int):  # os.fdopen of a descriptor already counted
                return
            mode, flags = args[1] or "", args[2] or 0
            write = any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            self.seen["fs open-" + ("write" if write else "read")] += 1
        elif event in self._FS:
            self.seen["fs " + self._FS[event]] += 1


def _kind(argv: list[str]) -> str:
    """`git <subcommand>` for git (its options skipped), else the program's name."""
    name = os.path.basename(argv[0])
    if name != "git":
        return name
    i = 1
    while i < len(argv):
        if argv[i] in ("-c", "-C"):
            i += 2
        elif argv[i].startswith("-"):
            i += 1
        else:
            return f"git {argv[i]}"
    return "git"


_COUNTER = _Counter()


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


def cycles(root: Path, level: str, experiments: int, sealed: bool = True,
           count: bool = False) -> list[dict[str, float]]:
    """Run `experiments` no-op experiments at an isolation level in a new task under root; for each
    experiment but the last (whose cycle has no next proposal to end it): cycle, run, eval, agent, in s,
    the harness's own CPU s and its children's, and with count=True what _Counter saw in the cycle."""
    task = load_task(make_task(root, level, sealed))
    agent = Scripted()
    if count:
        _COUNTER.seen.clear()
        _COUNTER.install()
    with open(os.devnull, "w") as null:
        live = views.Live(Console(file=null, highlight=False, soft_wrap=True, force_terminal=True), task)
        loop = Loop(task, Options(agent="scripted", tag="bench", max_experiments=experiments), agent=agent,
                    on_experiment=live.line)
        try:
            loop.run()
        finally:
            _COUNTER.on = False
    exps = loop.finished[1:]
    loop.ledger.close()
    out = []
    for i, (e, a, b) in enumerate(zip(exps, agent.stamps, agent.stamps[1:], strict=False)):  # the last has no next
        row = {"cycle": b - a, "run": e.run_s, "eval": e.eval_s, "agent": e.agent_s,
               "cpu": agent.cpu[i + 1][0] - agent.cpu[i][0], "children_cpu": agent.cpu[i + 1][1] - agent.cpu[i][1]}
        if count:
            row["counts"] = agent.counts[i + 1] - agent.counts[i]
        out.append(row)
    return out


def print_counts(level: str, rows: list[dict]) -> None:
    """What one cycle does, counted (means over the cycles): processes and file-system calls by kind."""
    n = len(rows)
    total: collections.Counter = collections.Counter()
    for r in rows:
        total.update(r["counts"])
    procs = {k[8:]: v / n for k, v in total.items() if k.startswith("process ")}
    fs = {k[3:]: v / n for k, v in total.items() if k.startswith("fs ")}
    print(f"{level:<8} per cycle: processes {sum(procs.values()):.2f}: " +
          ", ".join(f"{k} {v:.2f}" for k, v in sorted(procs.items(), key=lambda kv: -kv[1])))
    print(f"{'':<8} file-system calls {sum(fs.values()):.1f}: " +
          ", ".join(f"{k} {v:.1f}" for k, v in sorted(fs.items(), key=lambda kv: -kv[1])))


def ms(values) -> float:
    return statistics.median(values) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiments", type=int, default=200)
    ap.add_argument("--levels", default=",".join(isolation.LEVELS))
    ap.add_argument("--trust", choices=("sealed", "stdout"), default="sealed",
                    help="sealed: run and a (no-op) evaluate command; stdout: the metric read from the run")
    ap.add_argument("--profile", metavar="PREFIX", help="run under cProfile, stats to PREFIX.<level>")
    ap.add_argument("--count", action="store_true",
                    help="also print per cycle: CPU time, processes started and file-system calls, by kind")
    args = ap.parse_args()
    print(f"command: python bench/overhead.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start, "
          f"python {sys.version.split()[0]}")
    print(f"{'level':<8} {'cycle ms':>9} {'p90':>7} {'run ms':>7} {'eval ms':>8} {'harness ms':>11} {'share':>6} "
          f"{'CPU ms':>7} {'children':>9}")
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
              f"{ms(r['eval'] for r in rows):8.1f} {ms(harness):11.1f} {ms(harness) / ms(cyc):6.0%} "
              f"{ms(r['cpu'] for r in rows):7.1f} {ms(r['children_cpu'] for r in rows):9.1f}")
        if args.count:
            with tempfile.TemporaryDirectory() as tmp:
                print_counts(level, cycles(Path(tmp) / "noop", level, args.experiments, args.trust == "sealed", True))
    print(f"load average {os.getloadavg()[0]:.1f} at the end; {args.experiments} experiments per level, medians")


if __name__ == "__main__":
    main()
