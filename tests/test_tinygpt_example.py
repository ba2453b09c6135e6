"""The tinygpt example runs end to end on CPU, and its evaluator rejects what it claims to reject."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("torch")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tinygpt"
SUMMARY_KEYS = [
    "val_bpb",
    "training_seconds",
    "total_seconds",
    "peak_vram_mb",
    "mfu_percent",
    "total_tokens_M",
    "num_steps",
    "num_params_M",
    "depth",
]
UNIFORM_BPB = 8.0  # a model that knows nothing: log2(256) bits per byte
# A smaller model than the default, set the way a search sets knobs: it takes enough steps in a
# 3-second budget to learn byte statistics even on a loaded 2-core CI machine.
SMALL = {"DEPTH": 2, "N_EMBD": 64, "LEARNING_RATE": 1e-2}


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ouroboros-cache")


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OUROBOROS_METRICS", "TINYGPT_CORPUS")}
    env.update(OUROBOROS_CACHE=str(cache), **extra)
    return env


def _copy_example(dest: Path, **knobs: object) -> Path:
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("__pycache__", "ckpt.pt"))
    train_py = dest / "train.py"
    source = train_py.read_text()
    for name, value in knobs.items():
        source, found = re.subn(rf"(?m)^{name} = [^#\n]*", f"{name} = {value!r}  ", source)
        assert found == 1, name
    train_py.write_text(source)
    return dest


def _train(workdir: Path, cache: Path, budget: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py"],
        cwd=workdir,
        env=_env(cache, OUROBOROS_BUDGET_S=str(budget)),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _evaluate(workdir: Path, cache: Path) -> tuple[subprocess.CompletedProcess, Path]:
    metrics = workdir.parent / f"{workdir.name}-metrics.json"
    proc = subprocess.run(
        [sys.executable, "prepare.py", "evaluate"],
        cwd=workdir,
        env=_env(cache, OUROBOROS_METRICS=str(metrics)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, metrics


def _summary(stdout: str) -> dict[str, str]:
    block = stdout.split("\n---\n")[-1]
    return dict(line.split(":", 1) for line in block.strip().splitlines())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache) -> tuple[Path, subprocess.CompletedProcess]:
    workdir = _copy_example(tmp_path_factory.mktemp("trained") / "tinygpt", **SMALL)
    return workdir, _train(workdir, cache, budget=3)


@pytest.fixture(scope="module")
def evaluated(trained, cache) -> tuple[subprocess.CompletedProcess, Path]:
    return _evaluate(trained[0], cache)


def test_task_file_names_the_example_files():
    task = tomllib.loads((EXAMPLE / "ouroboros.toml").read_text())
    for name in [task["task"]["program"], *task["task"]["editable"], *task["task"]["protected"]]:
        assert (EXAMPLE / name).is_file(), name
    assert task["metric"] == {
        "name": "val_bpb",
        "direction": "minimize",
        "fingerprint": "corpus_sha256",
    }


def test_train_prints_summary_block_and_saves_checkpoint(trained):
    workdir, proc = trained
    assert proc.returncode == 0, proc.stderr
    summary = _summary(proc.stdout)
    assert list(summary) == SUMMARY_KEYS
    assert int(summary["num_steps"]) > 0
    # Training stops at the first step past the deadline; slack for a loaded CI machine.
    assert float(summary["training_seconds"]) <= 3.0 + 5.0
    assert (workdir / "ckpt.pt").is_file()


def test_evaluate_writes_finite_metric_and_corpus_fingerprint(evaluated, cache):
    proc, metrics_path = evaluated
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(metrics_path.read_text())
    assert set(metrics) == {"val_bpb", "corpus_sha256", "num_params_M", "eval_seconds"}
    assert math.isfinite(metrics["val_bpb"])
    assert f"val_bpb: {metrics['val_bpb']:.6f}" in proc.stdout
    built = subprocess.run(
        [sys.executable, "prepare.py"], cwd=EXAMPLE, env=_env(cache), capture_output=True, text=True
    )
    assert f"corpus_sha256: {metrics['corpus_sha256']}" in built.stdout


def test_trained_model_beats_uniform_baseline(evaluated, trained):
    proc, metrics_path = evaluated
    assert proc.returncode == 0, proc.stderr
    val_bpb = json.loads(metrics_path.read_text())["val_bpb"]
    assert val_bpb < UNIFORM_BPB - 1.0
    # The sealed number agrees with the one train.py printed in-process.
    assert val_bpb == pytest.approx(float(_summary(trained[1].stdout)["val_bpb"]), abs=1e-3)


def test_noncausal_attention_fails_evaluation(tmp_path, cache):
    workdir = _copy_example(tmp_path / "tinygpt", **SMALL)
    train_py = workdir / "train.py"
    source = train_py.read_text()
    assert source.count("is_causal=True") == 1
    train_py.write_text(source.replace("is_causal=True", "is_causal=False"))
    assert _train(workdir, cache, budget=2).returncode == 0
    proc, metrics_path = _evaluate(workdir, cache)
    assert proc.returncode != 0
    assert "causality violation" in proc.stderr
    assert not metrics_path.exists()


def test_model_code_runs_without_data_pointers_in_its_environment(trained, tmp_path, cache):
    spy = "import json as _json, os as _os\n_json.dump(dict(_os.environ), open('seen_env.json', 'w'))\n"
    workdir, proc, _ = _evaluate_with_appended_code(trained, tmp_path, cache, spy)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads((workdir / "seen_env.json").read_text())
    assert not [k for k in seen if k.startswith(("OUROBOROS_", "TINYGPT_"))]


def test_evaluate_without_checkpoint_fails_with_one_line(tmp_path, cache):
    workdir = _copy_example(tmp_path / "tinygpt")
    proc, metrics_path = _evaluate(workdir, cache)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0
    assert "no ckpt.pt" in proc.stderr
    assert not metrics_path.exists()


def _evaluate_with_appended_code(trained, tmp_path, cache, code: str):
    """Evaluate the trained checkpoint with `code` appended to train.py (runs in the child)."""
    workdir = _copy_example(tmp_path / "tinygpt")
    shutil.copy(trained[0] / "ckpt.pt", workdir / "ckpt.pt")
    with open(workdir / "train.py", "a") as f:
        f.write("\n" + code)
    return workdir, *_evaluate(workdir, cache)


def test_nondeterministic_outputs_fail_evaluation(trained, tmp_path, cache):
    noisy = (
        "_forward = GPT.forward\n"
        "GPT.forward = lambda self, idx: (lambda out: out + 0.05 * torch.randn_like(out))(_forward(self, idx))\n"
    )
    _, proc, metrics_path = _evaluate_with_appended_code(trained, tmp_path, cache, noisy)
    assert proc.returncode != 0
    assert "deterministic" in proc.stderr
    assert not metrics_path.exists()
