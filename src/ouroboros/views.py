"""What the CLI shows: the live line per experiment, the run summary, `log` and `status`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ouroboros.errors import OuroborosError
from ouroboros.ledger import Experiment, Ledger
from ouroboros.task import RECORDS_DIR, Task

COLORS = {"keep": "green", "discard": "dim", "crash": "red", "timeout": "magenta", "violation": "bold red"}


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


class Live:
    def __init__(self, console: Console, task: Task):
        self.console, self.task = console, task

    def header(self, loop) -> None:
        r = loop.run_rec
        self.console.print(f"run [bold]{r.tag}[/] on branch {r.branch}: task {r.task}, agent {loop.agent.name}, "
                           f"budget {loop.budget:g} s, metric {r.metric} ({r.direction}, trust {r.trust})")

    def line(self, exp: Experiment, best: Experiment) -> None:
        color = COLORS.get(exp.status, "")
        why = f" [dim]({exp.reason})[/]" if exp.status in ("crash", "timeout", "violation") else ""
        self.console.print(f"{exp.n:>4}  {self.task.metric.name} {fmt(exp.metric):>10}  best {fmt(best.metric):>10}  "
                           f"[{color}]{exp.status:<9}[/]  {exp.wall_s:6.1f}s  {exp.description[:80]}{why}",
                           soft_wrap=True)

    def summary(self, loop) -> None:
        exps = loop.finished
        base, best = exps[0], loop.best
        counts = {v: sum(e.status == v for e in exps[1:]) for v in COLORS}
        change = "" if base.metric is None or best.metric is None else f" ({best.metric - base.metric:+.6f} vs baseline)"
        self.console.print(
            f"done: {len(exps) - 1} experiments ({', '.join(f'{k} {v}' for k, v in counts.items() if v)}); "
            f"best {self.task.metric.name} {fmt(best.metric)} at experiment {best.n} [{best.commit_sha[:7]}]{change}")
        run_dir = loop.ledger.run_dir(loop.tag)
        self.console.print(f"results: {run_dir / 'results.tsv'}  ledger: {loop.ledger.records / 'ledger.sqlite'}  "
                           f"best commit: branch {loop.run_rec.branch}")


def _ledger(task: Task) -> Ledger:
    records = task.root / RECORDS_DIR
    if not (records / "ledger.sqlite").exists():
        raise OuroborosError(f"no runs yet in {task.root}; start one with `ouroboros run --agent random -n 10`")
    return Ledger(records)


def holdout_worse(exps: list[Experiment], minimize: bool) -> set[int]:
    """Keeps whose private holdout metric got worse than the previous keep's."""
    marked, last = set(), None
    for e in exps:
        if e.status != "keep" or e.holdout is None:
            continue
        if last is not None and (e.holdout > last if minimize else e.holdout < last):
            marked.add(e.n)
        last = e.holdout
    return marked


def log(console: Console, task: Task, tag: str | None) -> None:
    ledger = _ledger(task)
    runs = ledger.runs()
    if not runs:
        raise OuroborosError("no runs yet")
    run = ledger.run(tag) if tag else runs[-1]
    if run is None:
        raise OuroborosError(f"no run {tag!r}; runs: {', '.join(r.tag for r in runs)}")
    exps = ledger.experiments(run.tag)
    worse = holdout_worse(exps, run.direction == "minimize")
    table = Table(title=f"run {run.tag} ({run.agent}, trust {run.trust})")
    rows = []
    for e in exps:
        flag = " [yellow](holdout worse)[/]" if e.n in worse else ""
        why = f" ({e.reason})" if e.status in ("crash", "timeout", "violation") else ""
        rows.append({"n": str(e.n), "commit": e.commit_sha[:7], run.metric: fmt(e.metric),
                     "status": f"[{COLORS.get(e.status, '')}]{e.status}[/]", "run s": f"{e.run_s:.1f}",
                     "mem GB": f"{e.memory_gb:.2f}", "agent": e.model or e.agent, "session": str(e.session or ""),
                     "tokens": str(e.tokens_in + e.tokens_out) if e.tokens_in or e.tokens_out else "",
                     "cost $": f"{e.cost_usd:.4f}" if e.cost_usd else "", "isolation": e.isolation,
                     "description": e.description + why + flag})
    # Columns that say nothing (all empty, or the same on every row) are left out to keep rows short.
    cols = [c for c in rows[0] if c in ("n", "commit", run.metric, "status", "description")
            or len({r[c] for r in rows}) > 1 or (c in ("agent", "isolation") and rows[-1][c])]
    for col in cols:
        table.add_column(col, overflow="fold", no_wrap=col != "description")
    for r in rows:
        table.add_row(*(r[c] for c in cols))
    console.print(table)
    ledger.close()


def status(console: Console, task: Task) -> None:
    ledger = _ledger(task)
    table = Table(title=f"runs of {task.name}")
    for col in ("tag", "agent", "status", "experiments", "keeps", f"best {task.metric.name}", "baseline", "trust"):
        table.add_column(col)
    for run in ledger.runs():
        exps = ledger.experiments(run.tag, finished_only=True)
        keeps = [e for e in exps if e.status == "keep"]
        table.add_row(run.tag, run.agent, run.status, str(max(len(exps) - 1, 0)), str(max(len(keeps) - 1, 0)),
                      fmt(keeps[-1].metric if keeps else None), fmt(exps[0].metric if exps else None), run.trust)
    console.print(table)
    ledger.close()
