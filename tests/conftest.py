"""Shared fixtures: task repos made from the examples, in tmp_path.

Helpers that tests import (cli, commit_all) live in `ouroboros.testing`, so that test folders
with conftest files of their own never shadow them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ouroboros.scaffold import from_template


@pytest.fixture
def quadratic(tmp_path: Path) -> Path:
    """A fresh git repo holding the quadratic task, committed."""
    return from_template(tmp_path / "quadratic", "quadratic")


@pytest.fixture(autouse=True)
def _private_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own ledger key and chain heads (chain.py), never the user's."""
    monkeypatch.setenv("OUROBOROS_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))
