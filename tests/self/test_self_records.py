"""run --self keeps its bad versions and holdout comparison in the run's chained ledger row, not in a file."""

from __future__ import annotations

import json
import shlex
import sqlite3
import sys


def test_the_holdout_comparison_is_read_from_the_chained_run_row_not_self_json(tmp_path, monkeypatch):
    from ouroboros import chain, cheats
    from ouroboros.ledger import Ledger
    from ouroboros.loop import Loop, Options
    from ouroboros.scaffold import from_template
    from ouroboros.self.report import sections
    from ouroboros.task import load_task

    monkeypatch.setenv("OUROBOROS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OUROBOROS_CONFIG_DIR", str(tmp_path / "config"))
    task = from_template(tmp_path / "task", "quadratic")
    cheats._set_keys(task / "ouroboros.toml", "bound", {"isolation": "process"})
    cheats._git(task, "commit", "-qam", "process")
    agent = tmp_path / "agent.py"
    agent.write_text("from pathlib import Path\np = Path('train.py')\n"
                     "p.write_text(p.read_text().replace('STEPS = 200', 'STEPS = 2'))\n")
    loop = Loop(load_task(task), Options(agent=f"cmd:{shlex.quote(sys.executable)} {shlex.quote(str(agent))}",
                                         max_experiments=1, budget=5.0, tag="t", allow_weak_isolation=True))
    loop.run()
    result = {"delta": 0.5, "low": 0.4, "high": 0.6}
    loop.run_rec.config["self"] = {"bad": [], "first": "a" * 40, "final": "a" * 40, "holdout": {
        "first": "a" * 40, "final": "a" * 40, "first_result": result, "final_result": result}}
    loop.ledger.save_run(loop.run_rec)  # what run_self's save() does
    loop.ledger.close()
    forged = {"bad": [], "holdout": {"first": "a" * 40, "final": "b" * 40, "first_result": result,
                                     "final_result": {"delta": 0.9, "low": 0.88, "high": 0.92}}}
    (task / ".ouroboros" / "runs" / "t" / "self.json").write_text(json.dumps(forged))
    _, tables = sections(load_task(task), "t", tmp_path / "out")
    holdout = [t for t in tables if t["id"] == "holdout"]
    assert holdout and holdout[0]["note"] == "the intervals overlap: no clear difference"  # not the forged file's
    ledger = Ledger(task / ".ouroboros")
    try:
        assert chain.verify_chain(ledger, "t") == []
    finally:
        ledger.close()
    with sqlite3.connect(task / ".ouroboros" / "ledger.sqlite") as db:  # the row itself edited, without the key
        db.execute("UPDATE runs SET config = replace(config, '\"delta\": 0.5', '\"delta\": 0.9') WHERE tag = 't'")
    ledger = Ledger(task / ".ouroboros")
    try:
        assert chain.verify_chain(ledger, "t"), "verify must name the edited run row"
        assert '"delta": 0.9' in json.dumps(ledger.run("t").config["self"])
    finally:
        ledger.close()
