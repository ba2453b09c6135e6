"""A long run packs its attempt refs and objects as it goes (workspace.maintain, called by the loop)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ouroboros import loop as loop_mod
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task
from ouroboros.workspace import Workspace, maintain


def loose_objects(repo: Path) -> int:
    out = subprocess.run(["git", "count-objects", "-v"], cwd=repo, capture_output=True, text=True, check=True).stdout
    return int(dict(line.split(": ") for line in out.splitlines())["count"])


def loose_refs(repo: Path, tag: str) -> list[Path]:
    return [p for p in (repo / ".git" / "refs" / "ouroboros" / tag).glob("*") if p.is_file()]


def test_maintain_packs_refs_and_loose_objects_and_keeps_every_attempt(quadratic: Path) -> None:
    ws = Workspace(quadratic, ".", quadratic / ".ouroboros", "t")
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=quadratic, capture_output=True, text=True).stdout.strip()
    ws.open(base)
    shas = []
    for n in range(1, 6):
        (ws.task_dir / "train.py").write_text(f"X = {n}\n")
        shas.append(ws.commit(f"attempt {n}", n))
        ws.reset(base)
    assert len(loose_refs(quadratic, "t")) == 5 and loose_objects(quadratic) > 0
    maintain(quadratic)
    assert loose_refs(quadratic, "t") == [] and loose_objects(quadratic) == 0
    refs = subprocess.run(["git", "for-each-ref", "--format=%(objectname)", "refs/ouroboros/t/"], cwd=quadratic,
                          capture_output=True, text=True, check=True).stdout.split()
    assert sorted(refs) == sorted(shas)
    for sha in shas:  # every attempt is still there, whole
        subprocess.run(["git", "cat-file", "-e", f"{sha}^{{tree}}"], cwd=quadratic, check=True)


def test_the_loop_maintains_every_few_hundred_experiments(quadratic: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(loop_mod, "MAINTAIN_EVERY", 2)
    monkeypatch.setattr(loop_mod, "maintain", lambda path: calls.append(path))
    Loop(load_task(quadratic), Options(agent="random", tag="m", max_experiments=5)).run()
    assert len(calls) == 2  # after experiments 2 and 4, never after the baseline
