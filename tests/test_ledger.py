"""The ledger: results.tsv keeps autoresearch's columns, whatever the description holds."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ouroboros.ledger import Experiment, Ledger, Run, one_line, one_lines


def test_results_tsv_rows_survive_hostile_descriptions(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.save_run(Run(tag="t", metric="val_bpb"))
    ledger.finish(Experiment("t", 0, commit_sha="a" * 40, status="keep", metric=1.5, description="baseline"))
    ledger.finish(Experiment("t", 1, commit_sha="b" * 40, status="crash", metric=None,
                             description="tabs\tand\nnewlines\r\nand \"quotes\"", peak_rss_mb=2048))
    with open(tmp_path / "runs/t/results.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert rows[1] == ["aaaaaaa", "1.5", "0.0", "keep", "baseline"]
    assert rows[2] == ["bbbbbbb", "0.000000", "2.0", "crash", 'tabs and newlines and "quotes"']


def test_experiments_round_trip_and_tsv_rebuilds_from_the_ledger(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.save_run(Run(tag="t", metric="loss", config={"budget": 3}))
    exp = Experiment("t", 0, commit_sha="c" * 40, status="keep", metric=0.5, metrics={"loss": 0.5, "x": [1]},
                     params={"LR": 0.1})
    ledger.finish(exp)
    got = ledger.experiments("t")[0]
    assert got.metrics == {"loss": 0.5, "x": [1]} and got.params == {"LR": 0.1} and got.metric == 0.5
    assert ledger.run("t").config == {"budget": 3}
    (tmp_path / "runs/t/results.tsv").write_text("commit\tloss\n")  # cut short by a kill
    ledger.write_tsv("t")
    assert (tmp_path / "runs/t/results.tsv").read_text().splitlines()[1].startswith("ccccccc\t0.5\t")


def test_running_rows_are_not_in_the_table(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.save_run(Run(tag="t", metric="loss"))
    ledger.begin(Experiment("t", 0, commit_sha="d" * 40))
    assert ledger.experiments("t", finished_only=True) == []
    assert len(ledger.write_tsv("t").read_text().splitlines()) == 1


@given(st.lists(st.one_of(st.text(), st.text(alphabet=" ab\t\n\x00\x85\u202e…"), st.none()), max_size=8),
       st.integers(min_value=1, max_value=12))
@example(["a\nb"], 5).via("a newline inside a value, where the column is joined by newlines")
@example(["a", " b", "c "], 5).via("edges")
def test_one_lines_cleans_a_column_as_one_line_cleans_each_value(values, limit) -> None:
    assert one_lines(values, limit) == [one_line(v, limit) for v in values]
    clean = [one_line(v, 300) for v in values]  # a column that is clean already comes back as it is
    assert one_lines(clean, 300) == clean


def test_text_that_is_not_valid_utf8_is_stored_replaced_not_raised(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.save_run(Run(tag="t", metric="loss", fingerprint="data-\udcff"))  # reported JSON may hold one
    ledger.finish(Experiment("t", 0, commit_sha="a" * 40, status="keep", metric=1.0, trust="sealed\udcfe",
                             metrics={"key\udcff": "v\ud800"}))
    assert ledger.run("t").fingerprint == "data-?"
    got = ledger.experiments("t")[0]
    assert got.trust == "sealed?" and got.metrics == {"key?": "v?"}


def test_the_harness_lock_tells_a_live_run_from_a_killed_one(tmp_path):
    import signal
    import subprocess
    import sys

    from ouroboros.ledger import alive, shown_status

    run_dir = tmp_path / "runs" / "t"
    assert alive(run_dir) is None and shown_status("running", run_dir) == "running"  # a run from before the lock
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from ouroboros.ledger import hold\n"
        f"hold(Path({str(run_dir)!r})); print('held', flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert alive(run_dir) is True and shown_status("running", run_dir) == "running"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert alive(run_dir) is False
    assert shown_status("running", run_dir) == "killed" and shown_status("finished", run_dir) == "finished"


def test_an_interrupt_just_after_a_commit_reaches_the_caller_as_itself(tmp_path: Path) -> None:
    """Ctrl-C landing between the COMMIT and the end of the write used to end in "cannot rollback - no
    transaction is active", an sqlite error the CLI reported as a damaged ledger (exit 2, not 130)."""
    ledger = Ledger(tmp_path)
    ledger.save_run(Run("t", task="q", agent="random", metric="loss"))
    real = ledger.db

    class InterruptedAfterCommit:
        def __getattr__(self, name):
            return getattr(real, name)

        def execute(self, sql, *args):
            out = real.execute(sql, *args)
            if sql == "COMMIT":
                raise KeyboardInterrupt
            return out

    ledger.db = InterruptedAfterCommit()
    with pytest.raises(KeyboardInterrupt):
        ledger.begin(Experiment("t", 0, commit_sha="a" * 40, status="keep", metric=1.0))
    ledger.db = real
    assert [e.n for e in ledger.experiments("t")] == [0]  # committed: nothing rolled back or lost
