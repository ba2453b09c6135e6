"""Obtain the metric of a finished run, out of the proposer's reach.

Trust levels (every experiment records its own):
- stdout: the metric is parsed from the run's own output (the autoresearch layout). Forgeable: the
  run can print any number. Reported as such.
- sealed: after the run, the protected files are restored byte for byte from the baseline commit,
  and the task's evaluate command runs in a fresh process that writes its metrics as JSON to a path
  created after the run ended, so the run could neither edit the evaluator nor plant a result.
- isolated: sealed, and the evaluator itself keeps editable code out of its process (the task's
  evaluator decides this; examples/tinygpt runs the model in a child that never sees the targets).

Does not protect against: an evaluator that imports editable code in its own process (then the
level is only sealed), or a run that leaves a long-lived process behind to tamper with the
evaluation (sandbox.py kills every descendant before the evaluation starts).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ouroboros import sandbox
from ouroboros.task import Task


@dataclass
class Measurement:
    metric: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    trust: str = "sealed"
    eval_s: float = 0.0
    error: str | None = None
    isolation: str = "process"


def parse_metric(text: str, task: Task) -> float | None:
    """The last match of the metric's pattern in text, or None."""
    found = task.metric.regex.findall(text)
    if not found:
        return None
    try:
        return float(found[-1] if isinstance(found[-1], str) else found[-1][0])
    except ValueError:
        return float("nan")


def _check(metric: Any, task: Task, where: str) -> tuple[float | None, str | None]:
    if metric is None:
        return None, f"{where} has no {task.metric.name}"
    try:
        value = float(metric)
    except (TypeError, ValueError):
        return None, f"{where} gave {task.metric.name}={metric!r}, not a number"
    if not math.isfinite(value):
        return None, f"{where} gave {task.metric.name}={value}"
    return value, None


def from_stdout(task: Task, run_log: Path) -> Measurement:
    text = run_log.read_text(errors="replace") if run_log.exists() else ""
    raw = parse_metric(text, task)
    extra = {}
    for line in text.splitlines()[-60:]:
        key, sep, value = line.partition(":")
        if sep and key.strip().isidentifier():
            try:
                extra[key.strip()] = float(value)
            except ValueError:
                pass
    metric, error = _check(raw, task, "the run's output")
    return Measurement(metric, extra, "stdout", 0.0, error)


def parse_key(log: Path, key: str) -> float | None:
    """A `key: number` line from a run's summary (the last one), e.g. peak_vram_mb."""
    if not log.exists():
        return None
    found = re.findall(rf"^\s*{re.escape(key)}\s*:\s*([-+0-9.eE]+)\s*$", sandbox.tail_text(log), re.MULTILINE)
    try:
        return float(found[-1]) if found else None
    except ValueError:
        return None


def sealed(task: Task, task_dir: Path, log_path: Path, env: dict[str, str],
           wrap: Any = None, command: str | None = None) -> Measurement:
    """Run the task's evaluate command; the caller has already restored the protected files.

    `wrap(argv, metrics_dir) -> (argv, isolation)` lets the caller put the evaluation in a sandbox.
    """
    command = command or task.task.evaluate
    assert command
    out_dir = Path(tempfile.mkdtemp(prefix="ouroboros-eval-"))
    try:
        metrics_path = out_dir / "metrics.json"
        argv: list[str] | str = command
        isolation = "process"
        if wrap is not None:
            argv, isolation = wrap(["bash", "-c", command], out_dir)
        outcome = sandbox.run(argv, task_dir, task.task.eval_timeout, 0.0, log_path,
                              env={**env, "OUROBOROS_METRICS": str(metrics_path)}, isolation=isolation)
        metrics: dict[str, Any] = {}
        if metrics_path.exists():
            try:
                metrics = json.loads(metrics_path.read_text())
            except json.JSONDecodeError as exc:
                return Measurement(None, {}, task.trust, outcome.wall_s, f"evaluator wrote invalid JSON: {exc}",
                                   isolation)
            if not isinstance(metrics, dict):
                return Measurement(None, {}, task.trust, outcome.wall_s, "evaluator's JSON is not an object",
                                   isolation)
            raw = metrics.get(task.metric.name)
        else:
            raw = parse_metric(log_path.read_text(errors="replace"), task)
        if outcome.timed_out:
            return Measurement(None, metrics, task.trust, outcome.wall_s,
                               f"evaluator ran past eval_timeout ({task.task.eval_timeout:g} s)", isolation)
        if outcome.returncode != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            return Measurement(None, metrics, task.trust, outcome.wall_s,
                               f"evaluator exited {outcome.returncode}: {tail[0][:200]}", isolation)
        metric, error = _check(raw, task, "the evaluator's output")
        return Measurement(metric, metrics, task.trust, outcome.wall_s, error, isolation)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
