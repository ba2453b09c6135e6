"""syscall_filter.py's claims: at level bwrap every phase gets EPERM from the kernel's keyring calls (through
every ABI of this CPU), honest runs are judged the same, and without the filter there is no level bwrap."""

from __future__ import annotations

import platform
import shlex
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ouroboros import isolation, sandbox, syscall_filter
from ouroboros.errors import OuroborosError
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task
from ouroboros.testing import commit_all

needs_bwrap = pytest.mark.skipif(not isolation.available("bwrap"), reason="bubblewrap missing or refused here")

# add_key, request_key, keyctl as this CPU numbers them; on x86_64 their x32 numbers too (bit 30 set)
_CALLS = {"x86_64": [248, 249, 250, *(0x40000000 | n for n in (248, 249, 250))], "aarch64": [217, 218, 219]}
_PROBE = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
for nr in CALLS:
    ctypes.set_errno(0)
    rc = libc.syscall(nr, b"user", b"ouroboros-probe", b"1", 1, -4)
    print("call", hex(nr), rc, errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()))
print(next(line for line in open("/proc/self/status") if line.startswith("Seccomp:")).strip())
"""


def _loop(repo: Path, agent: str = "random", n: int = 1, tag: str = "sc") -> Loop:
    toml = repo / "ouroboros.toml"
    toml.write_text(toml.read_text() + '\n[bound]\nisolation = "bwrap"\n')
    commit_all(repo, "bwrap")
    return Loop(load_task(repo), Options(agent=agent, max_experiments=n, tag=tag, seed=7))


def _sh(loop: Loop, script: str, phase: str) -> str:
    argv, level = loop.isolation.wrap(["bash", "-c", script], phase)
    assert level == "bwrap"
    log = loop.records / f"sc-{uuid.uuid4().hex[:6]}.log"
    sandbox.run(argv, loop.ws.task_dir, 30, 1, log, env=sandbox.scrubbed_env(), isolation=level,
                overhead=loop.isolation.overhead)
    return log.read_text()


@needs_bwrap
@pytest.mark.skipif(platform.machine() not in _CALLS, reason="the probe knows x86_64's and aarch64's numbers only")
@pytest.mark.parametrize("phase", ["run", "evaluate", "agent"])
def test_every_phase_at_bwrap_gets_eperm_from_the_keyring_calls(quadratic, phase):
    calls = _CALLS[platform.machine()]
    out = _sh(_loop(quadratic), f"python -c {shlex.quote(f'CALLS = {calls!r}' + _PROBE)}", phase)
    results = [line.split()[1:] for line in out.splitlines() if line.startswith("call ")]
    assert results == [[hex(nr), "-1", "EPERM"] for nr in calls], out
    assert "Seccomp:\t2" in out or "Seccomp: 2" in out, out  # a filter, not a missing syscall


@pytest.mark.skipif(platform.machine() not in _CALLS, reason="the probe knows x86_64's and aarch64's numbers only")
@pytest.mark.parametrize("level", [pytest.param("unshare", marks=pytest.mark.skipif(
    not isolation.available("unshare"), reason="unshare missing or refused here")), "process"])
def test_the_weaker_levels_get_eperm_from_the_keyring_calls_and_the_harness_does_not(quadratic, level):
    if syscall_filter.problem():
        pytest.skip(syscall_filter.problem())
    calls = _CALLS[platform.machine()]
    # the harness, and a process it starts itself (git), keep the calls: only its starts of phases are filtered
    own = subprocess.run([sys.executable, "-c", f"CALLS = {calls[:1]!r}" + _PROBE], capture_output=True, text=True)
    if "EPERM" in own.stdout or "ENOSYS" in own.stdout:
        pytest.skip(f"the keyring calls are refused here already: {own.stdout.strip()}")
    toml = quadratic / "ouroboros.toml"
    toml.write_text(toml.read_text() + f'\n[bound]\nisolation = "{level}"\n')
    commit_all(quadratic, level)
    loop = Loop(load_task(quadratic), Options(agent="random", max_experiments=1, tag="sc", allow_weak_isolation=True))
    argv, got = loop.isolation.wrap(["bash", "-c", f"python -c {shlex.quote(f'CALLS = {calls!r}' + _PROBE)}"], "run")
    assert got == level
    log, unfiltered = loop.records / "probe.log", loop.records / "agent.log"
    sandbox.run(argv, loop.ws.task_dir, 30, 1, log, env=sandbox.scrubbed_env(), isolation=level,
                overhead=loop.isolation.overhead, filtered=True)  # as the loop starts the run and evaluation
    # an unconfined agent or a [task] setup keeps the user's rights, keyring included
    sandbox.run(["bash", "-c", f"python -c {shlex.quote(f'CALLS = {calls[:1]!r}' + _PROBE)}"], loop.ws.task_dir,
                30, 1, unfiltered, env=sandbox.scrubbed_env())
    loop.ledger.close()
    out = log.read_text()
    results = [line.split()[1:] for line in out.splitlines() if line.startswith("call ")]
    assert results == [[hex(nr), "-1", "EPERM"] for nr in calls], out
    assert "EPERM" not in unfiltered.read_text(), unfiltered.read_text()
    again = subprocess.run([sys.executable, "-c", f"CALLS = {calls[:1]!r}" + _PROBE], capture_output=True, text=True)
    assert "EPERM" not in again.stdout, again.stdout  # the filtered thread's filter stayed on that thread


@needs_bwrap
def test_an_honest_run_is_judged_the_same_with_the_filter(tmp_path, monkeypatch):
    """The same seeded quadratic run with the filter and with one that allows every call: same verdicts, metrics."""
    from ouroboros.scaffold import from_template

    judged = {}
    for name, program in [("filtered", syscall_filter.program()),
                          ("open", struct.pack("<HBBI", 0x06, 0, 0, 0x7FFF0000))]:  # BPF: return ALLOW
        monkeypatch.setattr(syscall_filter, "program", lambda code=program: code)
        loop = _loop(from_template(tmp_path / name, "quadratic"), n=4, tag=name)
        loop.run()
        loop.ledger.close()
        judged[name] = [(e.status, e.metric, e.isolation) for e in loop.history]
    assert len(judged["filtered"]) == 5 and {e[2] for e in judged["filtered"]} == {"bwrap"}
    assert judged["filtered"] == judged["open"]


@needs_bwrap
def test_a_wrapped_argv_started_without_its_filter_fails_instead_of_running(quadratic, tmp_path):
    loop = _loop(quadratic)
    mark = tmp_path / "ran"
    argv, _ = loop.isolation.wrap(["bash", "-c", f"touch {mark}"], "run")
    assert syscall_filter.PLACEHOLDER in argv
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=loop.ws.task_dir, timeout=60)
    assert proc.returncode != 0 and not mark.exists(), proc.stderr


def test_only_bubblewraps_own_seccomp_option_takes_the_fd():
    command = ["bash", "-c", "true", "--seccomp", syscall_filter.PLACEHOLDER]
    with syscall_filter.attached(["bwrap", "--", *command]) as (argv, fds):  # after `--`: the command's words
        assert fds == () and argv == ["bwrap", "--", *command]
    with syscall_filter.attached(command) as (argv, fds):
        assert fds == () and argv == command
    with syscall_filter.attached(["/usr/bin/bwrap", "--seccomp", syscall_filter.PLACEHOLDER, "--", "true"]) as (argv,
                                                                                                                fds):
        assert len(fds) == 1 and argv == ["/usr/bin/bwrap", "--seccomp", str(fds[0]), "--", "true"]
        assert Path(f"/proc/self/fd/{fds[0]}").read_bytes() == syscall_filter.program()
    with pytest.raises(OSError):
        Path(f"/proc/self/fd/{fds[0]}").read_bytes()  # closed once the start is made


@needs_bwrap
def test_without_its_filter_bwrap_is_not_there_and_says_why_in_one_line(quadratic, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyseccomp", None)  # the import fails, as where pyseccomp is missing
    syscall_filter.program.cache_clear()
    isolation.available.cache_clear()
    try:
        hint = isolation.install_hint("unshare")
        assert hint.startswith("the keyring filter of level bwrap cannot be built: no libseccomp here")
        assert "apt-get install libseccomp2; pip install pyseccomp" in hint and "\n" not in hint
        assert not isolation.available("bwrap")
        task = load_task(quadratic)
        assert isolation.choose(task, quadratic, quadratic / ".ouroboros").level != "bwrap"  # auto: recorded weaker
        with pytest.raises(OuroborosError, match="isolation = 'bwrap', but bwrap does not work on this machine "
                                                 r"\(the keyring filter of level bwrap cannot be built"):
            _loop(quadratic)
        with pytest.raises(OuroborosError, match="keyring filter"):  # never a bwrap start without it
            isolation.Bwrap(task, quadratic, quadratic / ".ouroboros").wrap(["true"], "run")
    finally:
        monkeypatch.undo()
        syscall_filter.program.cache_clear()
        isolation.available.cache_clear()


def test_a_forked_harness_starts_filtered_phases_too():
    """parallel.py and self mode fork the harness after it has started phases: the child has the parent's
    cached queue but not its thread, and must not wait forever on it."""
    import os
    import signal

    if syscall_filter.problem():
        pytest.skip(syscall_filter.problem())
    syscall_filter.started_filtered(lambda: subprocess.Popen(["true"])).wait()  # the parent's thread exists
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            signal.alarm(20)  # a hang ends the child: the test sees a signal, not a pass
            proc = syscall_filter.started_filtered(lambda: subprocess.Popen(["true"]))
            code = proc.wait()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
