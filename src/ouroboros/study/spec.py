"""The study file, `study.toml`: conditions x repeats of runs, as one frozen, validated object.

    name = "baselines"
    task = "../tinygpt"            # the task folder, relative to this file (a condition may override)
    repeats = 5
    seeds = [0, 1, 2, 3, 4]        # optional: one per repeat (default 0 .. repeats-1)
    baseline = "random"            # optional: the condition drawn as the baseline in the report

    [limits]                       # per run: at least one of max_experiments and hours
    max_experiments = 20
    budget = 15                    # seconds per experiment (overrides the task's budget)

    [resources]                    # what one run needs, and the executor's defaults
    cpus = 1
    gpus = 0

    [[conditions]]
    name = "random"
    agent = "random"

    [[conditions]]
    name = "tpe-short-program"
    agent = "tpe"
    program = "programs/short.md"  # replaces the task's program.md for this condition
    knobs = { STEPS = 100 }        # written into the editable files before the baseline
    search = "tree"                # optional: the loop's search policy (greedy | tree)

Typos are errors (pydantic `extra="forbid"`). Workers get the whole validated object, never loose
fields copied by hand; `Study.model_validate_json(study.model_dump_json())` gives an equal object.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ouroboros.errors import OuroborosError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]*$")  # no '-': tags are <study>-<condition>-r<k>


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError(f"{v!r} is not a plain name: use letters, digits, '_' and '.' (it becomes part of "
                         "run tags and branch names)")
    return v


class Limits(_Model):
    max_experiments: int | None = Field(None, ge=0)
    hours: float | None = Field(None, gt=0)
    budget: float | None = Field(None, gt=0, description="seconds per experiment run; default: the task's")

    @model_validator(mode="after")
    def _some_limit(self) -> Limits:
        if self.max_experiments is None and self.hours is None:
            raise ValueError("give max_experiments or hours (or both): a run needs an end")
        return self


class Resources(_Model):
    cpus: int = Field(1, ge=1, description="CPU slots one run takes")
    gpus: int = Field(0, ge=0, description="GPUs one run takes, pinned with CUDA_VISIBLE_DEVICES")
    slots: int | None = Field(None, ge=1, description="runs at once; default: as many as CPUs and GPUs allow")
    timeout_min: int = Field(24 * 60, ge=1, description="slurm: the job's time limit")
    partition: str | None = None


class Condition(_Model):
    name: str
    agent: str
    task: str | None = Field(None, description="task folder relative to the study file; default: the study's")
    program: str | None = Field(None, description="a program file relative to the study file")
    knobs: dict[str, int | float | bool | str] = {}
    limits: Limits | None = None
    search: Literal["greedy", "tree"] | None = Field(None, description="the loop's search policy; default: the task's")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return _check_name(v)


class Study(_Model):
    name: str
    task: str | None = None
    repeats: int = Field(ge=1)
    seeds: list[int] | None = None
    baseline: str | None = None
    limits: Limits
    resources: Resources = Resources()
    conditions: list[Condition] = Field(min_length=1)

    # Where the study file lives; set by load_study, not part of the file.
    root: Path = Field(Path("."), exclude=True)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return _check_name(v)

    @model_validator(mode="after")
    def _consistent(self) -> Study:
        names = [c.name for c in self.conditions]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"condition names must be unique; repeated: {', '.join(sorted(dup))}")
        if self.seeds is not None and len(self.seeds) != self.repeats:
            raise ValueError(f"seeds has {len(self.seeds)} values for {self.repeats} repeats; give one per repeat")
        if self.baseline is not None and self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not a condition ({', '.join(names)})")
        missing = [c.name for c in self.conditions if (c.task or self.task) is None]
        if missing:
            raise ValueError(f"no task for condition(s) {', '.join(missing)}: set `task` at the top or in each")
        return self

    @property
    def seed_list(self) -> list[int]:
        return list(self.seeds) if self.seeds is not None else list(range(self.repeats))

    @property
    def baseline_condition(self) -> str | None:
        """The condition drawn as the baseline: the named one, else the first `random` one."""
        if self.baseline:
            return self.baseline
        return next((c.name for c in self.conditions if c.agent == "random"), None)

    def condition(self, name: str) -> Condition:
        return next(c for c in self.conditions if c.name == name)

    def limits_for(self, cond: Condition) -> Limits:
        return cond.limits or self.limits

    def task_path(self, cond: Condition) -> Path:
        return (self.root / (cond.task or self.task or ".")).resolve()

    def tag(self, cond: Condition, k: int) -> str:
        return f"{self.name}-{cond.name}-r{k}"


def load_study(path: Path | str) -> Study:
    """Read and validate a study file; every problem is one OuroborosError line."""
    path = Path(path).resolve()
    if not path.is_file():
        raise OuroborosError(f"no study file {path}; see docs/studies.md for one to start from")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise OuroborosError(f"{path} is not valid TOML: {exc}") from exc
    try:
        return Study.model_validate({**data, "root": path.parent})
    except ValidationError as exc:
        # A misspelt key also makes the real one "missing": name the misspelling, which is the fix.
        first = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        hint = " (unknown key: check its spelling against docs/studies.md)" \
            if first["type"] == "extra_forbidden" else ""
        raise OuroborosError(f"{path}: {where}: {first['msg']}{hint}") from exc


Backend = Literal["local", "ray", "slurm"]


class RunSpec(_Model):
    """Everything one study run needs, sent whole to the process that runs it (any backend)."""

    study: str
    condition: str
    tag: str
    agent: str
    seed: int
    task_dir: Path = Field(description="the condition's task folder (its own copy of the task repo)")
    limits: Limits
    log: Path = Field(description="where the run's own output goes")
    search: Literal["greedy", "tree"] | None = None
