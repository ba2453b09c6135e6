"""The README's task file reference is a real task file: it validates against the schema."""

from __future__ import annotations

import tomllib
from pathlib import Path

from ouroboros.task import Task

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_task_file_reference_validates() -> None:
    text = README.read_text()
    block = text.split("## Task file reference")[1].split("```toml")[1].split("```")[0]
    task = Task.model_validate(tomllib.loads(block))
    assert task.name == "tinygpt" and task.bound.hidden == ["data/val/**"] and task.judge.plausibility == 0.5
