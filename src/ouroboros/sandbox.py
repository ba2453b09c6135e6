"""Run one command under a hard wall-clock budget and record what it used.

Protects against:
- a run that overstays: at budget + grace the process group and every descendant the harness has
  seen (or that was orphaned onto it, since the harness is a child subreaper) get SIGKILL;
- a daemon left behind: whatever descendant is still alive when the command ends is frozen, then
  killed, and the run fails ("left N processes running"), so a daemon can never tamper with the
  evaluation; one that re-forks each generation is caught too (the sweep looks again as long as
  it finds a stray or an ended child of ours, whose successor has then been orphaned onto us);
- a stopped harness: elapsed time is checked again when the command ends, so SIGSTOP on the
  harness (possible at level `process`) buys the run no time;
- a fork bomb: more than `max_processes` processes in the tree (polled) ends the run;
- a memory hog: RSS of the whole tree above `memory_mb` (polled) ends the run; on CPU-only machines
  RLIMIT_AS (2 x memory_mb + 4 GiB per process) stops a single huge allocation between polls
  (never with CUDA, whose address-space reservations it breaks);
- filling the disk: RLIMIT_FSIZE (set before the command starts: by bash's ulimit for a plain `bash -c`,
  else by prlimit) caps every file at `max_artifact_mb`, and growth of the watched folder (the worktree,
  the evaluation folder, the agent's artifacts) beyond `max_artifact_mb` (polled, and once more when the command ends; every
  entry counts, a `.git` at any depth too, and at least 512 bytes, so empty files cannot add up to
  any number of inodes) fails the run; output beyond the log cap ends the run and the log is truncated to the cap;
- secrets leaking into experiments: the environment is an allowlist (locale, paths, CUDA_*, OMP_*..., proxies
  without credentials, and `[bound] env`), so a secret under any name stays out.

Does not protect against (see `isolation.py` for the levels that do more):
- a process that escapes both the group and the subreaper (e.g. through a system daemon);
- a burst between two polls (up to 0.1 s: a fork bomb may briefly exceed the limit before it dies);
- a single file past RLIMIT_FSIZE where util-linux's `prlimit` is missing (the polled limit holds);
- disk use outside the watched worktree at level `process` (bwrap caps /tmp and $HOME as tmpfs);
- reading or writing files outside the worktree, the network, or reading the harness's own
  /proc/<pid>/environ, at isolation level `process`.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ouroboros import syscall_filter

# The environment experiments get is an allowlist: names a task needs (locale, terminal, home, paths,
# accelerator and thread settings), never whatever else the user's shell holds (a secret under any name:
# GITHUB_PAT, DATABASE_URL, CI_JOB_JWT). A task names more with `[bound] env`.
_KEEP = {"PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TERM", "COLORTERM", "NO_COLOR", "COLUMNS",
         "LINES", "TZ", "USER", "LOGNAME", "SHELL", "TMPDIR", "PWD", "PYTHONHASHSEED", "PYTHONPATH",
         "PYTHONIOENCODING", "PYTHONUTF8", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "LIBRARY_PATH", "CPATH",
         "PKG_CONFIG_PATH", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "HF_HOME", "HF_HUB_OFFLINE",
         "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "UV_CACHE_DIR", "SSL_CERT_FILE", "SSL_CERT_DIR",
         "REQUESTS_CA_BUNDLE", "OUROBOROS_CACHE"}
_KEEP_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "OMP_", "MKL_", "OPENBLAS_", "TORCH")
_PROXIES = {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "FTP_PROXY"}  # any case, userinfo stripped
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
_HOST = re.compile(r"^(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])$")  # a name, an IPv4 or a bracketed IPv6 address
_NO_PROXY_ENTRY = re.compile(r"^[A-Za-z0-9_.*:/\[\]-]+$")  # hosts, domains, *, addresses, CIDR ranges, ports
_STRAYS = re.compile(r"^\[ouroboros\] strays (\d+)$", re.MULTILINE)  # isolation._REAPER's report
_BLOCK = 512  # what an entry costs at least, in du()
_SUBREAPER = 0  # the pid that made itself a subreaper: a forked child is not one


@dataclass
class Outcome:
    returncode: int | None
    timed_out: bool
    wall_s: float
    peak_rss_mb: float
    peak_gpu_mb: float | None = None
    isolation: str = "process"
    killed: str | None = None  # why the harness ended it early: "timeout", "log limit", "memory limit"
    stray: int = 0  # descendants still alive after the command ended, killed by the harness
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.killed is None


def _strip_userinfo(value: str) -> str | None:
    """A proxy URL reduced to `[scheme://]host[:port]`: no `user:password@`, whatever the password holds
    (`@`, `/`, spaces: the userinfo ends at the last `@`, as no proxy URL has another), and no path or
    query. None (the variable is dropped) where what is left is not a host and a port; the proxy itself
    stays usable where it needs no login."""
    scheme, sep, rest = value.strip().partition("://")
    if not sep:
        scheme, rest = "", scheme
    elif not _SCHEME.match(scheme):
        return None
    hostport = rest.rpartition("@")[2].split("/", 1)[0]
    try:
        parts = urllib.parse.urlsplit("//" + hostport)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.username is not None or parts.password is not None:
        return None
    host = f"[{host}]" if ":" in host else host
    if not _HOST.match(host):
        return None
    return f"{scheme}{sep}{host}" + (f":{port}" if port is not None else "")


def _no_proxy(value: str) -> str | None:
    """NO_PROXY as it is where it is a list of host patterns; None (dropped) where it holds anything else."""
    entries = [e.strip() for e in value.split(",") if e.strip()]
    return value if entries and all(_NO_PROXY_ENTRY.match(e) for e in entries) else None


def scrubbed_env(extra: dict[str, str] | None = None, base: dict[str, str] | None = None,
                 venv: Path | None = None, allow: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """The environment for experiment processes: only allowlisted names (`_KEEP`, `_KEEP_PREFIXES`, the
    proxies without their credentials, and the task's `allow`, `[bound] env`), and the project's
    environment first on PATH (`venv`, made by `[task] setup`; uv and `python` both use it), else the
    harness's Python."""
    base = dict(os.environ if base is None else base)
    allowed = set(allow)
    env = {}
    for k, v in base.items():
        if k in allowed or k in _KEEP or k.startswith(_KEEP_PREFIXES):
            env[k] = v
        elif k.upper() in _PROXIES:
            kept = _no_proxy(v) if k.upper() == "NO_PROXY" else _strip_userinfo(v)
            if kept is not None:
                env[k] = kept
    bindir = os.path.dirname(sys.executable)
    path = env.get("PATH", "/usr/bin:/bin")
    if venv is not None:
        path = os.pathsep.join(p for p in path.split(os.pathsep) if p != bindir)
        env.update(VIRTUAL_ENV=str(venv), UV_PROJECT_ENVIRONMENT=str(venv), UV_NO_SYNC="1")
        env.pop("PYTHONHOME", None)
        bindir = str(venv / "bin")
    else:
        env.pop("VIRTUAL_ENV", None)
    env["PATH"] = bindir + os.pathsep + path
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def _become_subreaper() -> None:
    """Orphans of experiment processes are re-parented to us, so a double fork cannot hide one."""
    global _SUBREAPER
    if _SUBREAPER == os.getpid() or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
        _SUBREAPER = os.getpid()
    except (OSError, AttributeError):
        pass


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, parent pid, start time, resident pages) of a process from one read of /proc/<pid>/stat;
    None where it is gone. The start time is its identity: a pid the kernel has since handed to
    another process has another start time, so nothing noted here is ever mistaken for it."""
    if not _PROC:
        return _psutil_stat(pid)
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()  # the name, in parentheses, may hold spaces and ")"
    try:
        return fields[0].decode(), int(fields[1]), int(fields[19]), int(fields[21])
    except (IndexError, ValueError):
        return None


def _psutil_stat(pid: int) -> tuple[str, int, int, int] | None:
    """_stat where there is no /proc (not Linux): the same facts through psutil."""
    import psutil

    try:
        p = psutil.Process(pid)
        with p.oneshot():
            state = "Z" if p.status() == psutil.STATUS_ZOMBIE else "R"
            return state, p.ppid(), int(p.create_time() * 1e6), p.memory_info().rss // _PAGE
    except psutil.Error:
        return None


_PROC = os.path.exists("/proc/self/stat")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PIDFD = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")

# The process bookkeeping holds pids and start times (pid -> start), read straight from /proc: a run is
# polled every 2 to 100 ms, and a psutil.Process per process and poll cost more than the reads themselves.
Procs = dict[int, int]


def _child_pids(pid: int) -> list[int] | None:
    """Direct children from /proc/<pid>/task/*/children; None where the kernel does not offer it."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return [] if _PROC else None  # it has exited; without /proc, psutil answers
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}"):
                continue
            return None
        except (OSError, ValueError):
            continue
    return out


def _psutil_children(pid: int, recursive: bool) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=recursive)]
    except psutil.Error:
        return []


def _note(pid: int, procs: Procs) -> bool:
    """Note pid's start time in procs (read once per process); False where it is already gone."""
    if pid not in procs:
        st = _stat(pid)
        if st is None:
            return False
        procs[pid] = st[2]
    return True


def _tree(pid: int, procs: Procs) -> list[int]:
    """pid and its descendants, each noted in procs. Walks the children files (a few reads per
    process) rather than a scan of every process on the machine, which costs milliseconds per poll."""
    if not _note(pid, procs):
        return []
    found, todo = [pid], [pid]
    while todo:
        kids = _child_pids(todo.pop())
        if kids is None:
            return [pid, *(c for c in _psutil_children(pid, recursive=True) if _note(c, procs))]
        for child in kids:
            if _note(child, procs):
                found.append(child)
                todo.append(child)
    return found


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        st = _stat(pid)
        if st is not None:
            total += st[3]
    return total * _PAGE / 2**20


def _signal(pid: int, start: int, sig: int) -> bool:
    """Send sig to the process noted as (pid, start), never to another that has its pid by now: the pid is
    pinned by a pidfd before its start time is compared, so it cannot be handed on in between."""
    fd = None
    if _PIDFD:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        except OSError:  # a kernel without pidfds (before 5.3): the start time is compared just before the kill
            fd = None
    try:
        st = _stat(pid)
        if st is None or st[2] != start:
            return False
        if fd is not None:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(pid, sig)
        return True
    except OSError:
        return False
    finally:
        if fd is not None:
            os.close(fd)


def _wait_gone(procs: Procs, timeout: float) -> None:
    """Wait up to timeout for these processes to end; a zombie has ended (ours are reaped on the way).
    With pidfds the wait sleeps until one of them ends (a pidfd is readable from then on), so a wrapper
    tearing itself down is seen the moment it is gone; without, it polls as psutil.wait_procs does."""
    left, me = dict(procs), os.getpid()
    deadline, delay = time.monotonic() + timeout, 0.0001
    fds: dict[int, int] = {}
    if _PIDFD:
        for pid in left:
            try:
                fds[pid] = os.pidfd_open(pid)  # a pid handed on before this is told apart by its start time
            except OSError:
                pass
    polling = bool(fds)
    polled = -1  # how many were left when the last poll returned
    try:
        while True:
            for pid, start in list(left.items()):
                st = _stat(pid)
                if st is not None and st[2] == start and st[0] != "Z":
                    continue
                if st is not None and st[2] == start and st[1] == me:
                    try:
                        os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:
                        pass
                del left[pid]
            remaining = deadline - time.monotonic()
            if not left or remaining <= 0:
                return
            if polled == len(left):  # a pidfd readable, yet none ended (a leader gone before its threads)
                polling = False
            if polling and all(pid in fds for pid in left):
                poll = select.poll()
                for pid in left:
                    poll.register(fds[pid], select.POLLIN)
                poll.poll(remaining * 1000)
                polled = len(left)
            else:
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.04)
    finally:
        for fd in fds.values():
            os.close(fd)


def _kill(procs: Procs) -> None:
    for pid, start in procs.items():
        _signal(pid, start, signal.SIGKILL)
    _wait_gone(procs, 2)


def _children() -> Procs:
    """Our direct children (from the children files where the kernel offers them, else psutil)."""
    pids = _child_pids(os.getpid())
    if pids is None:
        pids = _psutil_children(os.getpid(), recursive=False)
    out: Procs = {}
    for pid in pids:
        _note(pid, out)
    return out


def _strays(known: Procs, before: Procs) -> tuple[Procs, bool]:
    """Descendants that outlived the command (seen in its tree, or orphaned onto us since it
    started), and whether a child of ours that had already ended was reaped on the way: its own
    children, if any, have just been orphaned onto us, so the caller must look again."""
    alive = dict(known)
    for pid, start in _children().items():
        if before.get(pid) != start:
            alive.setdefault(pid, start)
    out: Procs = {}
    reaped, me = False, os.getpid()
    for pid, start in alive.items():
        st = _stat(pid)
        if st is None or st[2] != start:
            continue
        if st[0] != "Z":
            out[pid] = start
        elif st[1] == me:  # an orphan re-parented to us
            try:
                reaped = os.waitpid(pid, os.WNOHANG)[0] == pid or reaped
            except ChildProcessError:
                pass
    return out, reaped


def _held(mode: int, size: int) -> int:
    """What an entry of this kind and size counts: a file with data its size in whole 4 KiB blocks, what it
    holds on disk; a folder its size (what its entries took, ext4 never gives it back), a link its size,
    an empty file at least one 512-byte unit (an inode)."""
    return -(-size // 4096) * 4096 if stat.S_ISREG(mode) and size else max(size, _BLOCK)


def _past_end(st: os.stat_result) -> int:
    """The disk a file holds past its size rounded up to 4 KiB blocks: blocks preallocated past its end
    (fallocate KEEP_SIZE leaves the size at 0). Nothing for an ordinary or a sparse file."""
    if stat.S_ISREG(st.st_mode):
        return max(0, st.st_blocks * 512 - -(-st.st_size // 4096) * 4096)
    return max(0, st.st_blocks * 512 - st.st_size) if stat.S_ISDIR(st.st_mode) else 0  # a folder's index blocks


def du(folder: Path) -> int:
    """Bytes under folder, every entry counted (a `.git` too, at any depth: a worktree's `.git` is a file,
    and a run that puts a folder in its place must not fill the disk unseen); links are not followed.
    Every entry counts at least 512 bytes, so empty files and folders cannot add up to any number of
    inodes; a file with data counts whole 4 KiB blocks (a 1-byte file holds one) and the blocks it holds
    past its end (`_past_end`). Folders nested past readfile.MAX_DEPTH count as more than any cap."""
    from ouroboros import readfile

    deep: list[str] = []
    total = 0
    for _name, st in readfile.walk(folder, strict=False, on_deep=lambda fd, name, rel: deep.append(rel)):
        total += _held(st.st_mode, st.st_size) + _past_end(st)
    if deep:  # nested past readfile.MAX_DEPTH: over any cap, whatever it holds
        return 1 << 62
    return total


def du_entry(path: Path) -> int:
    """What `du` of path's parent counts for path itself: its bytes, or a folder's block and contents."""
    try:
        st = path.lstat()
    except OSError:
        return 0
    return _BLOCK + du(path) if stat.S_ISDIR(st.st_mode) else _held(st.st_mode, st.st_size) + _past_end(st)


def du_of(entries: Iterable[tuple[int, int]]) -> int:
    """What `du` counts for a listing already read, as (mode, size) of every entry under a folder:
    the same sum without a second walk (the loop's snapshot of the worktree, Workspace.snapshot), less
    any blocks preallocated past a file's end (the run's growth then reads larger: the safe side)."""
    return sum(_held(mode, size) for mode, size in entries)


def _with_limits(argv: list[str], fsize: int | None, address_space: int | None) -> list[str]:
    """argv started under util-linux's prlimit, which sets the limits and then execs it (same pid).

    The limits must be in place before the command starts anything: set from the parent after the
    start, a wrapper such as bwrap could fork the experiment first and it would run without them.
    No preexec_fn either: no Python code may run in the forked child (a Ctrl-C there would surface
    as a SubprocessError), and subprocess keeps its fast spawn path. Without prlimit the command
    runs unlimited and the polled limits (worktree growth, RSS) still hold.
    """
    limits = ([f"--fsize={fsize}"] if fsize is not None else []) + \
        ([f"--as={address_space}"] if address_space is not None else [])
    if not limits or _PRLIMIT is None:
        return argv
    return [_PRLIMIT, *limits, "--", *argv]


_PRLIMIT = shutil.which("prlimit")

# What bash reads or runs before the first line of a `bash -c` command: with any of them in the environment the
# limits are set by prlimit before bash starts, as for every other command.
_SHELL_STARTUP = {"BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "POSIXLY_CORRECT"}


def _limits_in_shell(argv: list[str], fsize: int | None, address_space: int | None,
                     env: dict[str, str] | None) -> tuple[list[str], int | None, int | None]:
    """A plain `bash -c COMMAND` (level process) with the limits set by bash's own `ulimit` on the line
    before COMMAND instead of by prlimit: the same soft and hard limits, set before anything of the command
    runs, one process image fewer per phase (prlimit's exec and start). Only where nothing runs before that
    line: no startup file (BASH_ENV), no shell options and no exported function from the environment (a
    function named `ulimit` would replace the builtin); otherwise, and for any other argv (a wrapper such
    as bwrap), the limits are left to `_with_limits`. A limit bash cannot set ends the run (exit 126)
    before the command, as prlimit's failure does. Returns (argv, fsize, address_space) for _with_limits."""
    if (fsize is None and address_space is None) or len(argv) != 3 or argv[:2] != ["bash", "-c"]:
        return argv, fsize, address_space
    names = os.environ if env is None else env
    if any(k in _SHELL_STARTUP or k.startswith("BASH_FUNC_") for k in names):
        return argv, fsize, address_space
    bash = _system_bash()
    if bash is None:
        return argv, fsize, address_space
    limits = (f" -f {fsize // 1024}" if fsize is not None else "") + \
        (f" -v {address_space // 1024}" if address_space is not None else "")  # both in KiB in bash
    return [bash, "-c", f"ulimit{limits} || exit 126\n{argv[2]}"], None, None


@functools.cache
def _system_bash() -> str | None:
    """The system's bash by its absolute path: never one found through PATH, whose first entries (the
    run's venv) a run at level process can write (a planted `bash` would skip the ulimit line)."""
    return next((p for p in ("/usr/bin/bash", "/bin/bash") if os.access(p, os.X_OK)), None)


def tail_text(log: Path, size: int = 64_000) -> str:
    """The last `size` bytes of a log, decoded: logs can be large, their ends are what matter."""
    with open(log, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - size))
        return f.read().decode(errors="replace")


def reported_strays(log_path: Path) -> int:
    """Leftover processes the sandbox's reaper counted when the command ended (the largest report)."""
    try:
        found = _STRAYS.findall(tail_text(log_path, 4096))
    except OSError:
        return 0
    return max((int(n) for n in found), default=0)


def run(argv: list[str] | str, cwd: Path, budget: float, grace: float, log_path: Path,
        env: dict[str, str] | None = None, memory_mb: int | None = None, max_log_mb: float = 20.0,
        isolation: str = "process", gpu: bool = False, max_processes: int | None = None,
        max_artifact_mb: float | None = None, watch: Path | None = None, overhead: int = 0,
        watched: int | None = None, filtered: bool = False) -> Outcome:
    """Run argv (or a shell command) in cwd; output goes to log_path; killed at budget + grace.
    With filtered=True (the run and evaluation phases) an argv that bwrap does not wrap is started from the
    harness's filtered thread: the kernel keyring is denied to it at levels unshare and process too.

    The caller chooses the isolation wrapper (argv already wrapped; `overhead` is how many of the
    tree's processes are the wrapper's); this function owns time, memory, processes, file sizes,
    log size and the process tree. `watch` is the folder whose growth counts against
    max_artifact_mb (the worktree); `watched` its size as `du` counts it, where the caller has just read it
    (nothing but the command can change it from then on): the folder is not walked again before the start.
    """
    _become_subreaper()
    if isinstance(argv, str):
        argv = ["bash", "-c", argv]
    deadline_s = budget + grace
    cap = int(max_log_mb * 2**20)
    artifact_cap = int(max_artifact_mb * 2**20) if max_artifact_mb is not None else None
    fsize = max(artifact_cap, cap + 2**20) if artifact_cap is not None else None
    address_space = (2 * memory_mb + 4096) * 2**20 if memory_mb is not None and not gpu else None
    argv, fsize, address_space = _limits_in_shell(argv, fsize, address_space, env)
    if watched is None:
        watched = du(watch) if watch is not None and artifact_cap is not None else 0
    next_du = 0.25  # the size was just read: the next scan is due 0.25 s on, as every later one
    before = _children()
    start = time.monotonic()
    with open(log_path, "wb") as log:
        try:
            with syscall_filter.attached(argv) as (started, fds):  # bwrap's seccomp program: an fd per start
                def popen() -> subprocess.Popen:
                    return subprocess.Popen(_with_limits(started, fsize, address_space), cwd=cwd, env=env,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, pass_fds=fds)

                # the phases at levels unshare and process: from the harness's filtered thread (bwrap loads its own)
                proc = syscall_filter.started_filtered(popen) if filtered and not fds else popen()
        except OSError as exc:
            log.write(f"could not start {argv[0]}: {exc}\n".encode())
            return Outcome(127, False, 0.0, 0.0, isolation=isolation)
        pgid = proc.pid
        known: Procs = {}  # every process seen in the run's tree, with its start time (from the first poll on;
        # until wait4 below reaps it, the command's own pid cannot be anyone else's, so os.kill is safe)
        peak, peak_gpu, killed = 0.0, None, None
        rusage = None
        fd = os.pidfd_open(proc.pid) if hasattr(os, "pidfd_open") else None
        interval = 0.002
        try:
            while True:
                if fd is not None:
                    select.select([fd], [], [], interval)
                else:
                    time.sleep(interval)
                pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    break
                interval = min(interval * 2, 0.1)
                tree = _tree(proc.pid, known)
                rss = _rss_mb(tree)
                peak = max(peak, rss)
                if gpu:
                    peak_gpu = max(peak_gpu or 0.0, _gpu_mb(tree))
                elapsed = time.monotonic() - start
                if elapsed > deadline_s:
                    killed = "timeout"
                elif memory_mb is not None and rss > memory_mb:
                    killed = "memory limit"
                elif log.tell() > cap or (log_path.exists() and log_path.stat().st_size > cap):
                    killed = "log limit"
                elif max_processes is not None and len(tree) - overhead > max_processes:
                    killed = f"process limit ({len(tree) - overhead} processes > max_processes={max_processes})"
                elif watch is not None and artifact_cap is not None and elapsed >= next_du:
                    next_du = elapsed + 0.25
                    grown = du(watch) - watched
                    if grown > artifact_cap:
                        killed = f"artifact limit ({grown / 2**20:.0f} MB written > max_artifact_mb)"
                if killed:
                    _killpg(pgid)
                    _kill_child(proc.pid)
                    _kill(known)
                    try:
                        _, status, rusage = os.wait4(proc.pid, 0)
                        proc.returncode = os.waitstatus_to_exitcode(status)
                    except ChildProcessError:  # already reaped by the kill above
                        proc.returncode = -signal.SIGKILL
                    break
        except BaseException:  # Ctrl-C or SIGTERM of the harness: the experiment dies with it
            _killpg(pgid)
            _kill_child(proc.pid)
            _kill(known)
            raise
        finally:
            if fd is not None:
                os.close(fd)
        wall = time.monotonic() - start
    if killed is None and wall > deadline_s:  # it ended, but late: a stopped harness buys no time
        killed = "timeout"
    if killed is None and watch is not None and artifact_cap is not None:  # written between two polls
        grown = du(watch) - watched
        if grown > artifact_cap:
            killed = f"artifact limit ({grown / 2**20:.0f} MB written > max_artifact_mb)"
    _killpg(pgid)
    stray = _sweep(known, before, teardown=1.0 if overhead else 0.1)
    if rusage is not None:
        peak = max(peak, rusage.ru_maxrss / 1024)
    if log_path.stat().st_size > cap:
        with open(log_path, "r+b") as f:
            f.truncate(cap)
            f.seek(cap)
            f.write(b"\n[ouroboros: log truncated at the cap]\n")
    stray = max(stray, reported_strays(log_path))
    if stray and killed is None:
        killed = f"left {stray} process{'es' if stray > 1 else ''} running after it ended (killed)"
    return Outcome(proc.returncode, killed == "timeout", wall, peak, peak_gpu, isolation, killed, stray)


def _sweep(known: Procs, before: Procs, teardown: float = 0.1) -> int:
    """Kill every descendant that outlived the command; how many there were.

    The harness is a child subreaper, so whatever a run leaves is either a descendant of a process
    we can see or orphaned onto us as its parent ends. Each pass freezes (SIGSTOP) every stray it
    finds and its whole tree before killing any (a stopped process cannot fork), and the passes go
    on until one finds no stray and no ended child of ours to reap: a generation that forked its
    successor and exited between our listing and our signal leaves a zombie child of ours, and its
    successor is by then our child too, so the next pass finds it. A daemon that re-forks each
    generation, however fast, is therefore caught at every level, without a PID namespace.
    """
    found: Procs = {}
    deadline = time.monotonic() + 10.0
    first = True
    while time.monotonic() < deadline:
        strays, reaped = _strays(known, before)
        if strays and first:  # a wrapper process tearing itself down (bwrap's init) is not a stray; with a
            first = False  # wrapper, the reaper's count inside the namespace finds real strays, so on a
            _wait_gone(strays, teardown)  # loaded machine its teardown gets longer
            continue  # what is still there, or was orphaned onto us meanwhile, is found by the next pass
        if not strays and not reaped:
            break
        frozen: Procs = {}
        for pid, start in strays.items():
            tree: Procs = {pid: start}
            for c in _tree(pid, tree) or [pid]:
                known.setdefault(c, tree[c])
                if _signal(c, tree[c], signal.SIGSTOP):
                    frozen[c] = tree[c]
                    st = _stat(c)
                    if st is not None and st[0] != "Z":
                        found.setdefault(c, tree[c])
        for pid, start in frozen.items():  # killing orphans what it had forked meanwhile onto us: the next pass sees it
            _signal(pid, start, signal.SIGKILL)
    _wait_gone(found, 2)
    return len(found)


# Every process the harness starts for a run (setup, agent, run, evaluate) carries the run's mark in its
# environment, so that `--resume` after a killed harness ends the run's leftovers and nothing else.
MARK = "OUROBOROS_RUN_MARK"


def run_mark(run_dir: Path) -> str:
    """The run's mark: an HMAC of its records folder under the ledger's key, so no other process has it
    by chance and nothing outside the harness can put it on a process it does not own."""
    import hashlib
    import hmac

    from ouroboros import chain

    msg = b"processes of the run in " + os.fsencode(os.path.realpath(run_dir))
    return hmac.new(chain.key(), msg, hashlib.sha256).hexdigest()[:32]


def marked(env: dict[str, str] | None, run_dir: Path) -> dict[str, str]:
    """env (the harness's own where None) with the run's mark."""
    return {**(os.environ if env is None else env), MARK: run_mark(run_dir)}


def kill_inside(run_dir: Path) -> int:
    """Kill every process that carries the mark of the run whose records are run_dir (left by a killed
    harness), wherever it runs; how many. Processes without the mark are never touched, even with their
    working directory in the run's worktree (the user's shell, an editor), nor the caller and its
    ancestors (`ouroboros exp` inside the run's own agent session). A process that clears its
    environment loses the mark: at levels bwrap and unshare it dies with its PID namespace anyway."""
    import psutil  # a scan of every process on the machine, once per resume: psutil's job

    token = run_mark(run_dir)
    spare = {os.getpid()}
    try:
        spare.update(p.pid for p in psutil.Process().parents())
    except psutil.Error:
        pass
    found: Procs = {}
    for p in psutil.process_iter():
        if p.pid in spare:
            continue
        try:
            if p.environ().get(MARK) == token:
                _note(p.pid, found)
        except (psutil.Error, OSError):
            continue
    _kill(found)
    return len(found)


def _kill_child(pid: int) -> None:
    """SIGKILL to a child of ours not yet reaped (its pid is still its own), whatever group it moved to."""
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_NVML: object | None = None


def _gpu_mb(pids: list[int]) -> float:
    """GPU memory used by these pids, through NVML; 0 where there is no NVML or no GPU."""
    global _NVML
    try:
        import pynvml  # from nvidia-ml-py

        if _NVML is None:
            pynvml.nvmlInit()
            _NVML = pynvml
        total = 0
        wanted = set(pids)
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if p.pid in wanted and p.usedGpuMemory:
                    total += p.usedGpuMemory
        return total / 2**20
    except Exception:  # no NVML library, no driver, no GPU: GPU memory is simply not measured
        return 0.0


def cuda_present() -> bool:
    return Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia").exists()
