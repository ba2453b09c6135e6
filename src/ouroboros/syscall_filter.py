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

Does not protect against: anything but the keyring calls (this is no general syscall filter); levels unshare
and process (no filter there: it would need a preexec hook in every spawn, see docs/security.md).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
from collections.abc import Iterator

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
