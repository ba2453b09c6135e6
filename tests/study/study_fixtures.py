from __future__ import annotations

from pathlib import Path

import pytest

STUDY = """\
name = "s"
task = "{task}"
repeats = 2

[limits]
max_experiments = {n}

[resources]
slots = 2

[[conditions]]
name = "random"
agent = "random"

[[conditions]]
name = "tpe_fast"
agent = "tpe"
program = "short.md"
knobs = {{ STEPS = 50 }}
"""


@pytest.fixture
def study_file(quadratic: Path, tmp_path: Path) -> Path:
    """A study of two conditions x two repeats on the quadratic task, 2 experiments per run."""
    folder = tmp_path / "studies"
    folder.mkdir()
    (folder / "short.md").write_text("# quadratic, short program\nLower loss is better.\n")
    path = folder / "study.toml"
    path.write_text(STUDY.format(task=quadratic, n=2))
    return path
