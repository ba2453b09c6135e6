"""The ledger's chain: every row write is HMAC-chained with a key kept outside the task repo."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from ouroboros import chain
from ouroboros.errors import OuroborosError
from ouroboros.ledger import Experiment, Ledger, Run


def _ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(tmp_path / "records")
    ledger.save_run(Run(tag="t", metric="loss"))
    ledger.begin(Experiment("t", 0, commit_sha="a" * 40))
    ledger.finish(Experiment("t", 0, commit_sha="a" * 40, status="keep", metric=1.0))
    ledger.finish(Experiment("t", 1, commit_sha="b" * 40, status="discard", metric=2.0))
    return ledger


def test_the_key_is_private_and_outside_the_records(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    path = chain.config_dir() / chain.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ledger.records not in path.parents
    assert chain.verify_chain(ledger, "t") == []


@pytest.mark.parametrize("sql, expected", [
    ("UPDATE experiments SET metric=0.5, status='keep' WHERE n=1", "experiment t/1: differs from what"),
    ("INSERT INTO experiments (tag, n, status, metric) VALUES ('t', 2, 'keep', 0.1)", "experiment t/2: has no chain"),
    ("DELETE FROM experiments WHERE n=1", "experiment t/1: was recorded, and is now gone"),
    ("UPDATE runs SET noise_sigma=5 WHERE tag='t'", "run t: differs from what"),
    ("UPDATE chain SET digest='0' WHERE seq=2", "entry 2 (exp t 0) has a wrong HMAC"),
    ("DELETE FROM chain WHERE seq=(SELECT max(seq) FROM chain)", "entries were cut off or rewritten"),
])
def test_changes_made_outside_ouroboros_are_named(tmp_path: Path, sql: str, expected: str) -> None:
    ledger = _ledger(tmp_path)
    with sqlite3.connect(ledger.records / "ledger.sqlite") as db:
        db.execute(sql)
    assert any(expected in str(p) for p in chain.verify_chain(ledger, "t")), chain.verify_chain(ledger, "t")


def test_a_chain_rewritten_with_another_key_does_not_verify(tmp_path: Path, monkeypatch) -> None:
    ledger = _ledger(tmp_path)
    monkeypatch.setenv("OUROBOROS_CONFIG_DIR", str(tmp_path / "forger"))  # a forger's own key and head
    problems = [str(p) for p in chain.verify_chain(ledger, "t")]
    assert any("has a wrong HMAC" in p for p in problems)
    assert any("no record of this ledger's last entry" in p for p in problems)


def test_a_bad_key_file_is_one_clear_error(tmp_path: Path) -> None:
    folder = chain.config_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / chain.KEY_FILE).write_text("short")
    with pytest.raises(OuroborosError, match="is not 64 hex characters; restore it from a backup"):
        _ledger(tmp_path)
    os.unlink(folder / chain.KEY_FILE)
    assert chain.verify_chain(_ledger(tmp_path / "again"), "t") == []


def test_a_head_record_that_is_not_ours_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    chain._head_file(ledger).write_bytes(b"\xff\xfe garbage\n")
    assert any("is not Ouroboros's" in str(p) for p in chain.verify_chain(ledger, "t"))


@pytest.mark.parametrize("cut, expected", [
    (lambda rows: rows[:1] + rows[2:], "the ledger's row 'bbbbbbb\\t2\\t0.0\\tdiscard\\t' is not in the table"),
    (lambda rows: rows[:-1], "only the last rows are missing"),  # off the end: also what a kill leaves
    (lambda rows: rows + rows[-1:], "is not in the ledger"),  # a row twice
    (lambda rows: rows + ["ccccccc\t0.1\t0.0\tkeep\tforged"], "row 'ccccccc\\t0.1"),
])
def test_verify_reports_every_results_tsv_row_that_differs_from_the_ledger(tmp_path: Path, cut, expected) -> None:
    ledger = _ledger(tmp_path)
    ledger.finish(Experiment("t", 2, commit_sha="c" * 40, status="keep", metric=0.5))
    tsv = ledger.run_dir("t") / "results.tsv"
    assert chain.verify_tsv(ledger, "t") == []
    rows = tsv.read_text().splitlines()
    tsv.write_text("\n".join([rows[0], *cut(rows[1:])]) + "\n")
    problems = [str(p) for p in chain.verify_tsv(ledger, "t")]
    assert problems and any(expected in p for p in problems), problems
    assert ("only the last rows" in problems[0]) == (expected == "only the last rows are missing")
