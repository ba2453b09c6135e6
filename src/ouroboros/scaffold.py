"""`ouroboros init`: new task repos from the examples, and task files for autoresearch repos."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

from ouroboros.errors import OuroborosError
from ouroboros.task import TASK_FILE, glob_files, load_task
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
        raise OuroborosError(f"{directory} exists and is not empty; pick a new folder, or describe the project in it "
                             f"as a task: ouroboros init {directory} --editable FILE --run 'COMMAND' --metric NAME")
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
name = {name}
program = "program.md"
editable = ["train.py"]
protected = ["prepare.py"]
{setup}run = {run}
# {budget_why}
budget = {budget:g}
grace = 10

[metric]
name = "val_bpb"
direction = "minimize"
pattern = '^val_bpb:\\s*([-+0-9.eE]+)'

[bound]
# autoresearch's own workflow writes these into the repo: dropped, never judged
ignore = ["run.log", "results.tsv", "*.log"]
{read_only}
[knobs]
# train.py's own asserts over its constants: a proposal that breaks one is resampled, never run
constraints = [{constraints}]
"""

_CACHE = re.compile(r"""["'](~/\.cache/[^"'\s]+)["']|\.cache["']\s*[,/)]\s*["']([\w.-]+)["']""")


def _toml(value: str) -> str:
    return json.dumps(value)  # a TOML basic string is a JSON string for the characters used here


def data_cache(prepare: str) -> str | None:
    """The data folder prepare.py reads and writes under ~/.cache, if it names one."""
    m = _CACHE.search(prepare)
    if not m:
        return None
    return m.group(1) or f"~/.cache/{m.group(2)}"


def asserted_constraints(train: str) -> list[str]:
    """train.py's asserts that use only its top-level constants: they become `[knobs] constraints`."""
    from ouroboros import knobs

    try:
        tree = ast.parse(train)
    except SyntaxError:
        return []
    names = {name for name, node in knobs._assignments(train)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            used = {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}
            if used and used <= names:
                try:
                    knobs.evaluate(node.test, dict.fromkeys(used, 1))
                except knobs._NotConstant:
                    continue
                except (TypeError, ZeroDivisionError, ValueError, OverflowError):
                    pass
                out.append(ast.unparse(node.test))
    return out


def environment(directory: Path) -> tuple[str | None, str, str | None]:
    """(setup command, run command, a note for the user) for the project's own environment."""
    uv = shutil.which("uv") is not None
    if (directory / "pyproject.toml").exists() and uv:
        return "uv sync", "uv run train.py", None
    if (directory / "requirements.txt").exists():
        return ('python -m venv "$VIRTUAL_ENV" && "$VIRTUAL_ENV/bin/python" -m pip install -r requirements.txt',
                "python train.py", None)
    if (directory / "pyproject.toml").exists():
        return None, "python train.py", ("uv is not installed, so runs use `python train.py` on the harness's "
                                         "Python; install uv (pip install uv) and set run = \"uv run train.py\" and "
                                         "setup = \"uv sync\" in ouroboros.toml to use the project's environment")
    return None, "python train.py", None


def from_autoresearch(directory: Path) -> tuple[Path, list[str]]:
    """Write and commit a task file for an autoresearch-layout repo; returns it and notes for the user."""
    from ouroboros import knobs

    directory = directory.resolve()
    missing = [f for f in ("program.md", "train.py", "prepare.py") if not (directory / f).is_file()]
    if missing:
        raise OuroborosError(f"{directory} is not an autoresearch-layout repo: missing {', '.join(missing)}")
    path = directory / TASK_FILE
    if path.exists():
        raise OuroborosError(f"{path} exists already; edit it, or delete it to start over")
    if not (directory / ".git").exists():
        raise OuroborosError(f"{directory} is not a git repository (autoresearch repos are clones); run git init")
    prepare = (directory / "prepare.py").read_text(errors="replace")
    setup, run, note = environment(directory)
    found = knobs.code_budget(prepare)
    budget = found[1] + 90 if found else 300.0
    budget_why = (f"prepare.py's TIME_BUDGET ({found[1]:g} s of training) + 90 s for start-up and the final "
                  "evaluation" if found else "seconds the whole run may take")
    cache = data_cache(prepare)
    constraints = asserted_constraints((directory / "train.py").read_text(errors="replace"))
    path.write_text(AUTORESEARCH_TOML.format(
        name=_toml(directory.name), run=_toml(run), setup=f"setup = {_toml(setup)}\n" if setup else "",
        budget=budget, budget_why=budget_why,
        read_only=(f"# prepare.py's data and tokenizer, visible read-only to every run\n"
                   f"read_only = [{_toml(cache)}]\n") if cache else "",
        constraints=", ".join(_toml(c) for c in constraints)))
    exclude_records(directory)
    git(directory, "add", TASK_FILE)
    git(directory, "commit", "-q", "-m", "ouroboros: task file for the autoresearch layout", "--", TASK_FILE)
    load_task(directory)
    return path, [note] if note else []


PROGRAM = """# {name}

Improve `{metric}` ({direction} is better) by editing {editable}.
Each experiment: change one thing, keep it small, and say in one line what you changed and why.
The harness runs `{run}` under a fixed time budget, reads the metric, and keeps or reverts.
"""


def describe(directory: Path, editable: list[str], protected: list[str], run: str | None, metric: str | None,
             direction: str = "minimize", evaluate: str | None = None, budget: float = 300.0) -> Path:
    """Write ouroboros.toml (and program.md if there is none) for an existing repository, and commit them."""
    directory = directory.resolve()
    if not editable or not run or not metric:
        raise OuroborosError("describe the task: ouroboros init DIR --editable FILE --run 'COMMAND' --metric NAME "
                             "(the run prints `NAME: value`; add --protected FILE for files no proposal may change)")
    if not directory.is_dir():
        raise OuroborosError(f"{directory} is not a folder; create it, or give --template to make a new task")
    path = directory / TASK_FILE
    if path.exists():
        raise OuroborosError(f"{path} exists already; edit it, or delete it to start over")
    repo_ok = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=directory, capture_output=True)
    if repo_ok.returncode != 0:
        raise OuroborosError(f"{directory} is not a git repository with a commit; run "
                             f"`git -C {directory} init && git -C {directory} add -A && git -C {directory} commit "
                             "-m baseline` first")
    if direction not in ("minimize", "maximize"):
        raise OuroborosError(f"--direction {direction!r}: give minimize or maximize")
    missing = [f for f in [*editable, *protected] if not glob_files(directory, [f])]
    if missing:
        raise OuroborosError(f"{', '.join(missing)} matches no file in {directory}; name existing files")
    lines = ["# Written by `ouroboros init`; the task file reference is in the README.", "[task]",
             f"name = {_toml(directory.name)}", 'program = "program.md"',
             f"editable = [{', '.join(_toml(e) for e in editable)}]",
             f"protected = [{', '.join(_toml(p) for p in protected)}]", f"run = {_toml(run)}"]
    if evaluate:
        lines.append(f"evaluate = {_toml(evaluate)}")
    lines += [f"budget = {budget:g}", "", "[metric]", f"name = {_toml(metric)}", f"direction = {_toml(direction)}", ""]
    path.write_text("\n".join(lines))
    written = [TASK_FILE]
    if not (directory / "program.md").exists():
        (directory / "program.md").write_text(PROGRAM.format(
            name=directory.name, metric=metric, direction="lower" if direction == "minimize" else "higher",
            editable=", ".join(editable), run=run))
        written.append("program.md")
    exclude_records(directory)
    git(directory, "add", *written)
    git(directory, "commit", "-q", "-m", "ouroboros: task file", "--", *written)
    load_task(directory)
    return path
