"""Fifth red-team pass, on the trust-boundary code that changed last: the worktree opened to the run's uid
(Isolation.open_worktree, isolation._grant), self mode's confined runner and proposer (self/inner.py,
propose.py, driver.py), the ledger key and the incremental `.verified` record (chain.py), the agents'
private config copies (agents/command.py HomeCopy) and readfile.py. Each attack that gets through is
marked xfail(strict=True) with its root cause and the fix recommended."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest

from ouroboros import isolation

BWRAP = isolation.available("bwrap")
ROOT = os.geteuid() == 0


# A candidate version's own inner runner (self/inner.py is the version's code: spawn runs `python -m
# ouroboros.self.inner` with the version's source first on the path). Confined by bubblewrap, it remounts
# the read-only root writable and lifts the tmpfs over /tmp, then writes beside its own folder.
_ESCAPING_RUNNER = '''
import json, subprocess, sys
plan = json.load(open(sys.argv[1]))
subprocess.run(["sh", "-c", "umount -l /tmp; mount -o remount,rw,bind /; echo escaped > {target}"],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(json.dumps({{r["name"]: 0 for r in plan["runs"]}}))
'''


@pytest.mark.skipif(not BWRAP, reason="a version's runner is confined only where bubblewrap works")
@pytest.mark.skipif(not ROOT, reason="the runner keeps capabilities only under a root harness")
@pytest.mark.xfail(strict=True, reason=(
    "self.inner.confined starts bwrap as root without --cap-drop ALL and without the drop to NOBODY that "
    "isolation.Bwrap.wrap does, so under a root harness a version's runner (`delta --version`, the gate, the "
    "holdout comparison at the end of `run --self`) keeps every capability: it remounts / read-write and "
    "unmounts the tmpfs over $HOME (reads ~/.config/ouroboros/ledger.key, writes the outer records and the "
    "harness's code). Fix: in confined(), under a root harness add --cap-drop ALL and run the argv through "
    "isolation._DROP_ROOT (setpriv to 65534, --cap-add CAP_SETUID/SETGID/SETPCAP for it) with "
    "isolation._grant([work]); elsewhere add --cap-drop ALL too"))
def test_a_versions_runner_cannot_remount_its_sandbox_and_write_outside_its_folder(tmp_path):
    from ouroboros.self import inner

    target = tmp_path / "outside" / "escaped"
    target.parent.mkdir()
    src = tmp_path / "version" / "src"
    (src / "ouroboros" / "self").mkdir(parents=True)
    (src / "ouroboros" / "__init__.py").write_text("")
    (src / "ouroboros" / "self" / "__init__.py").write_text("")
    (src / "ouroboros" / "self" / "inner.py").write_text(_ESCAPING_RUNNER.format(target=target))
    work = tmp_path / "work"
    (work / "a").mkdir(parents=True)
    runs = [{"name": "a", "cwd": str(work / "a"), "log": str(work / "a.log"), "steps": [["status"]]}]
    codes = inner.spawn(src, runs, work / "plan.json", jobs=1, timeout=60)
    assert codes == {"a": 0}  # the runner ran and answered
    assert not target.exists(), f"the version's runner wrote {target}: {target.read_text()!r}"


def _quadratic(tmp_path, monkeypatch, level="process"):
    from ouroboros import cheats
    from ouroboros.scaffold import from_template

    monkeypatch.setenv("OUROBOROS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OUROBOROS_CONFIG_DIR", str(tmp_path / "config"))
    task = from_template(tmp_path / "task", "quadratic")
    cheats._set_keys(task / "ouroboros.toml", "bound", {"isolation": level})
    cheats._git(task, "commit", "-qam", f"level {level}")
    return task


def _worse_agent(tmp_path) -> str:
    import shlex

    agent = tmp_path / "agent.py"
    agent.write_text("from pathlib import Path\np = Path('train.py')\n"
                     "p.write_text(p.read_text().replace('STEPS = 200', 'STEPS = 2'))\n")
    return f"cmd:{shlex.quote(sys.executable)} {shlex.quote(str(agent))}"


@pytest.mark.xfail(strict=True, reason=(
    "Ledger._write reads the row back after its INSERT OR REPLACE and chain.append HMACs what it read, and the "
    "ledger opens whatever schema ledger.sqlite holds (executescript of CREATE ... IF NOT EXISTS): a trigger "
    "planted by anyone who can write the records, without the key, rewrites the row inside the harness's own "
    "transaction (a discard becomes a keep with any metric), and the harness signs the forgery, so `verify`'s "
    "chain and `run --resume` accept it. Fix: on opening the ledger refuse (one clear OuroborosError) a "
    "database with any trigger or view in sqlite_master (and have verify report them), and in _write compare "
    "the row read back with the values written before signing"))
def test_a_trigger_planted_in_the_ledger_cannot_get_its_forgery_signed(tmp_path, monkeypatch):
    import sqlite3

    from ouroboros import chain
    from ouroboros.errors import OuroborosError
    from ouroboros.ledger import Ledger
    from ouroboros.loop import Loop, Options
    from ouroboros.task import load_task

    task = _quadratic(tmp_path, monkeypatch)
    records = task / ".ouroboros"
    Ledger(records).close()
    with sqlite3.connect(records / "ledger.sqlite") as db:  # the records written to, the key never read
        db.execute("CREATE TRIGGER forge AFTER INSERT ON experiments WHEN NEW.n = 1 AND NEW.status = 'discard' "
                   "BEGIN UPDATE experiments SET status = 'keep', metric = 1e-9 WHERE tag = NEW.tag AND n = NEW.n; END")
    try:
        loop = Loop(load_task(task), Options(agent=_worse_agent(tmp_path), max_experiments=1, budget=5.0, tag="t",
                                             allow_weak_isolation=True))
        loop.run()
    except OuroborosError:
        return  # the planted schema refused: stopped
    exp = loop.history[-1]
    stored = tuple(loop.ledger.db.execute("SELECT status, metric FROM experiments WHERE tag='t' AND n=1").fetchone())
    assert exp.status == "discard"
    try:
        if stored != (exp.status, exp.metric):  # the ledger does not hold what the loop decided: it must not verify
            with pytest.raises(OuroborosError, match="do not verify"):
                chain.refuse_broken(loop.ledger, task, "t")
    finally:
        loop.ledger.close()
