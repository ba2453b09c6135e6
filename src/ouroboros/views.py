"""What the CLI shows: the live line per experiment, the run summary, `log` and `status`.

Every string an agent, a run or an evaluator could have written (descriptions, reasons, agent and
model names, tags) goes through `text`: cleaned, cut to a length, and escaped for rich markup, so a
`[/]` or a NUL in a description is shown as written and never breaks a later `log` or `status`.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.text import Text

from ouroboros import chain
from ouroboros.errors import OuroborosError
from ouroboros.ledger import Experiment, Ledger, Shown, fmt_metric, one_line, one_lines, shown_status
from ouroboros.task import RECORDS_DIR

if TYPE_CHECKING:  # `log` and `status` start without the loop's modules (isolation, sandbox) or rich.table
    from rich.console import Console

    from ouroboros.task import Task

COLORS = {"keep": "green", "discard": "dim", "crash": "red", "timeout": "magenta", "violation": "bold red"}


SHOWN_CHARS = 300  # of a description in `log` (the ledger has it all)


def header_lines(loop, agent_driven: bool = False) -> list[str]:
    """What a run is protected by and runs with: isolation level (and how to get bwrap when it is
    weaker), whether the agent's own process is confined, the experiments' Python, warnings."""
    from ouroboros import isolation

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


_METRIC_LIKE = re.compile(r"[A-Za-z_][\w/ .-]*\s*[:=]\s*[-+]?\d")


def last_metric_line(log: Path) -> str:
    """The last line of a log that looks like `name: number` (a step's loss, a val_bpb)."""
    from ouroboros.sandbox import tail_text

    try:
        tail = tail_text(log, 16_000)
    except OSError:
        return ""
    for line in reversed(tail.replace("\r", "\n").splitlines()):
        if _METRIC_LIKE.search(line):
            return "".join(c if c.isprintable() else "?" for c in " ".join(line.split()))[:100]
    return ""


def progress_line(n: str, log: Path, elapsed: float, budget: float) -> str:
    """One experiment in flight: elapsed against the budget, the last metric-like line, the log's path."""
    last = last_metric_line(log)
    return f"experiment {n}: {elapsed:.0f}/{budget:g} s" + (f"  {last}" if last else "") + f"  (log: {log})"


class Live:
    """The lines a run prints; `watching` shows the experiment in flight (a live line on a terminal,
    refreshed 4 times a second; a plain line every PLAIN_EVERY seconds otherwise)."""

    PLAIN_EVERY = 30.0

    def __init__(self, console: Console, task: Task):
        self.console, self.task = console, task

    @contextmanager
    def watching(self, loop) -> Iterator[None]:
        from rich.live import Live as RichLive

        stop = threading.Event()
        live = RichLive(Text(""), console=self.console, refresh_per_second=4, transient=True) \
            if self.console.is_terminal else None

        def poll() -> None:
            seen, last_plain = None, 0.0
            while not stop.wait(0.25):
                current = getattr(loop, "running_log", None)
                if current is None:
                    if live is not None:
                        live.update(Text(""))
                    continue
                n, log, started = current
                elapsed = time.monotonic() - started
                if live is not None:
                    live.update(Text(progress_line(n, log, elapsed, loop.budget), overflow="ellipsis", no_wrap=True))
                elif current != seen:
                    seen, last_plain = current, time.monotonic()
                    self.console.print(f"experiment {n} running; its log: {log}", markup=False)
                elif time.monotonic() - last_plain >= self.PLAIN_EVERY:
                    last_plain = time.monotonic()
                    self.console.print(progress_line(n, log, elapsed, loop.budget), markup=False)

        thread = threading.Thread(target=poll, daemon=True, name="ouroboros-progress")
        if live is not None:
            live.start()
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            if live is not None:
                live.stop()

    def header(self, loop, agent_driven: bool = False) -> None:
        r = loop.run_rec
        self.console.print(f"run [bold]{text(r.tag)}[/] on branch {text(r.branch)}: task {text(r.task)}, agent "
                           f"{text(loop.agent.name)}, seed {r.seed}, budget {loop.budget:g} s, metric {text(r.metric)} "
                           f"({r.direction}, trust {r.trust})", soft_wrap=True)
        for line in header_lines(loop, agent_driven):
            self.console.print(escape(line), soft_wrap=True)
        from ouroboros.loop import budget_agreement

        note = budget_agreement(self.task, loop.budget)
        if note:
            self.console.print(f"[yellow]note:[/] {text(note, 600)}")
        left = getattr(loop, "left_out", [])
        if left:
            self.console.print(f"[yellow]note:[/] {len(left)} untracked file(s) stay out of the run (no task glob "
                               f"names them): {text(', '.join(left[:5]), 300)}{' ...' if len(left) > 5 else ''}")

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


def holdout_worse(exps: Sequence[Experiment | Shown], minimize: bool) -> set[int]:
    """Keeps whose private holdout metric got worse than the previous keep's."""
    marked, last = set(), None
    for e in exps:
        if e.status != "keep" or e.holdout is None:
            continue
        if last is not None and (e.holdout > last if minimize else e.holdout < last):
            marked.add(e.n)
        last = e.holdout
    return marked


def log(console: Console, task: Task, tag: str | None, tsv: bool = False) -> None:
    ledger = _ledger(task)
    runs = ledger.runs()
    if not runs:
        raise OuroborosError("no runs yet")
    run = ledger.run(tag) if tag else runs[-1]
    if run is None:
        raise OuroborosError(f"no run {one_line(tag, 80)!r}; runs: {', '.join(one_line(r.tag, 80) for r in runs)}")
    warn(console, ledger, task, run.tag)
    exps = ledger.shown(run.tag)
    ledger.close()
    if not exps:
        console.print(f"run {text(run.tag)}: no experiments yet")
        return
    # Built a column at a time (10,000 rows in well under a second); a cell is plain text, or (text, style)
    # for the status, or (text, (flag, style) or None) for the description.
    worse = holdout_worse(exps, run.direction == "minimize")
    status = one_lines([e.status for e in exps], 40)
    why = [f" ({one_line(e.reason, SHOWN_CHARS)})" if e.status in ("crash", "timeout", "violation") else ""
           for e in exps]
    table = {
        "n": [str(e.n) for e in exps],
        "commit": one_lines([e.commit_sha[:7] for e in exps]),
        run.metric: [fmt(e.metric) for e in exps],
        "status": list(zip(status, [COLORS.get(e.status, "") for e in exps], strict=True)),
        "run s": [f"{e.run_s:.1f}" for e in exps],
        "mem GB": [f"{e.memory_gb:.2f}" for e in exps],
        "agent": one_lines([e.model or e.agent for e in exps], 80),
        "session": [str(e.session or "") for e in exps],
        "tokens in/out": [f"{e.tokens_in}/{e.tokens_out}" if e.tokens_in or e.tokens_out else "" for e in exps],
        "cost $": [f"{e.cost_usd:.4f}" if e.cost_usd else "" for e in exps],
        "isolation": one_lines([e.isolation for e in exps], 40),
        "description": list(zip([d + w for d, w in zip(one_lines([e.description for e in exps], SHOWN_CHARS), why,
                                                          strict=True)],
                                [("(holdout worse)", "yellow") if e.n in worse else None for e in exps], strict=True)),
    }
    # Columns that say nothing (all empty, or the same on every row) are left out to keep rows short.
    cols = [c for c, cells in table.items() if c in ("n", "commit", run.metric, "status", "description")
            or len(set(cells)) > 1 or (c in ("agent", "isolation") and cells[-1])]
    title = f"run {one_line(run.tag, 80)} ({one_line(run.agent, 80)}, seed {run.seed}, trust {one_line(run.trust, 40)})"
    if tsv:  # piped: one tab-separated row per experiment, for grep and cut
        print(title, file=sys.stderr)
        plain = [[_plain(cell) for cell in table[c]] if c in ("status", "description") else table[c] for c in cols]
        _rows(console, [cols, *zip(*plain, strict=True)])
        return
    columns(console, title, cols, [list(r) for r in zip(*(table[c] for c in cols), strict=True)])


def _rows(console: Console, rows: Iterable[Iterable]) -> None:
    """Tab-separated lines, written as they are (rich would expand the tabs) in one write; a cell never
    holds a tab or newline."""
    out = console.file
    out.write("".join("\t".join(" ".join(str(c).split()) for c in cells) + "\n" for cells in rows))
    out.flush()


def _plain(cell) -> str:
    """A cell's text without its style: plain text, a (text, style) pair, or (text, (flag, style) or None)."""
    if isinstance(cell, tuple):
        return cell[0] if isinstance(cell[1], str) or cell[1] is None else f"{cell[0]} {cell[1][0]}"
    return cell


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class _Lines:
    """Lines, each a list of (text, style or "") stretches, handed to rich as its segments: rich still
    applies the console's colour system, NO_COLOR and the rest, but need not divide and re-render one
    Text of 10,000 lines (a second or more; a rich Table takes longer)."""

    def __init__(self, lines: list[list[tuple[str, str]]]):
        self.lines = lines

    def __rich_console__(self, console: Console, options) -> Iterator:
        from rich.segment import Segment

        styles: dict = {}
        newline = Segment.line()
        for parts in self.lines:
            for txt, style in parts:
                if txt:
                    if style and style not in styles:
                        styles[style] = console.get_style(style)
                    yield Segment(txt, styles[style] if style else None)
            yield newline


def columns(console: Console, title: str, cols: list[str], rows: list[list]) -> None:
    """A table with one line per row, aligned, the last column cut to the terminal's width. Cells are
    plain text (never markup, so no cell can style or break another), a (text, style) pair, or for the
    last column (text, (text, style) or None). Each cell is one_line()'d already: no control codes."""
    widths = [max([len(col), *(len(_plain(r[i])) for r in rows)]) for i, col in enumerate(cols[:-1])]
    room = max(console.width - sum(w + 2 for w in widths), 20) if console.is_terminal else None
    lines = [[(title, "bold")], [("  ".join([*(c.ljust(w) for c, w in zip(cols, widths, strict=False)), cols[-1]]),
                                  "bold")]]
    for r in rows:
        parts, plain = [], ""  # plain text runs together into one stretch
        for cell, w in zip(r, widths, strict=False):
            txt, style = (cell if isinstance(cell, tuple) else (cell, ""))
            if style:
                parts += [(plain, ""), (txt, style)]
                plain = " " * (w - len(txt) + 2)
            else:
                plain += txt.ljust(w + 2)
        last, extra = (r[-1] if isinstance(r[-1], tuple) else (r[-1], None))
        if isinstance(extra, str):  # a (text, style) pair as the last column
            parts += [(plain, ""), (last[:room] if room else last, extra)]
        else:
            if extra is not None:
                last = f"{last} "
            parts.append((plain + (last[:room] if room else last), ""))
            if extra is not None and (room is None or len(last) + len(extra[0]) <= room):
                parts.append(extra)
        lines.append(parts)
    console.print(_Lines(lines), end="", soft_wrap=True, highlight=False)


def status(console: Console, task: Task, tsv: bool = False) -> None:
    ledger = _ledger(task)
    cols = ("tag", "agent", "seed", "status", "experiments", "keeps", f"best {task.metric.name}", "baseline", "gain",
            "best exp", "commit", "duration", "trust")
    rows = []
    runs = ledger.runs()
    warn(console, ledger, task, None)
    for run in runs:
        t = ledger.tally(run.tag)
        top, base = t.latest_keep, t.first
        gain = "-" if top is None or base is None or top.metric is None or base.metric is None or top.n == base.n \
            else f"{top.metric - base.metric:+.6g}"
        shown = shown_status(run.status, ledger.run_dir(run.tag))
        rows.append((one_line(run.tag, 80), one_line(run.agent, 80), str(run.seed), one_line(shown, 40),
                     str(max(t.finished - 1, 0)), str(max(t.keeps - 1, 0)),
                     fmt(top.metric if top else None), fmt(base.metric if base else None), gain,
                     str(top.n) if top else "-", top.commit_sha[:7] if top else "-",
                     _duration(t.wall_s), one_line(run.trust, 40)))
    ledger.close()
    if tsv:  # piped: one tab-separated row per run
        _rows(console, (cols, *rows))
        return
    from rich.table import Table

    table = Table(title=f"runs of {text(task.name)}")
    for col in cols:
        table.add_column(col)
    for row in rows:
        table.add_row(*(escape(c) for c in row))
    console.print(table)


def warn(console: Console, ledger: Ledger, task: Task | Path, tag: str | None) -> None:
    """One warning line when the records (of one run, or all) do not verify; `verify` lists why."""
    problems = chain.check(ledger, tag)
    if problems:
        root = task if isinstance(task, Path) else task.root
        console.print(f"[bold red]warning:[/] the records{' of run ' + text(tag) if tag else ''} do not verify "
                      f"({len(problems)} problem(s), first: {text(problems[0], 200)}); they were changed outside "
                      f"Ouroboros. See `ouroboros verify -C {escape(str(root))}`")


def warn_study(console: Console, folder: Path) -> None:
    """warn() for the records of each condition of a study (its folder, with study.json)."""
    import json

    manifest = json.loads((folder / "study.json").read_text())
    for task_dir in dict.fromkeys(Path(d) for d in manifest["conditions"].values()):
        records = task_dir / RECORDS_DIR
        if (records / "ledger.sqlite").is_file():
            ledger = Ledger(records)
            try:
                warn(console, ledger, task_dir, None)
            finally:
                ledger.close()


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


def best(console: Console, task: Task, found) -> None:
    """`ouroboros best`: the best experiment, its gain over the baseline, and the diff."""
    b, base = found.best, found.baseline
    gain = found.gain
    rel = "" if gain is None or not base.metric else f", {100 * gain / abs(base.metric):+.2f}%"
    console.print(f"run {one_line(found.run.tag, 80)}: best {task.metric.name} {fmt(b.metric)} at experiment {b.n} "
                  f"(baseline {fmt(base.metric)}, change {'-' if gain is None else f'{gain:+.6g}'}{rel}; one run "
                  f"each, `ouroboros noise` measures the spread), commit {b.commit_sha[:12]}", markup=False)
    if not found.keeps:
        console.print("no experiment beat the baseline", markup=False)
        return
    for e in found.keeps:
        console.print(f"  keep {e.n}: {fmt(e.metric)}  {one_line(e.description, 300)}", markup=False)
    shown = found.diff.encode(errors="surrogateescape").decode(errors="replace")  # bytes that are not UTF-8 as �
    console.print(shown.rstrip("\n"), markup=False, highlight=False)


def knobs(console: Console, task: Task, tsv: bool = False) -> None:
    """The knob space as a table (one tab-separated row per knob when piped), then its constraints."""
    from ouroboros import knobs as knobs_mod

    sp = knobs_mod.space_of(task)
    rows = []
    for k in sp.knobs:
        if k.name in sp.dists:
            where, log = knobs_mod.describe(sp.dists[k.name])
            rows.append((k.name, f"{k.path}:{k.line}", knobs_mod.format_value(k.value), where, "log" if log else "",
                         ""))
    rows += [(s.name, f"{s.path}:{s.line}", "", "", "", f"not searched: {s.why}") for s in sp.skipped]
    header = ("knob", "where", "value", "range or choices", "scale", "note")
    if tsv:
        _rows(console, (header, *rows))
    else:
        from rich.table import Table

        table = Table(title=f"knobs of {text(task.name)}: {len(sp.dists)} searched")
        for col in header:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*(escape(c) for c in row))
        console.print(table)
    for expr, _ in sp.constraints:
        console.print(f"constraint: {expr}", markup=False)
