"""Tokens per proposal: recorded in the ledger, shown by `log` and by the run report."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from ouroboros import views
from ouroboros.ledger import Experiment, Ledger, Run
from ouroboros.report import build
from ouroboros.task import load_task


def _run_with_tokens(task_dir: Path) -> None:
    ledger = Ledger(task_dir / ".ouroboros")
    ledger.save_run(Run("t", agent="api:m", metric="loss", status="finished"))
    ledger.finish(Experiment("t", 0, status="keep", metric=2.0, description="baseline"))
    ledger.finish(Experiment("t", 1, status="discard", metric=3.0, description="a", tokens_in=1234, tokens_out=56))
    ledger.finish(Experiment("t", 2, status="keep", metric=1.0, description="b", tokens_in=2345, tokens_out=78))
    ledger.close()


def test_log_shows_tokens_in_and_out_per_proposal(quadratic: Path) -> None:
    _run_with_tokens(quadratic)
    out = io.StringIO()
    views.log(Console(file=out, width=250), load_task(quadratic), "t")
    text = out.getvalue()
    assert "tokens in/out" in text and "1234/56" in text and "2345/78" in text


def test_run_report_shows_tokens_per_proposal(quadratic: Path, tmp_path: Path) -> None:
    _run_with_tokens(quadratic)
    html = build.run_report(load_task(quadratic), "t", tmp_path / "r").read_text()
    assert "tokens in / out" in html and "1234 / 56" in html and "2345 / 78" in html


def test_log_of_a_run_without_experiments_says_so(quadratic: Path) -> None:
    ledger = Ledger(quadratic / ".ouroboros")
    ledger.save_run(Run("empty", agent="random", metric="loss"))
    ledger.close()
    out = io.StringIO()
    views.log(Console(file=out, width=200), load_task(quadratic), "empty")
    assert "run empty: no experiments yet" in out.getvalue()


def test_log_rows_are_one_line_each_and_never_markup(quadratic: Path) -> None:
    ledger = Ledger(quadratic / ".ouroboros")
    ledger.save_run(Run("m", agent="random", metric="loss"))
    ledger.finish(Experiment("m", 0, status="keep", metric=2.0, description="baseline"))
    ledger.finish(Experiment("m", 1, status="crash", description="[bold]x[/] and\nnewline", reason="[/] boom"))
    ledger.close()
    out = io.StringIO()
    views.log(Console(file=out, width=200, force_terminal=True), load_task(quadratic), "m")
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # title, header, two experiments
    assert "[bold]x[/] and newline ([/] boom)" in lines[-1]
