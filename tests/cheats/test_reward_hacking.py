"""Reward-hacking signals: an implausible gain is re-run with another seed before it can be kept,
and keeps whose private holdout metric got worse are marked."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ouroboros.judge import Verdict
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task
from ouroboros.testing import commit_all
from ouroboros.views import holdout_worse

LUCKY = '''
import json, os
x = [3.0, -1.0, 0.5, 2.0] if os.environ["OUROBOROS_SEED"] == "0" else [0.0, 0.0, 0.0, 0.0]
json.dump({"x": x}, open("solution.json", "w"))
'''


def _agent(tmp_path: Path, train: str) -> str:
    script = tmp_path / "agent.py"  # the source inline: a confined agent sees no file its command does not name
    script.write_text(f"from pathlib import Path\nPath('train.py').write_text({train!r})\n")
    return f"cmd:{shlex.quote(sys.executable)} {shlex.quote(str(script))}"


def test_an_implausible_gain_is_rerun_with_another_seed_and_not_kept(quadratic, tmp_path):
    toml = quadratic / "ouroboros.toml"
    toml.write_text(toml.read_text().replace("[judge]", "[judge]\nplausibility = 0.5"))
    commit_all(quadratic, "plausibility")
    loop = Loop(load_task(quadratic), Options(agent=_agent(tmp_path, LUCKY), max_experiments=1, tag="p",
                                              seed=0))
    loop.run()
    exp = loop.history[-1]
    assert exp.status == Verdict.DISCARD and "implausible gain" in exp.reason
    assert exp.metrics["confirm_metric"] > 1.0


def test_a_plausible_gain_is_kept_without_a_rerun(quadratic, tmp_path):
    toml = quadratic / "ouroboros.toml"
    toml.write_text(toml.read_text().replace("[judge]", "[judge]\nplausibility = 5.0"))
    commit_all(quadratic, "plausibility")
    loop = Loop(load_task(quadratic), Options(agent=_agent(tmp_path, LUCKY), max_experiments=1, tag="p",
                                              seed=0))
    loop.run()
    exp = loop.history[-1]
    assert exp.status == Verdict.KEEP and "confirm_metric" not in exp.metrics


HOLDOUT = '''
import json, os
x = json.load(open("solution.json"))["x"]
loss = sum(xi ** 2 for xi in x)  # another objective: the private test the agent never sees
json.dump({"loss": loss}, open(os.environ["OUROBOROS_METRICS"], "w"))
'''


def test_every_keep_gets_a_holdout_metric_and_worse_ones_are_marked(quadratic, tmp_path):
    (quadratic / "holdout.py").write_text(HOLDOUT)
    toml = quadratic / "ouroboros.toml"
    toml.write_text(toml.read_text().replace('evaluate = "python evaluate.py"',
                                             'evaluate = "python evaluate.py"\nholdout = "python holdout.py"')
                    .replace('protected = ["evaluate.py"]', 'protected = ["evaluate.py", "holdout.py"]'))
    commit_all(quadratic, "holdout")
    # The exact optimum of the public metric is worse on the holdout than the baseline's point.
    train = 'import json\njson.dump({"x": [3.0, -1.0, 0.5, 2.0]}, open("solution.json", "w"))\n'
    loop = Loop(load_task(quadratic), Options(agent=_agent(tmp_path, train), max_experiments=1, tag="h"))
    loop.run()
    base, exp = loop.history
    assert exp.status == Verdict.KEEP and exp.holdout is not None
    assert base.holdout is not None and exp.holdout > base.holdout
    assert holdout_worse(loop.history, minimize=True) == {exp.n}
    prompt = (loop.ledger.exp_dir(loop.tag, exp.n) / "prompt.md").read_text()
    assert f"{base.holdout:.4f}" not in prompt  # the holdout metric is never shown to the agent
