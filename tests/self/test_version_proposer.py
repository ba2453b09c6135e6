"""What a kept version's proposer (its own code, in the agent sandbox) gets of the harness: no secret it does
not declare, no network for a knob agent, no disk past the cap in its scratch folder."""

from __future__ import annotations

import json

import pytest

from ouroboros import isolation

BWRAP = isolation.available("bwrap")

_REPORTING_PROPOSER = '''
import json, os, socket
from pathlib import Path
Path("train.py").write_text(Path("train.py").read_text().replace("STEPS = 200", "STEPS = 300"))
seen = {"interfaces": sorted(n for _, n in socket.if_nameindex()),
        "env": sorted(k for k in os.environ if k.endswith("_KEY") or k.startswith("MY_"))}
Path(os.environ["OUROBOROS_DESCRIPTION"]).write_text(json.dumps(seen))
'''


def _run(tmp_path, monkeypatch, spec: str, env: list[str] | None = None, proposer: str = _REPORTING_PROPOSER,
         cap_mb: float | None = None):
    from ouroboros import cheats
    from ouroboros.loop import Loop, Options
    from ouroboros.scaffold import from_template
    from ouroboros.self import driver, versions
    from ouroboros.task import load_task

    monkeypatch.setenv("OUROBOROS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OUROBOROS_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-harness")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-other")
    monkeypatch.setenv("MY_TOKEN", "declared")
    task = from_template(tmp_path / "task", "quadratic")
    cheats._set_keys(task / "ouroboros.toml", "bound", {"isolation": "bwrap", **({"env": env} if env else {}),
                                                           **({"max_artifact_mb": cap_mb} if cap_mb else {})})
    cheats._git(task, "commit", "-qam", "bwrap")
    src = tmp_path / "version" / "src"
    (src / "ouroboros" / "self").mkdir(parents=True)
    (src / "ouroboros" / "__init__.py").write_text("")
    (src / "ouroboros" / "self" / "__init__.py").write_text("")
    (src / "ouroboros" / "self" / "propose.py").write_text(proposer)
    monkeypatch.setattr(versions, "install", lambda repo, version, cache: src)
    agent = driver.VersionAgent(spec, task, tmp_path / "vcache", "b" * 40, {"bad": []}, lambda: None)
    loop = Loop(load_task(task), Options(agent=spec, max_experiments=1, budget=5.0, tag="t"), agent=agent)
    loop.run()
    loop.ledger.close()
    return loop


@pytest.mark.skipif(not BWRAP, reason="the version's proposer is confined only at level bwrap")
def test_a_knob_agents_proposer_gets_no_secret_and_no_network(tmp_path, monkeypatch):
    seen = json.loads(_run(tmp_path, monkeypatch, "random").history[-1].description)
    assert seen == {"interfaces": ["lo"], "env": []}


@pytest.mark.skipif(not BWRAP, reason="the version's proposer is confined only at level bwrap")
def test_an_api_agents_proposer_gets_its_own_key_and_the_declared_names_only(tmp_path, monkeypatch):
    seen = json.loads(_run(tmp_path, monkeypatch, "api:some-model", env=["MY_TOKEN"]).history[-1].description)
    assert seen["env"] == ["MY_TOKEN", "OPENAI_API_KEY"]  # not ANTHROPIC_API_KEY
    import socket

    assert seen["interfaces"] == sorted(n for _, n in socket.if_nameindex())  # the host's network: it calls its API


_HIDING_PROPOSER = '''
import os
from pathlib import Path
hidden = Path(os.environ["OUROBOROS_CONFIG_DIR"]).parent / ".git" / "objects"  # sandbox.du skips a top-level .git
hidden.mkdir(parents=True)
for i in range(4):
    (hidden / f"blob{i}").write_bytes(b"x" * (900 << 10))
Path("train.py").write_text(Path("train.py").read_text().replace("STEPS = 200", "STEPS = 300"))
'''


@pytest.mark.skipif(not BWRAP, reason="the version's proposer is confined only at level bwrap")
def test_what_a_proposer_hides_in_its_scratch_folder_counts_and_fails_only_that_proposal(tmp_path, monkeypatch):
    loop = _run(tmp_path, monkeypatch, "random", proposer=_HIDING_PROPOSER, cap_mb=1)
    exp = loop.history[-1]
    assert exp.status == "crash" and "MB in its scratch folder, more than max_artifact_mb=1" in exp.reason, exp.reason
    scratch = loop.ledger.exp_dir("t", 1) / "version"
    assert [p.name for p in scratch.iterdir()] == [".config"]
