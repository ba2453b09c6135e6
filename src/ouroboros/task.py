"""The task file, `ouroboros.toml`: one frozen, validated object.

Typos are errors (pydantic `extra="forbid"`), so a misspelt key never silently falls back to a
default. `load_task` is the only way the rest of the harness sees a task.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ouroboros.errors import OuroborosError

TASK_FILE = "ouroboros.toml"
RECORDS_DIR = ".ouroboros"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskSection(_Model):
    name: str
    program: str = "program.md"
    editable: list[str] = Field(min_length=1)
    protected: list[str] = []
    run: str
    evaluate: str | None = None
    budget: float = Field(300.0, gt=0, description="seconds one experiment's run may use")
    grace: float | None = Field(None, ge=0, description="seconds after the budget before the kill")
    eval_timeout: float = Field(300.0, gt=0)
    isolated: bool = Field(False, description="the evaluator keeps editable code out of its own process")
    holdout: str | None = Field(None, description="a private evaluate command run for every keep, never shown")
    setup: str | None = Field(None, description="a trusted command run once per run (e.g. `uv sync`) that prepares "
                              "the project's environment in .ouroboros/runs/<tag>/env/ and fills the data cache")
    setup_timeout: float = Field(1800.0, gt=0, description="seconds the setup command may take")
    outputs: list[str] = Field([], description="globs of what the run hands to the evaluation, besides the "
                                                "editable files (e.g. solution.json, a checkpoint)")

    @property
    def grace_s(self) -> float:
        return self.grace if self.grace is not None else max(2.0, 0.1 * self.budget)


# Keys the harness itself writes into an experiment's metrics (loop._judge: the confirmation re-run's
# metric, read by judge.standing and audit.reproduced, and its secret seed). Never taken from what a run or an evaluator
# reports, so no output can claim a confirmation it never had.
RESERVED_METRICS = frozenset({"confirm_metric", "confirm_seed"})


class MetricSection(_Model):
    name: str
    direction: Literal["minimize", "maximize"] = "minimize"
    pattern: str | None = None
    fingerprint: str | None = None

    @field_validator("name", "fingerprint")
    @classmethod
    def _not_reserved(cls, v: str | None) -> str | None:
        if v in RESERVED_METRICS:
            raise ValueError(f"{v!r} is a key the harness writes itself; give the evaluator's metric another name")
        return v

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"pattern is not a regular expression: {exc}") from exc
        return v

    @property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern or rf"^\s*{re.escape(self.name)}\s*[:=]\s*(\S+)", re.MULTILINE)


class JudgeSection(_Model):
    min_delta: float = Field(0.0, ge=0)
    simplicity: bool = True
    noise_z: float = Field(2.0, ge=0)
    confirm: bool = False
    plausibility: float | None = Field(None, gt=0, description="a gain larger than this is re-run first")


class KnobSpec(_Model):
    low: float | None = None
    high: float | None = None
    log: bool | None = None
    step: float | None = None
    choices: list[int | float | bool | str] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> KnobSpec:
        if self.choices is None and (self.low is None or self.high is None):
            raise ValueError("give either low and high, or choices")
        if self.choices is None and self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        return self


class KnobsSection(BaseModel):
    """`[knobs]`: `exclude` and `constraints`, and `[knobs.NAME]` tables overriding inferred ranges."""

    model_config = ConfigDict(extra="allow", frozen=True)
    __pydantic_extra__: dict[str, KnobSpec] = Field(init=False)  # type: ignore[assignment]
    exclude: list[str] = Field([], description="knob names (globs) never searched")
    constraints: list[str] = Field([], description="expressions over knob values every proposal must satisfy")

    @property
    def specs(self) -> dict[str, KnobSpec]:
        return dict(self.__pydantic_extra__ or {})


class BoundSection(_Model):
    danger_zones: list[str] = []
    hidden: list[str] = Field([], description="evaluation data (globs, committed) masked from the run phase")
    never: list[str] = []
    iron_laws: list[str] = []
    max_diff_lines: int | None = Field(None, gt=0)
    allow_new_files: list[str] = []
    frozen: list[str] = ["pyproject.toml", "requirements*.txt", "uv.lock", "setup.py", "setup.cfg"]
    network: bool = False
    memory_mb: int | None = Field(None, gt=0)
    max_processes: int | None = Field(None, gt=0)
    max_log_mb: float = Field(20.0, gt=0)
    max_artifact_mb: float = Field(512.0, gt=0)
    isolation: Literal["auto", "bwrap", "unshare", "process"] = "auto"
    read_only: list[str] = Field([], description="paths (`~` expanded, relative ones from the task folder) the run "
                                                 "and evaluate see read-only")
    ignore: list[str] = Field([], description="globs of files a run or agent leaves that are dropped, not judged")
    env: list[str] = Field([], description="names of environment variables passed to setup, run and evaluate "
                                          "besides the built-in allowlist (locale, paths, CUDA_*, OMP_*...)")


class AgentSection(_Model):
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = Field(900.0, gt=0)
    notes_max_chars: int = Field(4000, gt=0)
    prompt_results: int = Field(20, gt=0, description="experiments in full in the prompt; older ones summarized")
    prompt_results_chars: int = Field(8000, ge=1000, description="the most characters of the prompt's results")


class SearchSection(_Model):
    policy: Literal["greedy", "tree"] = Field("greedy", description="how the loop picks each experiment's parent")


class Task(_Model):
    task: TaskSection
    metric: MetricSection
    judge: JudgeSection = JudgeSection()
    knobs: KnobsSection = KnobsSection()
    bound: BoundSection = BoundSection()
    agent: AgentSection = AgentSection()
    search: SearchSection = SearchSection()

    # Where the task lives; set by load_task, not part of the file.
    root: Path = Field(Path("."), exclude=True)

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def minimize(self) -> bool:
        return self.metric.direction == "minimize"

    @property
    def trust(self) -> str:
        if not self.task.evaluate:
            return "stdout"
        return "isolated" if self.task.isolated else "sealed"

    @cached_property
    def protected_patterns(self) -> tuple[str, ...]:
        """Globs no proposal may change: the task file, the evaluator, the danger zones, hidden data."""
        return tuple(dict.fromkeys([TASK_FILE, *self.task.protected, *self.bound.danger_zones, *self.bound.hidden]))

    def is_editable(self, rel: str) -> bool:
        return matches(rel, self.task.editable)

    def is_protected(self, rel: str) -> bool:
        return matches(rel, self.protected_patterns)

    def names(self, rel: str) -> bool:
        """Whether an editable, protected, allowed-new or hidden glob, or the program, names this path."""
        return rel == self.task.program or matches(rel, [*self.task.editable, *self.protected_patterns,
                                                         *self.bound.allow_new_files])

    @property
    def read_only_paths(self) -> list[Path]:
        """`[bound] read_only`, `~` expanded, relative paths taken from the task folder (never the caller's cwd)."""
        return [(self.root / os.path.expanduser(p)).resolve() for p in self.bound.read_only]

    def editable_files(self, root: Path | None = None) -> list[str]:
        return glob_files(root or self.root, self.task.editable, through_links=False)

    def code_files(self, root: Path | None = None) -> list[str]:
        """What the simplicity rule measures: the editable files and the new files an attempt may add."""
        return glob_files(root or self.root, [*self.task.editable, *self.bound.allow_new_files], through_links=False)

    def protected_files(self, root: Path | None = None) -> list[str]:
        return glob_files(root or self.root, self.protected_patterns)


def matches(rel: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """Whether a task-relative posix path matches any glob; `**` crosses folders, `*` does too."""
    return any(fnmatch.fnmatchcase(rel, p) or rel == p.rstrip("/") or rel.startswith(p.rstrip("/") + "/")
               for p in patterns)


def glob_files(root: Path, patterns: tuple[str, ...] | list[str], through_links: bool = True) -> list[str]:
    """The files under root the patterns match (a folder matched: the files in it). A path the system
    cannot name (past PATH_MAX: what a hostile run may leave) ends the listing of that pattern there.
    With through_links=False (what is editable: an agent's link to a folder outside names nothing of
    the task's) no path with a link in it is listed; hidden and protected files are listed through
    links, so a committed link to their folder cannot unmask them."""
    found: set[str] = set()
    for pattern in patterns:
        try:
            for path in root.glob(pattern):
                if not through_links and first_link(root, path):
                    continue
                if path.is_file() and RECORDS_DIR not in path.relative_to(root).parts:
                    found.add(path.relative_to(root).as_posix())
                elif path.is_dir():
                    found.update(p.relative_to(root).as_posix() for p in path.rglob("*")
                                 if p.is_file() and (through_links or not first_link(root, p)))
        except OSError:
            continue
    found.update(_crossing(root, patterns, through_links))
    return sorted(found)


_WILD = re.compile(r"[*?\[]")


def _crossing(root: Path, patterns: tuple[str, ...] | list[str], through_links: bool) -> set[str]:
    """The files `matches` names that Path.glob does not: fnmatch's `*` crosses folders (`secret/*.txt` names
    secret/deep/a.txt), glob's stays in one. Walked from each wildcard pattern's literal folder, never into .git
    or the records, links to folders not followed (those a pattern names by glob are listed above)."""
    out: set[str] = set()
    starts: dict[str, list[str]] = {}
    for pattern in patterns:
        parts = pattern.strip("/").split("/")
        cut = next((i for i, part in enumerate(parts) if _WILD.search(part)), None)
        if cut is not None:
            starts.setdefault("/".join(parts[:cut]), []).append(pattern)
    for start, pats in starts.items():
        top = root / start if start else root
        if not top.is_dir() or (not through_links and first_link(root, top)):
            continue
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if d not in (".git", RECORDS_DIR)]
            for name in files:
                full = os.path.join(folder, name)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                if not matches(rel, pats) or (not through_links and os.path.islink(full)):
                    continue
                if os.path.isfile(full):
                    out.add(rel)
    return out


def first_link(root: Path, path: Path) -> Path | None:
    """The first part of path under root (the last one included) that is a link, or None."""
    here = root
    for part in path.relative_to(root).parts:
        here = here / part
        if here.is_symlink():
            return here
    return None


def load_task(root: Path | str, text: str | None = None) -> Task:
    """Read and validate `<root>/ouroboros.toml`; every problem is one OuroborosError line.

    `text` is the task file's content when it comes from elsewhere than the checkout (a run's base
    commit: what a running loop obeys, whatever the checkout holds now).
    """
    root = Path(root).resolve()
    path = root / TASK_FILE
    if text is None and not path.is_file():
        raise OuroborosError(f"no {TASK_FILE} in {root}: describe the project as a task with `ouroboros init {root} "
                             f"--editable FILE --run 'CMD' --metric NAME`, or `ouroboros init --from-autoresearch "
                             f"{root}` for autoresearch's layout")
    try:
        data = tomllib.loads(path.read_text() if text is None else text)
    except tomllib.TOMLDecodeError as exc:
        raise OuroborosError(f"{path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise OuroborosError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
                             "save it as UTF-8") from exc
    try:
        task = Task.model_validate({**data, "root": root})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        hint = " (unknown key: check its spelling against the task file reference in the README)" \
            if first["type"] == "extra_forbidden" else ""
        raise OuroborosError(f"{path}: {where}: {first['msg']}{hint}") from exc
    for pattern in task.task.editable:
        if not glob_files(root, [pattern]):
            raise OuroborosError(f"{path}: editable glob {pattern!r} matches no file in {root}; "
                                 "fix the glob or create the file")
    if not (root / task.task.program).is_file():
        raise OuroborosError(f"{path}: program file {task.task.program!r} not found; write the agent's "
                             "instructions there or set task.program")
    return task
