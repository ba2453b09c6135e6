"""What the dashboard reads: the ledger through a read-only SQLite connection, and the run folders.

The ledger is opened as `file:...?mode=ro`, so the dashboard cannot change a record even by mistake,
and it reads alongside the processes that write it (WAL: readers never block the writer). Every
file it shows is read as a bounded tail of a regular file inside the records folder; text written
by the agent, the run or the evaluator is returned as data and escaped by whoever displays it.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ouroboros.errors import OuroborosError
from ouroboros.judge import gain
from ouroboros.ledger import shown_status
from ouroboros.task import RECORDS_DIR, TASK_FILE

TAIL_BYTES = 32_000
DIFF_BYTES = 400_000
GUIDANCE_MAX = 64_000
# The table's columns: small, so 5,000 rows stay a few hundred kilobytes (metrics JSON is per row, on click).
_ROW = "n, status, reason, metric, description, agent, model, cost_usd, wall_s, finished"
_COLUMNS = [c.strip() for c in _ROW.split(",")]


_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)


def env_secrets(environ: dict[str, str] | None = None) -> list[str]:
    """Values of this process's secret-looking environment variables (API keys, tokens), longest first."""
    env = os.environ if environ is None else environ
    found = {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= 8}
    return sorted(found, key=len, reverse=True)


def redact(text: str | None, secrets: list[str]) -> str | None:
    """A log that printed a key (an agent echoing its environment) shows `[redacted]` instead."""
    if text is None:
        return None
    for value in secrets:
        text = text.replace(value, "[redacted]")
    return text


def connect(records: Path) -> sqlite3.Connection:
    path = records / "ledger.sqlite"
    if not path.is_file():
        raise OuroborosError(f"no ledger at {path}; start a run first (`ouroboros run -C TASK -n 10`)")
    db = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=10,
                         check_same_thread=False)
    db.row_factory = sqlite3.Row
    return db


def read_tail(path: Path, size: int = TAIL_BYTES) -> str | None:
    """The last `size` bytes of a regular file (links are not followed); None when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        os.lseek(fd, max(0, info.st_size - size), os.SEEK_SET)
        data = os.read(fd, size)
    finally:
        os.close(fd)
    text = data.decode(errors="replace").replace("\x00", "\ufffd")
    return ("[... earlier lines cut ...]\n" + text) if info.st_size > size else text


def file_size(path: Path) -> int:
    try:
        info = os.lstat(path)
    except OSError:
        return -1
    return info.st_size if stat.S_ISREG(info.st_mode) else -1


def _num(v: Any) -> float | None:
    return v if isinstance(v, int | float) and v == v and v not in (float("inf"), float("-inf")) else None


def _json(text: str | None) -> Any:
    try:
        return json.loads(text or "{}")
    except ValueError:
        return {"unreadable": text}


@dataclass
class Source:
    """One task's records, read-only."""

    task_dir: Path

    def __post_init__(self) -> None:
        self.records = self.task_dir / RECORDS_DIR
        self.db = connect(self.records)
        self.secrets = env_secrets()
        self._budget: float | None = None
        if (self.task_dir / TASK_FILE).is_file():
            try:
                from ouroboros.task import load_task

                self._budget = load_task(self.task_dir).task.budget
            except OuroborosError:
                self._budget = None

    def close(self) -> None:
        self.db.close()

    def version(self) -> int:
        """Changes whenever another connection commits (SQLite's data_version): one cheap poll."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    # -- runs ---------------------------------------------------------------------------------
    def _run_row(self, tag: str) -> sqlite3.Row:
        row = self.db.execute("SELECT * FROM runs WHERE tag=?", (tag,)).fetchone()
        if row is None:
            raise KeyError(tag)
        return row

    def run_dir(self, tag: str) -> Path:
        self._run_row(tag)  # only tags the ledger holds name a folder
        if "/" in tag or tag in ("", ".", ".."):
            raise KeyError(tag)
        return self.records / "runs" / tag

    def budget(self, config: dict) -> float | None:
        return float(config["budget"]) if config.get("budget") else self._budget

    def run_summary(self, row: sqlite3.Row, now: float | None = None) -> dict[str, Any]:
        now = now or time.time()
        config = json.loads(row["config"] or "{}")
        minimize = row["direction"] != "maximize"
        agg = self.db.execute(
            "SELECT count(*) AS done, max(finished) AS last FROM experiments WHERE tag=? AND status != 'running'",
            (row["tag"],)).fetchone()
        base = self.db.execute("SELECT metric FROM experiments WHERE tag=? AND n=0 AND status='keep'",
                               (row["tag"],)).fetchone()
        best = self.db.execute(
            f"SELECT {'min' if minimize else 'max'}(metric) FROM experiments WHERE tag=? AND status='keep'",
            (row["tag"],)).fetchone()[0]
        current = self.db.execute("SELECT n, started FROM experiments WHERE tag=? AND status='running' "
                                  "ORDER BY n DESC LIMIT 1", (row["tag"],)).fetchone()
        done = max(agg["done"] - 1, 0)  # the baseline is not an experiment of the search
        cap = config.get("max_experiments")
        base_metric = base["metric"] if base else None
        status = shown_status(row["status"], self.records / "runs" / row["tag"]) if "/" not in row["tag"] else row["status"]
        running = status == "running"
        return {
            "tag": row["tag"], "agent": row["agent"], "status": status, "metric": row["metric"],
            "direction": row["direction"], "trust": row["trust"], "study": row["study"],
            "condition": row["condition"], "experiments": done,
            "left": max(cap - done, 0) if isinstance(cap, int) else None,
            "hours": config.get("hours"), "best": _num(best), "baseline": _num(base_metric),
            "gain": (gain(best, base_metric, minimize) if _num(best) is not None and _num(base_metric) is not None
                     else None),
            "elapsed_s": (now if running else (row["updated"] or now)) - (row["created"] or now),
            "current": ({"n": current["n"], "elapsed_s": now - (current["started"] or now)}
                        if running and current else None),
            "budget_s": self.budget(config), "updated": row["updated"],
        }

    def runs(self) -> list[dict[str, Any]]:
        now = time.time()
        return [self.run_summary(r, now) for r in self.db.execute("SELECT * FROM runs ORDER BY created")]

    def run(self, tag: str) -> dict[str, Any]:
        return self.run_summary(self._run_row(tag))

    # -- experiments --------------------------------------------------------------------------
    def table(self, tag: str, since: float | None = None) -> dict[str, Any]:
        """The table's rows as {"columns": [...], "rows": [[...], ...]} (compact: 5,000 rows are one
        query and one JSON list); with `since`, only rows finished at or after it and rows still running."""
        sql = f"SELECT {_ROW} FROM experiments WHERE tag=?"
        args: tuple = (tag,)
        if since is not None:
            sql += " AND (status = 'running' OR finished >= ?)"
            args = (tag, since)
        cursor = self.db.cursor()
        cursor.row_factory = None  # tuples: a third of the time of sqlite3.Row -> dict
        rows: list = cursor.execute(sql + " ORDER BY n", args).fetchall()
        if self.secrets:
            d, r = _COLUMNS.index("description"), _COLUMNS.index("reason")
            rows = [(*row[:r], redact(row[r], self.secrets), *row[r + 1:d], redact(row[d], self.secrets),
                     *row[d + 1:]) for row in rows]
        return {"columns": _COLUMNS, "rows": rows}

    def experiments(self, tag: str, since: float | None = None) -> list[dict[str, Any]]:
        """The table's rows as dicts."""
        return [dict(zip(_COLUMNS, row, strict=True)) for row in self.table(tag, since)["rows"]]

    def experiment(self, tag: str, n: int) -> dict[str, Any]:
        row = self.db.execute("SELECT * FROM experiments WHERE tag=? AND n=?", (tag, n)).fetchone()
        if row is None:
            raise KeyError(n)
        folder = self.run_dir(tag) / "exp" / str(n)

        def text(name: str, size: int = TAIL_BYTES) -> str | None:
            return redact(read_tail(folder / name, size), self.secrets)

        return {
            "n": n, "status": row["status"], "reason": redact(row["reason"], self.secrets),
            "metric": _num(row["metric"]), "description": redact(row["description"], self.secrets),
            "commit": row["commit_sha"], "parent": row["parent"],
            "agent": row["agent"], "model": row["model"],
            "metrics": _json(redact(row["metrics"], self.secrets)),
            "diff": text("diff.patch", DIFF_BYTES), "run_log": text("run.log"), "eval_log": text("eval.log"),
            "agent_log": text("agent.log"),
            "guard": row["reason"] if row["status"] == "violation" else None,
        }

    def current_log(self, tag: str) -> tuple[int | None, Path | None]:
        """The running experiment's number and its run.log, if one is running."""
        row = self.db.execute("SELECT n FROM experiments WHERE tag=? AND status='running' ORDER BY n DESC LIMIT 1",
                              (tag,)).fetchone()
        if row is None:
            return None, None
        return row["n"], self.run_dir(tag) / "exp" / str(row["n"]) / "run.log"

    def lineage(self, tag: str) -> tuple[list[dict[str, Any]], bool]:
        """The experiments as a tree by `parent` (the commit each one started from), depth-first,
        and whether the run searched a tree (some experiment did not start from the latest keep).

        A parent that no experiment's commit matches (an older ledger, a reset) hangs off the
        baseline, so the view degrades to a list rather than failing.
        """
        rows = [dict(r) for r in self.db.execute(
            "SELECT n, status, metric, description, commit_sha, parent FROM experiments WHERE tag=? ORDER BY n",
            (tag,))]
        by_commit: dict[str, int] = {}
        tree, latest_keep = False, None
        for r in rows:
            if r["n"] and latest_keep is not None and r["parent"] != latest_keep:
                tree = True
            if r["status"] == "keep":
                latest_keep = r["commit_sha"]
            if r["commit_sha"]:
                by_commit.setdefault(r["commit_sha"], r["n"])
        root = rows[0]["n"] if rows and rows[0]["n"] == 0 else None
        children: dict[int | None, list[dict]] = {}
        for r in rows:
            up = by_commit.get(r["parent"]) if r["n"] != root else None
            if up is None or up >= r["n"]:  # unknown, or not earlier: no cycles, whatever is recorded
                up = None if r["n"] == root else root
            children.setdefault(up, []).append(r)
        out: list[dict[str, Any]] = []
        stack = [(r, 0) for r in reversed(children.get(None, []))]
        while stack:
            r, depth = stack.pop()
            kids = children.get(r["n"], [])
            out.append({**r, "depth": depth, "children": len(kids)})
            stack += [(k, depth + 1) for k in reversed(kids)]
        return out, tree


def write_guidance(run_dir: Path, text: str) -> Path:
    """Replace the run's guidance.md (the one write the dashboard makes), atomically."""
    if "\x00" in text:
        raise OuroborosError("guidance holds a NUL byte; send plain text")
    if len(text.encode()) > GUIDANCE_MAX:
        raise OuroborosError(f"guidance is {len(text.encode())} bytes; keep it under {GUIDANCE_MAX}")
    if not run_dir.is_dir():
        raise OuroborosError(f"no run folder {run_dir}; the run has not started yet")
    path = run_dir / "guidance.md"
    tmp = run_dir / f".guidance.{os.getpid()}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)  # replaces a link itself, never what it points at
    return path
