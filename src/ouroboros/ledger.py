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
    <metric>     the metric, %.10g (so 5.6e-14 stays 5.6e-14); 0.000000 when there is none (crash,
                 timeout, violation), as in autoresearch
    memory_gb    peak GPU memory if measured, else peak RSS, in GB, 1 decimal
    status       keep | discard | crash | timeout | violation
    description  one line of at most 300 characters; control characters are dropped and tabs and
                 newlines become spaces, so a free-text field never breaks a row (the full text,
                 control characters dropped, is in the ledger)

An experiment row is written as `running` once its attempt commit exists, and finished with its
verdict; a row still `running` after a crash of the harness is re-run from that same commit.

The chain: every write of a row (runs and experiments) appends an entry to the `chain` table holding
the SHA-256 of the row as stored and an HMAC over that digest and the previous entry's HMAC, keyed by
a secret in the user's config folder (chain.py). A row changed, added or deleted outside Ouroboros
no longer matches its last entry, and an entry changed or removed breaks the HMACs after it;
`ouroboros verify` reports both (chain.verify).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import sqlite3
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

from ouroboros.errors import OuroborosError

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
CREATE TABLE IF NOT EXISTS chain (
    seq INTEGER PRIMARY KEY, kind TEXT, tag TEXT, n INTEGER, digest TEXT, mac TEXT
);
"""

TSV_DESCRIPTION_CHARS = 300
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def clean_text(text: str | None) -> str:
    """Agent-written text as data: control and bidi characters dropped (tabs and newlines kept), and
    anything that is not valid UTF-8 (lone surrogates) replaced, so no string can break a write."""
    text = _CONTROL.sub("", str(text or "")).replace("\r", "")
    return text.encode("utf-8", "replace").decode("utf-8")


def one_line(text: str | None, limit: int = TSV_DESCRIPTION_CHARS) -> str:
    """Clean text on one line, whitespace collapsed, at most `limit` characters."""
    if isinstance(text, str) and text.isascii() and text.isprintable():
        line = " ".join(text.split())  # nothing to clean (`log` of a long run calls this 50,000 times)
    else:
        line = " ".join(clean_text(text).split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def one_lines(values: list, limit: int = TSV_DESCRIPTION_CHARS) -> list[str]:
    """one_line of each value; a column that is all clean already (the common case) is checked in one pass."""
    if all(type(v) is str for v in values):
        blob = "\n".join(values)
        if (blob.isascii() and blob.count("\n") == len(values) - 1 and blob.replace("\n", "").isprintable()
                and "  " not in blob and " \n" not in blob
                and "\n " not in blob and blob[:1] != " " and blob[-1:] != " "
                and max(map(len, values), default=0) <= limit):
            return list(values)
    return [one_line(v, limit) for v in values]


def fmt_metric(value: float | None, missing: str = "-") -> str:
    """A metric as people read it: %.10g, so 5.6e-14 is never shown as 0.000000."""
    return missing if value is None else f"{value:.10g}"


def _ours(row: sqlite3.Row) -> bool:
    """Whether a schema row is of a kind Ouroboros makes: a table or an index, by its SQL (SQLite builds its
    schema from the SQL text, whatever the type column says: a trigger written with writable_schema)."""
    sql = (row["sql"] or "").upper()
    if row["type"] == "table":
        return sql.startswith("CREATE TABLE ")
    return row["type"] == "index" and not sql  # the automatic index of a UNIQUE or PRIMARY KEY: Ouroboros makes no other


def schema_version(records: Path) -> int | None:
    """The ledger's schema cookie (it moves with every CREATE or DROP), read without writing; None without one."""
    try:
        db = sqlite3.connect(f"file:{records / 'ledger.sqlite'}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return None
    try:
        return db.execute("PRAGMA schema_version").fetchone()[0]
    except sqlite3.Error:
        return None
    finally:
        db.close()


def planted(records: Path) -> bool:
    """Whether the ledger holds a schema row Ouroboros never makes (or one SQLite cannot read)."""
    try:
        db = sqlite3.connect(f"file:{records / 'ledger.sqlite'}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return False
    db.row_factory = sqlite3.Row
    try:
        return any(not _ours(r) for r in db.execute("SELECT type, name, sql FROM sqlite_master"))
    except sqlite3.DatabaseError:
        return True
    finally:
        db.close()


def drop_planted(records: Path) -> None:
    """Drop every index, trigger and view in the ledger that Ouroboros did not make (a run at level process reaches
    the records): it would fail or forge the harness's next write. OuroborosError where one stays."""
    path = records / "ledger.sqlite"
    if not path.is_file():
        return
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.row_factory = sqlite3.Row
    try:
        for row in [r for r in db.execute("SELECT type, name, sql FROM sqlite_master") if not _ours(r)]:
            if row["type"] in ("index", "trigger", "view"):
                db.execute(f'DROP {row["type"].upper()} IF EXISTS "{row["name"].replace(chr(34), chr(34) * 2)}"')
        left = next((r for r in db.execute("SELECT type, name, sql FROM sqlite_master") if not _ours(r)), None)
    except sqlite3.DatabaseError as exc:
        raise OuroborosError(f"{path} cannot be read ({exc}): a run edited the records; inspect them with sqlite3 "
                             "and `ouroboros verify` before going on") from None
    finally:
        db.close()
    if left is not None:
        raise OuroborosError(f"{path} holds a {left['type']} {clean_text(left['name'])[:80]!r} that a run planted and "
                             "that cannot be dropped; inspect it with sqlite3 and drop it, then `ouroboros verify`")


HARNESS_LOCK = "harness.lock"  # in a run's folder: held (shared) by the process that drives the run


def hold(run_dir: Path) -> int:
    """Take the run's harness lock for as long as this process drives the run (the fd; close it to let
    go). The kernel lets go when the process dies, however it dies: readers tell a live run from one whose
    harness was killed, which the ledger alone cannot (its status stays "running")."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / HARNESS_LOCK
    try:
        if path.is_symlink() or (path.exists() and not path.is_file()):  # what a run left in its place
            from ouroboros.readfile import remove_path

            remove_path(path)  # a folder however deep (shutil.rmtree recurses)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise OuroborosError(f"cannot take the run's lock {path}: {exc.strerror}; remove it and retry") from exc
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def alive(run_dir: Path) -> bool | None:
    """Whether a process holds the run's harness lock; None without a lock file (a run from before it)."""
    try:
        fd = os.open(run_dir / HARNESS_LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)


def shown_status(status: str, run_dir: Path) -> str:
    """A run's status as shown: "killed" for one recorded running whose harness is gone (`--resume` goes on)."""
    return "killed" if status == "running" and alive(run_dir) is False else status


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
        ok = self.metric is not None and math.isfinite(self.metric)
        metric = fmt_metric(self.metric) if ok else "0.000000"
        return f"{self.commit_sha[:7]}\t{metric}\t{self.memory_gb:.1f}\t{self.status}\t{one_line(self.description)}\n"


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


@dataclass(frozen=True)
class Tally:
    finished: int
    keeps: int
    wall_s: float
    first: Experiment | None  # the baseline, where it finished
    latest_keep: Experiment | None  # the best so far: each keep beat the one before


class Shown(NamedTuple):
    """The columns of an experiment that `log` shows: read without decoding the rest of the row."""

    n: int
    commit_sha: str
    metric: float | None
    status: str
    reason: str
    run_s: float
    peak_gpu_mb: float | None
    peak_rss_mb: float
    model: str
    agent: str
    session: int
    tokens_in: int
    tokens_out: int
    cost_usd: float
    isolation: str
    description: str
    holdout: float | None

    memory_gb = Experiment.memory_gb


_JSON = {"metrics", "params", "config"}


def _encode(obj: Any) -> dict[str, Any]:
    """A record as a row; text that is not valid UTF-8 (lone surrogates, from a path or an evaluator's JSON)
    replaced, since sqlite could not store it and no reader could print it."""
    # The fields' own values, not asdict's deep copy: the JSON ones are serialized here, the rest are scalars.
    return {f.name: _storable(json.dumps(v, ensure_ascii=False) if f.name in _JSON else v)
            for f in fields(obj) for v in (getattr(obj, f.name),)}


def _storable(v: Any) -> Any:
    if isinstance(v, str):
        try:
            v.encode()
        except UnicodeEncodeError:
            return v.encode("utf-8", "replace").decode("utf-8")
    return v


_NAMES: dict[type, frozenset[str]] = {}


def _decode(cls: type, row: sqlite3.Row) -> Any:
    # `log` decodes every row of a run: the field names are looked up once per class, not per row.
    names = _NAMES.get(cls) or _NAMES.setdefault(cls, frozenset(f.name for f in fields(cls)))
    data = {}
    for k, v in zip(row.keys(), row, strict=True):
        if k in names:
            data[k] = ((json.loads(v) if v else None) or {}) if k in _JSON else v
    return cls(**data)


class Ledger:
    def __init__(self, records: Path):
        self.records = records
        records.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(records / "ledger.sqlite", timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        try:
            planted = next((r for r in self.db.execute("SELECT type, name, sql FROM sqlite_master") if not _ours(r)),
                           None)
        except sqlite3.DatabaseError as exc:  # a schema row SQLite cannot load, a file that is no database
            self.db.close()
            raise OuroborosError(f"{records / 'ledger.sqlite'} cannot be read ({exc}): the records were edited or "
                                 "damaged; inspect them with sqlite3 before using them") from None
        if planted is not None:  # it would run inside the harness's own writes, which the chain then signs
            self.db.close()
            raise OuroborosError(
                f"{records / 'ledger.sqlite'} holds a {planted['type']} {clean_text(planted['name'])[:80]!r}, which "
                "Ouroboros never creates: the records were edited; inspect it with sqlite3 and drop it (then run "
                "`ouroboros verify`) before using these records")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self._key: bytes | None = None

    def close(self) -> None:
        self.db.close()

    def run_dir(self, tag: str) -> Path:
        return self.records / "runs" / tag

    def exp_dir(self, tag: str, n: int) -> Path:
        path = self.run_dir(tag) / "exp" / str(n)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # writes: each row and its chain entry in one transaction
    def _write(self, kind: str, row: dict[str, Any]) -> None:
        from ouroboros import chain

        if self._key is None:
            self._key = chain.key()
        table = "runs" if kind == "run" else "experiments"
        n = row.get("n", -1)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(f"INSERT OR REPLACE INTO {table} ({','.join(row)}) VALUES ({','.join('?' * len(row))})",
                            list(row.values()))
            where = "tag=?" + (" AND n=?" if kind == "exp" else "")
            stored = self.db.execute(f"SELECT * FROM {table} WHERE {where}",
                                     (row["tag"], n) if kind == "exp" else (row["tag"],)).fetchone()
            chain.append(self, self._key, kind, row["tag"], n, chain.digest(stored))
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:  # a schema something planted since the open (an index that fails)
            self._rollback()
            raise OuroborosError(f"{self.records / 'ledger.sqlite'} refused a write ({exc}): the records were "
                                 "edited while the run went on; inspect them with sqlite3, then `--resume`") from None
        except BaseException:  # Ctrl-C or SIGTERM, also after the COMMIT: it goes on up, never an sqlite error
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    # runs
    def save_run(self, run: Run) -> None:
        run.updated = time.time()
        self._write("run", _encode(run))

    def run(self, tag: str) -> Run | None:
        row = self.db.execute("SELECT * FROM runs WHERE tag=?", (tag,)).fetchone()
        return _decode(Run, row) if row else None

    def runs(self) -> list[Run]:
        return [_decode(Run, r) for r in self.db.execute("SELECT * FROM runs ORDER BY created")]

    # experiments
    def begin(self, exp: Experiment) -> None:
        for name in ("description", "reason", "agent", "model"):  # agent-written text: data, cleaned
            setattr(exp, name, clean_text(getattr(exp, name)))
        self._write("exp", _encode(exp))

    def finish(self, exp: Experiment) -> None:
        """Record the verdict (the ledger first, then the table), and the metrics beside the logs."""
        exp.finished = time.time()
        self.begin(exp)
        exp_dir = self.exp_dir(exp.tag, exp.n)
        (exp_dir / "metrics.json").write_text(json.dumps(
            {**exp.metrics, "metric": exp.metric, "status": exp.status, "reason": exp.reason}, indent=1,
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

    def shown(self, tag: str) -> list[Shown]:
        """A run's experiments, in order, with the columns `log` shows."""
        cursor = self.db.cursor()
        cursor.row_factory = None
        cursor.execute(f"SELECT {','.join(Shown._fields)} FROM experiments WHERE tag=? ORDER BY n", (tag,))
        return list(map(Shown._make, cursor))

    def tally(self, tag: str) -> Tally:
        """A run's finished experiments counted by SQLite, for `status`: no row is decoded but two."""
        count, keeps, wall = self.db.execute(
            "SELECT count(*), total(status = 'keep'), total(wall_s) FROM experiments WHERE tag=? AND status != 'running'",
            (tag,)).fetchone()
        first = self.db.execute("SELECT * FROM experiments WHERE tag=? AND status != 'running' ORDER BY n LIMIT 1",
                                (tag,)).fetchone()
        top = self.db.execute("SELECT * FROM experiments WHERE tag=? AND status = 'keep' ORDER BY n DESC LIMIT 1",
                              (tag,)).fetchone()
        return Tally(count, int(keeps), wall, None if first is None else _decode(Experiment, first),
                     None if top is None else _decode(Experiment, top))

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
