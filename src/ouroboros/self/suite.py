"""The suite of improvement: small tasks with a known best value, shipped with the package.

`public/` is what the delta benchmark (and so the self task) measures; `holdout/` holds tasks of
the same kinds with other constants, for transfer, never used to choose a version and not copied
into the self task. A task's improvement is normalized to [0, 1]: 0 at its baseline (the knob
values as shipped), 1 at its known best.

Measurement is trusted: `measure` loads the pristine evaluate.py of the suite task (never a copy
from a run) and applies it to knob values read from a params.py with `ast`, so nothing the inner
harness wrote is executed. The code the evaluators share is one file, suite/suitekit.py, a protected
file of every task: `export` copies it beside the task's evaluate.py wherever a suite task is made
into a task repo.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ouroboros.errors import OuroborosError

SPLITS = ("public", "holdout")
KIT = Path(__file__).resolve().parent / "suite" / "suitekit.py"  # shared by every suite task's evaluate.py


def suite_dir(split: str = "public") -> Path:
    if split not in SPLITS:
        raise OuroborosError(f"unknown suite {split!r}; choose one of: {', '.join(SPLITS)}")
    path = Path(__file__).resolve().parent / "suite" / split
    if not (path / "suite.toml").is_file():
        raise OuroborosError(f"the {split} suite is missing from this installation ({path}); reinstall ouroboros")
    return path


@dataclass(frozen=True)
class SuiteTask:
    name: str
    kind: str
    best: float
    score: str  # the metric the benchmark scores
    minimize: bool
    path: Path

    @functools.cached_property
    def evaluator(self) -> ModuleType:
        """The pristine evaluate.py (its `measure`, maybe its `Infeasible`)."""
        return _load(self.path / "evaluate.py", f"_suite_{self.name.replace('-', '_')}")

    def export(self, dest: Path) -> Path:
        """The task's files, self-contained: its folder and, beside its evaluate.py, the shared suitekit.py."""
        shutil.copytree(self.path, dest, ignore=shutil.ignore_patterns("__pycache__", ".ouroboros"))
        shutil.copyfile(KIT, dest / KIT.name)
        return dest

    def commit_to(self, dest: Path, message: str, run_git=None) -> Path:
        """The task exported into a new git repo at dest, committed as one baseline commit (`run_git`:
        the caller's git wrapper, workspace.git by default)."""
        from ouroboros.workspace import git

        run_git = run_git or git
        self.export(dest)
        (dest / ".gitignore").write_text(".ouroboros/\n__pycache__/\n")
        run_git(dest, "init", "-q", "-b", "main")
        run_git(dest, "add", "-A")
        run_git(dest, "commit", "-q", "-m", message)
        return dest

    def measure(self, params_source: str, seed: int) -> dict[str, float] | None:
        """The evaluator's metrics for a params.py's text, or None where it is infeasible or unusable."""
        ev = self.evaluator
        try:
            metrics = ev.measure(_kit().read_params(params_source), seed)
        except (getattr(ev, "Infeasible", ValueError), SyntaxError, KeyError, TypeError, ValueError):
            return None
        return metrics if all(math.isfinite(v) for v in metrics.values()) else None

    @functools.cached_property
    def baseline(self) -> float:
        metrics = self.measure((self.path / "params.py").read_text(), 0)
        assert metrics is not None, f"suite task {self.name}: its shipped params are infeasible"
        return metrics[self.score]

    def normalize(self, value: float | None) -> float:
        """0 at the baseline (or worse, or no value), 1 at the known best."""
        if value is None:
            return 0.0
        span = self.baseline - self.best if self.minimize else self.best - self.baseline
        gained = self.baseline - value if self.minimize else value - self.baseline
        return min(1.0, max(0.0, gained / span))


@functools.cache
def _kit() -> ModuleType:
    return _load(KIT, "_suite_kit")


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_suite(split: str = "public", names: list[str] | None = None) -> list[SuiteTask]:
    root = suite_dir(split)
    rows = tomllib.loads((root / "suite.toml").read_text())["task"]
    tasks = []
    for row in rows:
        toml = tomllib.loads((root / row["name"] / "ouroboros.toml").read_text())
        tasks.append(SuiteTask(row["name"], row["kind"], float(row["best"]), row["score"],
                               toml["metric"].get("direction", "minimize") == "minimize", root / row["name"]))
    if names:
        unknown = sorted(set(names) - {t.name for t in tasks})
        if unknown:
            raise OuroborosError(f"no suite task {', '.join(unknown)} in the {split} suite; "
                                 f"tasks: {', '.join(t.name for t in tasks)}")
        tasks = [t for t in tasks if t.name in names]
    return tasks


def init_task(name: str, directory: Path) -> Path:
    """`ouroboros init --template suite:NAME DIR`: a public suite task as a repo of its own."""
    from ouroboros.task import load_task
    from ouroboros.workspace import exclude_records

    if directory.exists() and any(directory.iterdir()):
        raise OuroborosError(f"{directory} exists and is not empty; pick a new folder")
    task = load_suite("public", [name])[0]
    directory.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(directory, ignore_errors=True)
    task.commit_to(directory, f"suite task {name} (ouroboros init --template suite:{name})")
    exclude_records(directory)
    load_task(directory)
    return directory
