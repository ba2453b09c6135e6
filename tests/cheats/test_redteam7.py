"""Seventh red-team pass, on the fixes of the sixth: `Workspace.empty_gitlinks`, `remove_specials`, the scrub made
anew after every run, the attributes check, level unshare's capability drop, `sandbox.du`, the `.verified` record
and the run-folder lock. Each attack that gets through is marked xfail(strict=True) with its root cause and the fix
recommended."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ouroboros import cheats, isolation

BWRAP = isolation.available("bwrap")
UNSHARE = isolation.available("unshare")
LEVELS = [pytest.param("bwrap", marks=pytest.mark.skipif(not BWRAP, reason="bubblewrap does not work here")),
          pytest.param("unshare", marks=pytest.mark.skipif(not UNSHARE, reason="unshare does not work here")),
          "process"]


def _experiment(tmp_path: Path, monkeypatch, level: str, agent_src: str, *, confirm: bool = True,
                budget: float = 8.0):
    """One experiment of a quadratic task at this level with the given agent script (a cmd: agent); the loop."""
    from ouroboros.loop import Loop, Options
    from ouroboros.task import load_task

    attack = cheats.Attack("rt7", title="rt7", task={}, files={}, bound={"isolation": level})
    task_dir = cheats.make_task(attack, tmp_path)
    if confirm:
        cheats._set_keys(task_dir / "ouroboros.toml", "judge", {"confirm": True})
        cheats._git(task_dir, "commit", "-qam", "confirm every keep")
    agent = tmp_path / "agent.py"
    agent.write_text(agent_src)
    monkeypatch.setenv("OUROBOROS_CACHE", str(tmp_path / "cache"))
    loop = Loop(load_task(task_dir), Options(agent=f"cmd:{shlex.quote(sys.executable)} {shlex.quote(str(agent))}",
                                             max_experiments=1, budget=budget, tag="t", seed=1,
                                             allow_weak_isolation=True))
    loop.run()
    loop.ledger.close()
    return loop


# -- 1. empty_gitlinks follows a link the agent put in place of a submodule's parent folder ------------------------
# A task repository with a nested submodule (`ext/victim`: a gitlink, `ext` a plain folder). The agent replaces
# `ext` by a symbolic link to a folder outside the worktree that holds a `victim` folder. `empty_gitlinks` joins
# the worktree with `ext/victim` and checks only that the LAST component is a folder and not a link, so it lists
# and deletes everything in <outside>/victim, as the harness's user (root here), before any reset puts `ext` back.
_GITLINK_LINK_AGENT = '''
import os, shutil
from pathlib import Path
shutil.rmtree("ext")
os.symlink({outside!r}, "ext")
Path("train.py").write_text(Path("train.py").read_text() + "\\n# a comment\\n")
Path(os.environ["OUROBOROS_DESCRIPTION"]).write_text("tidy")
'''


@pytest.mark.xfail(strict=True, reason="empty_gitlinks follows a link in a gitlink's parent path and empties a "
                                       "folder outside the worktree")
@pytest.mark.parametrize("level", LEVELS)
def test_emptying_a_submodule_folder_never_follows_a_link_out_of_the_worktree(level, tmp_path, monkeypatch):
    from ouroboros import cheats as c

    real = c.make_task

    def make_task(attack, workdir):  # the task repo with a nested submodule, not initialised
        task_dir = real(attack, workdir)
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=task_dir, capture_output=True,
                             text=True).stdout.strip()
        (task_dir / ".gitmodules").write_text('[submodule "victim"]\n\tpath = ext/victim\n'
                                              '\turl = https://example.invalid/victim.git\n')
        (task_dir / "ext" / "victim").mkdir(parents=True)
        c._git(task_dir, "update-index", "--add", "--cacheinfo", f"160000,{sha},ext/victim")
        c._git(task_dir, "add", ".gitmodules")
        c._git(task_dir, "commit", "-qm", "vendored library")
        return task_dir

    outside = tmp_path / "outside"
    (outside / "victim").mkdir(parents=True)
    precious = outside / "victim" / "precious.txt"
    precious.write_text("the user's file\n")
    os.chmod(tmp_path, 0o755)  # the bwrap agent/run (uid 65534) must not need to read it: the harness follows the link
    monkeypatch.setattr(c, "make_task", make_task)
    loop = _experiment(tmp_path, monkeypatch, level, _GITLINK_LINK_AGENT.format(outside=str(outside)), confirm=False)
    exp = loop.history[-1]
    assert precious.exists(), f"{precious} was deleted by the harness (experiment: {exp.status}, {exp.reason[:200]})"


# -- 2. sandbox.du counts a one-byte file as 512 bytes; it holds a 4 KiB block ---------------------------------------
# `du` counts max(size, 512) for a file, plus `_past_end`: the blocks it holds past its size rounded UP to 4 KiB.
# A file of 1 to 512 bytes holds one 4 KiB block (ext4, xfs, btrfs: the file system's block), which the rounding
# calls "not past the end", so it counts 512 bytes: an eighth of what it takes (a link with a target over 60
# bytes, the same). A run writing small files fills eight times max_artifact_mb before the watch stops it.
_SMALL_FILES_FILL = '''
def cheat():
    import os
    held = 0
    for d in range(3):
        os.makedirs(f"spam/{d}", exist_ok=True)
        for i in range(1000):
            with open(f"spam/{d}/{i}", "wb") as f:
                f.write(b"x")
            held += os.stat(f"spam/{d}/{i}").st_blocks * 512
    print(f"disk held by the small files: {held / 2**20:.1f} MB", flush=True)
    return True
'''


@pytest.mark.xfail(strict=True, reason="sandbox.du counts a small file as 512 bytes while it holds a whole 4 KiB "
                                       "block, so the growth watch lets a run hold 8 x max_artifact_mb")
@pytest.mark.parametrize("level", LEVELS)
def test_a_run_writing_one_byte_files_hits_the_artifact_limit_by_the_disk_they_hold(level, tmp_path):
    attack = cheats.Attack("small-fill", title="3000 one-byte files, 11.7 MB of blocks", train=_SMALL_FILES_FILL,
                           bound={"max_artifact_mb": 2})
    result = cheats.run_attack(attack, tmp_path / "attack", isolation=level)
    assert result.verdict in cheats.FAILED and "limit" in result.reason, f"ended as {result.verdict}: {result.reason}"
