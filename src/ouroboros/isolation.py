"""Isolation levels for run and evaluate: how an experiment's processes are wrapped.

`choose` picks the strongest level that works on this machine (probed once per process) unless the
task's `[bound] isolation` names one; every experiment records the level it had.

Level `bwrap` (bubblewrap; strongest):
- the filesystem is read-only, except the run's worktree, a private /tmp and a private $HOME
  (size-capped tmpfs, gone when the run ends);
- the task repo outside the worktree is masked: the user's checkout, its git common dir wherever it
  is (a submodule's or a linked worktree's included: history, hooks, config), `.ouroboros/`
  (ledger, results.tsv, logs, other runs' worktrees) cannot be read or written;
- the data cache ($OUROBOROS_CACHE), the paths of `[bound] read_only`, the run's environment
  folder (made by `[task] setup`) and the harness's own Python are visible read-only: nothing an
  experiment writes there reaches the next one;
- the files a task declares `[bound] hidden` (e.g. validation targets) are masked in the run phase
  (and from the agent) and visible only to evaluate; the evaluator's metrics path is never visible
  to the run phase;
- host sockets: /run is an empty tmpfs, /tmp and $HOME are private, and with no network the fresh
  network namespace hides abstract unix sockets too;
- no network (a fresh network namespace with only a loopback of its own) unless `[bound] network`;
- a fresh PID namespace: the run cannot see or signal the harness or read its /proc (and so not its
  environment), and every process it started dies with it, so nothing survives into evaluation;
  processes still alive when the command ends are counted (see `_REAPER`) and fail the run;
- all capabilities dropped, a new session (no terminal injection), a minimal /dev (GPUs bound in);
  under a root harness the command runs as uid/gid 65534 (nobody), so root-only files stay closed
  (what it may write is given group 65534; folders it cannot cross, like /root, become empty tmpfs);
- the kernel keyring calls (add_key, request_key, keyctl) fail with EPERM (a seccomp filter, see
  `syscall_filter`): keyrings are per uid, outside every namespace, so a key one run leaves would be
  there for the next. Without the filter (no libseccomp) the level is not available: `auto` falls
  back to unshare and the header says why; `isolation = "bwrap"` is an error.
Phase `agent` (CLI and `cmd:` agents, harness-driven): the same filesystem view, with the network
(agents call their API), their environment (their key), the worktree, the experiment's prompt and
description and the run's notes and artifacts writable, and private copies of the agent CLI's config
folders at their places in $HOME (nothing it writes there reaches the real ones, but a refreshed
login); the records, the checkout, the git common dir and the rest of $HOME stay invisible.
Level `unshare` (util-linux, fallback): network, PID, IPC, UTS and mount namespaces: no network, no
view of the harness, nothing survives the run; in its mount namespace the view bwrap gives, made by
mountview.py in one process (see `Unshare._view`): private /tmp, /dev/shm and $HOME, the checkout, records, git common dir
and key folder masked, the worktree and the evaluation folder bound back writable, the cache, the
`read_only` paths and the harness's Python read-only, hidden files masked in the run phase, the root
mount read-only; under a root harness a /dev and a sysfs of its own. NOT protected: other mounts of the
host (a separate /home or /var) stay writable, and under a root harness the run is uid 0 without
capabilities (root-only files open by ownership). The kernel keyring calls are denied by bwrap's
seccomp program, loaded on the harness thread that starts the phase (syscall_filter.started_filtered),
at this level and at process, where libseccomp is there.
Level `process` (always available): its own process group and session, a scrubbed environment,
the harness's time, memory, process, artifact and log limits, and a subreaper that freezes and
kills whole re-forking process trees. It stops neither file access outside the worktree, nor the
network, nor a process that leaves through a system service: it is refused for agents that write
code unless the user passes `--allow-weak-isolation`.

Does not protect against (any level): kernel exploits; a run that ptraces the wrapper shell inside
its own sandbox to hide a leftover process (the process still dies with the sandbox); reading
world-readable files outside $HOME and /tmp at level bwrap (the root filesystem is visible,
read-only); GPU side channels.
"""

from __future__ import annotations

import functools
import glob
import os
import posixpath
import shlex
import shutil
import site
import stat
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath

from ouroboros import syscall_filter
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


_NO_CAPS = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs", "--"]


def _mountview() -> list[str]:
    """The harness's interpreter running mountview.py, isolated: level unshare's view in one process."""
    return [sys.executable, "-I", "-S", str(Path(__file__).with_name("mountview.py"))]


def _mb(value: float) -> str:
    return str(int(value * 2**20))


def _runtime_candidates() -> list[Path]:
    """The interpreter's folders and the PATH entries, resolved."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages()}
    user = site.getusersitepackages()
    if user:
        paths.add(user)
    paths.update(p for p in os.environ.get("PATH", "").split(os.pathsep) if p.startswith("/"))
    return sorted({Path(os.path.realpath(p)) for p in paths if p and os.path.isdir(p)})


def _closed_ancestors(paths: list[Path], masked: list[Path]) -> list[Path]:
    """For each path, the highest folder above it that others cannot cross (no o+x: /root), outside the masks."""
    out: list[Path] = []
    for path in paths:
        for folder in reversed(Path(os.path.realpath(path)).parents):
            if folder == Path("/") or _under(folder, masked):
                continue
            try:
                closed = not folder.stat().st_mode & 0o001
            except OSError:
                break
            if closed:
                if not _under(folder, out):
                    out = [o for o in out if not _under(o, [folder])] + [folder]
                break
    return out


def _runtime_paths(masked: list[Path], keep_out: list[Path]) -> list[Path]:
    """What the interpreter needs, to bind back read-only where a mask (/tmp, $HOME, the repo) hides it.

    Only paths under a mask are bound back, and never one that would uncover what the mask hides
    (a folder holding the repo, the worktree or the records, or a mask itself).
    """
    out = []
    for p in _runtime_candidates():
        under_mask = any(m == p or m in p.parents for m in masked)
        uncovers = any(p == k or p in k.parents for k in keep_out + masked)
        if under_mask and not uncovers:
            out.append(p)
    return out


def _path_links(masked: list[Path]) -> list[tuple[str, Path]]:
    """(target, link) for each link in a mask that a PATH entry goes through, to make again inside: NixOS puts
    /run/current-system/sw/bin and /run/wrappers/bin on PATH, a user may have ~/bin linked elsewhere, and in an
    empty /run or $HOME the entry would lead nowhere (its target, outside the mask or bound back, is there)."""
    out: dict[Path, str] = {}
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not entry.startswith("/"):
            continue
        at = Path("/")
        for part in Path(os.path.normpath(entry)).parts[1:]:
            at = at / part
            if os.path.islink(at):
                if _under(at, masked) and at not in masked:
                    out.setdefault(at, os.readlink(at))
                break
    return [(target, link) for link, target in out.items()]


def harness_code() -> list[Path]:
    """The harness's own package folder and the import path entry holding it (outside sys.prefix in an
    editable install, `pip install -e .`): read-only to experiments, so no run rewrites the code of the
    next `--resume`, `verify` or `audit`, or plants a module (sitecustomize.py) beside it."""
    import ouroboros

    package = Path(os.path.realpath(Path(ouroboros.__file__).parent))
    return [package, package.parent]


def cache_dir() -> Path:
    """The shared data cache (e.g. tinygpt's corpus): filled by `[task] setup`, read-only to experiments."""
    root = os.environ.get("OUROBOROS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ouroboros")
    return Path(root)


INSTALL_BWRAP = "sudo apt-get install -y bubblewrap"


def install_hint(level: str) -> str | None:
    """The one line that gets a run to level bwrap, when it is below it."""
    return None if level == "bwrap" else _bwrap_fix()


def _bwrap_fix() -> str:
    """Why level bwrap is not there, and what gets it, in one line."""
    if shutil.which("bwrap") is None:
        return f"install bubblewrap for the strongest isolation: {INSTALL_BWRAP}"
    if _bwrap_works():  # bubblewrap itself starts: the keyring filter is what is missing, or nothing is
        if syscall_filter.problem():
            return syscall_filter.problem()
        if not _bwrap_works(seccomp=True):
            return "bubblewrap refused the keyring filter of level bwrap (seccomp): this kernel has no seccomp " \
                   "filters (CONFIG_SECCOMP_FILTER); level bwrap needs them"
        return 'bubblewrap works here: set [bound] isolation = "auto" (or "bwrap") for the strongest isolation'
    return "bubblewrap is installed but refused here: allow unprivileged user namespaces " \
           "(sysctl kernel.unprivileged_userns_clone=1, kernel.apparmor_restrict_unprivileged_userns=0)"


def git_dirs(root: Path) -> list[Path]:
    """The task repo's git dir and common dir, wherever they are (a submodule's live in its
    superproject's .git/modules, a linked worktree's in the main repo's .git). Asked of the user's
    checkout, which the harness trusts, never of a worktree a run could write."""
    try:
        out = subprocess.run(["git", "-C", str(root), "-c", "core.fsmonitor=false", "rev-parse",
                              "--path-format=absolute", "--git-dir", "--git-common-dir"],
                             capture_output=True, encoding="utf-8", errors="surrogateescape", timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return sorted({Path(os.path.realpath(line)) for line in out.stdout.split("\n") if line.strip()})


def project_env(env_dir: Path) -> Path | None:
    """The project's virtual environment made by `[task] setup` (env/venv), or None."""
    venv = env_dir / "venv"
    return venv if (venv / "bin" / "python").exists() or (venv / "pyvenv.cfg").is_file() else None


def _under(p: Path, masks: list[Path]) -> bool:
    return any(m == p or m in p.parents for m in masks)


def _covers(p: Path, keep_out: list[Path]) -> bool:
    return any(p == k or p in k.parents for k in keep_out)


class Isolation:
    """Wraps argv for one phase ("run", "evaluate" or "agent"). `level` is recorded with every experiment.

    `overhead` is how many of the wrapped tree's processes are the wrapper's own, so that process
    limits count only the experiment's. `env_dir` is the run's environment folder (`[task] setup`).
    """

    level = "process"
    overhead = 0

    def open_worktree(self) -> None:
        """Under a root harness at level bwrap, give the worktree to the run's uid now (isolation._grant),
        so that the wrap before each phase finds nothing left to change (a change moves inode change
        times, which the loop's snapshot of the worktree would read as the run's writes)."""
        if self.level == "bwrap" and drops_root():
            _grant([self.worktree])

    def __init__(self, task: Task, worktree: Path, records: Path, env_dir: Path | None = None):
        self.task, self.task_dir, self.records = task, worktree, records
        self.repo = git_root(task.root)
        self.env_dir = env_dir
        self._check_read_only()

    def _check_read_only(self) -> None:
        """Refuse a `[bound] read_only` path inside the repository's git dir or the records: read there, the
        run would see the history (hidden data in every commit), the ledger and other runs' worktrees."""
        if not self.task.bound.read_only:
            return
        records = Path(os.path.realpath(self.records))
        for path in self.task.read_only_paths:
            for inside, what in [(records, "the records folder"),
                                 *((d, "the repository's git dir") for d in git_dirs(self.task.root))]:
                if _under(path, [inside]):
                    raise OuroborosError(
                        f"[bound] read_only path {str(path)!r} is inside {what} {str(inside)!r}, which experiments "
                        "must never read (history, hidden data, records); remove it from ouroboros.toml and commit")

    @functools.cached_property
    def worktree(self) -> Path:
        """The git worktree root (the task folder may be a subfolder of it); asked once it exists."""
        return git_root(self.task_dir)

    def wrap(self, argv: list[str], phase: str, writable: list[Path] | None = None,
             readable: list[Path] | None = None, cwd: Path | None = None,
             binds: list[tuple[Path, Path]] | None = None) -> tuple[list[str], str]:
        """argv wrapped for phase; `cwd` is where it will run (the caller passes it to sandbox.run too);
        `binds` are (source, place) pairs bound writable where the level has a private filesystem view."""
        return argv, self.level

    def hidden_files(self) -> list[str]:
        """Task-relative files masked from the run phase: `[bound] hidden`."""
        return glob_files(self.task_dir, self.task.bound.hidden) if self.task.bound.hidden else []

    @functools.cached_property
    def _hidden(self) -> list[str]:
        return self.hidden_files()  # committed files, protected: the same for the whole run

    @functools.cached_property
    def _home(self) -> Path | None:
        """$HOME resolved (a link's target is what a mask must cover), or None where it is / or missing."""
        home = Path(os.path.realpath(os.path.expanduser("~")))
        return home if str(home) not in ("/", "") and home.is_dir() else None

    @functools.cached_property
    def checkout_hidden(self) -> list[Path]:
        """The hidden files at their places in the user's checkout (committed or not), masked wherever a
        read-only path of the checkout (`read_only = ["data"]`) would show them to the run phase."""
        if not self.task.bound.hidden:
            return []
        return [Path(os.path.realpath(self.task.root / rel))
                for rel in glob_files(self.task.root, self.task.bound.hidden)]

    @functools.cached_property
    def key_shown(self) -> list[Path]:
        """The ledger key's folder where a `read_only` path would show it again under the $HOME mask
        (`read_only = ["~"]`): masked once more after that path is bound back."""
        from ouroboros import chain

        config = Path(os.path.realpath(chain.config_dir()))
        shown = config.is_dir() and any(_covers(p, [config]) for p in self.task.read_only_paths)
        return [config] if shown and not _covers(config, [self.worktree, self.records]) else []

    @functools.cached_property
    def git_masks(self) -> list[Path]:
        """The repo's git dirs that the repo mask does not already cover, and that hold no run's files."""
        keep = [self.worktree, self.records]
        return [d for d in git_dirs(self.task.root) if not _under(d, [self.repo]) and not _covers(d, keep)]

    def read_only(self) -> list[Path]:
        """What experiments read but never write: the cache, `read_only` paths, the harness's Python,
        the run's environment folder (and the interpreter its venv points to)."""
        paths = [cache_dir(), *self.task.read_only_paths,
                 *{Path(os.path.realpath(p)) for p in (sys.prefix, sys.base_prefix)}, *harness_code()]
        venv = project_env(self.env_dir) if self.env_dir is not None else None
        if self.env_dir is not None and self.env_dir.is_dir():
            paths.append(self.env_dir)
        if venv is not None:
            python = venv / "bin" / "python"
            if python.exists():
                paths.append(Path(os.path.realpath(python)).parent.parent)
        return [p for p in dict.fromkeys(paths) if p.exists()]


class Unshare(Isolation):
    level = "unshare"
    overhead = 2  # unshare, the reaper shell

    def wrap(self, argv: list[str], phase: str, writable: list[Path] | None = None,
             readable: list[Path] | None = None, cwd: Path | None = None,
             binds: list[tuple[Path, Path]] | None = None) -> tuple[list[str], str]:
        flags = ["--fork", "--pid", "--kill-child", "--mount-proc", "--ipc", "--mount", "--uts"]
        if not self._network(phase):
            flags.append("--net")
        # The view's mounts are undone by whoever keeps CAP_SYS_ADMIN in the namespace (umount /proc shows
        # the host's, the read-only binds come off): the rest runs with no capability left to get back.
        view = self._view(phase, writable or [], readable or [], cwd or self.task_dir, binds or [])
        _new_session_keyring()  # inherited by the command: no key one phase leaves there reaches the next
        return ["unshare", *flags, *_unshare_user(), "--", *_mountview(), *view, "--", *_NO_CAPS,
                "bash", "-c", _REAPER, _shell(argv)], self.level

    def _network(self, phase: str) -> bool:
        return self.task.bound.network or phase == "agent"

    _OLD = "/run"  # the host's tree while the view is made, bound over /run: every bind's source is read there

    def _view(self, phase: str, writable: list[Path], readable: list[Path], cwd: Path,
              binds: list[tuple[Path, Path]]) -> list[str]:
        """The operations (mountview.py's) that make the run's view of the filesystem in its own mount namespace,
        as bwrap's: the host's tree bound over /run first, so that what a mask hides can be bound back from
        it; a /dev of its own under a root harness; private /tmp, /dev/shm and $HOME; the checkout, the
        records, the git common dir and the chain key's folder masked; the worktree and what the phase may
        write bound back writable, the harness's Python, the cache and `read_only` paths read-only; `[bound]
        hidden` files masked in the run phase; the root mount, /proc and /sys read-only; the host's tree let
        go and /run an empty tmpfs; the working folder entered anew. An operation that fails ends the run: it
        never goes on weaker than it claims."""
        old = self._OLD
        size = int(self.task.bound.max_artifact_mb * 2**20)
        keep = [self.worktree, *writable, *(place for _, place in binds)]
        masks, small = self._masks
        ro = [p for p in self.read_only() if os.path.exists(p)]
        ops = ["rbind", "/", old]
        if os.geteuid() == 0:  # the run is the host's uid 0 (no user namespace): device nodes open by ownership
            ops += self._minimal_dev()
        else:  # the host's ptys (the user's terminal) and POSIX message queues are the user's: fresh instances
            ops += ["devpts", "/dev/pts", "mqueue", "/dev/mqueue"]
        for m in masks:
            ops += ["tmpfs", str(m), f"size={size},mode={'755' if m == self._home else '1777'}"]
        early = [p for p in ro if _covers(p, small)]  # a read-only folder holding the repo: under its masks
        ops += self._bind_back(early, masks, read_only=True)
        for m in small:  # their place is made where a mask above hides them; read-only at the end
            if _under(m, masks):
                ops += ["mkdir", str(m)]
            ops += ["tmpfs", str(m), "size=1m,mode=755"]
        hidden_by = [*masks, *small]
        rw = sorted({Path(os.path.realpath(p)) for p in keep if os.path.exists(p)}, key=lambda p: len(p.parts))
        back = [p for p in ro if p not in early]
        back += _runtime_paths(hidden_by, [self.repo, self.records, self.worktree])
        back += [Path(os.path.realpath(p)) for p in readable
                 if _under(Path(os.path.realpath(p)), hidden_by) and os.path.exists(p)]
        ops += self._bind_back(sorted(set(back) - set(rw), key=lambda p: len(p.parts)), hidden_by, read_only=True,
                               after=rw)
        for source, place in binds:
            ops += ["bind", old + str(source), str(place)]
        if phase in ("run", "agent"):  # the hidden files: /dev/null in their place, in the worktree and the checkout
            shown = [*back, *early]
            for path in [*(self.task_dir / rel for rel in self._hidden),
                         *(p for p in self.checkout_hidden if _under(p, shown) and _under(p, hidden_by))]:
                ops += ["mask", str(path)]
        # /proc/sys and /sys take writes by ownership alone: under a root harness the run is uid 0 there
        # (core_pattern would run a program as root), capabilities or not. A fresh sysfs has none of the host's
        # cgroup mounts under it (their files take writes by ownership too); where it cannot be made (a user
        # namespace sharing the host's network) /sys itself is made read-only. The root mount as at bwrap.
        ops += ["ro", "/proc",  # /proc/sys, /proc/irq, /proc/sysrq-trigger: host-wide knobs
                "sysfs", "/sys", "ro", "/"]
        for m in small:
            ops += ["ro", str(m)]
        resolv = _resolver() if self._network(phase) and Path("/tmp") in masks else None
        if resolv is not None:  # name resolution (/etc/resolv.conf into /run): kept aside in the private /tmp
            ops += ["file", "/tmp/.resolv", "robind", old + str(resolv), "/tmp/.resolv"]
        ops += ["detach", old, "tmpfs", "/run", "size=1m,mode=755"]
        if os.path.isdir("/var/run") and not os.path.islink("/var/run"):  # an old system's own folder, as at bwrap
            ops += ["tmpfs", "/var/run", "size=1m,mode=755"]
        if resolv is not None:
            ops += ["file", str(resolv), "move", "/tmp/.resolv", str(resolv), "remove", "/tmp/.resolv"]
        for target, link in _path_links([Path("/run"), *masks]):  # PATH entries through a link the masks hid
            ops += ["link", target, str(link)]
        return [*ops, "cd", str(cwd)]

    def _minimal_dev(self) -> list[str]:
        """A /dev of its own, as bwrap's `--dev`: the harmless nodes and the usual links copied from the host's,
        the GPUs', a fresh devpts; the disks, /dev/kmsg and the rest of the host's nodes are not there."""
        names = ["null", "zero", "full", "random", "urandom", "tty", "ptmx", "fd", "stdin", "stdout", "stderr"]
        present = [f"/dev/{n}" for n in names if os.path.lexists(f"/dev/{n}")]
        present += sorted(glob.glob("/dev/nvidia*")) + sorted(glob.glob("/dev/dri"))
        ops = ["devtmpfs", "/dev", "size=1m,mode=755", "mkdir", "/dev/pts", "mkdir", "/dev/shm"]
        for dev in present:
            ops += ["node", self._OLD + dev, dev]
        return [*ops, "devpts", "/dev/pts"]

    def _bind_back(self, paths: list[Path], masks: list[Path], read_only: bool,
                   after: list[Path] | None = None) -> list[str]:
        """Operations putting each path (and first those of `after`, writable) back in place from the host's tree:
        its place is made first where a mask hides it (a folder, or an empty file for a file)."""
        ops: list[str] = []
        order = [(p, False) for p in after or []] + [(p, read_only) for p in paths]
        order.sort(key=lambda item: len(item[0].parts))  # a folder before what is bound inside it
        bound: list[Path] = []
        for i, (path, ro) in enumerate(list(order)):  # read-only inside a read-only bind with no mask between: done
            if ro and any(_under(path, [b]) and not any(m != b and _under(m, [b]) and _under(path, [m]) for m in masks)
                          for b in bound):
                order[i] = (path, None)
            elif ro:
                bound.append(path)
        order = [(p, ro) for p, ro in order if ro is not None]
        for path, _ in order:
            if _under(path, masks) and os.path.isdir(path):
                ops += ["mkdir", str(path)]
        for path, ro in order:
            if _under(path, masks) and not os.path.isdir(path):
                ops += ["file", str(path)]
            ops += ["robind" if ro else "bind", self._OLD + str(path), str(path)]
        return ops

    @functools.cached_property
    def _masks(self) -> tuple[list[Path], list[Path]]:
        """The large masks (/tmp, /dev/shm, $HOME and the chain key's folder outside it: private, size-capped)
        and the small ones (the checkout, the records, the git common dir), the outermost of each kind."""
        from ouroboros import chain

        large = [Path(p) for p in ("/tmp", "/dev/shm") if os.path.isdir(p) and not os.path.islink(p)]
        if self._home is not None:
            large.append(self._home)
        config = Path(os.path.realpath(chain.config_dir()))
        if config.is_dir() and not _under(config, large):
            large.append(config)
        large = [m for m in large if not any(o != m and _under(m, [o]) for o in large)]
        small = [Path(os.path.realpath(p)) for p in (self.repo, self.records, *self.git_masks, *self.key_shown)]
        small = sorted({m for m in small if not any(o != m and _under(m, [o]) for o in small)},
                       key=lambda p: len(p.parts))
        return large, small


class Bwrap(Isolation):
    level = "bwrap"
    overhead = 3  # bwrap, its init in the PID namespace, the reaper shell

    def wrap(self, argv: list[str], phase: str, writable: list[Path] | None = None,
             readable: list[Path] | None = None, cwd: Path | None = None,
             binds: list[tuple[Path, Path]] | None = None) -> tuple[list[str], str]:
        mounts, repo_masks, tmpfs = self._mounts
        args = list(mounts)
        shown: list[Path] = []  # what is bound back inside the repo masks
        for path in self.read_only():  # those that hold no mask; the others are in _mounts, under the masks
            if not _covers(path, [self.worktree, *repo_masks]):
                args += ["--ro-bind", str(path), str(path)]
                shown.append(path)
        masked = [*tmpfs, *repo_masks]
        for path in {Path(os.path.realpath(p)) for p in readable or []}:
            if _under(path, masked) and not _covers(path, [*masked, self.worktree]):
                args += ["--ro-bind-try", str(path), str(path)]
                shown.append(path)
        if phase in ("run", "agent"):  # hidden files of the checkout under what was bound back: masked there too
            for path in self.checkout_hidden:
                if _under(path, shown) and _under(path, repo_masks):
                    args += ["--ro-bind", "/dev/null", str(path)]
        args += ["--bind", str(self.worktree), str(self.worktree)]
        if phase in ("run", "agent"):
            for rel in self._hidden:
                args += ["--ro-bind", "/dev/null", str(self.task_dir / rel)]
        for path in writable or []:
            args += ["--bind-try" if phase == "agent" else "--bind", str(path), str(path)]
        for source, place in binds or []:
            args += ["--bind", str(source), str(place)]
        for hide in repo_masks:  # after the binds inside them: the mask itself takes no writes
            args += ["--remount-ro", str(hide)]
        args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        network = self.task.bound.network or phase == "agent"
        if not network:
            args.append("--unshare-net")
        elif (resolv := _resolver()) is not None:  # name resolution: often points into the masked /run
            args += ["--ro-bind", str(resolv), str(resolv)]
        args += ["--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        command = ["bash", "-c", _REAPER, _shell(argv)]
        if drops_root():  # root would keep reading root's own files: the command runs as NOBODY instead
            args = _open_parents(args) + ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                                          "--cap-add", "CAP_SETPCAP"]
            command = [*_DROP_ROOT, *command]
            _grant([self.worktree, *(writable or []), *(source for source, _ in binds or [])])
        # the kernel keyring is shared by every process of a uid, whatever its namespaces: denied (syscall_filter)
        args += syscall_filter.bwrap_args()  # sandbox.run puts a fresh fd in per start
        args += ["--chdir", str(cwd or self.task_dir), "--", *command]
        return args, self.level

    @functools.cached_property
    def _mounts(self) -> tuple[list[str], list[Path], list[Path]]:
        """The mounts every experiment of the run shares (computed once: they walk PATH and sys paths), the
        repository's masks and the other tmpfs masks (/tmp, /run, $HOME, folders NOBODY cannot cross)."""
        size = _mb(self.task.bound.max_artifact_mb)
        shared = ["--perms", "1777"] if drops_root() else []  # writable by the dropped run, as on the host
        args = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                *shared, "--size", size, "--tmpfs", "/dev/shm", *shared, "--size", size, "--tmpfs", "/tmp",
                "--size", "1048576", "--tmpfs", "/run"]  # host sockets (dbus, docker, systemd, X)
        if os.path.isdir("/var/run") and not os.path.islink("/var/run"):
            args += ["--size", "1048576", "--tmpfs", "/var/run"]
        for dev in sorted(glob.glob("/dev/nvidia*")) + sorted(glob.glob("/dev/dri")):
            args += ["--dev-bind", dev, dev]
        masked = [Path("/tmp"), Path("/run")]
        if self._home is not None:
            args += [*(["--perms", "0777"] if drops_root() else []), "--size", size, "--tmpfs", str(self._home)]
            masked.append(self._home)
        if drops_root():  # folders NOBODY cannot cross (/root): empty, with what the run needs bound back in them
            for closed in _closed_ancestors([*_runtime_candidates(), *self.read_only(), self.repo,
                                             Path(tempfile.gettempdir())], masked):
                args += ["--size", "1048576", "--tmpfs", str(closed)]
                masked.append(closed)
        # a read-only path holding the repo (`read_only = ["~"]`) goes in before the masks that hide in it
        for path in self.read_only():
            if _covers(path, [self.repo, self.records, *self.git_masks, *self.key_shown]):
                args += ["--ro-bind", str(path), str(path)]
        repo_masks: list[Path] = []
        for hide in (self.repo, self.records, *self.git_masks, *self.key_shown):  # checkout, .git, .ouroboros/: tiny, empty
            if not _under(hide, repo_masks):
                args += ["--size", "1048576", "--tmpfs", str(hide)]
                repo_masks.append(hide)
        for path in _runtime_paths([*masked, *repo_masks], [self.repo, self.records, self.worktree]):
            args += ["--ro-bind", str(path), str(path)]
        for target, link in _path_links([*masked, Path("/var/run")]):  # PATH entries through a link the masks hid
            args += ["--symlink", target, str(link)]
        return args, repo_masks, masked


# Under a root harness, level bwrap runs each command as this uid and gid (nobody): with capabilities dropped,
# uid 0 would still read and write every file root owns (/etc/shadow, ssh host keys, credentials in /etc, /opt
# or another user's home) by plain ownership, and a user namespace would map root's files to the run's uid.
NOBODY = 65534
_DROP_ROOT = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all",
              "--bounding-set=-all", "--"]
_BWRAP_OPS = {"--ro-bind": 2, "--ro-bind-try": 2, "--bind": 2, "--bind-try": 2, "--dev-bind": 2, "--dev-bind-try": 2,
              "--tmpfs": 1, "--dir": 1, "--dev": 1, "--proc": 1, "--remount-ro": 1, "--chdir": 1, "--size": 1,
              "--perms": 1, "--cap-add": 1, "--cap-drop": 1, "--chmod": 2, "--symlink": 2}
_MOUNTS = {"--ro-bind", "--ro-bind-try", "--bind", "--bind-try", "--dev-bind", "--dev-bind-try", "--tmpfs", "--dir",
           "--symlink"}


def _resolver() -> Path | None:
    """The file /etc/resolv.conf leads to where it lies under /run (systemd-resolved's stub, NetworkManager's),
    which both levels replace by an empty tmpfs: a run with network bound back to it can resolve names."""
    resolv = Path(os.path.realpath("/etc/resolv.conf"))
    return resolv if _under(resolv, [Path("/run")]) and resolv.is_file() else None


def drops_root() -> bool:
    """Whether level bwrap runs commands as NOBODY: where the harness itself is root."""
    return os.geteuid() == 0


def _open_parents(args: list[str]) -> list[str]:
    """bwrap's args with `--dir` before each mount whose parent lies in one of its tmpfs: bwrap makes the
    missing parents of a bind 0700 and root's, which NOBODY could not cross (`--dir` makes them 0755)."""
    out: list[str] = []
    pending: list[str] = []  # --size and --perms: they apply to the next op, so they stay right before it
    tmpfs: list[str] = []  # as "/a/b/": strings, not Paths (a hundred mounts, twice an experiment)
    i = 0
    while i < len(args):
        op = args[i]
        n = _BWRAP_OPS.get(op, 0)
        if op in ("--size", "--perms"):
            pending += args[i:i + 2]
            i += 2
            continue
        if op in _MOUNTS:
            dest = str(PurePosixPath(args[i + n]))  # normalized as Path normalizes it
            parent = posixpath.dirname(dest)
            if parent.startswith(tuple(tmpfs)) and parent.rstrip("/") + "/" not in tmpfs:  # strictly inside one
                out += ["--dir", parent]
            if op == "--tmpfs":
                tmpfs.append(dest.rstrip("/") + "/")
        out += [*pending, *args[i:i + n + 1]]
        pending = []
        i += n + 1
    return out + pending


def _grant(paths: list[Path]) -> None:
    """Make what a run dropped to NOBODY may write writable by it, as the user's own run may: group NOBODY,
    group read-write (folders searchable), owner unchanged (the harness's git still trusts the worktree),
    links never followed. Only entries that need it are changed (a change moves their inode change time, so
    the caller arms the guard after wrapping)."""
    stack = [p for p in paths if p.exists() and not p.is_symlink()]
    while stack:
        path = stack.pop()
        try:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue
            folder = stat.S_ISDIR(st.st_mode)
            mode = stat.S_IMODE(st.st_mode) | (0o070 if folder else 0o060) | (0o010 if st.st_mode & 0o100 else 0)
            if st.st_gid != NOBODY:
                os.chown(path, -1, NOBODY, follow_symlinks=False)
            if mode != stat.S_IMODE(st.st_mode):
                os.chmod(path, mode, follow_symlinks=False)
            if folder:
                with os.scandir(path) as it:
                    stack.extend(Path(e.path) for e in it)
        except OSError:
            continue


_KEYCTL = {"x86_64": 250, "aarch64": 219}  # the keyctl system call (no libc wrapper)


def _new_session_keyring() -> None:
    """Give this thread (and so the next process it starts) a fresh anonymous session keyring
    (KEYCTL_JOIN_SESSION_KEYRING with no name). Processes inherit their session keyring across fork,
    whatever namespaces they enter: without this, a key an unshare phase adds to it is there for the
    next phase, the confirmation re-run included. Level unshare has no seccomp filter (bwrap's denies the
    keyring calls); a non-root harness's unshare phase gets fresh user keyrings with its user namespace."""
    call = _syscall()
    number = _KEYCTL.get(os.uname().machine)
    if call is not None and number is not None:
        call(number, 1, None)  # a failure leaves the old one: best effort


@functools.cache
def _syscall():
    """libc's syscall(2), loaded once (every unshare phase calls it)."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).syscall
    except OSError:
        return None


def _shell(argv: list[str]) -> str:
    """argv as one shell command line (the reaper runs it with `bash -c`)."""
    if len(argv) == 3 and argv[:2] == ["bash", "-c"]:
        return argv[2]

    return shlex.join(argv)


def _unshare_user() -> list[str]:
    return [] if os.geteuid() == 0 else ["--user", "--map-root-user"]


@functools.cache
def available(level: str) -> bool:
    """Whether this level actually works here: installed, and namespaces not refused (probed once). Level bwrap
    needs its seccomp filter too (`syscall_filter`): without it the level is not there, and says why
    (install_hint), rather than run weaker than it claims."""
    if level == "process":
        return True
    if level == "bwrap":
        return syscall_filter.problem() is None and _bwrap_works(seccomp=True)
    return _probe(level)


@functools.cache
def _bwrap_works(seccomp: bool = False) -> bool:
    """Whether bubblewrap starts here (with the keyring filter loaded, with `seccomp`)."""
    return _probe("bwrap", seccomp)


def _probe(level: str, seccomp: bool = False) -> bool:
    if level == "bwrap":
        argv = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
                "--unshare-pid", "--unshare-net", "--unshare-ipc", "--die-with-parent", "--new-session",
                "--cap-drop", "ALL", "--", "true"]
        if drops_root():  # the level needs the drop to NOBODY (util-linux's setpriv) to work too
            argv[-2:] = ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP", "--",
                         *_DROP_ROOT, "true"]
        if seccomp:
            argv[1:1] = ["--seccomp", syscall_filter.PLACEHOLDER]
    elif level == "unshare":
        argv = ["unshare", "--fork", "--pid", "--kill-child", "--mount-proc", "--ipc", "--net", "--mount",
                *_unshare_user(), "--", "bash", "-c", "mount -t tmpfs none /run && mount --bind /run /run "
                "&& mount -o remount,bind,ro /run"]
    else:
        raise ValueError(level)
    if shutil.which(argv[0]) is None:
        return False
    try:
        with syscall_filter.attached(argv) as (started, fds):
            return subprocess.run(started, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=10, pass_fds=fds).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def require_boundary(level: str, agent: object, allowed: bool) -> None:
    """Level `process` is no boundary: refuse it for an agent that writes code, unless allowed."""
    if level != "process" or allowed or not getattr(agent, "writes_code", True):
        return
    hint = install_hint(level)
    raise OuroborosError(
        f"isolation level process cannot contain agent {getattr(agent, 'name', agent)!r} (its code could read "
        f"and write your files, reach the network and outlive the run); {hint}, or pass "
        "--allow-weak-isolation to run it anyway")


_CLASSES: dict[str, type[Isolation]] = {"bwrap": Bwrap, "unshare": Unshare, "process": Isolation}


def choose(task: Task, worktree: Path, records: Path, env_dir: Path | None = None) -> Isolation:
    """The task's isolation level, or with `auto` the strongest that works here: bwrap, unshare, process."""
    wanted = task.bound.isolation
    if wanted == "auto":
        level = next(lv for lv in LEVELS if available(lv))
    elif available(wanted):
        level = wanted
    else:
        fix = {"bwrap": _bwrap_fix(), "unshare": "install util-linux and allow user namespaces"}[wanted]
        raise OuroborosError(f"[bound] isolation = {wanted!r}, but {wanted} does not work on this machine ({fix}); "
                             "or set isolation = \"auto\" to fall back to the strongest level that works")
    return _CLASSES[level](task, worktree, records, env_dir)
