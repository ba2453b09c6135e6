"""Metric parsing and the sealed evaluation's failure modes, each a one-line reason."""

from __future__ import annotations

import math
from pathlib import Path

from ouroboros import evaluate, sandbox
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
    (quadratic / "evaluate.py").write_text(evaluator)
    return evaluate.sealed(load_task(quadratic), quadratic, tmp_path / "eval.log", sandbox.scrubbed_env())


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
