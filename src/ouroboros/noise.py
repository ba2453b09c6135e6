"""The noise floor: how much the metric moves when nothing changed, so the judge ignores such moves.

`ouroboros noise` evaluates the task's baseline R times, each re-run with its own seed
(OUROBOROS_SEED), and stores the standard deviation of the metric per base commit in
`.ouroboros/noise.json`. A new run from that commit takes it as its `noise_sigma`, and the judge
then keeps only gains above `max(judge.min_delta, judge.noise_z * sigma)` (judge.effective_min_delta).
The re-runs are recorded as their own run (`noise-<commit>-<i>`, agent `noise`), so nothing is lost.
`judge.confirm = true` adds a confirmation re-run before each keep (loop.py).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ouroboros.errors import OuroborosError
from ouroboros.judge import effective_min_delta
from ouroboros.task import Task

NOISE_FILE = "noise.json"


@dataclass
class NoiseFloor:
    commit: str
    sigma: float
    mean: float
    values: list[float]
    tag: str
    measured: float


def estimate(values: list[float]) -> float:
    """The noise sigma of repeated measurements: their sample standard deviation."""
    if len(values) < 2:
        raise OuroborosError(f"a noise floor needs at least 2 good re-runs, got {len(values)}")
    return statistics.stdev(values)


def min_delta_for(task: Task, sigma: float | None) -> float:
    return effective_min_delta(task.judge.min_delta, sigma, task.judge.noise_z)


def stored(records: Path, commit: str) -> NoiseFloor | None:
    path = records / NOISE_FILE
    if not path.is_file():
        return None
    try:  # a file that is not ours (not UTF-8, not JSON, other fields) holds no noise floor
        entry = json.loads(path.read_bytes()).get(commit)
        return NoiseFloor(**entry) if entry else None
    except (ValueError, TypeError, AttributeError):
        return None


def stored_sigma(records: Path, commit: str) -> float | None:
    floor = stored(records, commit)
    return floor.sigma if floor else None


def _store(records: Path, floor: NoiseFloor) -> None:
    path = records / NOISE_FILE
    try:
        data = json.loads(path.read_bytes()) if path.is_file() else {}
    except ValueError:
        data = {}
    data = data if isinstance(data, dict) else {}
    data[floor.commit] = asdict(floor)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def measure(task: Task, repeats: int, seed: int = 0, budget: float | None = None) -> NoiseFloor:
    """Run and evaluate the baseline `repeats` times; store and return the noise floor."""
    from ouroboros.guard import Guard
    from ouroboros.judge import Verdict
    from ouroboros.ledger import Experiment, Ledger
    from ouroboros.loop import Loop, Options
    from ouroboros.task import RECORDS_DIR
    from ouroboros.workspace import ensure_clean, repo_root

    if repeats < 2:
        raise OuroborosError(f"--repeats must be at least 2 to measure a spread, got {repeats}")
    repo = repo_root(task.root)
    base = ensure_clean(repo, task.root.relative_to(repo).as_posix() or ".", task.names)
    ledger = Ledger(task.root / RECORDS_DIR)
    taken = {r.tag for r in ledger.runs()}
    ledger.close()
    i = 1
    while f"noise-{base[:7]}-{i}" in taken:
        i += 1
    loop = Loop(task, Options(agent="random", tag=f"noise-{base[:7]}-{i}", max_experiments=0, seed=seed,
                              budget=budget, extra={"noise_repeats": repeats}))
    loop.run_rec.agent = "noise"
    loop.ws.reset(base)
    loop.guard = Guard(task, loop.ws)
    values = []
    with loop.running():  # a failure (fewer than 2 good re-runs) leaves the run marked failed
        for k in range(repeats):
            loop.run_rec.seed = seed + k  # each re-run gets its own OUROBOROS_SEED
            exp = Experiment(loop.tag, k, commit_sha=base, parent=base, agent="noise",
                             description=f"noise: baseline re-run {k + 1}/{repeats}, seed {seed + k}")
            loop.ws.pin(k, base)
            loop.ledger.begin(exp)
            loop._execute(exp, None)  # run and evaluate exactly as a baseline is
            if exp.status == Verdict.KEEP and exp.metric is not None:
                values.append(exp.metric)
        floor = NoiseFloor(base, estimate(values), statistics.fmean(values), values, loop.tag, time.time())
        loop.run_rec.noise_sigma, loop.run_rec.seed = floor.sigma, seed
    loop.ws.reset(base)
    _store(loop.records, floor)
    loop.ledger.close()
    return floor
