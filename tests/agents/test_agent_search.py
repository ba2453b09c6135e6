"""random/tpe and mutate on real-code knobs: constraints are never broken, crashes teach TPE."""

from __future__ import annotations

from pathlib import Path

import pytest

from ouroboros import knobs
from ouroboros.agents import MutateAgent, SearchAgent, make_agent
from ouroboros.agents.base import Context
from ouroboros.ledger import Experiment
from ouroboros.task import load_task

TRAIN = """TOTAL_BATCH_SIZE = 2**19
DEVICE_BATCH_SIZE = 128
MATRIX_LR = 0.04
ADAM_BETAS = (0.8, 0.95)
DEPTH = 8
H100_BF16_PEAK_FLOPS = 989.5e12
"""
CONSTRAINT = "TOTAL_BATCH_SIZE % (DEVICE_BATCH_SIZE * 2048) == 0"


def _ctx(root: Path, n: int = 1) -> Context:
    task = load_task(root)
    base = Experiment("t", 0, metric=1.0, status="keep")
    return Context(task, root, n, [base], base, root, root, n, lambda: "", 0, None)


@pytest.fixture
def task_root(tmp_path: Path) -> Path:
    (tmp_path / "train.py").write_text(TRAIN)
    (tmp_path / "program.md").write_text("tune\n")
    (tmp_path / "ouroboros.toml").write_text(
        '[task]\nname = "t"\neditable = ["train.py"]\nrun = "python train.py"\n[metric]\nname = "val_bpb"\n'
        f'[knobs]\nconstraints = ["{CONSTRAINT}"]\n')
    return tmp_path


def _values(root: Path) -> dict:
    return {k.name: k.value for k in knobs.extract(root, ["train.py"])}


@pytest.mark.parametrize("kind", ["random", "tpe"])
def test_search_proposals_always_meet_the_constraints(task_root: Path, kind: str) -> None:
    agent = make_agent(kind, seed=3)
    assert isinstance(agent, SearchAgent)
    agent.start(_ctx(task_root))
    agent.observe(Experiment("t", 0, metric=1.0, status="keep"))
    for n in range(1, 16):
        agent.propose(_ctx(task_root, n))
        v = _values(task_root)
        assert v["TOTAL_BATCH_SIZE"] % (v["DEVICE_BATCH_SIZE"] * 2048) == 0
        assert v["H100_BF16_PEAK_FLOPS"] == 989.5e12  # never searched
        agent.observe(Experiment("t", n, metric=1.0 + n / 100, status="discard"))
        (task_root / "train.py").write_text(TRAIN)
    failed = [t for t in agent.study.trials if t.state.name == "FAIL"]
    assert failed, "some samples broke the constraint and were resampled (told as failed, never run)"


def test_a_crash_is_told_to_tpe_as_an_infeasible_trial(task_root: Path) -> None:
    agent = make_agent("tpe", seed=0)
    agent.start(_ctx(task_root))
    agent.observe(Experiment("t", 0, metric=1.0, status="keep"))
    proposal = agent.propose(_ctx(task_root, 1))
    asked = agent.pending[1].number
    before = len(agent.study.trials)
    agent.observe(Experiment("t", 1, status="crash", params=proposal.params))
    assert agent.study.trials[asked].state.name == "FAIL"  # told as failed...
    added = agent.study.trials[before:]  # ...and added as the infeasible trial TPE learns from
    assert [t.state.name for t in added] == ["COMPLETE"]
    crashed = added[0]
    assert crashed.params == proposal.params and max(crashed.constraints.values()) > 0
    assert crashed.value == 1.0  # the worst value seen


def test_mutate_changes_one_to_three_knobs_of_the_best(task_root: Path) -> None:
    agent = make_agent("mutate", seed=1)
    assert isinstance(agent, MutateAgent)
    agent.start(_ctx(task_root))
    best = _values(task_root)
    sizes = set()
    for n in range(1, 30):
        proposal = agent.propose(_ctx(task_root, n))
        now = _values(task_root)
        changed = {k for k in now if now[k] != best[k]}
        assert changed == set(proposal.params) and 1 <= len(changed) <= 3
        assert now["TOTAL_BATCH_SIZE"] % (now["DEVICE_BATCH_SIZE"] * 2048) == 0
        assert now["TOTAL_BATCH_SIZE"] & (now["TOTAL_BATCH_SIZE"] - 1) == 0  # powers of two stay so
        sizes.add(len(changed))
        (task_root / "train.py").write_text(TRAIN)
    assert sizes == {1, 2, 3}


def test_random_k_draws_anywhere_in_range_for_at_most_k_knobs(task_root: Path) -> None:
    agent = make_agent("random:1", seed=2)
    agent.start(_ctx(task_root))
    for n in range(1, 10):
        proposal = agent.propose(_ctx(task_root, n))
        assert len(proposal.params) == 1
        (task_root / "train.py").write_text(TRAIN)
