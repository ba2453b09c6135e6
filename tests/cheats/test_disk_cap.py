"""The disk cap (`max_artifact_mb`, sandbox.du) against runs that write where a size scan might not look,
and against skipping the scan: the run phase's first size is taken from the loop's own snapshot of the
worktree (Workspace.snapshot), so the two must count the same bytes."""

from __future__ import annotations

import pytest

from ouroboros import cheats, isolation

LEVELS = ["process", *(["bwrap"] if isolation.available("bwrap") else [])]

# The worktree's `.git` is a file (a linked worktree); the run replaces it with a folder and fills that
# folder, in files each under RLIMIT_FSIZE. A scan that skips the top-level `.git` never sees the bytes.
_TOP_DOTGIT_FILL = '''
def cheat():
    import os
    top = Path.cwd()
    while not (top / ".git").exists() and top != top.parent:
        top = top.parent
    dotgit = top / ".git"
    if dotgit.is_file():
        dotgit.unlink()
    dotgit.mkdir(exist_ok=True)
    for i in range(9):
        with open(dotgit / f"blob{i}", "wb") as f:
            f.write(b"x" * (900 << 10))
    return True
'''


@pytest.mark.parametrize("level", LEVELS)
def test_a_run_filling_a_folder_in_place_of_the_worktrees_git_file_hits_the_artifact_limit(level, tmp_path):
    attack = cheats.Attack("top-dotgit-fill", title="fill the disk in place of the worktree's .git",
                           train=_TOP_DOTGIT_FILL, bound={"max_artifact_mb": 1})
    result = cheats.run_attack(attack, tmp_path / "attack", isolation=level)
    assert result.verdict in cheats.FAILED, f"ended as {result.verdict}: {result.reason}"
    assert "artifact limit" in result.reason, result.reason
