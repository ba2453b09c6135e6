"""Descriptions are data: whatever an agent writes, the harness, results.tsv, git, `log` and
`status` keep working, and show the text as written (control characters dropped, markup literal)."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from ouroboros import views
from ouroboros.agents import Agent, Context, Proposal
from ouroboros.ledger import Experiment, Ledger, Run, clean_text, fmt_metric, one_line
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task
from ouroboros.testing import cli
from ouroboros.workspace import git

HOSTILE = [
    "nul\x00byte [/] and [bold]bold[/bold] \x1b[31mred\x1b[0m",
    "line one\nline two\r\n\ttabbed\tcells",
    "[/]",
    "x" * 200_000,
    "[link=file:///etc/passwd]click[/link] \ud800 lone surrogate \u202eevil",
]


class Hostile(Agent):
    name = "hostile[/]"

    def propose(self, ctx: Context) -> Proposal:
        train = ctx.worktree / "train.py"
        train.write_text(re.sub(r"STEPS = (\d+)", lambda m: f"STEPS = {int(m.group(1)) + 1}", train.read_text()))
        return Proposal(HOSTILE[(ctx.n - 1) % len(HOSTILE)], model="[bold]m\x00odel")


def test_hostile_descriptions_break_nothing(quadratic: Path) -> None:
    console = Console(record=True, width=120)
    task = load_task(quadratic)
    live = views.Live(console, task)
    loop = Loop(task, Options(agent="random", max_experiments=len(HOSTILE), tag="h"), agent=Hostile(),
                on_experiment=live.line)
    loop.run()
    live.summary(loop)
    shown = console.export_text()
    assert "nulbyte [/] and [bold]bold[/bold] [31mred[0m" in shown  # markup printed as text
    assert "\x00" not in shown and "\x1b" not in shown

    exps = Ledger(quadratic / ".ouroboros").experiments("h")
    assert [e.status for e in exps].count("crash") == 0 and len(exps) == len(HOSTILE) + 1
    assert exps[1].description == "nulbyte [/] and [bold]bold[/bold] [31mred[0m"
    assert exps[2].description == "line one\nline two\n\ttabbed\tcells"  # the ledger keeps the full text
    assert exps[4].description == "x" * 200_000
    assert exps[1].model == "[bold]model"

    with open(quadratic / ".ouroboros/runs/h/results.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert all(len(r) == 5 for r in rows) and len(rows) == len(HOSTILE) + 2
    assert rows[3][4] == "line one line two tabbed cells"
    assert rows[5][4] == "x" * 299 + "\u2026"  # capped at 300 characters
    assert all(len(r[4]) <= 300 for r in rows)

    message = git(quadratic, "log", "-1", "--format=%B", exps[1].commit_sha)
    assert message.strip() == "nulbyte [/] and [bold]bold[/bold] [31mred[0m"  # passed by file, cleaned

    for command in ("log", "status"):
        out = cli(command, "-C", str(quadratic), check=True)
        assert "do not verify" not in out.stdout
    log = cli("log", "-C", str(quadratic), "--run", "h", check=True).stdout
    assert "[/]" in log and "[bold]" in log and "line one line two" in log


def test_clean_text_drops_controls_and_keeps_layout() -> None:
    assert clean_text("a\x00b\x07c\x7fd\x9fe") == "abcde"
    assert clean_text("tab\tnew\nline\r\n") == "tab\tnew\nline\n"
    assert clean_text("\ud800x") == "?x"
    assert one_line("a\n\tb  c", 300) == "a b c"
    assert one_line("y" * 500) == "y" * 299 + "\u2026"


def test_small_metrics_keep_their_digits_everywhere(quadratic: Path) -> None:
    assert fmt_metric(5.6e-14) == "5.6e-14" and fmt_metric(0.123456789) == "0.123456789"
    assert fmt_metric(None) == "-" and fmt_metric(1.5) == "1.5"
    task = load_task(quadratic)
    ledger = Ledger(quadratic / ".ouroboros")
    ledger.save_run(Run(tag="t", metric="loss", branch="ouroboros/t"))
    base = Experiment("t", 0, commit_sha="a" * 40, status="keep", metric=5.6e-14, description="baseline")
    best = Experiment("t", 1, commit_sha="b" * 40, status="keep", metric=5.5e-14, description="x")
    ledger.finish(base)
    ledger.finish(best)
    assert (quadratic / ".ouroboros/runs/t/results.tsv").read_text().splitlines()[1:] == [
        "aaaaaaa\t5.6e-14\t0.0\tkeep\tbaseline", "bbbbbbb\t5.5e-14\t0.0\tkeep\tx"]
    console = Console(record=True, width=200)
    live = views.Live(console, task)
    live.line(best, best)
    loop = SimpleNamespace(finished=[base, best], best=best, ledger=ledger, tag="t",
                           run_rec=SimpleNamespace(branch="ouroboros/t"))
    live.summary(loop)
    views.log(console, task, "t")
    views.status(console, task)
    shown = console.export_text()
    assert "0.000000" not in shown
    assert shown.count("5.5e-14") >= 4 and "5.6e-14" in shown  # line, summary, log, status; the baseline
    assert "-1e-15 vs baseline" in shown


def test_exp_takes_a_message_with_markup_and_newlines_as_data(quadratic: Path) -> None:
    cli("run", "-C", str(quadratic), "--agent", "random", "-n", "1", "--tag", "e", "--seed", "0", check=True)
    ledger = Ledger(quadratic / ".ouroboros")
    run = ledger.run("e")
    run.config["max_experiments"] = None  # open again, for an `exp` call by hand
    ledger.save_run(run)
    worktree = quadratic / ".ouroboros/runs/e/worktree"
    train = worktree / "train.py"
    train.write_text(re.sub(r"(?m)^STEPS = .*$", "STEPS = 401", train.read_text()))  # whatever a keep left
    proc = cli("exp", "-m", "[/] more [bold]steps\nsecond line", cwd=worktree)
    assert proc.returncode == 0, proc.stderr
    assert "experiment 2:" in proc.stdout
    exp = ledger.experiments("e")[-1]
    assert exp.description == "[/] more [bold]steps second line" and exp.status in ("keep", "discard")
    assert "[/] more [bold]steps second line" in cli("log", "-C", str(quadratic), check=True).stdout
