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
# A smaller model than the default, set the way a search sets knobs. On CPU train.py trains a
# fixed number of steps, CPU_TOKENS_PER_S x budget / (BATCH_SIZE x 256): 30 here, enough to learn
# byte statistics, however slow the machine (nothing below depends on how many steps fit in time).
SMALL = {"DEPTH": 2, "N_EMBD": 64, "LEARNING_RATE": 1e-2, "CPU_TOKENS_PER_S": 20480}
SMALL_BUDGET, SMALL_STEPS = 3, 30


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
        env=_env(cache, OUROBOROS_BUDGET_S=str(budget), CUDA_VISIBLE_DEVICES=""),
        capture_output=True,
        text=True,
        timeout=600,  # a hang, not a speed limit: the steps are fixed, a loaded machine is just slower
    )


def _evaluate(workdir: Path, cache: Path, **extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`python -P prepare.py evaluate`, as the harness runs it (safe-path Python)."""
    metrics = workdir.parent / f"{workdir.name}-metrics.json"
    proc = subprocess.run(
        [sys.executable, "-P", "prepare.py", "evaluate"],
        cwd=workdir,
        env=_env(cache, OUROBOROS_METRICS=str(metrics), CUDA_VISIBLE_DEVICES="", **extra),
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc, metrics


def _summary(stdout: str) -> dict[str, str]:
    block = stdout.split("\n---\n")[-1]
    return dict(line.split(":", 1) for line in block.strip().splitlines())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache) -> tuple[Path, subprocess.CompletedProcess]:
    workdir = _copy_example(tmp_path_factory.mktemp("trained") / "tinygpt", **SMALL)
    return workdir, _train(workdir, cache, budget=SMALL_BUDGET)


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
    assert int(summary["num_steps"]) == SMALL_STEPS
    assert float(summary["total_tokens_M"]) == pytest.approx(SMALL_STEPS * 8 * 256 / 1e6, abs=1e-3)
    assert (workdir / "ckpt.pt").is_file()


def test_cpu_training_is_reproducible(trained, tmp_path, cache):
    """A fixed number of steps on a fixed number of threads: the same code gives the same model."""
    again = _copy_example(tmp_path / "tinygpt", **SMALL)
    proc = _train(again, cache, budget=SMALL_BUDGET)
    assert proc.returncode == 0, proc.stderr
    assert _summary(proc.stdout)["val_bpb"] == _summary(trained[1].stdout)["val_bpb"]
    assert (again / "ckpt.pt").read_bytes() == (trained[0] / "ckpt.pt").read_bytes()


def test_evaluate_writes_finite_metric_and_corpus_fingerprint(evaluated, cache):
    proc, metrics_path = evaluated
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(metrics_path.read_text())
    assert set(metrics) == {"val_bpb", "corpus_sha256", "num_params_M", "eval_seconds", "model_sandbox"}
    assert math.isfinite(metrics["val_bpb"])
    assert f"val_bpb: {metrics['val_bpb']:.6f}" in proc.stdout
    built = subprocess.run(
        [sys.executable, "-P", "prepare.py"], cwd=EXAMPLE, env=_env(cache), capture_output=True, text=True
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
    assert _train(workdir, cache, budget=1).returncode == 0
    proc, metrics_path = _evaluate(workdir, cache)
    assert proc.returncode != 0
    assert "causality violation" in proc.stderr
    assert not metrics_path.exists()


def test_model_code_runs_without_data_pointers_in_its_environment(trained, tmp_path, cache):
    spy = "import json as _json, os as _os, sys as _sys\nprint('SEEN ' + _json.dumps(dict(_os.environ)), file=_sys.stderr)\n"
    _, proc, _ = _evaluate_with_appended_code(trained, tmp_path, cache, spy)
    assert proc.returncode == 0, proc.stderr
    seen = [json.loads(line[5:]) for line in proc.stderr.splitlines() if line.startswith("SEEN ")]
    assert len(seen) == 9  # one fresh model process per request of 16 windows
    assert not [k for env in seen for k in env if k.startswith(("OUROBOROS_", "TINYGPT_"))]


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
    noisy = (  # seeded from the OS: every process draws other noise
        "_forward = GPT.forward\n"
        "_gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), 'little'))\n"
        "GPT.forward = lambda self, idx: (lambda out: out + 0.05 * torch.randn(out.shape, generator=_gen))(_forward(self, idx))\n"
    )
    _, proc, metrics_path = _evaluate_with_appended_code(trained, tmp_path, cache, noisy)
    assert proc.returncode != 0
    assert "deterministic" in proc.stderr
    assert not metrics_path.exists()
