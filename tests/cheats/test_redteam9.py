"""Ninth red-team pass, on the fixes of the eighth: `Workspace.remove_specials` (specials unlinked by their folder's
descriptor, deep folders renamed into a trash folder and removed by one rm), `readfile.walk` / `remove_tree`,
`ledger.hold`, the ledger's DatabaseError handling, `task.glob_files` / `_through_link`, `InnerRepo.ref` and
`delta._params_at`. Each attack that gets through is marked xfail(strict=True) with its root cause and the fix
recommended."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ouroboros import cheats, isolation, readfile, syscall_filter

BWRAP = isolation.available("bwrap")
SRC = str(Path(readfile.__file__).parent.parent)


def _commit(task_dir: Path, *paths: str) -> None:
    subprocess.run(["git", "-C", str(task_dir), "add", "--", *paths], check=True, capture_output=True)
    subprocess.run(["git", "-C", str(task_dir), "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "x"],
                   check=True, capture_output=True)


# -- 1. hidden data reached through a committed link is no longer masked -------------------------------------------
# Red team 8's fix to count_loc made `task.glob_files` skip every path with a link among its parts (`_through_link`).
# glob_files is not only the editable list: `Isolation.hidden_files` and `checkout_hidden` list `[bound] hidden` with
# it, and the guard hashes `protected_files` from it. A task whose hidden file sits under a committed link
# (`data -> store`, a common layout for data folders) had `data/answers.txt` masked by bwrap (`--ro-bind /dev/null`,
# the mount lands on the file itself, so `store/answers.txt` read /dev/null too); now hidden_files() is empty and the
# run phase reads the answers by either name. Checked at 4769a98 (before the fix): both reads were refused.
@pytest.mark.skipif(not BWRAP, reason="bubblewrap does not work here")
def test_hidden_data_under_a_committed_link_stays_masked_from_the_run(tmp_path):
    from ouroboros.task import load_task

    attack = cheats.Attack("rt9", title="rt9", task={}, files={"store/answers.txt": "SECRET-ANSWERS\n"},
                           bound={"isolation": "bwrap", "hidden": ["data/answers.txt"]})
    task_dir = cheats.make_task(attack, tmp_path)
    os.symlink("store", task_dir / "data")
    _commit(task_dir, "data")
    iso = isolation.choose(load_task(task_dir), task_dir, tmp_path / "records")
    argv, _ = iso.wrap(["cat", "data/answers.txt", "store/answers.txt"], "run", cwd=task_dir)
    with syscall_filter.attached(argv) as (argv, fds):  # the fd of bwrap's seccomp program, as sandbox.run does
        proc = subprocess.run(argv, cwd=task_dir, capture_output=True, text=True, timeout=60, pass_fds=fds)
    assert "SECRET-ANSWERS" not in proc.stdout, "the run phase read the task's hidden answers"


# -- 2. a damaged table page (schema intact) still ends log / status / verify in a traceback ------------------------
# Red team 8's fix catches sqlite3.DatabaseError around the first read of sqlite_master only. A run at level unshare
# or process reaches the records (red team 8, 4.) and need not touch the schema: it overwrites the pages after the
# first (the tables' b-trees) with garbage. The allowlist's read of page 1 passes; the first read of a table raises
# sqlite3.DatabaseError ("database disk image is malformed"), which nothing turns into an OuroborosError.
@pytest.mark.parametrize("command", ["log", "verify"])
def test_a_damaged_table_page_gives_a_one_line_error(command, tmp_path):
    from ouroboros.ledger import Ledger

    task = tmp_path / "task"
    env = {**os.environ, "PYTHONPATH": SRC, "OUROBOROS_CONFIG_DIR": str(tmp_path / "config")}
    subprocess.run([sys.executable, "-m", "ouroboros.cli", "init", str(task), "--template", "quadratic"], env=env,
                   check=True, capture_output=True)
    Ledger(task / ".ouroboros").db.close()
    path = task / ".ouroboros" / "ledger.sqlite"
    data = path.read_bytes()
    page = int.from_bytes(data[16:18], "big") or 65536
    path.write_bytes(data[:page] + b"\xab" * (len(data) - page))  # page 1 (the schema) kept, the tables' pages not
    proc = subprocess.run([sys.executable, "-m", "ouroboros.cli", command], cwd=task, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout, (proc.stderr + proc.stdout)[-300:]


# -- 3. a run replaces the worktree's .git file with a deep folder: the harness crashes -----------------------------
# remove_specials and remove_tree (GNU rm) now take any depth, but `Workspace.restore_dotgit`, which guard.after calls
# right after the run (before any reset or remove_specials), still removes a `.git` folder with shutil.rmtree, which
# recurses once per level. The run (its worktree is writable at every level) unlinks `.git`, makes a folder there and
# nests 1,500 folders in it (made as six chains of 250, each under the disk watcher's depth limit, then nested by
# five renames, so the watcher's kill does not cut it short): guard.after("run") ends in RecursionError (not an
# OSError) and the loop dies with a traceback mid-experiment; `run --resume` would meet the same folder
# (Workspace.open calls restore_dotgit; not run here). guard._git_entries removes any other folder named .git
# (`sub/.git`) with shutil.rmtree too, ignore_errors=True, which does not catch RecursionError (guard._restore_git's
# rmtree calls share the flaw).
_DEEP_DOTGIT = '''
def cheat():
    import os
    top = os.getcwd()
    for c in range(6):  # six chains of 250 folders: none past the disk watcher's depth limit while it is made
        os.chdir(top)
        os.mkdir(f"chain{c}")
        os.chdir(f"chain{c}")
        for _ in range(249):
            os.mkdir("d")
            os.chdir("d")
    os.chdir(top)
    bottom = lambda c: os.path.join(f"chain{c}", *["d"] * 249)
    for c in range(5, 0, -1):  # then nested in five renames (1,500 levels) and put in .git's place
        os.rename(f"chain{c}", os.path.join(bottom(c - 1), "d"))
    if WHERE == "root":  # the worktree's own .git file made a folder
        os.unlink(".git")
        os.rename("chain0", ".git")
    else:  # any folder named .git (guard._git_entries removes it with shutil.rmtree, ignore_errors=True)
        os.mkdir("sub")
        os.rename("chain0", "sub/.git")
    return True
'''
LEVELS = [pytest.param("bwrap", marks=pytest.mark.skipif(not BWRAP, reason="bubblewrap does not work here")),
          pytest.param("unshare", marks=pytest.mark.skipif(not isolation.available("unshare"),
                                                           reason="unshare does not work here")),
          "process"]


@pytest.mark.parametrize("where", ["root", "sub"])
@pytest.mark.parametrize("level", LEVELS)
def test_a_run_that_makes_dotgit_a_deep_folder_is_a_violation_not_a_crash(level, where, tmp_path):
    try:
        result = cheats.run_attack(cheats.Attack("deep-dotgit", title="a deep folder named .git",
                                                 train=_DEEP_DOTGIT.replace("WHERE", repr(where))), tmp_path / "attack",
                                   isolation=level)
    finally:  # pytest's own cleanup of tmp_path recurses too
        parent = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            readfile.remove_tree(parent, "attack")
        finally:
            os.close(parent)
    assert result.verdict in cheats.FAILED, f"ended as {result.verdict}: {result.reason}"


# -- 4. InnerRepo.ref: a `refs` link in the candidate's git dir reads outside it -------------------------------------
# Red team 8's fix follows only HEAD and names under refs/ without `..`. But the name is then joined to the git dir and
# opened by path: read_regular refuses a link only as the last component, so a candidate whose `.git/refs` is a link
# to any folder (another repository's refs, the user's checkout) has the outer harness (root here) open files there and
# take a 40-hex id found in one as the inner repo's commit, exactly what the fix meant to stop.
def test_an_inner_repos_refs_folder_linked_outside_is_not_read(tmp_path):
    from ouroboros.errors import OuroborosError
    from ouroboros.self.evidence import InnerRepo

    outside = tmp_path / "someone-elses-refs"
    (outside / "heads").mkdir(parents=True)
    (outside / "heads" / "main").write_text("0123456789abcdef0123456789abcdef01234567\n")
    repo = tmp_path / "inner"
    (repo / ".git" / "objects").mkdir(parents=True)
    os.symlink(outside, repo / ".git" / "refs")
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    try:
        head = InnerRepo(repo).ref("HEAD")
    except OuroborosError:
        return  # refused: stopped
    assert head is None, f"HEAD resolved to {head}, read from {outside}"


# -- 5. a run plants an index whose expression fails on the harness's next write: the harness crashes ---------------
# `_ours` allows any schema row whose SQL starts with CREATE INDEX, whatever it indexes, and the allowlist is read once,
# when the ledger opens. A run at level unshare or process reaches the records (red team 8, 4.) and, with plain SQL (no
# key, no writable_schema), adds `CREATE INDEX ... ON experiments(CASE WHEN n = <its n> AND status != 'running' THEN
# json('{') END)`: true for no row yet, so SQLite accepts it. The harness's next write of the experiment (its verdict)
# evaluates the expression and raises sqlite3.OperationalError ("malformed JSON") out of Ledger._write: the loop dies
# with a traceback, the experiment stays "running", and every `run --resume` meets the same index (log and verify, which
# only read, pass). A UNIQUE index does worse with the ledger's INSERT OR REPLACE: the harness itself deletes the rows
# that collide.
_PLANT_INDEX = '''
def cheat():
    import os, sqlite3
    here = os.getcwd()
    for _ in range(8):
        here = os.path.dirname(here)
        path = os.path.join(here, "ledger.sqlite")
        if os.path.exists(path):
            break
    else:
        return False
    db = sqlite3.connect(path, timeout=30)
    n = db.execute("SELECT max(n) FROM experiments").fetchone()[0]
    db.execute("CREATE INDEX planted ON experiments(CASE WHEN n = %d AND status != 'running' THEN json('{') END)" % n)
    db.commit()
    return True
'''


@pytest.mark.parametrize("level", [*LEVELS[:2], "process"])
def test_an_index_planted_by_the_run_does_not_crash_the_harness(level, tmp_path):
    result = cheats.run_attack(cheats.Attack("plant-index", title="an index whose expression fails",
                                             train=_PLANT_INDEX), tmp_path / "attack", isolation=level)
    assert result.verdict in cheats.FAILED, f"ended as {result.verdict}: {result.reason}"


# -- 6. a run unlinks the harness lock: status shows a live run as "killed" -----------------------------------------
# `ledger.hold` takes a shared flock on `runs/<tag>/harness.lock`; `alive` (and so `ouroboros status` / `log`, through
# `shown_status`) opens that path afresh and tries an exclusive lock. A run at level unshare or process reaches its run
# folder (`../harness.lock` from its worktree, red team 7, 7.): it unlinks the file (or renames it away) and leaves a
# new empty one. The harness still holds its lock on the old inode; every reader now finds a lock nobody holds and shows
# the live run as "killed" ("--resume goes on"), inviting a second harness onto the same worktree and ledger. The test
# plays the run's two system calls while this process holds the lock.
def test_a_run_that_replaces_the_lock_file_does_not_make_a_live_run_look_killed(quadratic):
    """At level process the run reaches its run folder: the guard sees the lock file replaced after the phase (a
    violation) and holds the new one, so readers still see the harness alive."""
    from ouroboros.guard import Guard
    from ouroboros.ledger import HARNESS_LOCK, alive, hold, shown_status
    from ouroboros.loop import Loop, Options
    from ouroboros.task import load_task

    cheats._set_keys(quadratic / "ouroboros.toml", "bound", {"isolation": "process"})
    cheats._git(quadratic, "commit", "-qam", "level process")
    loop = Loop(load_task(quadratic), Options(agent="random", max_experiments=0, tag="t", allow_weak_isolation=True))
    loop.ws.open(loop.run_rec.base_commit)
    guard = Guard(loop.task, loop.ws)
    run_dir = loop.ledger.run_dir("t")
    fd = hold(run_dir)
    try:
        guard.arm()
        os.unlink(run_dir / HARNESS_LOCK)  # the run's move
        (run_dir / HARNESS_LOCK).write_text("")
        broke = guard.after("run", loop.ws.head())
        assert any(HARNESS_LOCK in b for b in broke), broke
        assert alive(run_dir) is True and shown_status("running", run_dir) == "running", \
            "a run whose harness is alive is shown as killed"
    finally:
        os.close(fd)
        loop.ledger.close()
