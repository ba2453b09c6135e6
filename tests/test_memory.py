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


def _history(n: int, seed: int = 0) -> list[Experiment]:
    """A synthetic run: a baseline and n experiments with knobs, long descriptions and every verdict."""
    import random

    rng = random.Random(seed)
    out = [Experiment("t", 0, status="keep", metric=10.0, description="baseline")]
    best = 10.0
    for i in range(1, n + 1):
        knob = rng.choice(["LEARNING_RATE", "MOMENTUM", "STEPS", "WARMUP", "DECAY"])
        value = round(rng.uniform(0, 1), 4)
        status = rng.choice(["discard"] * 6 + ["keep", "crash", "timeout", "violation"])
        metric = None if status in ("crash", "timeout", "violation") else round(best + rng.uniform(-1, 1), 4)
        if status == "keep":
            best = metric = best - rng.uniform(0, 0.1)
        desc = f"set {knob} to {value}; " + "because the last change looked promising " * rng.randint(0, 6)
        out.append(Experiment("t", i, status=status, metric=metric, description=desc, params={knob: value},
                              reason="run exited 1" if status == "crash" else ""))
    return out


def test_prompt_size_does_not_grow_with_the_run(quadratic: Path, tmp_path: Path) -> None:
    task = load_task(quadratic)
    at30 = len(build_prompt(task, quadratic, _history(30), tmp_path))
    at1000 = len(build_prompt(task, quadratic, _history(1000), tmp_path))
    assert abs(at1000 - at30) <= 0.1 * at30, (at30, at1000)


def test_results_section_keeps_the_last_rows_and_summarizes_the_rest(quadratic: Path) -> None:
    from ouroboros.memory import results_section

    task = load_task(quadratic)
    history = _history(300)
    text = results_section(task, history, recent=20, max_chars=8000)
    assert len(text) <= 8000
    assert "## The last 20" in text
    assert f"| {history[-1].n} |" in text and f"| {history[-20].n} |" in text
    assert f"| {history[-21].n} |" not in text  # older rows are summarized, not listed
    counts = {s: sum(e.status == s for e in history[:-20]) for s in ("keep", "discard", "crash")}
    assert f"Experiments 0 to {history[-21].n}: {len(history) - 20} in all" in text
    assert all(f"{s} {c}" in text for s, c in counts.items())
    best = min((e for e in history[:-20] if e.metric is not None), key=lambda e: e.metric)
    assert f"at experiment {best.n}" in text  # the best (metric minimized in quadratic)
    assert "Top keeps (3 of" in text and "- LEARNING_RATE:" in text and "tries" in text


def test_results_section_fits_its_limit_whatever_the_rows(quadratic: Path) -> None:
    from ouroboros.memory import results_section

    task = load_task(quadratic)
    history = _history(60)
    for e in history:
        e.description = "x" * 5000  # the ledger holds long text; the prompt shortens it
    for limit in (1000, 3000, 8000):
        text = results_section(task, history, recent=20, max_chars=limit)
        assert len(text) <= limit and f"| {history[-1].n} |" in text


def test_short_runs_list_every_experiment(quadratic: Path) -> None:
    from ouroboros.memory import results_section

    text = results_section(load_task(quadratic), _history(10), recent=20)
    assert "summary" not in text and all(f"| {n} |" in text for n in range(11))
