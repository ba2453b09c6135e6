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


# `log` and `status` check incrementally (chain.check): what a check that passed covered is kept in an
# HMAC'd record; later checks cover what was written since, that record, and the entry it names.

def _anchor(ledger: Ledger) -> Path:
    (path,) = (chain.config_dir() / "heads").glob("*.verified")
    return path


def _checked(tmp_path: Path) -> Ledger:
    """A ledger whose records a check has passed, then one more experiment written by Ouroboros."""
    ledger = _ledger(tmp_path)
    assert chain.check(ledger) == []
    assert _anchor(ledger).read_text().split()[0] == "4"  # verified through entry 4 (run, exp 0 twice, exp 1)
    ledger.finish(Experiment("t", 2, commit_sha="c" * 40, status="discard", metric=3.0))
    return ledger


def _sql(ledger: Ledger, sql: str) -> None:
    with sqlite3.connect(ledger.records / "ledger.sqlite") as db:
        db.execute(sql)


def test_a_check_that_passes_moves_the_record_and_one_that_fails_does_not(tmp_path: Path) -> None:
    ledger = _checked(tmp_path)
    assert chain.check(ledger) == []
    assert _anchor(ledger).read_text().split()[0] == "5"
    ledger.finish(Experiment("t", 3, commit_sha="d" * 40, status="discard", metric=4.0))
    _sql(ledger, "UPDATE experiments SET metric=0.1 WHERE n=3")
    assert [str(p) for p in chain.check(ledger)] == ["experiment t/3: differs from what Ouroboros wrote: changed "
                                                     "outside Ouroboros"]
    assert _anchor(ledger).read_text().split()[0] == "5"
    assert chain.check(ledger) != []  # still reported: the record stays where the last clean check left it


@pytest.mark.parametrize("sql, expected", [
    # a row written after the record: changed, deleted; a row added with no entry
    ("UPDATE experiments SET metric=0.5, status='keep' WHERE n=2", "experiment t/2: differs from what"),
    ("DELETE FROM experiments WHERE n=2", "experiment t/2: was recorded, and is now gone"),
    ("INSERT INTO experiments (tag, n, status, metric) VALUES ('t', 9, 'keep', 0.1)", "experiment t/9: has no chain"),
    # rows from before the record, deleted
    ("DELETE FROM experiments WHERE n=1", "experiment t/1: was recorded, and is now gone"),
    ("DELETE FROM runs", "run t: was recorded, and is now gone"),
    # the row the record's entry names (experiment 1, entry 4), and that entry itself
    ("UPDATE experiments SET metric=0.5, status='keep' WHERE n=1", "experiment t/1: differs from what"),
    ("UPDATE chain SET digest='0' WHERE seq=4", "entry 4, the last one a check passed, was changed"),
    ("DELETE FROM chain WHERE seq=4", "entry 4, the last one a check passed, was changed or removed"),
    ("UPDATE chain SET mac='0' WHERE seq=3", "entry 4, the last one a check passed, was changed"),
    # entries after the record
    ("UPDATE chain SET digest='0' WHERE seq=5", "entry 5 (exp t 2) has a wrong HMAC"),
    ("DELETE FROM chain WHERE seq=5", "entries were cut off or rewritten"),
])
def test_the_incremental_check_names_changes_since_the_last_check(tmp_path: Path, sql: str, expected: str) -> None:
    ledger = _checked(tmp_path)
    _sql(ledger, sql)
    problems = [str(p) for p in chain.check(ledger)]
    assert any(expected in p for p in problems), problems
    assert len(set(problems)) == len(problems), problems  # each named once
    assert any(expected in str(p) for p in chain.check(ledger, "t"))
    assert chain.verify_chain(ledger, "t")  # the whole check finds it too


def test_an_old_row_changed_after_a_check_is_named_by_verify(tmp_path: Path) -> None:
    ledger = _checked(tmp_path)
    _sql(ledger, "UPDATE experiments SET metric=0.5, status='keep' WHERE n=0")
    assert any("experiment t/0: differs from what Ouroboros wrote" in str(p) for p in chain.verify_chain(ledger))
    # verify (and run --resume) always check every row; so does a check with no record to start from
    _anchor(ledger).unlink()
    assert any("experiment t/0: differs from what Ouroboros wrote" in str(p) for p in chain.check(ledger))


@pytest.mark.parametrize("forge", ["edit", "garbage", "other ledger"])
def test_a_changed_record_of_the_last_check_is_reported(tmp_path: Path, forge: str) -> None:
    ledger = _checked(tmp_path)
    anchor = _anchor(ledger)
    seq, mac, keys, check = anchor.read_text().split()
    if forge == "edit":  # claim a later entry was verified, to skip checking it
        anchor.write_text(f"5 {mac} {keys} {check}\n")
    elif forge == "garbage":
        anchor.write_text("\0[/]\n")
    else:  # a valid record of another ledger, copied over this one's
        other = _ledger(tmp_path / "other")
        assert chain.check(other) == []
        anchor.write_text(next(p for p in anchor.parent.glob("*.verified") if p != anchor).read_text())
    _sql(ledger, "UPDATE experiments SET metric=0.5 WHERE n=0")  # an old row: found by the whole check it falls back to
    problems = [str(p) for p in chain.check(ledger)]
    assert any("record of the last verified entry" in p and "has a wrong HMAC" in p for p in problems), problems
    assert any("experiment t/0: differs from what Ouroboros wrote" in p for p in problems), problems


def test_a_check_of_one_run_leaves_out_the_other_runs_rows(tmp_path: Path) -> None:
    ledger = _checked(tmp_path)
    ledger.save_run(Run(tag="u", metric="loss"))
    ledger.finish(Experiment("u", 0, commit_sha="e" * 40, status="keep", metric=1.0))
    _sql(ledger, "UPDATE experiments SET metric=0.5 WHERE tag='u'")
    assert chain.check(ledger, "t") == []
    assert [str(p) for p in chain.check(ledger, "u")] == ["experiment u/0: differs from what Ouroboros wrote: "
                                                          "changed outside Ouroboros"]


def test_a_check_after_much_was_written_checks_everything(tmp_path: Path, monkeypatch) -> None:
    ledger = _checked(tmp_path)
    for n in range(3, 1010):  # more rows since the record than the 1,000 it covers row by row
        ledger.begin(Experiment("t", n, commit_sha="f" * 40))
    _sql(ledger, "UPDATE experiments SET metric=0.5, status='keep' WHERE n=0")  # from before the record
    assert any("experiment t/0: differs from what Ouroboros wrote" in str(p) for p in chain.check(ledger))


def _key_in(folder: str) -> str:
    os.environ["OUROBOROS_CONFIG_DIR"] = folder
    return chain.key().hex()


def test_processes_making_the_key_at_once_all_get_the_same_whole_key(tmp_path: Path) -> None:
    # run --self's runner forks inner runs two at a time into a fresh config folder: one of them read
    # the key while another was still writing it ("not 64 hex characters")
    from concurrent.futures import ProcessPoolExecutor

    for i in range(10):
        folder = tmp_path / str(i)
        with ProcessPoolExecutor(6) as pool:
            keys = set(pool.map(_key_in, [str(folder)] * 12))
        assert len(keys) == 1 and len(keys.pop()) == 64
        assert [p.name for p in folder.iterdir()] == ["ledger.key"]  # no temporary file left


def test_the_row_key_digest_keeps_the_format_anchors_were_written_in():
    """A `.verified` anchor holds this digest: another encoding would read every earlier anchor as rows removed."""
    import hashlib
    import json
    import random

    def written(keys):  # the format: one JSON list [kind, tag, n] a line, sorted
        h = hashlib.sha256()
        for key in sorted(keys):
            h.update(json.dumps(list(key)).encode() + b"\n")
        return h.hexdigest()

    rng = random.Random(0)
    tags = ["t", 'a"b', "é\u2028x", "x\\y", "\x00z", "[1, 2]", "exp"]
    for _ in range(100):
        keys = {(rng.choice(["exp", "run"]), rng.choice(tags), rng.randint(-1, 10**6)) for _ in range(rng.randint(0, 40))}
        assert chain._keys_digest(keys) == written(keys)
