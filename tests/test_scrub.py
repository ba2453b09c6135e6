"""workspace.scrub: what a process left in the worktree's metadata (not its contents) is gone after it,
so a run cannot carry a result into its confirmation re-run or the next experiment through xattrs,
mode bits, times or a folder's size."""

from __future__ import annotations

import os
import stat

import pytest

from ouroboros.workspace import meta, scrub


def _tree(root):
    (root / "pkg").mkdir(parents=True)
    (root / "train.py").write_text("x = 1\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o755)
    (root / "pkg" / "mod.py").write_text("y = 2\n")
    os.symlink("train.py", root / "link")


def _xattrs_supported(path) -> bool:
    try:
        os.setxattr(path, "user.probe", b"1")
        os.removexattr(path, "user.probe")
        return True
    except OSError:
        return False


def test_extended_attributes_set_by_a_run_are_gone_and_contents_stay(tmp_path):
    root = tmp_path / "wt"
    _tree(root)
    if not _xattrs_supported(root):
        pytest.skip("this filesystem has no user extended attributes")
    before = meta(root)
    for p in (root, root / "pkg", root / "train.py"):
        os.setxattr(p, "user.lucky", b"1")
    scrub(root, before)
    for p in (root, root / "pkg", root / "train.py"):
        assert "user.lucky" not in os.listxattr(p), p
    assert (root / "train.py").read_text() == "x = 1\n" and (root / "pkg" / "mod.py").read_text() == "y = 2\n"
    assert os.readlink(root / "link") == "train.py"


def test_mode_bits_and_times_set_by_a_run_are_put_back(tmp_path):
    root = tmp_path / "wt"
    _tree(root)
    before = meta(root)
    mode = {p: stat.S_IMODE(os.stat(root / p).st_mode) for p in ("train.py", "run.sh", "pkg")}
    os.chmod(root / "train.py", 0o640)  # 3 bits of "lucky" in the group/other bits
    os.chmod(root / "pkg", 0o711)
    os.utime(root / "pkg" / "mod.py", ns=(123_456_789_000, 987_654_321_000))
    os.utime(root / "run.sh", ns=(111, 222))
    scrub(root, before)
    for p, m in mode.items():
        assert stat.S_IMODE(os.stat(root / p).st_mode) == m, p
    assert os.stat(root / "run.sh").st_mode & 0o111  # the executable bit git keeps
    for p in ("pkg/mod.py", "run.sh"):
        st = os.stat(root / p)
        assert st.st_mtime_ns not in (987_654_321_000, 222) and st.st_atime_ns not in (123_456_789_000, 111), p


def test_a_file_only_read_gets_its_access_time_back(tmp_path):
    root = tmp_path / "wt"
    _tree(root)
    os.utime(root / "train.py", ns=(1_000_000_000, 2_000_000_000))  # atime < mtime: the next read moves it
    before = meta(root)
    (root / "train.py").read_bytes()
    scrub(root, before)
    assert os.stat(root / "train.py").st_atime_ns == 1_000_000_000


def test_a_folder_grown_and_emptied_by_a_run_is_small_again_and_lists_in_order(tmp_path):
    root = tmp_path / "wt"
    _tree(root)
    size = os.stat(root / "pkg").st_size
    before = meta(root)
    for i in range(3000):  # on ext4 a folder never shrinks: its size would say "the run was lucky"
        (root / "pkg" / f"f{i:05d}").touch()
    for i in range(3000):
        (root / "pkg" / f"f{i:05d}").unlink()
    scrub(root, before)
    assert os.stat(root / "pkg").st_size <= max(size, 4096)
    assert os.listdir(root / "pkg") == ["mod.py"] and (root / "pkg" / "mod.py").read_text() == "y = 2\n"


def test_everything_counts_as_touched_without_a_before(tmp_path):
    root = tmp_path / "wt"
    _tree(root)
    inodes = {p: os.lstat(root / p).st_ino for p in ("train.py", "pkg/mod.py", "link")}
    after = scrub(root, None)
    assert all(os.lstat(root / p).st_ino != ino for p, ino in inodes.items())
    assert set(after) == set(meta(root))
    assert sorted(p for p in after if p) == sorted(["train.py", "run.sh", "pkg", "pkg/mod.py", "link"])


def test_without_remaking_folders_a_process_living_in_one_keeps_its_working_directory(tmp_path):
    root = tmp_path / "wt"
    _tree(root)
    before = meta(root)
    os.chmod(root / "pkg", 0o700)
    ino = os.stat(root / "pkg").st_ino
    scrub(root, before, remake_folders=False)  # an agent-driven session's agent has its cwd in there
    assert os.stat(root / "pkg").st_ino == ino and stat.S_IMODE(os.stat(root / "pkg").st_mode) == 0o755
