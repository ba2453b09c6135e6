"""End to end: the CLI drives the loop on examples/quadratic, the way a user does."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from ouroboros.testing import cli, commit_all

VERDICTS = {"keep", "discard", "crash", "timeout", "violation"}


def tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def test_run_records_every_experiment_and_leaves_the_checkout_alone(quadratic: Path) -> None:
    head = git(quadratic, "rev-parse", "HEAD")
    train = (quadratic / "train.py").read_text()
    proc = cli("run", "-C", str(quadratic), "--agent", "random", "-n", "6", "--tag", "t", check=True)

    rows = tsv(quadratic / ".ouroboros/runs/t/results.tsv")
    assert list(rows[0]) == ["commit", "loss", "memory_gb", "status", "description"]
    assert len(rows) == 7 and rows[0]["status"] == "keep" and rows[0]["description"] == "baseline"
    assert {r["status"] for r in rows} <= VERDICTS
    # one live line per experiment, then a summary
    for n in range(7):
        assert f"\n{n:>4}  loss" in "\n" + proc.stdout
    assert "done: 6 experiments" in proc.stdout
    # every attempt stays reachable; the user's branch and files did not move
    refs = git(quadratic, "for-each-ref", "--format=%(refname)", "refs/ouroboros/t").split()
    assert sorted(refs) == sorted(f"refs/ouroboros/t/{n}" for n in range(7))
    assert git(quadratic, "rev-parse", "HEAD") == head
    assert (quadratic / "train.py").read_text() == train
    assert git(quadratic, "status", "--porcelain") == ""
    # the branch holds the best commit, and the best metric is the minimum of the keeps
    keeps = [r for r in rows if r["status"] == "keep"]
    best = keeps[-1]
    assert git(quadratic, "rev-parse", "ouroboros/t").startswith(best["commit"])
    assert float(best["loss"]) == min(float(r["loss"]) for r in rows if r["status"] in ("keep", "discard"))
    # per-experiment records
    for n in range(1, 7):
        exp = quadratic / f".ouroboros/runs/t/exp/{n}"
        assert (exp / "diff.patch").read_text().startswith("diff --git a/train.py b/train.py")
        assert (exp / "run.log").exists() and (exp / "eval.log").exists()
        assert json.loads((exp / "metrics.json").read_text())["status"] in VERDICTS


def test_log_and_status_show_the_run(quadratic: Path) -> None:
    cli("run", "-C", str(quadratic), "--agent", "tpe", "-n", "3", "--tag", "a", "--seed", "42", check=True)
    proc = cli("log", "-C", str(quadratic), "--run", "a", check=True)
    assert "baseline" in proc.stdout and "run a (tpe, seed 42, trust sealed)" in proc.stderr  # piped: rows on stdout only
    out = cli("status", "-C", str(quadratic), check=True).stdout
    assert "a" in out and "tpe" in out and "finished" in out


def test_a_run_without_seed_draws_a_fresh_one_and_the_seed_reproduces_it(quadratic: Path) -> None:
    first = cli("run", "-C", str(quadratic), "-n", "3", "--tag", "a", check=True).stdout
    cli("run", "-C", str(quadratic), "-n", "3", "--tag", "b", check=True)
    db = sqlite3.connect(quadratic / ".ouroboros/ledger.sqlite")
    seeds = dict(db.execute("SELECT tag, seed FROM runs").fetchall())
    assert seeds["a"] != seeds["b"]  # two draws of 31 bits
    assert f"seed {seeds['a']}," in first  # the header names it
    shown = cli("log", "-C", str(quadratic), "--run", "a", check=True)
    assert f"seed {seeds['a']}" in shown.stderr  # piped: the title goes to stderr, the rows to stdout
    cli("run", "-C", str(quadratic), "-n", "3", "--tag", "again", "--seed", str(seeds["a"]), check=True)

    def proposals(tag: str) -> list[tuple]:
        return db.execute("SELECT description, params, status, metric FROM experiments WHERE tag=? ORDER BY n",
                          (tag,)).fetchall()

    assert proposals("again") == proposals("a") != proposals("b")
    proc = cli("run", "-C", str(quadratic), "--resume", "a", "-n", "4", "--seed", "7")
    assert proc.returncode == 2 and f"made with seed {seeds['a']}" in proc.stderr and "drop --seed 7" in proc.stderr


def test_resume_after_a_finished_run_adds_experiments(quadratic: Path) -> None:
    cli("run", "-C", str(quadratic), "-n", "3", "--tag", "r", check=True)
    cli("run", "-C", str(quadratic), "--resume", "r", "-n", "5", check=True)
    rows = tsv(quadratic / ".ouroboros/runs/r/results.tsv")
    assert len(rows) == 6
    db = sqlite3.connect(quadratic / ".ouroboros/ledger.sqlite")
    assert [n for (n,) in db.execute("SELECT n FROM experiments WHERE tag='r' ORDER BY n")] == list(range(6))


def test_an_existing_tag_is_refused(quadratic: Path) -> None:
    cli("run", "-C", str(quadratic), "-n", "1", "--tag", "x", check=True)
    proc = cli("run", "-C", str(quadratic), "-n", "1", "--tag", "x")
    assert proc.returncode == 2
    assert "already exists" in proc.stderr and "--resume x" in proc.stderr


def _start(quadratic: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ouroboros.cli", "run", "-C", str(quadratic), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _slow_run(quadratic: Path, seconds: float) -> None:
    """Make each run of the quadratic task take a while, so a kill lands mid-experiment."""
    toml = quadratic / "ouroboros.toml"
    toml.write_text(toml.read_text().replace('run = "python train.py"',
                                             f'run = "sleep {seconds} && python train.py"'))
    commit_all(quadratic, "slow runs")


def _wait_for_running(ledger: Path, tag: str, n_min: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ledger.exists():
            try:
                db = sqlite3.connect(ledger)
                rows = db.execute("SELECT n, status FROM experiments WHERE tag=?", (tag,)).fetchall()
                db.close()
            except sqlite3.OperationalError:
                rows = []
            if any(s == "running" and n >= n_min for n, s in rows):
                return
        time.sleep(0.05)
    raise AssertionError("the loop never reached a running experiment")


def test_sigkill_mid_experiment_then_resume_loses_and_repeats_nothing(quadratic: Path) -> None:
    _slow_run(quadratic, 0.5)
    ledger = quadratic / ".ouroboros/ledger.sqlite"
    proc = _start(quadratic, "--agent", "random", "-n", "5", "--tag", "k")
    _wait_for_running(ledger, "k", 1)
    live = cli("status", "-C", str(quadratic), check=True).stdout  # takes a while: the kill waits for the next one
    _wait_for_running(ledger, "k", 3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    dead = cli("status", "-C", str(quadratic), check=True).stdout
    assert re.search(r"\bk\b.*\brunning\b", live) and re.search(r"\bk\b.*\bkilled\b", dead), (live, dead)
    db = sqlite3.connect(ledger)
    before = dict(db.execute("SELECT n, status FROM experiments WHERE tag='k'").fetchall())
    assert "running" in before.values()
    finished_before = {n: s for n, s in before.items() if s != "running"}

    cli("run", "-C", str(quadratic), "--resume", "k", check=True)

    after = db.execute("SELECT n, status, commit_sha FROM experiments WHERE tag='k' ORDER BY n").fetchall()
    assert [n for n, _, _ in after] == list(range(6))  # each experiment exactly once
    assert all(s in VERDICTS for _, s, _ in after)
    for n, status in finished_before.items():  # what was recorded stays as it was
        assert after[n][1] == status
    rows = tsv(quadratic / ".ouroboros/runs/k/results.tsv")
    assert [r["commit"] for r in rows] == [c[:7] for _, _, c in after]  # no duplicate, none missing
    assert git(quadratic, "status", "--porcelain") == ""


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(quadratic: Path) -> None:
    _slow_run(quadratic, 0.5)
    proc = _start(quadratic, "-n", "50", "--tag", "c")
    _wait_for_running(quadratic / ".ouroboros/ledger.sqlite", "c", 1)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"Ctrl-C did not stop the run:\n{out}") from None
    assert proc.returncode == 130
    assert "--resume c" in out and "Traceback" not in out
    db = sqlite3.connect(quadratic / ".ouroboros/ledger.sqlite")
    assert db.execute("SELECT status FROM runs WHERE tag='c'").fetchone()[0] == "stopped"
    done = db.execute("SELECT COUNT(*) FROM experiments WHERE tag='c' AND status!='running'").fetchone()[0]
    proc = cli("run", "-C", str(quadratic), "--resume", "c", "-n", str(done + 1), check=True)
    assert db.execute("SELECT COUNT(*) FROM experiments WHERE tag='c' AND status='running'").fetchone()[0] == 0


def test_resume_with_several_unfinished_experiments_overwrites_none(quadratic: Path) -> None:
    from ouroboros.ledger import Experiment, Ledger

    cli("run", "-C", str(quadratic), "-n", "2", "--tag", "m", check=True)
    ledger = Ledger(quadratic / ".ouroboros")
    done = ledger.experiments("m")
    # an interrupted --parallel round leaves two begun attempts behind
    for n in (3, 4):
        ledger.begin(Experiment("m", n, commit_sha=done[1].commit_sha, parent=done[0].commit_sha,
                                description=f"slot {n}", agent="random"))
    for n in (3, 4):  # each begun attempt was committed and pinned first, as in a real round
        git(quadratic, "update-ref", f"refs/ouroboros/m/{n}", done[1].commit_sha)
    cli("run", "-C", str(quadratic), "--resume", "m", "-n", "5", check=True)
    after = ledger.experiments("m")
    assert [e.n for e in after] == [0, 1, 2, 3, 4, 5]
    assert after[3].description == "slot 3" and after[3].status in VERDICTS - {"violation"}  # re-run
    assert (after[4].status, after[4].reason) == ("crash", "interrupted with its round; not re-run")
    assert git(quadratic, "rev-parse", "refs/ouroboros/m/4").strip() == done[1].commit_sha  # not re-pinned
    assert len(tsv(quadratic / ".ouroboros/runs/m/results.tsv")) == 6
