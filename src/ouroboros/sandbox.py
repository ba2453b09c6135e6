"""Run one command under a hard wall-clock budget and record what it used.

Protects against:
- a run that overstays: at budget + grace the process group and every descendant the harness has
  seen (or that was orphaned onto it, since the harness is a child subreaper) get SIGKILL;
- a daemon left behind: whatever descendant is still alive when the command ends is killed;
- secrets leaking into experiments: API keys, tokens and passwords are scrubbed from the environment;
- a log filling the disk: output beyond the cap ends the run.

Does not protect against (see `isolation.py` for the levels that do more):
- a process that escapes both the group and the subreaper (e.g. through a system daemon);
- reading or writing files outside the worktree, or the network, at isolation level `process`.
"""

from __future__ import annotations

import ctypes
import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

_SECRET = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|COOKIE|SESSION)", re.IGNORECASE)
_KEEP = {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ", "USER", "LOGNAME", "SHELL", "TMPDIR",
         "CUDA_VISIBLE_DEVICES", "PYTHONHASHSEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VIRTUAL_ENV"}
_SUBREAPER = False


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


def scrubbed_env(extra: dict[str, str] | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for experiment processes: no secrets, the harness's Python first on PATH."""
    base = dict(os.environ if base is None else base)
    env = {k: v for k, v in base.items()
           if k in _KEEP or (not _SECRET.search(k) and not k.startswith(("OUROBOROS_", "PYTEST_")))}
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def _become_subreaper() -> None:
    """Orphans of experiment processes are re-parented to us, so a double fork cannot hide one."""
    global _SUBREAPER
    if _SUBREAPER or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
        _SUBREAPER = True
    except (OSError, AttributeError):
        pass


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def _rss_mb(procs: list[psutil.Process]) -> float:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def _kill(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=2)


def _children() -> dict[int, psutil.Process]:
    try:
        return {p.pid: p for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return {}


def _strays(known: dict[int, psutil.Process], before: set[int]) -> list[psutil.Process]:
    """Descendants that outlived the command: seen in its tree, or orphaned onto us since it started."""
    alive = {pid: p for pid, p in known.items() if p.is_running()}
    for pid, child in _children().items():
        if pid not in before:
            alive.setdefault(pid, child)
    out = []
    for p in alive.values():
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
            elif p.ppid() == os.getpid():
                os.waitpid(p.pid, os.WNOHANG)  # an orphan re-parented to us: reap it
        except (psutil.Error, ChildProcessError):
            pass
    return out


def run(argv: list[str] | str, cwd: Path, budget: float, grace: float, log_path: Path,
        env: dict[str, str] | None = None, memory_mb: int | None = None, max_log_mb: float = 20.0,
        isolation: str = "process", gpu: bool = False) -> Outcome:
    """Run argv (or a shell command) in cwd; output goes to log_path; killed at budget + grace.

    The caller chooses the isolation wrapper (argv already wrapped); this function owns time,
    memory, log size and the process tree.
    """
    _become_subreaper()
    if isinstance(argv, str):
        argv = ["bash", "-c", argv]
    deadline_s = budget + grace
    cap = int(max_log_mb * 2**20)
    before = set(_children())
    start = time.monotonic()
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            log.write(f"could not start {argv[0]}: {exc}\n".encode())
            return Outcome(127, False, 0.0, 0.0, isolation=isolation)
        pgid = proc.pid
        ps = psutil.Process(proc.pid)
        known: dict[int, psutil.Process] = {proc.pid: ps}
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
                tree = _tree(ps)
                for p in tree:
                    known.setdefault(p.pid, p)
                rss = _rss_mb(tree)
                peak = max(peak, rss)
                if gpu:
                    peak_gpu = max(peak_gpu or 0.0, _gpu_mb([p.pid for p in tree]))
                elapsed = time.monotonic() - start
                if elapsed > deadline_s:
                    killed = "timeout"
                elif memory_mb is not None and rss > memory_mb:
                    killed = "memory limit"
                elif log.tell() > cap or (log_path.exists() and log_path.stat().st_size > cap):
                    killed = "log limit"
                if killed:
                    _killpg(pgid)
                    _kill(list(known.values()))
                    _, status, rusage = os.wait4(proc.pid, 0)
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    break
        finally:
            if fd is not None:
                os.close(fd)
        wall = time.monotonic() - start
    _killpg(pgid)
    strays = _strays(known, before)
    if strays:
        _kill(strays)
    if rusage is not None:
        peak = max(peak, rusage.ru_maxrss / 1024)
    if log_path.stat().st_size > cap:
        with open(log_path, "r+b") as f:
            f.truncate(cap)
            f.seek(cap)
            f.write(b"\n[ouroboros: log truncated at the cap]\n")
    return Outcome(proc.returncode, killed == "timeout", wall, peak, peak_gpu, isolation, killed, len(strays))


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
