"""Forged records: the agent edits ledger.sqlite and results.tsv to plant a best.

The agent process (a `cmd:` agent, unconfined) rewrites a finished experiment as a keep with a
metric it never reached, in the ledger and in results.tsv. The chain shows it: `--resume` refuses
to build on it, `verify` names the row, `log` and `status` warn, and `audit` re-runs the keep from
its commit and flags the recorded metric.
"""

from __future__ import annotations

import shlex
import sqlite3
import sys
from pathlib import Path

import pytest

from ouroboros import audit
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task
from ouroboros.testing import cli, commit_all

FORGER = '''
import pathlib, re, sqlite3, sys
records = pathlib.Path(sys.argv[1])
db = sqlite3.connect(records / "ledger.sqlite")
done = db.execute("SELECT n FROM experiments WHERE tag='f' AND status != 'running'").fetchall()
if len(done) == 2:  # after experiment 1: make it a keep with a loss it never had
    db.execute("UPDATE experiments SET metric=1e-30, status='keep' WHERE tag='f' AND n=1")
    db.commit()
    tsv = records / "runs/f/results.tsv"
    lines = tsv.read_text().splitlines()
    cols = lines[2].split("\\t")
    cols[1], cols[3] = "1e-30", "keep"
    lines[2] = "\\t".join(cols)
    tsv.write_text("\\n".join(lines) + "\\n")
train = pathlib.Path("train.py")
train.write_text(re.sub(r"STEPS = (\\d+)", lambda m: f"STEPS = {int(m.group(1)) * 2}", train.read_text()))
'''


def test_a_forged_best_is_refused_on_resume_reported_and_flagged_by_the_audit(quadratic: Path, tmp_path: Path):
    script = tmp_path / "forger.py"
    script.write_text(FORGER)
    records = quadratic / ".ouroboros"
    agent = f"cmd:{shlex.quote(sys.executable)} {shlex.quote(str(script))} {shlex.quote(str(records))}"
    # an unconfined agent (at level bwrap it could not even see the ledger): the chain must catch it
    toml = quadratic / "ouroboros.toml"
    toml.write_text(toml.read_text() + '\n[bound]\nisolation = "process"\n')
    commit_all(quadratic, "process level")
    Loop(load_task(quadratic), Options(agent=agent, max_experiments=2, tag="f", allow_weak_isolation=True)).run()
    with sqlite3.connect(records / "ledger.sqlite") as db:
        assert db.execute("SELECT metric FROM experiments WHERE tag='f' AND n=1").fetchone()[0] == 1e-30

    resumed = cli("run", "-C", str(quadratic), "--resume", "f", "-n", "4")
    assert resumed.returncode == 2
    assert "the records of run 'f' do not verify" in resumed.stderr
    assert "experiment f/1: differs from what Ouroboros wrote" in resumed.stderr
    assert "ouroboros verify f" in resumed.stderr
    with sqlite3.connect(records / "ledger.sqlite") as db:  # nothing was built on it
        assert db.execute("SELECT max(n) FROM experiments WHERE tag='f'").fetchone()[0] == 2

    verified = cli("verify", "-C", str(quadratic), "f")
    assert verified.returncode == 1
    assert "experiment f/1: differs from what Ouroboros wrote" in verified.stdout
    for command in ("log", "status"):
        shown = cli(command, "-C", str(quadratic), check=True)
        assert "warning: the records" in shown.stdout and "do not verify" in shown.stdout
    pytest.importorskip("matplotlib", reason="the report extra is not installed")
    reported = cli("report", "-C", str(quadratic), "--run", "f", "--out", str(tmp_path / "report"))
    assert reported.returncode == 0 and "do not verify" in reported.stderr, reported.stderr[-400:]

    result = audit.audit(load_task(quadratic), "f")
    flagged = {r.n: r for r in result.rows}
    assert not result.ok
    assert flagged[1].status == "NOT REPRODUCED" and flagged[1].recorded == 1e-30 and flagged[1].again > 1e-6
    assert flagged[0].status == "reproduced"


def test_an_edited_table_a_deleted_row_and_a_cut_off_chain_are_reported(quadratic: Path):
    Loop(load_task(quadratic), Options(agent="random", max_experiments=2, tag="d")).run()
    records = quadratic / ".ouroboros"
    honest = cli("verify", "-C", str(quadratic), check=True)
    assert "run d: verified (3 experiments" in honest.stdout
    tsv = records / "runs/d/results.tsv"
    lines = tsv.read_text().splitlines()
    cols = lines[2].split("\t")
    cols[1], cols[3] = "1e-30", "keep"
    tsv.write_text("\n".join([*lines[:2], "\t".join(cols), *lines[3:]]) + "\n")
    with sqlite3.connect(records / "ledger.sqlite") as db:
        db.execute("DELETE FROM experiments WHERE tag='d' AND n=2")
        last = db.execute("SELECT max(seq) FROM chain").fetchone()[0]
        db.execute("DELETE FROM chain WHERE seq=?", (last,))
    out = cli("verify", "-C", str(quadratic), "d")
    assert out.returncode == 1
    assert "experiment d/2: was recorded, and is now gone from the ledger" in out.stdout
    assert "entries were cut off or rewritten" in out.stdout
    assert f"results.tsv: row '{cols[0]}\\t1e-30" in out.stdout  # the forged row, as written


@pytest.mark.parametrize("level", ["bwrap", "unshare"])
def test_at_levels_bwrap_and_unshare_the_run_cannot_read_the_chain_key(level, quadratic: Path, tmp_path: Path,
                                                                       monkeypatch):
    from ouroboros import chain, isolation

    if not isolation.available(level):
        pytest.skip(f"{level} does not work on this machine")
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("OUROBOROS_CONFIG_DIR")
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    key_file = chain.config_dir() / chain.KEY_FILE
    snippet = tmp_path / "steal.py"
    snippet.write_text(f"\ntry:\n    print('KEY:' + open({str(key_file)!r}).read())\nexcept OSError as e:\n"
                       "    print('NOKEY', e)\n")
    thief = tmp_path / "thief.py"
    thief.write_text(f"import pathlib\nt = pathlib.Path('train.py')\n"  # inline: the agent runs confined
                     f"t.write_text(t.read_text() + {snippet.read_text()!r})\n")
    toml = quadratic / "ouroboros.toml"
    toml.write_text(toml.read_text().replace("[judge]", f"[bound]\nisolation = \"{level}\"\n\n[judge]"))
    from ouroboros.testing import commit_all

    commit_all(quadratic, level)
    loop = Loop(load_task(quadratic), Options(agent=f"cmd:{shlex.quote(sys.executable)} {shlex.quote(str(thief))}",
                                              max_experiments=1, tag="k"))
    loop.run()
    assert key_file.is_file()
    assert loop.history[-1].status in ("keep", "discard", "crash"), (loop.history[-1].status, loop.history[-1].reason)
    log = (quadratic / ".ouroboros/runs/k/exp/1/run.log").read_text()
    assert "NOKEY" in log and "KEY:" not in log and key_file.read_text() not in log


def test_a_row_forged_after_a_clean_status_is_still_reported_by_log_and_status(quadratic: Path):
    from ouroboros.ledger import Experiment, Ledger, Run

    ledger = Ledger(quadratic / ".ouroboros")
    ledger.save_run(Run(tag="g", metric="loss"))
    ledger.finish(Experiment("g", 0, commit_sha="a" * 40, status="keep", metric=1.0))
    for command in ("status", "log"):  # both pass, and remember what they checked
        assert "warning" not in cli(command, "-C", str(quadratic), check=True).stdout
    ledger.finish(Experiment("g", 1, commit_sha="b" * 40, status="discard", metric=2.0))
    with sqlite3.connect(quadratic / ".ouroboros/ledger.sqlite") as db:
        db.execute("UPDATE experiments SET metric=1e-30, status='keep' WHERE tag='g' AND n=1")
    for command in ("status", "log"):
        shown = cli(command, "-C", str(quadratic), check=True)
        assert "warning: the records" in shown.stdout and "experiment g/1: differs from what Ouroboros wrote" \
            in shown.stdout, shown.stdout
