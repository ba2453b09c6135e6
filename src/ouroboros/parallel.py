"""`ouroboros run --parallel K`: K proposals per round, run side by side, the best one judged.

For machines with several GPUs. A round:

    best = loop.best
    for slot in K slots:                  # one worktree each, .ouroboros/runs/<tag>/slots/<i>
        slot.step()                       # propose, guard, commit, begin: as in a plain run
    run + evaluate every proposal at once # one forked process per slot, each pinned to its GPU
    winner = the best measured proposal
    judge(winner, best)                   # the ordinary judge, confirmation re-run included
    record all; keep: advance the run's branch to the winner; others are discarded

The loop's own pieces do the work: a slot is the run's Loop with its own worktree, guard,
isolation and CUDA_VISIBLE_DEVICES, so proposals, guards, evaluation and verdicts are the same as
in a plain run. The ledger is written only by the main process. Every attempt is pinned under
refs/ouroboros/<tag>/<n> as usual. Limitation: after a kill in mid-round, resume re-runs the first
unfinished experiment of that round; the round's other unfinished ones are dropped from the run.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
import traceback

from ouroboros import isolation, sandbox
from ouroboros.guard import Guard
from ouroboros.judge import Verdict, gain
from ouroboros.ledger import Experiment, Run
from ouroboros.loop import Loop
from ouroboros.workspace import Workspace, git

MEASURED = "measured"  # a slot's outcome that still awaits the round's judgement


class Slot(Loop):
    """The run's Loop seen through one slot: its own worktree, guard, devices; shared ledger and agent."""

    settle_fast = False  # its attempts are recorded by the run's loop, in the run's own worktree

    def __init__(self, loop: Loop, i: int, devices: str | None):
        self.__dict__.update(loop.__dict__)  # not Loop.__init__: the run, ledger, agent and history are shared
        self.index, self.devices, self.deferred = i, devices, None
        self.measuring = False
        ws = Workspace(loop.repo, loop.ws.task_rel, loop.records, loop.tag)
        ws.path = loop.records / "runs" / loop.tag / "slots" / str(i)
        ws.branch = f"ouroboros-slots/{loop.tag}/{i}"
        ws.open(loop.best.commit_sha)
        ws.reset(loop.best.commit_sha)
        self.ws = ws
        self.guard = Guard(loop.task, ws)
        self.isolation = isolation.choose(loop.task, ws.task_dir, loop.records, loop.env_dir)

    def _env(self, env: dict[str, str]) -> dict[str, str]:
        return {**env, "CUDA_VISIBLE_DEVICES": self.devices} if self.devices is not None else env

    def _run_phase(self, exp_dir, env, name="run.log"):
        return super()._run_phase(exp_dir, self._env(env), name)

    def _measure(self, exp_dir, env, name="eval.log", command=None):
        return super()._measure(exp_dir, self._env(env), name, command)

    def _execute(self, exp, best, start=None):
        if not self.measuring:  # proposal phase: hold the committed attempt for the round
            self.deferred = (exp, best, time.monotonic() if start is None else start)
            self.history.append(exp)  # a placeholder (status running), so the next slot numbers on
            return
        super()._execute(exp, best, start)

    def _judge(self, exp, best, exp_dir, env):
        if self.measuring:
            return MEASURED, ""
        return super()._judge(exp, best, exp_dir, env)

    def _record(self, exp, best):
        if not self.measuring:
            super()._record(exp, best)


def _measure_forked(slot: Slot) -> tuple[int, int]:
    """Fork a process that runs and evaluates the slot's attempt (no judging, no ledger writes) and
    sends the experiment back through a pipe; (pid, read end of the pipe)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's stack
        code = 1
        try:
            os.close(read)
            slot.measuring = True
            exp, best, start = slot.deferred
            slot._execute(exp, best, start)
            with os.fdopen(write, "wb") as out:
                pickle.dump(exp, out)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write)
    return pid, read


def _measure_all(held: list[Slot]) -> list[Experiment | None]:
    """Run every held attempt at once, one forked process per slot.

    Processes, not threads: the sandbox kills and reaps what is left among the harness's children,
    which in threads would include a sibling slot's run. A bare fork with a pipe, not a Pool: a pool
    keeps workers and threads alive between tasks, and their shutdown raced with the signals.
    """
    children = [_measure_forked(slot) for slot in held]
    done: list[Experiment | None] = []
    try:
        for pid, read in children:
            with os.fdopen(read, "rb") as pipe:
                data = pipe.read()
            os.waitpid(pid, 0)
            done.append(pickle.loads(data) if data else None)
    except BaseException:  # Ctrl-C: the slots' processes go with the harness
        for pid, _ in children:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        raise
    return done


class ParallelLoop:
    def __init__(self, loop: Loop, k: int, gpus: list[str] | None = None):
        if k < 1:
            raise ValueError("k must be at least 1")
        self.loop, self.k = loop, k
        self.gpus = gpus or []
        self.slots: list[Slot] = []

    def run(self) -> Run:
        loop = self.loop
        try:
            with loop.running():
                loop.prepare()
                self.slots = [Slot(loop, i, self.gpus[i % len(self.gpus)] if self.gpus else None)
                              for i in range(self.k)]
                while loop._left():
                    self.round()
        finally:
            # A pool worker killed by Ctrl-C dies without its sandbox's cleanup: end what it ran.
            sandbox.kill_inside(loop.ledger.run_dir(loop.tag))
            for slot in self.slots:
                slot.ws.remove()
                git(loop.repo, "branch", "-D", slot.ws.branch, check=False)
        return loop.run_rec

    def _room(self) -> int:
        cap = self.loop.run_rec.config.get("max_experiments")
        done = len(self.loop.finished) - 1
        return self.k if cap is None else max(min(self.k, cap - done), 0)

    def round(self) -> list[Experiment]:
        loop, best = self.loop, self.loop.best
        slots = self.slots[:self._room()]
        for slot in slots:
            slot.measuring, slot.deferred = False, None
            slot.ws.reset(best.commit_sha)
            slot.step()  # a failed proposal (violation, crash) is recorded right here
        held = [s for s in slots if s.deferred is not None]
        placeholders = {id(s.deferred[0]) for s in held}
        loop.history[:] = [e for e in loop.history if id(e) not in placeholders]

        if not held:  # every proposal of the round failed, and each is recorded already
            return []
        for s, exp in zip(held, _measure_all(held), strict=True):
            if exp is None:  # the slot's process died (its traceback is on the harness's stderr)
                exp = s.deferred[0]
                exp.status, exp.reason = Verdict.CRASH, "the slot's process failed"
            s.deferred = (exp, *s.deferred[1:])
        measured = [s for s in held if s.deferred[0].status == MEASURED]
        winner = None
        for s in measured:
            if winner is None or gain(s.deferred[0].metric, winner.deferred[0].metric, loop.task.minimize) > 0:
                winner = s
        for s in sorted(held, key=lambda s: s.deferred[0].n):
            exp = s.deferred[0]
            if s is winner:
                env = loop.experiment_env({"OUROBOROS_BUDGET_S": f"{loop.budget:g}",
                                            "OUROBOROS_SEED": str(loop.run_rec.seed)})
                start = time.monotonic()
                exp.status, exp.reason = s._judge(exp, best, loop.ledger.exp_dir(loop.tag, exp.n), env)
                exp.wall_s += time.monotonic() - start
                if exp.status == Verdict.KEEP:
                    loop.ws.reset(exp.commit_sha)  # the run's branch advances to the winner
            elif exp.status == MEASURED:
                exp.status = Verdict.DISCARD
                exp.reason = f"not the best of its round (experiment {winner.deferred[0].n} was)"
            loop._record(exp, best)
        loop.ws.reset(loop.best.commit_sha)  # a discard recorded after the winner reset to the old best
        return [s.deferred[0] for s in held]
