"""The prompt: program, enforced rules, editable files, results, notes, guidance, last failure."""

from __future__ import annotations

from pathlib import Path

from ouroboros.ledger import Experiment
from ouroboros.memory import build_prompt
from ouroboros.task import load_task


def test_prompt_holds_everything_the_agent_needs(quadratic: Path, tmp_path: Path) -> None:
    task = load_task(quadratic)
    run_dir = tmp_path / "run"
    (run_dir / "exp/2").mkdir(parents=True)
    (run_dir / "exp/2/run.log").write_text("Traceback...\nZeroDivisionError: division by zero\n")
    (run_dir / "notes.md").write_text("momentum above 0.9 diverges\n")
    (run_dir / "guidance.md").write_text("try fewer steps\n")
    history = [Experiment("t", 0, status="keep", metric=2.0, description="baseline"),
               Experiment("t", 1, status="discard", metric=3.0, description="lr\tx2"),
               Experiment("t", 2, status="crash", reason="run exited 1", description="divide")]
    prompt = build_prompt(task, quadratic, history, run_dir)
    assert "Make `train.py` end as close as possible" in prompt  # program.md
    assert "You may edit only: train.py" in prompt and "evaluate.py" in prompt  # the bound
    assert "LEARNING_RATE = 0.001" in prompt  # the editable file itself
    assert "| 1 | 3 | discard | lr x2 |" in prompt  # results, one line per experiment
    assert "| 2 | - | crash | divide (run exited 1) |" in prompt
    assert "momentum above 0.9 diverges" in prompt and "try fewer steps" in prompt
    assert "Last failure: experiment 2" in prompt and "ZeroDivisionError" in prompt
    assert build_prompt(task, quadratic, history, run_dir) == prompt  # deterministic
