"""Metric parsing and the sealed evaluation's failure modes, each a one-line reason."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from ouroboros import evaluate, sandbox
from ouroboros.errors import OuroborosError
from ouroboros.task import load_task


def test_parse_metric_takes_the_last_match(quadratic: Path) -> None:
    task = load_task(quadratic)
    assert evaluate.parse_metric("loss: 3\nnoise\nloss:  1.5e-2\n", task) == 0.015
    assert evaluate.parse_metric("no metric here", task) is None
    assert math.isnan(evaluate.parse_metric("loss: banana", task))


def test_parse_key_reads_the_summary_block(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text("---\nval_bpb:   1.2\npeak_vram_mb:     2048.5\n")
    assert evaluate.parse_key(log, "peak_vram_mb") == 2048.5
    assert evaluate.parse_key(log, "mfu_percent") is None


def test_stdout_metric_must_be_finite(quadratic: Path, tmp_path: Path) -> None:
    task = load_task(quadratic)
    log = tmp_path / "run.log"
    log.write_text("loss: inf\n")
    m = evaluate.from_stdout(task, log)
    assert m.metric is None and m.error == "the run's output gave loss=inf" and m.trust == "stdout"


def _sealed(quadratic: Path, tmp_path: Path, evaluator: str) -> evaluate.Measurement:
    fixed = {"evaluate.py": (evaluator.encode(), 0o100644)}
    return evaluate.sealed(load_task(quadratic), quadratic, fixed, tmp_path / "eval.log", sandbox.scrubbed_env())


def test_sealed_reads_the_metrics_file(quadratic: Path, tmp_path: Path) -> None:
    m = _sealed(quadratic, tmp_path, "import json, os\n"
                "json.dump({'loss': 0.25, 'extra': 1}, open(os.environ['OUROBOROS_METRICS'], 'w'))\n")
    assert m.error is None and m.metric == 0.25 and m.metrics == {"loss": 0.25, "extra": 1}
    assert m.trust == "sealed"


def test_sealed_failures_are_reasons(quadratic: Path, tmp_path: Path) -> None:
    bad_json = _sealed(quadratic, tmp_path, "import os\nopen(os.environ['OUROBOROS_METRICS'], 'w').write('{')\n")
    assert bad_json.metric is None and bad_json.error.startswith("evaluator wrote invalid JSON")
    missing = _sealed(quadratic, tmp_path, "import json, os\n"
                      "json.dump({'acc': 1}, open(os.environ['OUROBOROS_METRICS'], 'w'))\n")
    assert missing.error == "the evaluator's output has no loss"
    nan = _sealed(quadratic, tmp_path, "import json, os\n"
                  "json.dump({'loss': float('nan')}, open(os.environ['OUROBOROS_METRICS'], 'w'))\n")
    assert nan.error == "the evaluator's output gave loss=nan"
    failing = _sealed(quadratic, tmp_path, "import sys\nsys.exit('no solution.json')\n")
    assert failing.error == "evaluator exited 1: no solution.json"


def test_the_evaluation_folder_gets_baseline_bytes_and_only_declared_outputs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    (run / "solution.json").write_text("{}")
    (run / "sub" / "out.txt").write_text("mine")
    (run / "evaluate.py").write_text("forged")  # a fixed path always gets the baseline's bytes
    (run / "json.py").write_text("forged")  # not declared: stays behind
    (run / "link.txt").symlink_to(run / "solution.json")
    os.mkfifo(run / "fifo.txt")
    (run / "sub" / ".git").mkdir()
    (run / "sub" / ".git" / "out.txt").write_text("hidden from git")
    work = tmp_path / "work"
    work.mkdir()
    notes = evaluate.prepare_dir(work, {"evaluate.py": (b"real", 0o100755)}, run,
                                 ["solution.json", "*.txt", "evaluate.py"], 1 << 20)
    files = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if not p.is_dir())
    assert files == ["evaluate.py", "solution.json", "sub/out.txt"]
    assert (work / "evaluate.py").read_bytes() == b"real" and os.access(work / "evaluate.py", os.X_OK)
    assert sorted(notes) == ["'fifo.txt': not copied (not a regular file)", "'link.txt': not copied (Too many levels "
                                                                            "of symbolic links)"]


def test_a_note_naming_the_runs_file_cannot_forge_the_metric_the_evaluator_printed(quadratic: Path,
                                                                                   tmp_path: Path) -> None:
    task = load_task(quadratic)
    run = tmp_path / "run"
    run.mkdir()
    (run / "real.txt").write_text("x")
    (run / "x\nloss: 0.0\n.txt").symlink_to("real.txt")  # refused, and named in a note after the output
    notes = evaluate.prepare_dir(tmp_path / "work", {}, run, ["*.txt"], 1 << 20)
    assert notes == ["'x\\nloss: 0.0\\n.txt': not copied (Too many levels of symbolic links)"]
    m = evaluate.sealed(task.model_copy(update={"task": task.task.model_copy(update={"outputs": ["*.txt"]})}), run,
                        {"evaluate.py": (b"print('loss: 2.5')\n", 0o100644)}, tmp_path / "eval.log",
                        sandbox.scrubbed_env(), committed={})
    assert m.error is None and m.metric == 2.5
    assert (tmp_path / "eval.log").read_text().splitlines() == [
        "loss: 2.5", "[ouroboros] 'x\\nloss: 0.0\\n.txt': not copied (Too many levels of symbolic links)"]


def test_outputs_beyond_the_cap_are_refused(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "big.bin").write_bytes(b"x" * 2048)
    with pytest.raises(OuroborosError, match="outputs exceed"):
        evaluate.prepare_dir(tmp_path, {}, tmp_path / "run", ["*.bin"], 1024)


def test_metrics_come_only_from_a_small_regular_file(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"loss": 1.0}))
    assert evaluate.read_metrics(good) == {"loss": 1.0}
    assert evaluate.read_metrics(tmp_path / "missing.json") is None
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # nobody writes it: reading must not block
    with pytest.raises(ValueError, match="not a regular file"):
        evaluate.read_metrics(fifo)
    link = tmp_path / "link.json"
    link.symlink_to(good)
    with pytest.raises(ValueError, match="cannot be opened"):
        evaluate.read_metrics(link)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"loss": 1.0, "pad": "x" * 100}))
    with pytest.raises(ValueError, match="larger than 64 bytes"):
        evaluate.read_metrics(big, cap=64)


def test_keys_the_harness_writes_itself_are_never_taken_from_a_run_or_an_evaluator(quadratic: Path,
                                                                                    tmp_path: Path) -> None:
    task = load_task(quadratic)
    log = tmp_path / "run.log"
    log.write_text("loss: 1.5\nconfirm_metric: 0.25\nsteps: 3\n")
    assert evaluate.from_stdout(task, log).metrics == {"loss": 1.5, "steps": 3.0}
    m = _sealed(quadratic, tmp_path, "import json, os\njson.dump({'loss': 1.5, 'confirm_metric': 0.25}, "
                "open(os.environ['OUROBOROS_METRICS'], 'w'))\n")
    assert m.error is None and m.metrics == {"loss": 1.5}


def test_evaluation_folders_are_removed_off_the_loops_path_and_all_before_exit(tmp_path):
    import subprocess
    import sys

    folders = [tmp_path / f"ouroboros-eval-{i}" for i in range(5)]
    for f in folders:
        (f / "work" / "deep").mkdir(parents=True)
        (f / "work" / "deep" / "data.bin").write_bytes(b"x" * 10_000)
    code = ("import sys\nfrom pathlib import Path\nfrom ouroboros import evaluate\n"
            "for f in sys.argv[1:]:\n    evaluate._remove_later(Path(f))\n")  # exits at once: atexit finishes them
    subprocess.run([sys.executable, "-c", code, *map(str, folders)], check=True)
    assert not [f for f in folders if f.exists()]
    again = tmp_path / "again"
    (again / "x").mkdir(parents=True)
    evaluate._remove_later(again)
    evaluate._finish_removals()  # the worker ends; a later removal starts another
    assert not again.exists()
    (again / "y").mkdir(parents=True)
    evaluate._remove_later(again)
    evaluate._finish_removals()
    assert not again.exists()
