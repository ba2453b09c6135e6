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


def _ctx_with(root: Path, n: int, history: list[Experiment]) -> Context:
    return Context(load_task(root), root, n, history, history[0], root, root, n, lambda: "", 0, None)


@pytest.mark.parametrize("kind", ["random", "tpe"])
def test_search_proposals_always_meet_the_constraints(task_root: Path, kind: str) -> None:
    agent = make_agent(kind, seed=3)
    assert isinstance(agent, SearchAgent)
    agent.start(_ctx(task_root))
    space = knobs.space_of(load_task(task_root), task_root, lambda rel: (task_root / rel).read_text())
    assert space.violated({"TOTAL_BATCH_SIZE": 2**19, "DEVICE_BATCH_SIZE": 96})  # the constraint is live
    history = [Experiment("t", 0, metric=1.0, status="keep")]
    for n in range(1, 16):
        proposal = agent.propose(_ctx_with(task_root, n, history))
        v = _values(task_root)
        assert v["TOTAL_BATCH_SIZE"] % (v["DEVICE_BATCH_SIZE"] * 2048) == 0
        assert v["H100_BF16_PEAK_FLOPS"] == 989.5e12  # never searched
        history.append(Experiment("t", n, metric=1.0 + n / 100, status="discard", params=proposal.params))
        (task_root / "train.py").write_text(TRAIN)


def test_a_crash_is_told_to_tpe_as_an_infeasible_trial(task_root: Path) -> None:
    agent = make_agent("tpe", seed=0)
    assert isinstance(agent, SearchAgent)
    agent.start(_ctx(task_root))
    history = [Experiment("t", 0, metric=1.0, status="keep")]
    proposal = agent.propose(_ctx_with(task_root, 1, history))
    history.append(Experiment("t", 1, status="crash", params=proposal.params))
    trials = agent.study(_ctx_with(task_root, 2, history)).trials  # the study as the ledger has it
    crashed = [t for t in trials if t.params == proposal.params]
    assert [t.state.name for t in crashed] == ["FAIL", "COMPLETE"]  # told as failed, and added as infeasible
    assert max(crashed[1].constraints.values()) > 0
    assert crashed[1].value == 1.0  # the worst value seen


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
