"""`delta.toml`: the self task's delta benchmark settings, protected, read by its run and evaluate."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ouroboros.errors import OuroborosError

FILE = "delta.toml"
WORK = ".self/work"  # where the run phase leaves the inner runs for the evaluator


class DeltaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seeds: list[int] = Field([0, 1], min_length=1)
    experiments: int = Field(8, ge=1, description="inner experiments per suite task and seed")
    tasks: list[str] | None = Field(None, description="suite tasks (default: all of the public suite)")
    agent: str = "policy"
    search: Literal["greedy", "tree"] = "greedy"
    jobs: int = Field(2, ge=1, description="inner runs side by side")
    gate: bool = True


def load_settings(root: Path) -> DeltaSettings:
    path = root / FILE
    try:
        return DeltaSettings.model_validate(tomllib.loads(path.read_text()))
    except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
        raise OuroborosError(f"{path}: {' '.join(str(exc).split())[:300]}") from exc
