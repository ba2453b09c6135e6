"""The slurm backend through submitit's local executor (no SLURM needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import study_fixtures

from ouroboros.ledger import Ledger
from ouroboros.study.runner import plan, run_study
from ouroboros.study.spec import load_study

pytest.importorskip("submitit", reason="the slurm backend needs submitit: pip install 'ouroboros[slurm]'")

study_file = study_fixtures.study_file  # the shared fixture


def test_each_run_is_a_submitit_job(study_file: Path, tmp_path: Path) -> None:
    study_file.write_text(study_file.read_text().replace("repeats = 2", "repeats = 1"))
    study = load_study(study_file)
    results = run_study(study, tmp_path / "out", backend="slurm", cluster="local", echo=lambda s: None)
    assert sorted(r["status"] for r in results) == ["finished", "finished"]
    for p in plan(study, tmp_path / "out"):
        ledger = Ledger(p.spec.task_dir / ".ouroboros")
        assert [e.n for e in ledger.experiments(p.spec.tag)] == [0, 1, 2]
    assert any((tmp_path / "out" / "submitit").iterdir())  # submitit's own job records
