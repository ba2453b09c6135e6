from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import study_fixtures

from ouroboros.errors import OuroborosError
from ouroboros.ledger import Ledger
from ouroboros.loop import Loop, Options
from ouroboros.study.executors import slot_plan
from ouroboros.study.runner import plan, run_study
from ouroboros.study.spec import Resources, load_study
from ouroboros.task import load_task

study_file = study_fixtures.study_file  # the shared fixture


def cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "ouroboros.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=300)
    assert not check or proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _runs(task_dir: Path) -> dict:
    ledger = Ledger(task_dir / ".ouroboros")
    try:
        return {r.tag: (r, ledger.experiments(r.tag)) for r in ledger.runs()}
    finally:
        ledger.close()


def test_study_runs_every_condition_and_repeat_then_skips_them(study_file: Path, tmp_path: Path) -> None:
    study = load_study(study_file)
    out = tmp_path / "out"
    results = run_study(study, out, gpus=["0", "1"], echo=lambda s: None)
    assert sorted(r["status"] for r in results) == ["finished"] * 4
    planned = plan(study, out)
    assert [p.state for p in planned] == ["done"] * 4
    by_cond = {p.spec.condition: p.spec.task_dir for p in planned}
    assert by_cond["random"] != by_cond["tpe_fast"]  # each condition has its own task copy and ledger
    fast = _runs(by_cond["tpe_fast"])
    assert sorted(fast) == ["s-tpe_fast-r0", "s-tpe_fast-r1"]
    for run, exps in fast.values():
        assert (run.study, run.condition, run.status, run.agent) == ("s", "tpe_fast", "finished", "tpe")
        assert len(exps) == 3 and exps[0].description == "baseline"
    assert sorted((r.tag, r.seed) for r, _ in fast.values()) == [("s-tpe_fast-r0", 0), ("s-tpe_fast-r1", 1)]
    # the condition's overrides are in its baseline, and the user's task is untouched
    assert "STEPS = 50" in (by_cond["tpe_fast"] / "train.py").read_text()
    assert "short program" in (by_cond["tpe_fast"] / "program.md").read_text()
    assert "STEPS = 200" in (Path(study.task or "") / "train.py").read_text()
    assert not (Path(study.task or "") / ".ouroboros" / "ledger.sqlite").exists()
    # a second `study run` does nothing
    lines: list[str] = []
    assert run_study(study, out, echo=lines.append) == []
    assert "4 finished, skipped" in lines[0]


def test_study_resumes_an_interrupted_run_without_losing_experiments(study_file: Path, tmp_path: Path) -> None:
    study = load_study(study_file)
    out = tmp_path / "out"
    task_dir = plan(study, out)[0].spec.task_dir

    def stop_after_one(exp, best):
        if exp.n == 1:
            raise KeyboardInterrupt

    loop = Loop(load_task(task_dir), Options(agent="random", tag="s-random-r0", max_experiments=2, study="s",
                                              condition="random", seed=0), on_experiment=stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    first = _runs(task_dir)["s-random-r0"][1][1].commit_sha
    states = {p.spec.tag: p.state for p in plan(study, out)}
    assert states["s-random-r0"] == "resume" and states["s-random-r1"] == "new"
    results = {r["tag"]: r for r in run_study(study, out, echo=lambda s: None)}
    assert results["s-random-r0"]["status"] == "finished"
    run, exps = _runs(task_dir)["s-random-r0"]
    assert [e.n for e in exps] == [0, 1, 2] and exps[1].commit_sha == first


def test_gpu_runs_are_pinned_one_slot_per_gpu(study_file: Path, tmp_path: Path) -> None:
    text = study_file.read_text().replace("slots = 2", "gpus = 1").replace("repeats = 2", "repeats = 1")
    study_file.write_text(text)
    study = load_study(study_file)
    results = run_study(study, tmp_path / "out", gpus=["3", "5"], echo=lambda s: None)
    assert [r["status"] for r in results] == ["finished", "finished"]
    devices = set()
    for p in plan(study, tmp_path / "out"):
        devices.add(_runs(p.spec.task_dir)[p.spec.tag][0].config["devices"])
    assert devices <= {"3", "5"} and len(devices) >= 1


def test_slots_follow_cpus_and_gpus() -> None:
    assert slot_plan(Resources(cpus=2), cpus=8, gpus=[]) == [[]] * 4
    assert slot_plan(Resources(cpus=1, gpus=2), cpus=16, gpus=["0", "1", "2", "3", "4"]) == [["0", "1"], ["2", "3"]]
    assert slot_plan(Resources(cpus=1, slots=3), cpus=2, gpus=[]) == [[]] * 3
    with pytest.raises(OuroborosError, match="asks for 1 GPU"):
        slot_plan(Resources(gpus=1), cpus=4, gpus=[])


def test_study_run_cli_reports_runs_and_rejects_a_bad_file(study_file: Path, tmp_path: Path) -> None:
    proc = cli("study", "run", str(study_file), "--dir", str(tmp_path / "o"), check=True)
    assert "4 new" in proc.stdout and proc.stdout.count(": finished") == 4
    study_file.write_text(study_file.read_text().replace("repeats", "repeets"))
    bad = cli("study", "run", str(study_file))
    assert bad.returncode == 2 and "repeets" in bad.stderr
