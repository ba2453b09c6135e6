"""Exact resume: a run interrupted anywhere and resumed proposes what an uninterrupted run proposes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ouroboros.agents import make_agent
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task
from ouroboros.testing import check_resume_contract, cli, commit_all, recorded_proposals

# tpe needs more than its 5 random start-up trials (the baseline counts) to reach its model.
EXPERIMENTS = {"random": 4, "tpe": 6}


@pytest.mark.parametrize("kill", [False, True], ids=["ctrl-c", "kill"])
@pytest.mark.parametrize("agent", ["random", "tpe"])
def test_resume_after_a_stop_at_every_point_of_every_experiment_is_exact(quadratic: Path, agent: str,
                                                                          kill: bool) -> None:
    check_resume_contract(lambda: make_agent(agent, 0), quadratic, experiments=EXPERIMENTS[agent], seed=11,
                          kill=kill)


def test_the_contract_catches_an_agent_that_carries_its_randomness_across_proposals(quadratic: Path) -> None:
    import random

    from ouroboros import knobs
    from ouroboros.agents import Agent, Proposal

    class Drifting(Agent):  # seeded once per process: a resumed process starts its sequence again
        name = "drifting"

        def start(self, ctx):
            self.rng = random.Random(0)

        def propose(self, ctx):
            found = knobs.extract(ctx.worktree, ["train.py"])
            steps = next(k for k in found if k.name == "STEPS")
            value = self.rng.randint(10, 400)
            knobs.apply(ctx.worktree, found, {"STEPS": value})
            return Proposal(f"STEPS {steps.value}->{value}", params={"STEPS": value})

    with pytest.raises(AssertionError, match="differs from the uninterrupted run"):
        check_resume_contract(Drifting, quadratic, experiments=3, points=("record",))


def _slow(quadratic: Path) -> None:
    toml = quadratic / "ouroboros.toml"
    toml.write_text(toml.read_text().replace('run = "python train.py"', 'run = "sleep 0.3 && python train.py"'))
    commit_all(quadratic, "slow runs")


def _running(ledger: Path, tag: str, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ledger.exists():
            try:
                db = sqlite3.connect(ledger)
                row = db.execute("SELECT status FROM experiments WHERE tag=? AND n=?", (tag, n)).fetchone()
                db.close()
            except sqlite3.OperationalError:
                row = None
            if row and row[0] == "running":
                return
        time.sleep(0.02)
    out = proc.communicate()[0] if proc.poll() is not None else ""
    raise AssertionError(f"experiment {n} of {tag} was never seen running: {out}")


@pytest.mark.parametrize("agent", ["random", "tpe"])
def test_real_sigint_and_sigkill_mid_run_then_resume_match_the_uninterrupted_run(quadratic: Path,
                                                                                  agent: str) -> None:
    _slow(quadratic)
    n = EXPERIMENTS[agent]
    ref = Loop(load_task(quadratic), Options(agent=agent, tag="ref", max_experiments=n, seed=5))
    ref.run()
    ref.ledger.close()
    ledger = quadratic / ".ouroboros/ledger.sqlite"
    for sig, at in ((signal.SIGINT, 1), (signal.SIGKILL, n - 1)):
        args = ["--resume", "k"] if at != 1 else ["--agent", agent, "-n", str(n), "--seed", "5", "--tag", "k"]
        proc = subprocess.Popen([sys.executable, "-m", "ouroboros.cli", "run", "-C", str(quadratic), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                env={**os.environ, "COLUMNS": "200"})
        try:
            _running(ledger, "k", at, proc)
            os.killpg(proc.pid, sig)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), out
    cli("run", "-C", str(quadratic), "--resume", "k", check=True)
    want, got = recorded_proposals(quadratic, "ref"), recorded_proposals(quadratic, "k")
    assert [g[0] for g in got] == list(range(n + 1))
    assert got == want
