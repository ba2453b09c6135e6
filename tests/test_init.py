"""`ouroboros init`: templates, and task files for autoresearch-layout repos that then run."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
from pathlib import Path

import pytest

from ouroboros.testing import cli, commit_all

AUTORESEARCH_TRAIN = '''"""A stand-in for autoresearch's train.py: trains for the budget, prints the summary block."""
import os, time
DEPTH = 8
MATRIX_LR = 0.04
budget = float(os.environ.get("OUROBOROS_BUDGET_S", 300))
time.sleep(min(0.2, budget))
val_bpb = 1.0 + abs(MATRIX_LR - 0.02) + 0.01 * abs(DEPTH - 6)
print("---")
print(f"val_bpb:          {val_bpb:.6f}")
print("training_seconds: 0.2")
print("peak_vram_mb:     1024.0")
'''


def digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.iterdir() if p.is_file()}


def test_init_template_makes_a_committed_task(tmp_path: Path) -> None:
    cli("init", str(tmp_path / "q"), "--template", "quadratic", check=True)
    log = subprocess.run(["git", "log", "--oneline"], cwd=tmp_path / "q", capture_output=True, text=True).stdout
    assert len(log.splitlines()) == 1
    assert (tmp_path / "q/ouroboros.toml").exists() and (tmp_path / "q/evaluate.py").exists()
    proc = cli("init", str(tmp_path / "q"), "--template", "quadratic")
    assert proc.returncode == 2 and "not empty" in proc.stderr
    proc = cli("init", str(tmp_path / "z"), "--template", "nope")
    assert proc.returncode == 2 and "unknown template" in proc.stderr


def test_from_autoresearch_writes_a_task_that_runs_without_changing_files(tmp_path: Path) -> None:
    repo = tmp_path / "autoresearch"
    repo.mkdir()
    (repo / "program.md").write_text("# autoresearch\nNEVER STOP.\n")
    (repo / "prepare.py").write_text("# fixed: data, tokenizer, evaluate_bpb\n")
    (repo / "train.py").write_text(AUTORESEARCH_TRAIN)
    (repo / "pyproject.toml").write_text('[project]\nname = "autoresearch"\nversion = "0"\n')
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    commit_all(repo, "autoresearch")
    before = digests(repo)

    cli("init", "--from-autoresearch", str(repo), check=True)
    after = digests(repo)
    assert set(after) - set(before) == {"ouroboros.toml"}
    assert all(after[name] == digest for name, digest in before.items())
    toml = (repo / "ouroboros.toml").read_text()
    assert 'editable = ["train.py"]' in toml and 'protected = ["prepare.py"]' in toml and "budget = 300" in toml

    cli("run", "-C", str(repo), "--agent", "random", "-n", "2", "--budget", "5", "--tag", "ar", check=True)
    db = sqlite3.connect(repo / ".ouroboros/ledger.sqlite")
    rows = db.execute("SELECT n, status, trust, metric, peak_gpu_mb FROM experiments ORDER BY n").fetchall()
    assert len(rows) == 3 and rows[0][1] == "keep"
    assert all(trust == "stdout" for _, _, trust, _, _ in rows)  # the record says it trusted stdout
    assert rows[0][3] == pytest.approx(1.04) and rows[0][4] == 1024.0
    assert db.execute("SELECT trust FROM runs").fetchone()[0] == "stdout"


def test_from_autoresearch_needs_the_layout(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("")
    proc = cli("init", "--from-autoresearch", str(tmp_path))
    assert proc.returncode == 2 and "missing program.md, prepare.py" in proc.stderr


@pytest.mark.slow
def test_tinygpt_runs_end_to_end_with_a_few_seconds_budget(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    task = tmp_path / "tg"
    cli("init", str(task), "--template", "tinygpt", check=True)
    proc = cli("run", "-C", str(task), "--agent", "random", "-n", "1", "--budget", "4", "--tag", "tg", check=True,
               timeout=600)
    db = sqlite3.connect(task / ".ouroboros/ledger.sqlite")
    (status0, metric0, trust0), (status1, _, _) = db.execute(
        "SELECT status, metric, trust FROM experiments ORDER BY n").fetchall()
    assert status0 == "keep" and trust0 == "isolated"
    assert 0 < metric0 < 8  # bits per byte: better than a uniform guess over 256 bytes
    assert status1 in {"keep", "discard", "crash", "timeout"}
    fingerprint = db.execute("SELECT fingerprint FROM runs").fetchone()[0]
    assert fingerprint and "val_bpb" in proc.stdout
