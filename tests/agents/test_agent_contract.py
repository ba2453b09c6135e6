"""Every built-in agent keeps the agent contract (ouroboros.testing.check_agent_contract)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ouroboros.agents import Agent, make_agent
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task
from ouroboros.testing import FakeOpenAI, check_agent_contract, knob_edit, path_with, stand_in

# Adds one gradient step, the way a scripted coding agent would, and describes it.
BUMP = """import os, re
src = open("train.py").read()
n = int(re.search(r"^STEPS = (\\d+)", src, re.M).group(1))
open("train.py", "w").write(re.sub(r"^STEPS = \\d+", f"STEPS = {n + 1}", src, flags=re.M))
open(os.environ["OUROBOROS_DESCRIPTION"], "w").write(f"STEPS {n} -> {n + 1}")
"""


def bump_reply(body: dict) -> str:
    import re

    n = re.search(r"^STEPS = (\d+)", body["messages"][-1]["content"], re.MULTILINE).group(1)
    return knob_edit("STEPS", n, str(int(n) + 1))(body)


@contextmanager
def agent_factory(kind: str, root: Path, tmp_path: Path, monkeypatch) -> Iterator[Callable[[], Agent]]:
    if kind in ("random", "tpe", "mutate", "random:2", "policy"):
        yield lambda: make_agent(kind, 0)
    elif kind == "cmd":
        script = tmp_path / "bump.py"
        script.write_text(BUMP)
        yield lambda: make_agent(f"cmd:{sys.executable} {script}")
    elif kind == "codex":
        stand_in(tmp_path / "bin", "codex", BUMP)
        monkeypatch.setenv("PATH", path_with(tmp_path / "bin"))
        yield lambda: make_agent("codex")
    elif kind == "api":
        with FakeOpenAI([bump_reply]) as server:
            yield lambda: make_agent("api:local-model", 0, {"base_url": server.base_url})
    elif kind == "replay":
        Loop(load_task(root), Options(agent="random", tag="recorded", max_experiments=3)).run()
        yield lambda: make_agent("replay:recorded")


@pytest.mark.parametrize("kind", ["random", "tpe", "mutate", "random:2", "policy", "cmd", "codex", "api", "replay"])
def test_builtin_agent_keeps_the_contract(quadratic, tmp_path, monkeypatch, kind):
    with agent_factory(kind, quadratic, tmp_path, monkeypatch) as make:
        exps = check_agent_contract(make, quadratic, experiments=2, allow_crash=kind == "replay")
    assert len(exps) == 4
