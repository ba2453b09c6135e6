"""The delta benchmark believes the trusted re-measurement, not the inner harness; a version's runner is confined."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from ouroboros import isolation, syscall_filter
from ouroboros.self import inner
from ouroboros.self.delta import collect, run_inner
from ouroboros.self.suite import load_suite
from ouroboros.task import RECORDS_DIR

SRC = Path(__file__).resolve().parents[2] / "src"


def test_the_score_comes_from_re_measurement_not_the_inner_verdicts(tmp_path):
    task = load_suite("public", ["knapsack"])[0]
    dest = run_inner(SRC, task, 0, 3, tmp_path)
    honest = collect(dest, task, 0, 3)
    assert honest.final > 0, "this seed finds an improvement (the check below needs one)"
    con = sqlite3.connect(dest / RECORDS_DIR / "ledger.sqlite")
    con.execute("UPDATE experiments SET status = CASE status WHEN 'keep' THEN 'discard' ELSE 'keep' END "
                "WHERE n > 0 AND status IN ('keep', 'discard')")
    con.commit()
    con.close()
    flipped = collect(dest, task, 0, 3)
    assert flipped.curve == honest.curve and flipped.score == honest.score


def test_a_versions_runner_sees_no_checkout_key_or_home(tmp_path):
    key = tmp_path / "config" / "ledger.key"  # a ledger key, where a user's would be readable
    key.parent.mkdir(exist_ok=True)
    key.write_text("k" * 64)
    if not isolation.available("bwrap"):
        pytest.skip("the runner is confined at level bwrap")
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    (checkout / "secret.txt").write_text("the user's file")
    work = checkout / ".ouroboros" / "delta"
    work.mkdir(parents=True)
    argv, level = inner.confined(["bash", "-c", f"cat {checkout}/secret.txt {key}; echo ok > out.txt; "
                                  f"echo x > {checkout}/planted.txt; grep Seccomp: /proc/self/status"], work, SRC)
    with syscall_filter.attached(argv) as (argv, fds):
        proc = subprocess.run(argv, capture_output=True, text=True, pass_fds=fds)
    assert level == "bwrap"
    assert "the user's file" not in proc.stdout and "kkkk" not in proc.stdout
    assert (work / "out.txt").read_text() == "ok\n"
    assert not (checkout / "planted.txt").exists()
    assert "Seccomp:\t2" in proc.stdout, proc.stdout  # the keyring filter of level bwrap (syscall_filter)


def test_a_run_folder_left_as_a_link_is_replaced_not_written_through(tmp_path):
    from ouroboros.self.delta import prepare_run, run_dir

    task = load_suite("public", ["bowl"])[0]
    victim = tmp_path / "outside"
    victim.mkdir()
    (victim / "mine.txt").write_text("the user's file\n")
    work = tmp_path / "work"
    work.mkdir()
    run_dir(work, task, 0).symlink_to(victim)  # what an earlier runner of this folder left
    (work / f"{run_dir(work, task, 0).name}.log").symlink_to(victim / "mine.txt")
    dest = prepare_run(task, 0, work)
    assert not dest.is_symlink() and (dest / "params.py").is_file()
    assert sorted(p.name for p in victim.iterdir()) == ["mine.txt"]
    assert (victim / "mine.txt").read_text() == "the user's file\n"


def _inner_ledger(dest: Path, columns: str = "tag TEXT, n INTEGER, commit_sha TEXT, status TEXT, metric REAL",
                  rows: int = 2) -> Path:
    db = dest / RECORDS_DIR / "ledger.sqlite"
    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db)
    con.execute(f"CREATE TABLE experiments ({columns})")
    con.executemany("INSERT INTO experiments (tag, n, commit_sha, status, metric) VALUES ('delta', ?, 'c', 'keep', 0)",
                    [(n,) for n in range(rows)])
    con.commit()
    con.close()
    return db


@pytest.mark.parametrize("planted", ["generated", "wal-fifo", "trigger"])
def test_an_inner_ledger_with_code_or_odd_files_is_refused_before_any_query(planted, tmp_path):
    import os

    from ouroboros.errors import OuroborosError
    from ouroboros.self.delta import claims

    columns = "tag TEXT, n INTEGER, commit_sha TEXT, status TEXT, metric REAL"
    if planted == "generated":  # computed on every read
        columns += ", slow INTEGER GENERATED ALWAYS AS (length(zeroblob(1000000))) VIRTUAL"
    db = _inner_ledger(tmp_path, columns)
    if planted == "wal-fifo":  # sqlite would open it and wait for a writer
        os.mkfifo(db.with_name("ledger.sqlite-wal"))
    if planted == "trigger":
        con = sqlite3.connect(db)
        con.execute("CREATE TRIGGER t AFTER INSERT ON experiments BEGIN SELECT 1; END")
        con.commit()
        con.close()
    expected = {"generated": "holds a generated column 'slow'", "wal-fifo": "ledger.sqlite-wal is not a regular file",
                "trigger": "holds a trigger 't'"}[planted]
    with pytest.raises(OuroborosError, match=expected):
        claims(tmp_path)


def test_every_query_on_an_inner_ledger_is_bounded(tmp_path, monkeypatch):
    from ouroboros.errors import OuroborosError
    from ouroboros.self import delta

    _inner_ledger(tmp_path, rows=5000)
    assert len(delta.claims(tmp_path)) == 5000
    monkeypatch.setattr(delta, "QUERY_STEPS", 20_000)  # fewer steps than reading 5000 rows takes
    with pytest.raises(OuroborosError, match="unreadable: interrupted"):
        delta.claims(tmp_path)


def test_an_inner_repo_is_read_without_its_config_refs_files_or_odd_objects(tmp_path):
    import os

    from ouroboros.errors import OuroborosError
    from ouroboros.self.evidence import InnerRepo
    from ouroboros.workspace import git

    repo = tmp_path / "inner"
    repo.mkdir()
    (repo / "params.py").write_text("X = 1\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    head = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "update-ref", "refs/ouroboros/t/1", head)
    git(repo, "pack-refs", "--all")  # refs/ouroboros/t/1 only in packed-refs now
    planted = tmp_path / "planted"
    with open(repo / ".git" / "config", "a") as f:  # a command git would run on a call in the repo
        f.write(f"[core]\n\tfsmonitor = \"touch {planted}\"\n\tcommitGraph = true\n")
    inner = InnerRepo(repo)
    assert inner.ref("HEAD") == head and inner.ref("refs/ouroboros/t/1") == head
    assert inner.ref("refs/ouroboros/t/2") is None
    assert inner.git("cat-file", "blob", f"{head}:params.py") == "X = 1\n"
    assert not planted.exists()
    os.mkfifo(repo / ".git" / "objects" / "info" / "alternates")  # git would wait on it
    with pytest.raises(OuroborosError, match=r"borrows another \(info/alternates\)"):
        InnerRepo(repo)
    os.unlink(repo / ".git" / "objects" / "info" / "alternates")
    os.mkfifo(repo / ".git" / "objects" / "ab")
    with pytest.raises(OuroborosError, match="objects/'ab' is not a regular file"):
        InnerRepo(repo)
