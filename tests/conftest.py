"""Shared fixtures: task repos made from the examples, in tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ouroboros.scaffold import from_template

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def quadratic(tmp_path: Path) -> Path:
    """A fresh git repo holding the quadratic task, committed."""
    return from_template(tmp_path / "quadratic", "quadratic")


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300,
        check: bool = False) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, the way a user does."""
    proc = subprocess.run([sys.executable, "-m", "ouroboros.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ouroboros {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def commit_all(repo: Path, message: str = "change") -> None:
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], cwd=repo,
                   check=True)
