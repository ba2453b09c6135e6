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
