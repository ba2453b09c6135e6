"""The task file: valid files load into one frozen object; every mistake is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ouroboros.errors import OuroborosError
from ouroboros.task import Task, load_task
from ouroboros.testing import cli

GOOD = """\
[task]
name = "t"
editable = ["train.py"]
protected = ["eval.py"]
run = "python train.py"
evaluate = "python eval.py"
budget = 5

[metric]
name = "loss"
"""


def make(tmp_path: Path, toml: str, files: tuple[str, ...] = ("train.py", "eval.py", "program.md")) -> Path:
    for f in files:
        (tmp_path / f).write_text("X = 1\n")
    (tmp_path / "ouroboros.toml").write_text(toml)
    return tmp_path


def test_a_valid_task_loads_with_defaults(tmp_path: Path) -> None:
    task = load_task(make(tmp_path, GOOD))
    assert task.name == "t" and task.minimize and task.trust == "sealed"
    assert task.task.grace_s == 2.0  # max(2 s, 10% of the budget)
    assert task.is_protected("ouroboros.toml") and task.is_protected("eval.py")
    assert task.is_editable("train.py") and not task.is_editable("eval.py")
    assert task.editable_files() == ["train.py"]


def test_a_task_round_trips_to_an_equal_object(tmp_path: Path) -> None:
    task = load_task(make(tmp_path, GOOD))
    again = Task.model_validate({**task.model_dump(), "root": task.root})
    assert again == task


def test_the_task_is_frozen(tmp_path: Path) -> None:
    task = load_task(make(tmp_path, GOOD))
    with pytest.raises(ValidationError):
        task.task.budget = 1  # type: ignore[misc]


@pytest.mark.parametrize("toml, message", [
    (GOOD.replace("budget = 5", "budgte = 5"), "task.budgte: Extra inputs are not permitted (unknown key"),
    (GOOD.replace('name = "loss"', 'name = "loss"\ndirection = "down"'), "metric.direction"),
    (GOOD.replace('editable = ["train.py"]', 'editable = ["model/*.py"]'), "editable glob 'model/*.py' matches no file"),
    (GOOD.replace("[metric]", "[metric\n"), "is not valid TOML"),
    (GOOD.replace('run = "python train.py"\n', ""), "task.run: Field required"),
    (GOOD + "\n[knobs]\nLR = { low = 1.0 }\n", "give either low and high, or choices"),
    (GOOD.replace('name = "loss"', 'name = "loss"\npattern = "("'), "pattern is not a regular expression"),
])
def test_mistakes_are_one_line_errors(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(OuroborosError) as exc:
        load_task(make(tmp_path, toml))
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_missing_task_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(OuroborosError, match="ouroboros init"):
        load_task(tmp_path)


def test_missing_program_file(tmp_path: Path) -> None:
    with pytest.raises(OuroborosError, match="program file 'program.md' not found"):
        load_task(make(tmp_path, GOOD, files=("train.py", "eval.py")))


def test_cli_prints_one_line_and_exits_2_without_a_traceback(tmp_path: Path) -> None:
    make(tmp_path, GOOD.replace("budget = 5", "budgte = 5"))
    proc = cli("run", "-C", str(tmp_path), "-n", "1")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "budgte" in proc.stderr


def test_a_task_file_that_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    root = make(tmp_path, GOOD)
    (root / "ouroboros.toml").write_bytes(GOOD.encode().replace(b'"t"', b'"t\xe9"'))
    with pytest.raises(OuroborosError, match=r"ouroboros.toml is not UTF-8 text \(byte \d+: b'\\xe9'\); save it"):
        load_task(root)


def test_the_metric_may_not_take_a_key_the_harness_writes_itself(tmp_path: Path) -> None:
    root = make(tmp_path, GOOD.replace('name = "loss"', 'name = "confirm_metric"'))
    with pytest.raises(OuroborosError, match="metric.name: Value error, 'confirm_metric' is a key the harness writes"):
        load_task(root)
