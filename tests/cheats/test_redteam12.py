"""Red team, twelfth pass: level unshare's new filesystem view (mount calls in a shell prelude, capabilities dropped
by setpriv) and level bwrap's keyring filter (seccomp). Each test asserts the attack is stopped; the ones that get
through on current code are xfail(strict=True) with the root cause and the fix."""

from __future__ import annotations

import ctypes
import glob
import os
import platform
import shutil
import uuid
from pathlib import Path

import pytest

from ouroboros import isolation, sandbox
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task
from ouroboros.testing import commit_all

needs_unshare = pytest.mark.skipif(not isolation.available("unshare"), reason="unshare missing or refused here")
needs_bwrap = pytest.mark.skipif(not isolation.available("bwrap"), reason="bubblewrap missing or refused here")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the attack needs a root harness (the run is uid 0)")

# add_key and keyctl, by architecture (the tests call them through ctypes: no keyutils needed)
_KEY_CALLS = {"x86_64": (248, 250), "aarch64": (217, 219)}
needs_key_calls = pytest.mark.skipif(platform.machine() not in _KEY_CALLS, reason="keyring call numbers unknown here")


def _loop(repo: Path, level: str, bound: str = "") -> Loop:
    toml = repo / "ouroboros.toml"
    toml.write_text(toml.read_text() + f'\n[bound]\nisolation = "{level}"\n{bound}\n')
    commit_all(repo, "bound")
    loop = Loop(load_task(repo), Options(agent="random", max_experiments=1, tag="rt12"))
    assert loop.isolation.level == level
    return loop


def _sh(loop: Loop, argv: list[str], phase: str = "run", monkeypatch=None) -> tuple[int, str]:
    if monkeypatch is not None and os.geteuid() == 0:  # wrapped as a non-root harness's unshare is: a user namespace
        with monkeypatch.context() as m:
            m.setattr(os, "geteuid", lambda: 1000)
            wrapped, level = loop.isolation.wrap(argv, phase)
    else:
        wrapped, level = loop.isolation.wrap(argv, phase)
    log = loop.records / f"rt12-{uuid.uuid4().hex[:6]}.log"
    outcome = sandbox.run(wrapped, loop.ws.task_dir, 30, 1, log, env=sandbox.scrubbed_env(), isolation=level,
                          overhead=loop.isolation.overhead)
    return outcome.returncode or 0, log.read_text()


def _key_script(action: str) -> str:
    add_key, keyctl = _KEY_CALLS.get(platform.machine(), (0, 0))
    return f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
SESSION = ctypes.c_long(-3)
if {action!r} == "add":
    r = libc.syscall({add_key}, b"user", b"rt12-carry", b"lucky-seed-7", 12, SESSION)
    print("added" if r > 0 else f"add refused {{ctypes.get_errno()}}")
else:
    k = libc.syscall({keyctl}, 10, SESSION, b"user", b"rt12-carry", 0)  # KEYCTL_SEARCH
    buf = ctypes.create_string_buffer(64)
    n = libc.syscall({keyctl}, 11, ctypes.c_long(k), buf, 64) if k > 0 else -1  # KEYCTL_READ
    print("found:" + buf.raw[:max(n, 0)].decode() if n > 0 else "not found")
"""


@needs_unshare
@needs_key_calls
def test_a_key_one_unshare_run_leaves_in_the_session_keyring_is_not_there_for_the_next(quadratic, monkeypatch):
    """The lucky run leaves a key in the session keyring; its confirmation re-run (a fresh sandbox) reads it back,
    so a result `confirmed` by the re-run was carried, not reproduced."""
    libc = ctypes.CDLL(None, use_errno=True)
    keyctl = _KEY_CALLS[platform.machine()][1]
    # a harness started from a login has a session keyring (pam_keyinit); where this process has none, join one
    session, user_session = (libc.syscall(keyctl, 0, ctypes.c_long(spec), 0) for spec in (-3, -5))  # GET_KEYRING_ID
    if session < 0 or session == user_session:  # none: @s falls back to the uid's user-session keyring
        assert libc.syscall(keyctl, 1, None) > 0, ctypes.get_errno()  # KEYCTL_JOIN_SESSION_KEYRING (anonymous)
    loop = _loop(quadratic, "unshare")
    rc, first = _sh(loop, ["python", "-c", _key_script("add")], monkeypatch=monkeypatch)
    # the sandbox works: the run either has keyrings of its own or is refused the calls (the keyring filter,
    # loaded on the harness thread that starts unshare phases where libseccomp is there)
    assert "added" in first or "add refused 1" in first, first
    rc, second = _sh(loop, ["python", "-c", _key_script("get")], monkeypatch=monkeypatch)
    assert "not found" in second, second


@needs_bwrap
@needs_key_calls
def test_the_keyring_filter_holds_through_the_x32_and_i386_abis(quadratic):
    """The bwrap filter denies keyctl through the native ABI, x32 (syscall number | 0x40000000) and int 0x80."""
    if platform.machine() != "x86_64":
        pytest.skip("x32 and int 0x80 are x86_64's")
    script = """
import ctypes, mmap
libc = ctypes.CDLL(None, use_errno=True)
print("native", libc.syscall(250, 0, ctypes.c_long(-3), 0), ctypes.get_errno())
print("x32", libc.syscall(0x40000000 | 250, 0, ctypes.c_long(-3), 0), ctypes.get_errno())
code = bytes([0x53, 0xb8, 0x20, 0x01, 0, 0, 0xbb, 0, 0, 0, 0, 0xb9, 0xfd, 0xff, 0xff, 0xff, 0xcd, 0x80, 0x5b, 0xc3])
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(code)
print("int80", ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))())
"""
    loop = _loop(quadratic, "bwrap")
    rc, out = _sh(loop, ["python", "-c", script])
    assert "native -1 1" in out and "int80 -1" in out, out  # EPERM; i386 returns -EPERM in eax
    assert "x32 -1 1" in out or "x32 -1 38" in out, out  # EPERM, or ENOSYS where the kernel has no x32


@needs_unshare
@needs_root
def test_an_unshare_run_under_a_root_harness_cannot_write_the_hosts_irq_affinity(quadratic):
    files = sorted(glob.glob("/proc/irq/*/smp_affinity_list"))
    if not files:
        pytest.skip("no /proc/irq here")
    loop = _loop(quadratic, "unshare")
    # the same value written back: proves the write is accepted and changes nothing on the host
    rc, out = _sh(loop, ["bash", "-c", "for f in /proc/irq/*/smp_affinity_list; do v=$(cat $f); "
                                       "echo \"$v\" > $f 2>/dev/null && echo \"wrote $f\"; done; echo done"])
    assert "done" in out, out
    assert not [line for line in out.splitlines() if line.startswith("wrote /proc")], out


@needs_unshare
@needs_root
def test_an_unshare_run_under_a_root_harness_leaves_no_setuid_root_file_in_the_worktree(quadratic):
    loop = _loop(quadratic, "unshare")
    rc, out = _sh(loop, ["bash", "-c", "cp /bin/sh ./planted && chmod 4755 ./planted && echo planted"])
    assert "planted" in out, out
    loop.ws.remove_specials()  # what the loop does after each phase, before any git call
    found = [p for p in loop.ws.task_dir.rglob("*") if p.is_file() and not p.is_symlink()
             and p.stat().st_mode & (0o4000 | 0o2000) and p.stat().st_uid == 0]
    assert found == [], found


@needs_unshare
def test_an_unshare_run_with_network_keeps_no_writable_mount_under_sys(quadratic, monkeypatch):
    loop = _loop(quadratic, "unshare", "network = true")
    # a fresh sysfs cannot be mounted where the user namespace shares the host's network: the host's cgroup mounts
    # are then covered by an empty read-only tmpfs (still listed in mountinfo, out of every path's reach)
    rc, out = _sh(loop, ["bash", "-c", "echo view-made; echo entries=$(ls -A /sys/fs/cgroup | wc -l); "
                                       "find /sys/fs/cgroup -name cgroup.procs 2>/dev/null | head -3; "
                                       "touch /sys/fs/cgroup/x 2>/dev/null && echo wrote-cgroup; "
                                       "touch /sys/x 2>/dev/null && echo wrote-sys"], monkeypatch=monkeypatch)
    assert "view-made" in out and "entries=0" in out, out
    assert "cgroup.procs" not in out and "wrote-cgroup" not in out and "wrote-sys" not in out, out


# $HOME a link (/home/u -> /data/u) with the repo under it: both levels used $HOME unresolved (bwrap's --tmpfs does not
# follow a link at its destination; unshare never made the mount points inside the $HOME tmpfs): now resolved
@pytest.mark.parametrize("level", [pytest.param("bwrap", marks=needs_bwrap), pytest.param("unshare", marks=needs_unshare)])
def test_a_run_works_when_home_is_a_symlink_and_the_repo_is_under_it(quadratic, monkeypatch, level):
    base = Path("/var/tmp") / f"ouroboros-rt12-{uuid.uuid4().hex[:8]}"
    (base / "real").mkdir(parents=True)
    try:
        (base / "link").symlink_to(base / "real")
        repo = base / "real" / "proj"
        shutil.copytree(quadratic, repo, symlinks=True)
        monkeypatch.setenv("HOME", str(base / "link"))
        loop = _loop(base / "link" / "proj", level)
        rc, out = _sh(loop, ["bash", "-c", "echo view-made; ls \"$HOME\" | wc -l"])
        assert "view-made" in out, out
    finally:
        shutil.rmtree(base)


@needs_unshare
def test_an_unshare_run_cannot_write_to_the_users_terminal(quadratic, monkeypatch):
    loop = _loop(quadratic, "unshare")
    master, slave = os.openpty()  # the terminal the user started the harness from
    try:
        pts = os.ttyname(slave)
        rc, out = _sh(loop, ["bash", "-c", f"echo view-made; printf INJECTED > {pts} && echo wrote-tty"],
                      monkeypatch=monkeypatch)
        assert "view-made" in out, out
        os.set_blocking(master, False)
        try:
            seen = os.read(master, 100)
        except BlockingIOError:
            seen = b""
        assert b"INJECTED" not in seen and "wrote-tty" not in out.splitlines(), (seen, out)
    finally:
        os.close(master)
        os.close(slave)


@needs_unshare
def test_a_read_only_home_does_not_show_the_ledger_key_to_an_unshare_run(quadratic, tmp_path, monkeypatch):
    from ouroboros import chain

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("OUROBOROS_CONFIG_DIR", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    chain.key()  # made on first use
    key_file = chain.config_dir() / chain.KEY_FILE
    assert key_file.is_file() and key_file.is_relative_to(home)
    loop = _loop(quadratic, "unshare", f'read_only = ["{home}"]')
    rc, out = _sh(loop, ["python", "-c", f"import sys; sys.stdout.write('view-made ' + open({str(key_file)!r}, 'rb')"
                                         ".read().hex())"])
    assert "view-made" in out or "Error" in out, out
    assert key_file.read_bytes().hex() not in out, out
