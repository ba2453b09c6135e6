from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ouroboros.agents import Agent, AgentError
from ouroboros.ledger import Ledger
from ouroboros.loop import Loop, Options
from ouroboros.parallel import ParallelLoop
from ouroboros.task import load_task
from ouroboros.testing import commit_all


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def test_rounds_of_k_keep_at_most_the_best_of_each_round(quadratic: Path) -> None:
    # the run prints its device, so each slot's pinning can be read back from its log
    train = quadratic / "train.py"
    train.write_text(train.read_text().replace("def main():", "def main():\n    import os\n"
                                               "    print('cuda:', os.environ.get('CUDA_VISIBLE_DEVICES'))", 1))
    commit_all(quadratic, "print devices")
    loop = Loop(load_task(quadratic), Options(agent="random", tag="p", max_experiments=5, seed=3))
    ParallelLoop(loop, 2, gpus=["0", "1"]).run()
    ledger = Ledger(quadratic / ".ouroboros")
    exps = ledger.experiments("p")
    assert [e.n for e in exps] == [0, 1, 2, 3, 4, 5]  # rounds of 2, 2, then 1 (the limit)
    assert ledger.run("p").status == "finished"
    rounds = [exps[1:3], exps[3:5], exps[5:]]
    best = exps[0]
    for r in rounds:
        assert all(e.parent == best.commit_sha for e in r)  # every proposal of a round starts from the best
        keeps = [e for e in r if e.status == "keep"]
        assert len(keeps) <= 1
        measured = [e for e in r if e.metric is not None]
        if keeps:
            assert keeps[0].metric == min(e.metric for e in measured)
            best = keeps[0]
        for e in r:
            if e.status == "discard" and e is not min(measured, key=lambda x: x.metric):
                assert "not the best of its round" in e.reason
    assert git(quadratic, "rev-parse", "ouroboros/p") == best.commit_sha  # the run's branch is at the best
    logs = {(quadratic / ".ouroboros/runs/p/exp" / str(e.n) / "run.log").read_text().split("cuda: ")[1].split()[0]
            for e in exps[1:]}
    assert logs == {"0", "1"}
    # attempts stay pinned, slot worktrees are gone
    assert git(quadratic, "rev-parse", "refs/ouroboros/p/2") == exps[2].commit_sha
    assert not (quadratic / ".ouroboros/runs/p/slots/0").exists()


def test_run_parallel_cli(quadratic: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ouroboros.cli", "run", "-C", str(quadratic), "-n", "4",
                           "--parallel", "2", "--agent", "tpe", "--tag", "pc"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert len(Ledger(quadratic / ".ouroboros").experiments("pc", finished_only=True)) == 5


def test_every_seed_ends_on_the_best_with_no_false_crashes(quadratic: Path) -> None:
    for seed in range(3):
        tag = f"s{seed}"
        loop = Loop(load_task(quadratic), Options(agent="random", tag=tag, max_experiments=6, seed=seed))
        ParallelLoop(loop, 3).run()
        exps = Ledger(quadratic / ".ouroboros").experiments(tag)
        assert [e.status for e in exps if e.status in ("crash", "timeout")] == []  # quadratic never fails
        assert git(quadratic, "rev-parse", f"ouroboros/{tag}") == loop.best.commit_sha


class _Failing(Agent):
    name = "failing"

    def propose(self, ctx):
        raise AgentError("no idea")


def test_a_round_where_every_proposal_fails_is_recorded_and_the_run_goes_on(quadratic: Path) -> None:
    loop = Loop(load_task(quadratic), Options(agent="random", tag="f", max_experiments=4), agent=_Failing())
    ParallelLoop(loop, 2).run()
    exps = Ledger(quadratic / ".ouroboros").experiments("f")
    assert [(e.status, e.reason) for e in exps[1:]] == [("crash", "no idea")] * 4
    assert loop.run_rec.status == "finished"


def test_parallel_slots_at_level_process_start_their_phases(quadratic: Path) -> None:
    """At levels unshare and process each phase is started from the harness's filtered thread; a slot is a forked
    harness, which makes its own (the parent's would never answer it)."""
    toml = quadratic / "ouroboros.toml"
    toml.write_text(toml.read_text() + '\n[bound]\nisolation = "process"\n')
    commit_all(quadratic, "level process")
    loop = Loop(load_task(quadratic), Options(agent="random", tag="pp", max_experiments=2, seed=3,
                                              allow_weak_isolation=True))
    ParallelLoop(loop, 2).run()
    exps = Ledger(quadratic / ".ouroboros").experiments("pp")
    assert [e.n for e in exps] == [0, 1, 2]
    assert all(e.metric is not None and e.isolation == "process" for e in exps), [(e.status, e.reason) for e in exps]
