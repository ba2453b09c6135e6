"""The seccomp filter of level bwrap: the kernel's keyring calls (add_key, request_key, keyctl) fail with
EPERM in the run, evaluation and agent phases, as in Docker's default profile.

Why: the kernel keeps keyrings per uid, outside every namespace bubblewrap makes. Under a root harness every
phase runs as uid 65534, so a key one run adds to its user keyring is there for the next process of that uid:
the confirmation re-run of a lucky result, the next experiment. (A non-root harness's bwrap gives each phase a
user namespace of its own, with fresh keyrings since Linux 5.3; the filter closes the call there too.)

Built with libseccomp (pyseccomp, ctypes over libseccomp.so.2), which writes the architecture check: a call
through another ABI of this CPU (i386 or x32 on x86_64, 32-bit ARM on aarch64) is denied the same way, and a
process making calls through any other architecture is killed.

Handed to bubblewrap as `--seccomp FD`. bwrap reads the program to EOF, so every start needs its own open file:
a wrapped argv holds PLACEHOLDER where the fd goes, and `attached` makes a memfd for one start (the caller
passes it with pass_fds and it is closed when the block ends, right after the start). An argv whose
placeholder was not replaced makes bwrap fail ("Invalid fd"), never run unfiltered.

Levels unshare and process get the same program another way (`started_filtered`): the harness starts their
phases from one thread of its own that has loaded it (with no_new_privs, which it needs), and a process
inherits the filter of the thread that forks it. No Python runs in the forked child and no other thread of the
harness is filtered. Where the program cannot be built those two levels go without it, as they always did;
level bwrap is not there at all.

Does not protect against: anything but the keyring calls (this is no general syscall filter).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from ouroboros.errors import OuroborosError

DENIED = ("add_key", "request_key", "keyctl")
PLACEHOLDER = "{ouroboros-seccomp-fd}"
INSTALL = "apt-get install libseccomp2; pip install pyseccomp"


@functools.cache
def program() -> bytes:
    """The compiled BPF program (built once per process), or OuroborosError saying why it cannot be built."""
    try:
        import pyseccomp as sc
    except (ImportError, RuntimeError, OSError) as exc:  # RuntimeError: pyseccomp found no libseccomp
        raise OuroborosError(f"the keyring filter of level bwrap cannot be built: no libseccomp here ({exc}); "
                             f"install it ({INSTALL})") from None
    try:
        filt = sc.SyscallFilter(sc.ALLOW)
        filt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
        native = sc.system_arch()
        for arch in {sc.Arch.X86_64: (sc.Arch.X86, sc.Arch.X32), sc.Arch.AARCH64: (sc.Arch.ARM,)}.get(native, ()):
            filt.add_arch(arch)  # the other ABIs this kernel may run: their numbers are denied too
        for name in DENIED:
            filt.add_rule(sc.ERRNO(errno.EPERM), name)
        fd = os.memfd_create("ouroboros-seccomp-build")
        with os.fdopen(fd, "w+b") as out:
            filt.export_bpf(out)
            out.seek(0)
            code = out.read()
    except (OSError, ValueError, AttributeError) as exc:
        raise OuroborosError(f"the keyring filter of level bwrap cannot be built with this libseccomp: {exc}; "
                             f"install a current one ({INSTALL})") from None
    if not code or len(code) % 8:
        raise OuroborosError(f"the keyring filter of level bwrap came out malformed ({len(code)} bytes from "
                             f"libseccomp); reinstall it ({INSTALL})")
    return code


def bwrap_args() -> list[str]:
    """bubblewrap's option that loads the filter (`attached` puts the fd in at the start); OuroborosError where
    the filter cannot be built: no bwrap start goes without it."""
    program()
    return ["--seccomp", PLACEHOLDER]


def problem() -> str | None:
    """Why the filter cannot be built here, in one line, or None."""
    try:
        program()
    except OuroborosError as exc:
        return str(exc)
    return None


@contextlib.contextmanager
def attached(argv: list[str]) -> Iterator[tuple[list[str], tuple[int, ...]]]:
    """argv with bubblewrap's `--seccomp PLACEHOLDER` pointing at a fresh memfd holding the program, and the
    fds to pass to the start; the memfd is closed when the block ends. Any other argv comes back as it is."""
    at = _placeholder(argv)
    if at is None:
        yield argv, ()
        return
    fd = os.memfd_create("ouroboros-seccomp")  # close-on-exec: only the start it is passed to gets it
    try:
        code = program()
        os.write(fd, code)
        os.lseek(fd, 0, os.SEEK_SET)
        yield [*argv[:at], str(fd), *argv[at + 1:]], (fd,)
    finally:
        os.close(fd)


def _placeholder(argv: list[str]) -> int | None:
    """Where the fd goes: the value of `--seccomp PLACEHOLDER` among bubblewrap's own options (before `--`)."""
    if not argv or os.path.basename(argv[0]) != "bwrap":
        return None
    for i, word in enumerate(argv[:-1]):
        if word == "--":
            return None
        if word == "--seccomp" and argv[i + 1] == PLACEHOLDER:
            return i + 1
    return None


T = TypeVar("T")
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2


def started_filtered(start: Callable[[], T]) -> T:
    """start() (a subprocess.Popen) called on the harness's filtered thread, so that the process it makes and all
    that process starts have the keyring calls denied; start() as it is where the program cannot be built or
    loaded here. A Ctrl-C while the start is under way waits for it to end, so the caller can stop what started."""
    spawner = _spawner()
    if spawner is None:
        return start()
    done: queue.SimpleQueue = queue.SimpleQueue()
    spawner.put((start, done))
    try:
        ok, value = done.get()
    except KeyboardInterrupt:
        ok, value = done.get()  # the start is under way: it ends, and its process is the caller's to stop
        if ok:
            _stop(value)
        raise
    if not ok:
        raise value
    return value


def _stop(proc) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()


@functools.cache
def _spawner() -> queue.SimpleQueue | None:
    """The filtered thread's queue of starts (made once), or None where the filter cannot be had here."""
    try:
        code = program()
    except OuroborosError:
        return None
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    ready: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_serve, args=(code, jobs, ready), name="ouroboros-filtered-starts", daemon=True).start()
    return jobs if ready.get() else None


# A forked child of the harness (parallel slots, self mode's inner runs) has the cached queue but not the thread
# that serves it: it makes its own on its first start.
os.register_at_fork(after_in_child=_spawner.cache_clear)


def _serve(code: bytes, jobs: queue.SimpleQueue, ready: queue.SimpleQueue) -> None:
    loaded = _load_here(code)
    ready.put(loaded)
    if not loaded:
        return
    while True:
        start, done = jobs.get()
        try:
            done.put((True, start()))
        except BaseException as exc:  # handed to the caller, as if it had called start() itself
            done.put((False, exc))


def _load_here(code: bytes) -> bool:
    """Load the program on this thread only (no TSYNC): no_new_privs, then the filter; False if refused."""
    import ctypes

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    buf = ctypes.create_string_buffer(code, len(code))
    prog = SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    return libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) == 0
