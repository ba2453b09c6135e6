"""Isolation levels for run and evaluate: how an experiment's processes are wrapped.

`choose` picks the strongest level that works on this machine (probed once per process) unless the
task's `[bound] isolation` names one; every experiment records the level it had.

Level `bwrap` (bubblewrap; strongest):
- the filesystem is read-only, except the run's worktree, a private /tmp and a private $HOME
  (size-capped tmpfs, gone when the run ends), and the ouroboros data cache;
- the task repo outside the worktree is masked: the user's checkout, `.git` (history, hooks,
  config), `.ouroboros/` (ledger, results.tsv, logs, other runs' worktrees) cannot be read or written;
- the files a task declares `[bound] hidden` (e.g. validation targets) are masked in the run phase
  and visible only to evaluate; the evaluator's metrics path is never visible to the run phase;
- no network (a fresh network namespace with only a loopback of its own) unless `[bound] network`;
- a fresh PID namespace: the run cannot see or signal the harness or read its /proc (and so not its
  environment), and every process it started dies with it, so nothing survives into evaluation;
  processes still alive when the command ends are counted (see `_REAPER`) and fail the run;
- all capabilities dropped, a new session (no terminal injection), a minimal /dev (GPUs bound in).
Level `unshare` (util-linux, fallback): network, PID, IPC and mount namespaces: no network, no
view of the harness, nothing survives the run. Files are NOT protected: the run can read and write
anything the user can (the guard still checks the worktree before each run).
Level `process` (always available): its own process group and session, a scrubbed environment,
the harness's time, memory, process, artifact and log limits, and a subreaper that catches
double-forked daemons. It stops neither file access outside the worktree, nor the network, nor
reading other processes' /proc entries.

Does not protect against (any level): kernel exploits; a run that ptraces the wrapper shell inside
its own sandbox to hide a leftover process (the process still dies with the sandbox); reading
world-readable files outside $HOME and /tmp at level bwrap (the root filesystem is visible,
read-only); GPU side channels.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

from ouroboros.errors import OuroborosError
from ouroboros.task import Task, glob_files
from ouroboros.workspace import git_root

LEVELS = ("bwrap", "unshare", "process")

# Runs the command inside the sandbox, then counts the processes it left behind in the PID
# namespace (everything but the namespace's init and this shell) and reports them on the log; the
# sandbox's teardown kills them, sandbox.run turns the report into a failed run. A run can print
# the same line, but only to raise the count, never to hide one.
_REAPER = (
    '(eval "$0"); rc=$?; n=0; '
    'for d in /proc/[0-9]*; do p=${d#/proc/}; '
    '[ "$p" = 1 ] || [ "$p" = "$$" ] && continue; '
    'read -r s < "$d/stat" 2>/dev/null || continue; s=${s##*) }; s=${s%% *}; '
    '[ "$s" = Z ] || [ "$s" = X ] || n=$((n+1)); done; '
    '[ $n -gt 0 ] && echo "[ouroboros] strays $n"; exit $rc'
)


def _mb(value: float) -> str:
    return str(int(value * 2**20))


def _runtime_paths(masked: list[Path], keep_out: list[Path]) -> list[Path]:
    """What the interpreter needs, to bind back read-only where a mask (/tmp, $HOME, the repo) hides it.

    Only paths under a mask are bound back, and never one that would uncover what the mask hides
    (a folder holding the repo, the worktree or the records, or a mask itself).
    """
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages()}
    user = site.getusersitepackages()
    if user:
        paths.add(user)
    paths.update(p for p in os.environ.get("PATH", "").split(os.pathsep) if p.startswith("/"))
    out = []
    for p in sorted({Path(os.path.realpath(p)) for p in paths if p and os.path.isdir(p)}):
        under_mask = any(m == p or m in p.parents for m in masked)
        uncovers = any(p == k or p in k.parents for k in keep_out + masked)
        if under_mask and not uncovers:
            out.append(p)
    return out


def cache_dir() -> Path:
    """The shared data cache (e.g. tinygpt's corpus), writable by runs; its tampering shows in fingerprints."""
    root = os.environ.get("OUROBOROS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ouroboros")
    return Path(root)


class Isolation:
    """Wraps argv for one phase ("run" or "evaluate"). `level` is recorded with every experiment.

    `overhead` is how many of the wrapped tree's processes are the wrapper's own, so that process
    limits count only the experiment's.
    """

    level = "process"
    overhead = 0

    def __init__(self, task: Task, worktree: Path, records: Path):
        self.task, self.task_dir, self.records = task, worktree, records
        self.worktree = git_root(worktree)  # the git worktree root; worktree may be a task subfolder
        self.repo = git_root(task.root)

    def wrap(self, argv: list[str], phase: str, writable: list[Path] | None = None,
             cwd: Path | None = None) -> tuple[list[str], str]:
        """argv wrapped for phase; `cwd` is where it will run (the caller passes it to sandbox.run too)."""
        return argv, self.level

    def hidden_files(self) -> list[str]:
        """Task-relative files masked from the run phase: `[bound] hidden`."""
        return glob_files(self.task_dir, self.task.bound.hidden) if self.task.bound.hidden else []


class Unshare(Isolation):
    level = "unshare"
    overhead = 2  # unshare, the reaper shell

    def wrap(self, argv: list[str], phase: str, writable: list[Path] | None = None,
             cwd: Path | None = None) -> tuple[list[str], str]:
        flags = ["--fork", "--pid", "--kill-child", "--mount-proc", "--ipc"]
        if not self.task.bound.network:
            flags.append("--net")
        return ["unshare", *flags, *_unshare_user(), "--", "bash", "-c", _REAPER, _shell(argv)], self.level


class Bwrap(Isolation):
    level = "bwrap"
    overhead = 3  # bwrap, its init in the PID namespace, the reaper shell

    def wrap(self, argv: list[str], phase: str, writable: list[Path] | None = None,
             cwd: Path | None = None) -> tuple[list[str], str]:
        mounts, repo_masks = self._mounts
        args = list(mounts)
        if phase == "run":
            for rel in self._hidden:
                args += ["--ro-bind", "/dev/null", str(self.task_dir / rel)]
        for path in writable or []:
            args += ["--bind", str(path), str(path)]
        for hide in repo_masks:  # after the binds inside them: the mask itself takes no writes
            args += ["--remount-ro", str(hide)]
        args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if not self.task.bound.network:
            args.append("--unshare-net")
        args += ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--chdir", str(cwd or self.task_dir),
                 "--", "bash", "-c", _REAPER, _shell(argv)]
        return args, self.level

    @functools.cached_property
    def _hidden(self) -> list[str]:
        return self.hidden_files()  # committed files, protected: the same for the whole run

    @functools.cached_property
    def _mounts(self) -> tuple[list[str], list[Path]]:
        """The mounts every experiment of the run shares (computed once: they walk PATH and sys paths)."""
        size = _mb(self.task.bound.max_artifact_mb)
        args = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                "--size", size, "--tmpfs", "/dev/shm", "--size", size, "--tmpfs", "/tmp"]
        for dev in sorted(glob.glob("/dev/nvidia*")) + sorted(glob.glob("/dev/dri")):
            args += ["--dev-bind", dev, dev]
        masked = [Path("/tmp")]
        home = Path(os.path.expanduser("~"))
        if str(home) not in ("/", "") and home.is_dir():
            args += ["--size", size, "--tmpfs", str(home)]
            masked.append(home)
        repo_masks: list[Path] = []
        for hide in (self.repo, self.records):  # the checkout, .git, .ouroboros/: tiny, empty
            if not any(m == hide or m in hide.parents for m in repo_masks):
                args += ["--size", "1048576", "--tmpfs", str(hide)]
                repo_masks.append(hide)
        masked += repo_masks
        for path in _runtime_paths(masked, [self.repo, self.records, self.worktree]):
            args += ["--ro-bind", str(path), str(path)]
        cache = cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        args += ["--bind", str(cache), str(cache), "--bind", str(self.worktree), str(self.worktree)]
        return args, repo_masks


def _shell(argv: list[str]) -> str:
    """argv as one shell command line (the reaper runs it with `bash -c`)."""
    if len(argv) == 3 and argv[:2] == ["bash", "-c"]:
        return argv[2]
    import shlex

    return shlex.join(argv)


def _unshare_user() -> list[str]:
    return [] if os.geteuid() == 0 else ["--user", "--map-root-user"]


@functools.cache
def available(level: str) -> bool:
    """Whether this level actually works here: installed, and namespaces not refused (probed once)."""
    if level == "process":
        return True
    if level == "bwrap":
        argv = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
                "--unshare-pid", "--unshare-net", "--unshare-ipc", "--die-with-parent", "--new-session",
                "--cap-drop", "ALL", "--", "true"]
    elif level == "unshare":
        argv = ["unshare", "--fork", "--pid", "--kill-child", "--mount-proc", "--ipc", "--net",
                *_unshare_user(), "--", "true"]
    else:
        raise ValueError(level)
    if shutil.which(argv[0]) is None:
        return False
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


_CLASSES: dict[str, type[Isolation]] = {"bwrap": Bwrap, "unshare": Unshare, "process": Isolation}


def choose(task: Task, worktree: Path, records: Path) -> Isolation:
    """The task's isolation level, or with `auto` the strongest that works here: bwrap, unshare, process."""
    wanted = task.bound.isolation
    if wanted == "auto":
        level = next(lv for lv in LEVELS if available(lv))
    elif available(wanted):
        level = wanted
    else:
        fix = {"bwrap": "install it (apt-get install bubblewrap) and allow user namespaces",
               "unshare": "install util-linux and allow user namespaces"}.get(wanted, "")
        raise OuroborosError(f"[bound] isolation = {wanted!r}, but {wanted} does not work on this machine; "
                             f"{fix}, or set isolation = \"auto\" to fall back to the strongest level that works")
    return _CLASSES[level](task, worktree, records)
