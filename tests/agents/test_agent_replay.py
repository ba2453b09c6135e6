"""`replay:<run>` re-applies a recorded run's proposals in order and reproduces its verdicts."""

from __future__ import annotations

import shutil

import pytest

from ouroboros.errors import OuroborosError
from ouroboros.ledger import Ledger
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task


def run(root, agent, tag, n=None):
    loop = Loop(load_task(root), Options(agent=agent, tag=tag, max_experiments=n))
    rec = loop.run()
    return rec, Ledger(loop.records).experiments(tag)


def test_replaying_a_run_reproduces_its_verdicts(quadratic):
    _, original = run(quadratic, "random", "orig", n=5)
    rec, replayed = run(quadratic, "replay:orig", "again", n=50)
    assert [(e.status, e.description) for e in replayed] == [(e.status, e.description) for e in original]
    assert [e.metric for e in replayed] == pytest.approx([e.metric for e in original])
    assert rec.status == "finished" and "all 5 proposals" in rec.config["stop_reason"]


def test_a_run_folder_copied_from_another_machine_replays(quadratic, tmp_path):
    _, original = run(quadratic, "random", "orig", n=3)
    copied = tmp_path / "elsewhere" / "orig"
    shutil.copytree(quadratic / ".ouroboros" / "runs" / "orig", copied, ignore=shutil.ignore_patterns("worktree"))
    _, replayed = run(quadratic, f"replay:{copied}", "again", n=3)
    assert [e.status for e in replayed] == [e.status for e in original]


def test_replay_of_an_unknown_run_says_where_it_looked(quadratic):
    with pytest.raises(OuroborosError, match="no recorded run"):
        run(quadratic, "replay:nope", "again", n=1)
