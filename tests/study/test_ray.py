"""The ray backend on a real local Ray cluster with two fake GPUs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import study_fixtures

from ouroboros.ledger import Ledger
from ouroboros.study.runner import plan, run_study
from ouroboros.study.spec import load_study

ray = pytest.importorskip("ray", reason="the ray backend needs ray: pip install 'ouroboros[ray]'")

study_file = study_fixtures.study_file  # the shared fixture


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_each_run_is_a_ray_task_pinned_to_its_gpu(cluster, study_file: Path, tmp_path: Path) -> None:
    text = study_file.read_text().replace("slots = 2", "gpus = 1").replace("repeats = 2", "repeats = 1")
    study_file.write_text(text)
    study = load_study(study_file)
    results = run_study(study, tmp_path / "out", backend="ray", echo=lambda s: None)
    assert sorted(r["status"] for r in results) == ["finished", "finished"]
    for p in plan(study, tmp_path / "out"):
        assert p.state == "done"
        ledger = Ledger(p.spec.task_dir / ".ouroboros")
        run = ledger.run(p.spec.tag)
        assert run is not None and len(ledger.experiments(run.tag)) == 3
        assert run.config["devices"] in {"0", "1"}  # Ray's assignment reached the run's process
    assert run_study(study, tmp_path / "out", backend="ray", echo=lambda s: None) == []
