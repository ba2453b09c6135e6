"""An autoresearch-layout clone, unchanged, through init, a tpe run, best --apply and prune.

The repo is a stand-in built from autoresearch's described layout: program.md with its own git
loop, train.py with its top-level constants (`2**19`, a betas tuple, an MFU constant) and the
batch-size assert, prepare.py with TIME_BUDGET and the ~/.cache data folder, a uv project, and a
run.log left untracked by a manual run. Training is a fast CPU stand-in: no torch, no network.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ouroboros.testing import cli, commit_all

PROGRAM = """# autoresearch
Set up: create a branch `autoresearch/<tag>` and read the files.
LOOP FOREVER:
1. Tune train.py with an experimental idea, then git commit.
2. Run the experiment: uv run train.py > run.log 2>&1
3. Read out the results: grep "^val_bpb:" run.log
4. Record the results in results.tsv.
5. If val_bpb improved, keep the commit; else git reset back.
NEVER STOP.
"""

PREPARE = '''"""Fixed: data, tokenizer and the evaluation. Do not modify."""
import os

MAX_SEQ_LEN = 2048
TIME_BUDGET = 300  # training time budget in seconds
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")


def evaluate_bpb(loss):
    return loss / 0.6931
'''

TRAIN = '''"""Stand-in for autoresearch's train.py: the same kind of constants, a formula for training."""
import math

from prepare import MAX_SEQ_LEN, evaluate_bpb

# Model architecture
ASPECT_RATIO = 64
HEAD_DIM = 128
WINDOW_PATTERN = "SSSL"

# Optimization
TOTAL_BATCH_SIZE = 2**19  # ~524K tokens per optimizer step
EMBEDDING_LR = 0.6
MATRIX_LR = 0.04
ADAM_BETAS = (0.8, 0.95)
WEIGHT_DECAY = 0.2

# Model size
DEPTH = 8
DEVICE_BATCH_SIZE = 128

H100_BF16_PEAK_FLOPS = 989.5e12

assert TOTAL_BATCH_SIZE % (DEVICE_BATCH_SIZE * 2048) == 0
grad_accum_steps = TOTAL_BATCH_SIZE // (DEVICE_BATCH_SIZE * MAX_SEQ_LEN)
loss = (0.6 + (math.log(MATRIX_LR) - math.log(0.02)) ** 2 / 20 + 0.01 * abs(DEPTH - 6)
        + 0.02 * abs(ADAM_BETAS[0] - 0.9) + 0.001 * grad_accum_steps)
print("---")
print(f"val_bpb:          {evaluate_bpb(loss):.6f}")
print(f"mfu_percent:      {100 * 1e12 / H100_BF16_PEAK_FLOPS:.2f}")
'''


def _path_without_uv() -> str:
    keep = [d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "uv").exists()]
    return os.pathsep.join(keep)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    repo = tmp_path / "autoresearch"
    repo.mkdir()
    (repo / "program.md").write_text(PROGRAM)
    (repo / "prepare.py").write_text(PREPARE)
    (repo / "train.py").write_text(TRAIN)
    (repo / "pyproject.toml").write_text('[project]\nname = "autoresearch"\nversion = "0.1.0"\n'
                                         'requires-python = ">=3.10"\ndependencies = ["torch"]\n')
    (repo / "uv.lock").write_text("version = 1\n")
    (repo / ".gitignore").write_text("__pycache__/\n")
    subprocess.run(["git", "init", "-q", "-b", "master"], cwd=repo, check=True)
    commit_all(repo, "autoresearch")
    (repo / "run.log").write_text("step 00001 | loss: 9.0\n")  # a manual run's log, untracked
    return repo


def test_an_autoresearch_clone_runs_unchanged_and_the_result_comes_home(clone: Path) -> None:
    env = {"PATH": _path_without_uv()}
    init = cli("init", "--from-autoresearch", str(clone), env=env, check=True)
    assert "uv is not installed" in init.stdout and "pip install uv" in init.stdout
    task = tomllib.loads((clone / "ouroboros.toml").read_text())
    assert task["task"]["run"] == "python train.py" and "setup" not in task["task"]
    assert task["task"]["budget"] == 390 and task["task"]["grace"] == 10  # TIME_BUDGET + start-up, small grace
    assert task["bound"]["read_only"] == ["~/.cache/autoresearch"]
    assert task["bound"]["ignore"] == ["run.log", "results.tsv", "*.log"]
    assert task["knobs"]["constraints"] == ["TOTAL_BATCH_SIZE % (DEVICE_BATCH_SIZE * 2048) == 0"]

    knobs = cli("knobs", "-C", str(clone), check=True).stdout
    rows = {line.split("\t")[0]: line.split("\t") for line in knobs.splitlines()}
    assert rows["TOTAL_BATCH_SIZE"][1] == "train.py:12" and rows["TOTAL_BATCH_SIZE"][3].startswith("{131072")
    assert "ADAM_BETAS[0]" in rows and "ADAM_BETAS[1]" in rows
    assert "PEAK/FLOPS" in rows["H100_BF16_PEAK_FLOPS"][5] and "choices" in rows["WINDOW_PATTERN"][5]

    run = cli("run", "-C", str(clone), "--agent", "tpe", "-n", "20", "--tag", "ar", "--budget", "60", env=env,
              check=True, timeout=600)
    assert "untracked file(s) stay out of the run" in run.stdout and "run.log" in run.stdout
    assert "prepare.py:5 sets TIME_BUDGET = 300 s" in run.stdout and "runs will likely end as timeouts" in run.stdout
    db = sqlite3.connect(clone / ".ouroboros/ledger.sqlite")
    rows = db.execute("SELECT n, status, reason FROM experiments WHERE tag='ar' ORDER BY n").fetchall()
    assert len(rows) == 21
    assert [r for r in rows if r[1] not in ("keep", "discard")] == []  # no infeasible batch size ever ran
    db.close()

    best = cli("best", "ar", "-C", str(clone), check=True).stdout
    assert "--apply" in best and "diff --git a/train.py b/train.py" in best
    expected = best[best.index("diff --git"):best.index("take it home")].rstrip("\n")
    cli("best", "ar", "-C", str(clone), "--apply", check=True)
    assert git(clone, "status", "--porcelain") == " M train.py\n?? run.log\n"
    assert git(clone, "diff").rstrip("\n") == expected

    refused = cli("prune", "ar", "-C", str(clone))
    assert refused.returncode == 2 and "add --yes" in refused.stderr
    cli("prune", "ar", "-C", str(clone), "--yes", check=True)
    assert not (clone / ".ouroboros/runs/ar/worktree").exists()
    assert git(clone, "worktree", "list").count("\n") == 1
    assert git(clone, "for-each-ref", "refs/ouroboros/", "refs/heads/ouroboros/") == ""
    assert "ar" in cli("log", "-C", str(clone), "--run", "ar", check=True).stdout  # the ledger stays
    gone = cli("best", "ar", "-C", str(clone))
    assert gone.returncode == 2 and "was pruned" in gone.stderr


def test_best_apply_that_does_not_fit_suggests_a_branch_that_works(clone: Path, tmp_path: Path) -> None:
    better = tmp_path / "better.py"
    better.write_text("import re\nsrc = open('train.py').read()\n"
                      "open('train.py', 'w').write(re.sub(r'MATRIX_LR = \\S+', 'MATRIX_LR = 0.02', src))\n")
    cli("init", "--from-autoresearch", str(clone), env={"PATH": _path_without_uv()}, check=True)
    cli("run", "-C", str(clone), "--agent", f"cmd:{sys.executable} {better}", "-n", "1", "--tag", "m",
        "--budget", "60", env={"PATH": _path_without_uv()}, check=True, timeout=300)
    shown = cli("best", "m", "-C", str(clone), check=True).stdout
    commit = shown.split(", commit ", 1)[1].split()[0]
    (clone / "train.py").write_text("# rewritten by hand\n")
    commit_all(clone, "my own change")
    proc = cli("best", "m", "-C", str(clone), "--apply")
    assert proc.returncode == 2 and "does not apply" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    suggested = proc.stderr.split("put it on a branch instead: ", 1)[1].split()
    assert suggested[:2] == ["ouroboros", "best"]
    cli(*suggested[1:], check=True)  # the command as printed, after `ouroboros`
    assert git(clone, "rev-parse", "ouroboros-best-m").startswith(commit)
    assert "-MATRIX_LR = 0.04\n+MATRIX_LR = 0.02" in git(clone, "diff", "HEAD~1", "ouroboros-best-m")


def test_uv_projects_get_a_setup_and_run_in_their_environment(clone: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "uv").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "uv").chmod(0o755)
    cli("init", "--from-autoresearch", str(clone), env={"PATH": f"{bin_dir}{os.pathsep}{_path_without_uv()}"},
        check=True)
    task = tomllib.loads((clone / "ouroboros.toml").read_text())
    assert task["task"]["setup"] == "uv sync" and task["task"]["run"] == "uv run train.py"


def test_requirements_projects_get_a_venv_setup(clone: Path) -> None:
    (clone / "pyproject.toml").unlink()
    (clone / "requirements.txt").write_text("numpy\n")
    commit_all(clone, "requirements")
    cli("init", "--from-autoresearch", str(clone), env={"PATH": _path_without_uv()}, check=True)
    task = tomllib.loads((clone / "ouroboros.toml").read_text())
    assert "pip install -r requirements.txt" in task["task"]["setup"] and task["task"]["run"] == "python train.py"
