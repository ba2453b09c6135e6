"""What the CLI shows: the live line per experiment, the run summary, `log` and `status`.

Every string an agent, a run or an evaluator could have written (descriptions, reasons, agent and
model names, tags) goes through `text`: cleaned, cut to a length, and escaped for rich markup, so a
`[/]` or a NUL in a description is shown as written and never breaks a later `log` or `status`.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ouroboros import chain, isolation
from ouroboros.errors import OuroborosError
from ouroboros.ledger import Experiment, Ledger, fmt_metric, one_line
from ouroboros.task import RECORDS_DIR, Task

COLORS = {"keep": "green", "discard": "dim", "crash": "red", "timeout": "magenta", "violation": "bold red"}


SHOWN_CHARS = 300  # of a description in `log` (the ledger has it all)


def header_lines(loop, agent_driven: bool = False) -> list[str]:
    """What a run is protected by and runs with: isolation level (and how to get bwrap when it is
    weaker), whether the agent's own process is confined, the experiments' Python, warnings."""
    level = loop.isolation.level
    out = [f"isolation: {level}" + ("" if level == "bwrap" else " (weaker than bwrap)")]
    hint = isolation.install_hint(level)
    if hint:
        out.append(hint)
    if getattr(loop.agent, "writes_code", True) and hasattr(loop.agent, "command"):
        if agent_driven:
            out.append("agent: NOT confined (agent-driven sessions run `ouroboros exp`, which writes the records); "
                       "it runs with your rights: use --drive harness to confine it")
        elif loop.agent_confined:
            out.append("agent: confined (bwrap: network and its key; worktree writable; records, checkout and "
                       "the rest of $HOME hidden)")
        else:
            out.append("agent: NOT confined (no bubblewrap): it runs with your rights")
    out.append(f"experiments run with {loop.interpreter()}")
    return out + list(getattr(loop, "warnings", []))


def fmt(value: float | None) -> str:
    return fmt_metric(value)


def text(value: object, limit: int = SHOWN_CHARS) -> str:
    """Untrusted text for a rich console: one clean line, at most `limit` characters, markup escaped."""
    return escape(one_line(str(value) if value is not None else "", limit))


class Live:
    def __init__(self, console: Console, task: Task):
        self.console, self.task = console, task

    def header(self, loop, agent_driven: bool = False) -> None:
        r = loop.run_rec
        self.console.print(f"run [bold]{text(r.tag)}[/] on branch {text(r.branch)}: task {text(r.task)}, agent "
                           f"{text(loop.agent.name)}, seed {r.seed}, budget {loop.budget:g} s, metric {text(r.metric)} "
                           f"({r.direction}, trust {r.trust})", soft_wrap=True)
        for line in header_lines(loop, agent_driven):
            self.console.print(escape(line), soft_wrap=True)

    def line(self, exp: Experiment, best: Experiment) -> None:
        color = COLORS.get(exp.status, "")
        why = f" [dim]({text(exp.reason)})[/]" if exp.status in ("crash", "timeout", "violation") else ""
        self.console.print(f"{exp.n:>4}  {self.task.metric.name} {fmt(exp.metric):>10}  best {fmt(best.metric):>10}  "
                           f"[{color}]{exp.status:<9}[/]  {exp.wall_s:6.1f}s  {text(exp.description, 80)}{why}",
                           soft_wrap=True)

    def summary(self, loop) -> None:
        exps = loop.finished
        base, best = exps[0], loop.best
        counts = {v: sum(e.status == v for e in exps[1:]) for v in COLORS}
        change = "" if base.metric is None or best.metric is None else f" ({best.metric - base.metric:+.6g} vs baseline)"
        self.console.print(
            f"done: {len(exps) - 1} experiments ({', '.join(f'{k} {v}' for k, v in counts.items() if v)}); "
            f"best {self.task.metric.name} {fmt(best.metric)} at experiment {best.n} {escape(f'[{best.commit_sha[:7]}]')}{change}")
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
        raise OuroborosError(f"no run {one_line(tag, 80)!r}; runs: {', '.join(one_line(r.tag, 80) for r in runs)}")
    warn(console, ledger, task, run.tag)
    exps = ledger.experiments(run.tag)
    worse = holdout_worse(exps, run.direction == "minimize")
    table = Table(title=f"run {text(run.tag)} ({text(run.agent, 80)}, seed {run.seed}, trust {text(run.trust)})")
    rows = []
    for e in exps:
        flag = " [yellow](holdout worse)[/]" if e.n in worse else ""
        why = f" ({text(e.reason)})" if e.status in ("crash", "timeout", "violation") else ""
        rows.append({"n": str(e.n), "commit": text(e.commit_sha[:7]), run.metric: fmt(e.metric),
                     "status": f"[{COLORS.get(e.status, '')}]{text(e.status)}[/]", "run s": f"{e.run_s:.1f}",
                     "mem GB": f"{e.memory_gb:.2f}", "agent": text(e.model or e.agent, 80),
                     "session": str(e.session or ""),
                     "tokens": str(e.tokens_in + e.tokens_out) if e.tokens_in or e.tokens_out else "",
                     "cost $": f"{e.cost_usd:.4f}" if e.cost_usd else "", "isolation": text(e.isolation, 40),
                     "description": text(e.description) + why + flag})
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
    table = Table(title=f"runs of {text(task.name)}")
    for col in ("tag", "agent", "seed", "status", "experiments", "keeps", f"best {task.metric.name}", "baseline",
                "trust"):
        table.add_column(col)
    runs = ledger.runs()
    warn(console, ledger, task, None)
    for run in runs:
        exps = ledger.experiments(run.tag, finished_only=True)
        keeps = [e for e in exps if e.status == "keep"]
        table.add_row(text(run.tag, 80), text(run.agent, 80), str(run.seed), text(run.status, 40),
                      str(max(len(exps) - 1, 0)), str(max(len(keeps) - 1, 0)), fmt(keeps[-1].metric if keeps else None),
                      fmt(exps[0].metric if exps else None), text(run.trust, 40))
    console.print(table)
    ledger.close()


def warn(console: Console, ledger: Ledger, task: Task, tag: str | None) -> None:
    """One warning line when the records (of one run, or all) do not verify; `verify` lists why."""
    problems = chain.verify_chain(ledger, tag)
    if problems:
        console.print(f"[bold red]warning:[/] the records{' of run ' + text(tag) if tag else ''} do not verify "
                      f"({len(problems)} problem(s), first: {text(problems[0], 200)}); they were changed outside "
                      f"Ouroboros. See `ouroboros verify -C {escape(str(task.root))}`")


def verify(console: Console, task: Task, tag: str | None) -> int:
    """Print what disagrees between the chain, the attempt refs and results.tsv; the number of problems."""
    from ouroboros.workspace import repo_root

    ledger = _ledger(task)
    tags = [tag] if tag else [r.tag for r in ledger.runs()]
    if tag and ledger.run(tag) is None and not ledger.experiments(tag):
        raise OuroborosError(f"no run {one_line(tag, 80)!r}; runs: {', '.join(r.tag for r in ledger.runs())}")
    repo = repo_root(task.root)
    total = 0
    seen_chain: set[str] = set()
    for t in tags:
        problems = [p for p in chain.verify(ledger, repo, t)
                    if not (p.where == "chain" and str(p) in seen_chain)]  # chain-wide problems once
        seen_chain |= {str(p) for p in problems if p.where == "chain"}
        n = len(ledger.experiments(t))
        if problems:
            console.print(f"[bold red]run {text(t)}: {len(problems)} problem(s)[/]")
            for p in problems:
                console.print(f"  {text(p.where, 120)}: {text(p.what, 400)}")
        else:
            console.print(f"run {text(t)}: [green]verified[/] ({n} experiments: chain, attempt refs and results.tsv "
                          "agree)")
        total += len(problems)
    ledger.close()
    return total
