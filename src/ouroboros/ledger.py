"""The ledger: every run and experiment, in SQLite (WAL), plus results.tsv and a folder per experiment.

Layout under `.ouroboros/` (gitignored):

    ledger.sqlite                      runs and experiments (the source of truth)
    runs/<tag>/results.tsv             autoresearch's table, rebuilt from the ledger on resume
    runs/<tag>/exp/<n>/diff.patch      the proposal against the best commit it started from
    runs/<tag>/exp/<n>/run.log         the run's output (capped)
    runs/<tag>/exp/<n>/eval.log        the evaluator's output
    runs/<tag>/exp/<n>/metrics.json    everything the evaluator reported
    runs/<tag>/exp/<n>/agent.log       what the agent said, where it said anything

results.tsv columns (tab-separated, one header line, one row per finished experiment):

    commit       7-char attempt commit
    <metric>     the metric, 6 decimals; 0.000000 when there is none (crash, timeout, violation)
    memory_gb    peak GPU memory if measured, else peak RSS, in GB, 1 decimal
    status       keep | discard | crash | timeout | violation
    description  one line; tabs and newlines become spaces, so a free-text field never breaks a row

An experiment row is written as `running` once its attempt commit exists, and finished with its
verdict; a row still `running` after a crash of the harness is re-run from that same commit.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    tag TEXT PRIMARY KEY, task TEXT, agent TEXT, metric TEXT, direction TEXT, trust TEXT,
    branch TEXT, base_commit TEXT, status TEXT, created REAL, updated REAL, seed INTEGER,
    sessions INTEGER DEFAULT 0, fingerprint TEXT, noise_sigma REAL, study TEXT, condition TEXT,
    config TEXT
);
CREATE TABLE IF NOT EXISTS experiments (
    tag TEXT, n INTEGER, commit_sha TEXT, parent TEXT, status TEXT, reason TEXT,
    metric REAL, metrics TEXT, description TEXT, agent TEXT, model TEXT, session INTEGER,
    tokens_in INTEGER, tokens_out INTEGER, cost_usd REAL, agent_s REAL, run_s REAL, eval_s REAL,
    wall_s REAL, peak_rss_mb REAL, peak_gpu_mb REAL, isolation TEXT, trust TEXT, loc INTEGER,
    params TEXT, holdout REAL, started REAL, finished REAL,
    PRIMARY KEY (tag, n)
);
"""


@dataclass
class Experiment:
    tag: str
    n: int
    commit_sha: str = ""
    parent: str = ""
    status: str = "running"  # running, then the verdict
    reason: str = ""
    metric: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    agent: str = ""
    model: str = ""
    session: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    agent_s: float = 0.0
    run_s: float = 0.0
    eval_s: float = 0.0
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    peak_gpu_mb: float | None = None
    isolation: str = ""
    trust: str = ""
    loc: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    holdout: float | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None

    @property
    def memory_gb(self) -> float:
        mb = self.peak_gpu_mb if self.peak_gpu_mb else self.peak_rss_mb
        return (mb or 0.0) / 1024

    def tsv_row(self) -> str:
        metric = f"{self.metric:.6f}" if self.metric is not None and math.isfinite(self.metric) else "0.000000"
        desc = " ".join((self.description or "").split())
        return f"{self.commit_sha[:7]}\t{metric}\t{self.memory_gb:.1f}\t{self.status}\t{desc}\n"


@dataclass
class Run:
    tag: str
    task: str = ""
    agent: str = ""
    metric: str = ""
    direction: str = "minimize"
    trust: str = ""
    branch: str = ""
    base_commit: str = ""
    status: str = "running"
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    seed: int = 0
    sessions: int = 0
    fingerprint: str | None = None
    noise_sigma: float | None = None
    study: str | None = None
    condition: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


_JSON = {"metrics", "params", "config"}


def _encode(obj: Any) -> dict[str, Any]:
    return {k: (json.dumps(v) if k in _JSON else v) for k, v in asdict(obj).items()}


def _decode(cls: type, row: sqlite3.Row) -> Any:
    names = {f.name for f in fields(cls)}
    data = {k: (json.loads(row[k]) if k in _JSON and row[k] else row[k]) for k in row.keys() if k in names}
    for k in _JSON & names:
        data[k] = data.get(k) or {}
    return cls(**data)


class Ledger:
    def __init__(self, records: Path):
        self.records = records
        records.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(records / "ledger.sqlite", timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def run_dir(self, tag: str) -> Path:
        return self.records / "runs" / tag

    def exp_dir(self, tag: str, n: int) -> Path:
        path = self.run_dir(tag) / "exp" / str(n)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # runs
    def save_run(self, run: Run) -> None:
        run.updated = time.time()
        row = _encode(run)
        self.db.execute(f"INSERT OR REPLACE INTO runs ({','.join(row)}) VALUES ({','.join('?' * len(row))})",
                        list(row.values()))

    def run(self, tag: str) -> Run | None:
        row = self.db.execute("SELECT * FROM runs WHERE tag=?", (tag,)).fetchone()
        return _decode(Run, row) if row else None

    def runs(self) -> list[Run]:
        return [_decode(Run, r) for r in self.db.execute("SELECT * FROM runs ORDER BY created")]

    # experiments
    def begin(self, exp: Experiment) -> None:
        row = _encode(exp)
        self.db.execute(f"INSERT OR REPLACE INTO experiments ({','.join(row)}) "
                        f"VALUES ({','.join('?' * len(row))})", list(row.values()))

    def finish(self, exp: Experiment) -> None:
        """Record the verdict (the ledger first, then the table), and the metrics beside the logs."""
        exp.finished = time.time()
        self.begin(exp)
        exp_dir = self.exp_dir(exp.tag, exp.n)
        (exp_dir / "metrics.json").write_text(json.dumps(
            {"metric": exp.metric, "status": exp.status, "reason": exp.reason, **exp.metrics}, indent=1,
            default=str))
        tsv = self.run_dir(exp.tag) / "results.tsv"
        if not tsv.exists():
            self.write_tsv(exp.tag)
        else:
            with open(tsv, "a") as f:
                f.write(exp.tsv_row())

    def experiments(self, tag: str, finished_only: bool = False) -> list[Experiment]:
        sql = "SELECT * FROM experiments WHERE tag=?" + (" AND status != 'running'" if finished_only else "")
        return [_decode(Experiment, r) for r in self.db.execute(sql + " ORDER BY n", (tag,))]

    def write_tsv(self, tag: str) -> Path:
        """Rebuild results.tsv from the ledger, which heals a table cut short by a kill."""
        run = self.run(tag)
        metric = run.metric if run else "metric"
        path = self.run_dir(tag) / "results.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [e.tsv_row() for e in self.experiments(tag, finished_only=True)]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"commit\t{metric}\tmemory_gb\tstatus\tdescription\n" + "".join(rows))
        tmp.replace(path)
        return path
