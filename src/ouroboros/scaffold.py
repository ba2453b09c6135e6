"""`ouroboros init`: new task repos from the examples, and task files for autoresearch repos."""

from __future__ import annotations

import shutil
from pathlib import Path

from ouroboros.errors import OuroborosError
from ouroboros.task import TASK_FILE, load_task
from ouroboros.workspace import exclude_records, git

TEMPLATES = ("quadratic", "tinygpt")
_IGNORE = ".ouroboros/\n__pycache__/\n*.pyc\nckpt.pt\nsolution.json\n"


def examples_dir() -> Path:
    here = Path(__file__).resolve().parents[2] / "examples"
    if not here.is_dir():
        raise OuroborosError("the templates ship with the source checkout (examples/); install with "
                             "`pip install -e .` from a clone")
    return here


def from_template(directory: Path, template: str) -> Path:
    if template not in TEMPLATES:
        raise OuroborosError(f"unknown template {template!r}; choose one of: {', '.join(TEMPLATES)}")
    if directory.exists() and any(directory.iterdir()):
        raise OuroborosError(f"{directory} exists and is not empty; pick a new folder")
    shutil.copytree(examples_dir() / template, directory, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", ".ouroboros", "*.pyc", "ckpt.pt", "solution.json"))
    (directory / ".gitignore").write_text(_IGNORE)
    git(directory, "init", "-q", "-b", "main")
    git(directory, "add", "-A")
    git(directory, "commit", "-q", "-m", f"baseline: {template} task from ouroboros init")
    exclude_records(directory)
    load_task(directory)
    return directory


AUTORESEARCH_TOML = """\
# Written by `ouroboros init --from-autoresearch` for autoresearch's layout.
# The metric is parsed from train.py's own output (trust level "stdout": forgeable by train.py).
# For a sealed evaluation, add an `evaluate` command that computes val_bpb from prepare.py alone.
[task]
name = "{name}"
program = "program.md"
editable = ["train.py"]
protected = ["prepare.py"]
run = "{run}"
budget = 300
grace = 120

[metric]
name = "val_bpb"
direction = "minimize"
pattern = '^val_bpb:\\s*([-+0-9.eE]+)'
"""


def from_autoresearch(directory: Path) -> Path:
    directory = directory.resolve()
    missing = [f for f in ("program.md", "train.py", "prepare.py") if not (directory / f).is_file()]
    if missing:
        raise OuroborosError(f"{directory} is not an autoresearch-layout repo: missing {', '.join(missing)}")
    path = directory / TASK_FILE
    if path.exists():
        raise OuroborosError(f"{path} exists already; edit it, or delete it to start over")
    if not (directory / ".git").exists():
        raise OuroborosError(f"{directory} is not a git repository (autoresearch repos are clones); run git init")
    uv = shutil.which("uv") is not None and (directory / "pyproject.toml").exists()
    path.write_text(AUTORESEARCH_TOML.format(name=directory.name, run="uv run train.py" if uv else "python train.py"))
    exclude_records(directory)
    git(directory, "add", TASK_FILE)
    git(directory, "commit", "-q", "-m", "ouroboros: task file for the autoresearch layout", "--", TASK_FILE)
    load_task(directory)
    return path
