"""`ouroboros audit`: an honest run's keeps reproduce exactly from fresh exports of their commits."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ouroboros import audit
from ouroboros.ledger import Ledger
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task
from ouroboros.testing import cli

DOUBLE_STEPS = '''
import pathlib, re
train = pathlib.Path("train.py")
train.write_text(re.sub(r"STEPS = (\\d+)", lambda m: f"STEPS = {int(m.group(1)) * 2}", train.read_text()))
'''


def test_audit_reproduces_every_keep_of_an_honest_quadratic_run_exactly(quadratic: Path, tmp_path: Path):
    script = tmp_path / "double.py"
    script.write_text(DOUBLE_STEPS)
    loop = Loop(load_task(quadratic), Options(agent=f"cmd:{shlex.quote(sys.executable)} {shlex.quote(str(script))}",
                                              max_experiments=3, tag="h"))
    loop.run()
    keeps = [e for e in loop.history if e.status == "keep"]
    assert len(keeps) == 4  # the baseline and three real gains
    # The run's worktree is made unusable: the audit must not depend on it.
    (loop.ws.task_dir / "train.py").write_text("raise SystemExit(1)\n")

    result = audit.audit(load_task(quadratic), "h")
    assert result.ok and result.tolerance == 0.0  # min_delta 0, no noise measured: exact
    assert [(r.n, r.status) for r in result.rows] == [(k.n, "reproduced") for k in keeps]
    assert all(r.again == r.recorded for r in result.rows)
    ledger = Ledger(quadratic / ".ouroboros")
    recorded = ledger.run(result.audit_tag)
    assert recorded.agent == "audit" and recorded.status == "finished"
    assert [e.commit_sha for e in ledger.experiments(result.audit_tag)] == [k.commit_sha for k in keeps]

    out = cli("audit", "-C", str(quadratic), "h", "--sample", "2", check=True)
    assert out.stdout.count("reproduced") >= 2 and "2 of 4 keeps re-run" in out.stdout
    assert "all 2 re-run keeps reproduced within 0" in out.stdout
    assert "verified" in cli("verify", "-C", str(quadratic), "h", check=True).stdout


def test_audit_of_an_unknown_run_says_which_runs_there_are(quadratic: Path):
    Loop(load_task(quadratic), Options(agent="random", max_experiments=0, tag="x")).run()
    out = cli("audit", "-C", str(quadratic), "nope")
    assert out.returncode == 2 and "no run 'nope' to audit; runs: x" in out.stderr
