"""Eighth red-team pass, on the fixes of the seventh: `readfile.walk` / `remove_tree` and their callers
(`Workspace.remove_specials`, `meta`, `snapshot`, `sandbox.du`), the ledger's schema allowlist and remade lock,
level unshare's read-only /proc/sys and /sys, `chain.verify_self` and the self mode's `InnerRepo`. Each attack that
gets through is marked xfail(strict=True) with its root cause and the fix recommended."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

from ouroboros import cheats, isolation, readfile

BWRAP = isolation.available("bwrap")
UNSHARE = isolation.available("unshare")
LEVELS = [pytest.param("bwrap", marks=pytest.mark.skipif(not BWRAP, reason="bubblewrap does not work here")),
          pytest.param("unshare", marks=pytest.mark.skipif(not UNSHARE, reason="unshare does not work here")),
          "process"]


# -- 1. remove_specials unlinks by a path joined from the worktree, after the walk ------------------------------------
# Red team 7's fix moved remove_specials onto readfile.walk: the walk stats each entry by its folder's descriptor, but
# the FIFO (socket, device) it finds is then removed with `os.unlink(os.path.join(self.path, name))`, a path whose
# folders are looked up again, links followed. (The fwalk version unlinked by `dir_fd`.) In agent-driven mode the
# agent (and anything it left running) lives in the worktree while `ouroboros exp` runs remove_specials as the
# harness's user (root here): between the walk's stat of `a/victim` (a FIFO) and the unlink it renames `a` away and
# puts a link to any folder in its place, and the harness deletes that folder's `victim`. The test plays the agent's
# move at exactly that moment (where the walk hands the FIFO over) instead of racing it.
def test_remove_specials_never_deletes_through_a_link_swapped_in_after_the_walk(tmp_path, monkeypatch):
    from ouroboros import workspace

    wt = tmp_path / "worktree"
    (wt / "a").mkdir(parents=True)
    os.mkfifo(wt / "a" / "victim")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("the user's file\n")
    real_walk = readfile.walk

    def racing_walk(*args, **kwargs):
        for rel, st in real_walk(*args, **kwargs):
            if rel == "a/victim":  # the agent's move, after the walk's stat and before the harness's unlink
                os.rename(wt / "a", wt / "a-moved")
                os.symlink(outside, wt / "a")
            yield rel, st

    monkeypatch.setattr(readfile, "walk", racing_walk)
    workspace.Workspace.remove_specials(types.SimpleNamespace(path=wt))
    assert (outside / "victim").exists(), "remove_specials deleted a file outside the worktree through a link"


# -- 2. ledger.hold removes a deeply nested folder in the lock's place with shutil.rmtree ----------------------------
# Red team 7's fix to the lock: `hold` removes what a run left in the lock's place, a folder with `shutil.rmtree`,
# and turns an OSError into a one-line OuroborosError. But rmtree recurses once per level: a run at level unshare or
# process (which reach their run folder, `../harness.lock`) leaves a folder nested a few thousand levels deep there,
# and `run --resume` ends in RecursionError (not an OSError), a traceback. readfile.remove_tree (GNU rm) is what the
# harness uses for deep folders elsewhere.
_DEEP_LOCK = '''
def cheat():
    import os
    lock = os.path.join("..", "harness.lock")
    try:
        os.unlink(lock)
        os.mkdir(lock)
        fd = os.open(lock, os.O_RDONLY)
        for _ in range(3000):
            os.mkdir("d", dir_fd=fd)
            sub = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = sub
        os.close(fd)
    except OSError as exc:
        print(f"lock not reached: {exc}", flush=True)
    return True
'''


@pytest.mark.parametrize("level", [LEVELS[1], "process"])
def test_resume_after_a_run_nested_folders_deep_in_its_lock_fails_with_a_clear_error_or_goes_on(level, tmp_path,
                                                                                                 monkeypatch):
    loop = cheats.attack_loop(tmp_path, cheats.writer_agent(cheats.train_source(_DEEP_LOCK)), level=level,
                              judge={"confirm": True})
    lock = loop.ledger.run_dir("t") / "harness.lock"
    try:
        if level == "unshare":  # the records are masked there (since the eleventh pass): the lock stays as it was
            assert lock.is_file(), f"the run reached its lock at level unshare ({loop.history[-1].status})"
            return
        # level process: the guard sees the lock replaced (a violation) and holds a lock file in its place again
        exp = loop.history[-1]
        assert exp.status == "violation" and "harness.lock" in exp.reason, (exp.status, exp.reason)
        assert lock.is_file()
        cheats.attack_resume(loop)
    finally:  # pytest's own cleanup of old temporary folders uses shutil.rmtree too: never leave the deep folder
        if lock.is_dir():
            fd = os.open(lock.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                readfile.remove_tree(fd, lock.name)
            finally:
                os.close(fd)


# -- 3. level unshare, root harness: device nodes and cgroup files open by ownership -------------------------------
# Red team 7's fix makes /proc/sys and /sys read-only at level unshare, but the run is still uid 0 of the host
# without capabilities, and (a) a read-only mount does not stop writes to device nodes (the kernel refuses
# EROFS only for files, folders and links), nor is /dev replaced: /dev/loop0 (brw------- root), /dev/kmsg (the
# kernel's log) and /dev/cpu_dma_latency (a machine-wide power setting) open for writing by their owner bits (seen
# here; /dev/vda, the mounted root disk, was refused); (b) `mount -o remount,bind,ro /sys` makes only /sys itself
# read-only, not the mounts under it: every cgroup hierarchy (/sys/fs/cgroup/<controller>, root-owned; cgroup v1
# asks no capability to write its knobs or move a task) opened for writing: freeze or limit the harness's or the
# machine's cgroups, or move the run out of its own.
# The test only opens the files: it never writes one.
_OWNED_OPEN = '''
def cheat():
    import glob, os
    paths = ["/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/loop0", "/dev/kmsg", "/dev/cpu_dma_latency",
             *glob.glob("/sys/fs/cgroup/*/cgroup.procs"), "/sys/fs/cgroup/cgroup.procs"]
    opened = []
    for path in paths:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # opened, never written
        except OSError:
            continue
        os.close(fd)
        opened.append(path)
    print(f"open for writing: {opened}", flush=True)
    return bool(opened)
'''


@pytest.mark.skipif(not UNSHARE, reason="unshare does not work here")
@pytest.mark.skipif(os.geteuid() != 0, reason="a non-root harness gives the run a user namespace: not global root")
def test_a_run_at_level_unshare_cannot_open_a_disk_device_or_a_cgroup_file_for_writing(tmp_path):
    attack = cheats.Attack("owned", title="open root-owned devices and cgroup files for writing", train=_OWNED_OPEN)
    result = cheats.run_attack(attack, tmp_path / "attack", isolation="unshare")
    assert result.verdict in cheats.FAILED, f"ended as {result.verdict}: {result.reason}"


# -- 4. a schema row the ledger cannot parse: log, status and verify end in a traceback -----------------------------
# Red team 7's fix reads every sqlite_master row to allow only the tables and indexes Ouroboros makes. A run at
# level unshare or process reaches the records (`../../../ledger.sqlite` from its worktree) and, with PRAGMA
# writable_schema (no key needed), adds an index row SQLite cannot load (here a rootpage past the file's end; an
# unknown collation does the same). The first read of sqlite_master, the allowlist's own, raises
# sqlite3.DatabaseError ("malformed database schema"), which nothing turns into an OuroborosError: `ouroboros log`,
# `status`, `verify` and `run --resume` end in a traceback instead of saying the records were edited.
@pytest.mark.parametrize("command", ["log", "verify"])
def test_a_schema_row_sqlite_cannot_load_gives_a_one_line_error(command, tmp_path):
    import sqlite3
    import subprocess

    from ouroboros.ledger import Ledger

    task = tmp_path / "task"
    env = {**os.environ, "PYTHONPATH": str(Path(readfile.__file__).parent.parent),
           "OUROBOROS_CONFIG_DIR": str(tmp_path / "config")}
    subprocess.run([sys.executable, "-m", "ouroboros.cli", "init", str(task), "--template", "quadratic"], env=env,
                   check=True, capture_output=True)
    Ledger(task / ".ouroboros").db.close()
    db = sqlite3.connect(task / ".ouroboros" / "ledger.sqlite")  # what the run does, without the key
    db.execute("PRAGMA writable_schema=ON")
    db.execute("INSERT INTO sqlite_master VALUES('index', 'x', 'experiments', 99999, 'CREATE INDEX x ON experiments(n)')")
    db.commit()
    db.close()
    proc = subprocess.run([sys.executable, "-m", "ouroboros.cli", command], cwd=task, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout, (proc.stderr + proc.stdout)[-300:]


# -- 5. the outer harness reads a candidate's params.py blob whole into memory ---------------------------------------
# self/delta.py `_params_at` reads params.py at an inner commit with `git cat-file blob` through InnerRepo.git, whose
# output is captured whole (then decoded to a str) however large. The inner repo's object store is the candidate's:
# a blob of zeros compresses about 1000:1, so a few MB of objects (well under MAX_ENTRIES, all regular files) put
# gigabytes into the outer harness's memory (a pack delta, git allocating the declared size, goes further). The test
# uses 160 MiB, more than any params.py and more than count_loc's own 64 MiB cap on a hostile file.
def test_a_huge_params_blob_in_an_inner_repo_is_refused_not_read_whole(tmp_path):
    import subprocess

    from ouroboros.errors import OuroborosError
    from ouroboros.self.delta import _params_at

    dest = tmp_path / "inner"
    dest.mkdir()
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path), "GIT_AUTHOR_NAME": "a",
           "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@b"}

    def git(*args, data=None):
        return subprocess.run(["git", "-C", str(dest), *args], env=env, input=data, capture_output=True,
                              check=True).stdout.decode().strip()

    git("init", "-q")
    blob = git("hash-object", "-w", "--stdin", data=b"\0" * (160 << 20))
    tree = git("mktree", data=f"100644 blob {blob}\tparams.py\n".encode())
    commit = git("commit-tree", tree, "-m", "x")
    stored = sum(f.stat().st_size for f in (dest / ".git" / "objects").rglob("*") if f.is_file())
    assert stored < 2 << 20  # what the candidate wrote
    try:
        text = _params_at(dest, commit)
    except OuroborosError:
        return  # refused: stopped
    assert len(text) < 64 << 20, f"the outer harness read {len(text) >> 20} MiB of a candidate's blob"


# -- 6. count_loc lists an editable folder through the agent's link -----------------------------------------------
# Red team 7's fix makes count_loc read regular files only (the last component opened O_NOFOLLOW) and at most 64 MiB
# each. But the list it reads comes from `task.glob_files`, which follows links: with a folder among the editable
# paths (`lib*`, which may name a folder), the agent makes `lib_more` a link to any folder, `path.is_dir()` follows
# it and `path.rglob("*")` lists everything there; read_regular then opens `lib_more/<name>` through the link (only the last component is not
# followed) and the harness (root here) adds the lines of files outside the worktree, root-only ones included, to
# the experiment's recorded `loc`. A link to `/` walks the whole machine (/proc, /sys, every disk) in the loop.
_LOC_FOLDER_LINK_AGENT = '''
import os
from pathlib import Path
os.symlink({target!r}, "lib_more")
Path(os.environ["OUROBOROS_DESCRIPTION"]).write_text("link")
'''


@pytest.mark.parametrize("level", LEVELS)
def test_an_editable_folder_linked_outside_is_not_listed_or_counted(level, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.py"
    secret.write_text("".join(f"x{i} = {i}\n" for i in range(5000)))
    secret.chmod(0o600)
    loop = cheats.attack_loop(tmp_path / "w", _LOC_FOLDER_LINK_AGENT.format(target=str(outside)), level=level,
                              task={"editable": ["train.py", "lib*"]}, files={"lib_a.py": "A = 1\n"})
    exp = loop.history[-1]
    assert exp.loc is None or exp.loc < 5000, f"the recorded loc {exp.loc} counts the lines of {secret}"


# -- 7. remove_specials starts one `rm` per deep folder ---------------------------------------------------------------
# Red team 7's fix removes every folder past DEEP_BYTES (1 KiB of path) with readfile.remove_tree, which starts GNU
# rm, once per folder. A run leaves many sibling folders just past 1 KiB of path (four 254-byte names, then short
# ones; depth 5, so sandbox.du does not count them as deep): each empty folder counts 4 KiB, so 100,000 of them
# (made in a second or two) stay under the default max_artifact_mb of 512. Every reset then forks and execs 100,000
# rm processes: measured here, 2,000 such folders took 10.1 s (`Workspace.remove_specials` on a busy 2-core machine,
# nice 19), so 100,000 stall the harness about 8 minutes per reset, and a reset follows every experiment (twice with
# a confirmation). The old in-process rmtree cost microseconds a folder. The test counts the processes started.
def test_remove_specials_does_not_start_a_process_per_deep_folder(tmp_path, monkeypatch):
    import subprocess

    from ouroboros import workspace

    wt = tmp_path / "worktree"
    base = wt / ("a" * 254) / ("b" * 254) / ("c" * 254) / ("d" * 254)
    base.mkdir(parents=True)
    for i in range(200):
        (base / f"{i:05d}").mkdir()
    started = []
    real_run = subprocess.run

    def counting_run(*args, **kwargs):
        started.append(args[0] if args else kwargs.get("args"))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(subprocess, "run", counting_run)
    workspace.Workspace.remove_specials(types.SimpleNamespace(path=wt))
    assert not os.listdir(base), "the deep folders were not removed"
    assert len(started) < 20, f"{len(started)} processes started to remove 200 folders"


# -- 8. InnerRepo.ref follows a symbolic ref out of the repo -------------------------------------------------------
# self/evidence.py reads an inner repo's refs as files, without git: `ref("HEAD")` reads `.git/HEAD` and, for
# `ref: NAME`, reads `.git/NAME` again, with NAME as the candidate wrote it: an absolute path or `../..` replaces or
# climbs out of the git dir. The outer harness (root here) then opens any path the candidate names (O_NONBLOCK,
# opening a device node included) and takes a 40-hex id found there as the repo's commit: another repository's ref,
# a file of the user's. Only names under refs/ (and HEAD) should be read, with no `..` component.
@pytest.mark.parametrize("how", ["absolute", "climb"])
def test_an_inner_repos_symbolic_ref_cannot_name_a_file_outside_it(how, tmp_path):
    from ouroboros.errors import OuroborosError
    from ouroboros.self.evidence import InnerRepo

    outside = tmp_path / "outside-ref"
    outside.write_text("0123456789abcdef0123456789abcdef01234567\n")
    repo = tmp_path / "inner"
    (repo / ".git" / "objects").mkdir(parents=True)
    target = str(outside) if how == "absolute" else "../../outside-ref"
    (repo / ".git" / "HEAD").write_text(f"ref: {target}\n")
    try:
        head = InnerRepo(repo).ref("HEAD")
    except OuroborosError:
        return  # refused: stopped
    assert head is None, f"HEAD resolved to {head}, read from {outside}"
