"""Reading runs out of ledgers into `data.RunData` (the only part of the report that reads records)."""

from __future__ import annotations

import json
from pathlib import Path

from ouroboros.dashboard.reader import DIFF_BYTES, read_tail
from ouroboros.errors import OuroborosError
from ouroboros.ledger import Ledger, Run
from ouroboros.report.data import Attempt, RunData
from ouroboros.task import RECORDS_DIR, TASK_FILE, load_task


def _budget(run: Run, task_dir: Path | None) -> float | None:
    if run.config.get("budget"):
        return float(run.config["budget"])
    if task_dir is not None and (task_dir / TASK_FILE).is_file():
        return load_task(task_dir).task.budget
    return None


def run_data(ledger: Ledger, run: Run, task_dir: Path | None = None, diffs: bool = True) -> RunData:
    attempts = []
    for e in ledger.experiments(run.tag):
        diff = None
        if diffs and e.n > 0:
            path = ledger.run_dir(run.tag) / "exp" / str(e.n) / "diff.patch"
            diff = read_tail(path, DIFF_BYTES)  # capped: an attempt may hold a diff of hundreds of MB
        attempts.append(Attempt(e.n, e.status, e.metric, e.description, e.params, e.started, e.finished,
                                e.session, diff, tokens_in=e.tokens_in or 0, tokens_out=e.tokens_out or 0))
    return RunData(run.tag, run.condition or run.agent, run.direction, run.seed, run.sessions,
                   _budget(run, task_dir), tuple(attempts), run.metric, run.noise_sigma, run.agent)


def ledger_runs(records: Path, study: str | None = None, task_dir: Path | None = None) -> list[RunData]:
    if not (records / "ledger.sqlite").is_file():
        return []
    ledger = Ledger(records)
    try:
        return [run_data(ledger, r, task_dir) for r in ledger.runs() if study is None or r.study == study]
    finally:
        ledger.close()


def study_runs(folder: Path) -> tuple[dict, list[RunData]]:
    """The study's manifest and every run of it, from each condition's ledger."""
    manifest = json.loads((folder / "study.json").read_text())
    name = manifest["study"]["name"]
    runs: list[RunData] = []
    for task_dir in manifest["conditions"].values():
        runs += ledger_runs(Path(task_dir) / RECORDS_DIR, name, Path(task_dir))
    order = {c["name"]: i for i, c in enumerate(manifest["study"]["conditions"])}
    runs.sort(key=lambda r: (order.get(r.condition, len(order)), r.tag))
    return manifest, runs


def one_run(task_dir: Path, tag: str | None) -> RunData:
    records = task_dir / RECORDS_DIR
    if not (records / "ledger.sqlite").is_file():
        raise OuroborosError(f"no runs yet in {task_dir}; start one with `ouroboros run -n 10`")
    ledger = Ledger(records)
    try:
        runs = ledger.runs()
        run = ledger.run(tag) if tag else (runs[-1] if runs else None)
        if run is None:
            raise OuroborosError(f"no run {tag!r} in {task_dir}; runs: {', '.join(r.tag for r in runs) or 'none'}")
        return run_data(ledger, run, task_dir)
    finally:
        ledger.close()
