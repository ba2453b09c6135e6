"""Git for a run: one worktree and branch per run, attempt commits, keep and revert.

The user's checkout is never touched: a run works in `.ouroboros/runs/<tag>/worktree` on branch
`ouroboros/<tag>`, and every attempt's commit stays reachable under `refs/ouroboros/<tag>/<n>`.

Protects against git being steered by what a proposal or a run wrote (attacked in tests/cheats/):
- a `.git` file in the worktree repointed at a planted git dir: the worktree's git dir is found
  from the repository's own `worktrees/*/gitdir` records, never by reading the worktree, and every
  call names it (`--git-dir`, `--work-tree`); the `.git` file is put back if it changed;
- planted hooks, filters, fsmonitor, pagers and diff drivers: hooks and fsmonitor are off, the
  system and global config are not read (GIT_CONFIG_NOSYSTEM, GIT_CONFIG_GLOBAL=/dev/null), every
  filter driver the repository's config names has its commands blanked on the command line (a
  `.gitattributes` naming one then runs nothing), no external diff or textconv; the repository's
  config, hooks and info are restored by the guard before the harness's next git call;
- replaced objects (`refs/replace/`): GIT_NO_REPLACE_OBJECTS, so the evaluator's bytes are the
  commit's own;
- secrets: git runs with the scrubbed environment of experiments, and no GIT_* variable of the
  caller's.
- commands written into the run's one long-lived git process (`update-ref --stdin`, which settles
  each experiment's refs): it talks over a socket pair, whose /proc/<pid>/fd entries cannot be
  opened, gets SIGCONT before each use, and any answer but its own falls back to a one-shot call;
- a change hidden from the guard where `changes` reads the worktree instead of asking git: only
  where that is provably git's answer (`_changes_known`: inode change times cannot be set back).

Does not protect against: a user's repository config that is itself hostile (it is trusted), or
what a replay agent's own `git apply` does (agents/replay.py, run in the worktree at proposal time).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import lzma
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ouroboros import readfile
from ouroboros.errors import OuroborosError
from ouroboros.ledger import clean_text
from ouroboros.readfile import read_regular_bytes
from ouroboros.task import RECORDS_DIR

_SAFE = ["-c", "core.hooksPath=/dev/null", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false",
         "-c", "user.name=ouroboros", "-c", "user.email=ouroboros@localhost", "-c", "core.fsmonitor=false",
         "-c", "gc.auto=0", "-c", "core.attributesFile=/dev/null", "-c", "core.excludesFile=/dev/null",
         "-c", "core.pager=cat", "-c", "core.untrackedCache=false", "-c", "core.autocrlf=false", "-c", "core.ignoreCase=false",
         "-c", "maintenance.auto=false"]
_SECRET = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|COOKIE|SESSION)", re.IGNORECASE)
_GIT = shutil.which("git") or "git"
_FILTER = re.compile(r'^\s*\[\s*filter\s+"((?:[^"\\]|\\.)*)"\s*\]', re.MULTILINE | re.IGNORECASE)


def git_env() -> dict[str, str]:
    """The environment of every harness git call: no secrets, none of the caller's GIT_* settings,
    no system or global config, no system attributes, no replaced objects, no prompts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") and not _SECRET.search(k)}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null", GIT_ATTR_NOSYSTEM="1",
               GIT_NO_REPLACE_OBJECTS="1", GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    return env


GIT_TIMEOUT_S = 600


def _call(argv: list[str], what: str, check: bool, input: str | bytes | None = None, text: bool = True,
          index: Path | None = None):
    # An absolute executable, no cwd= and close_fds=False let CPython use posix_spawn instead of
    # fork: a few milliseconds saved per call, and the loop makes several calls per experiment.
    # Text is UTF-8 with surrogateescape both ways: a path or a line that is not UTF-8 (any bytes but
    # / and NUL make a file name) comes back as a str that names the same bytes when passed to git again.
    enc = {"encoding": "utf-8", "errors": "surrogateescape"} if text else {}
    env = git_env()
    if index is not None:
        env["GIT_INDEX_FILE"] = str(index)
    try:
        proc = subprocess.run(argv, capture_output=True, input=input, close_fds=False, env=env, timeout=GIT_TIMEOUT_S,
                              **enc)
    except FileNotFoundError as exc:
        raise OuroborosError("git is not installed; install it (apt-get install git)") from exc
    except subprocess.TimeoutExpired as exc:  # blocked on something a run left (a FIFO where git reads a file)
        raise OuroborosError(f"git {what} did not finish in {GIT_TIMEOUT_S} s and was stopped") from exc
    if check and proc.returncode != 0:
        err = (proc.stderr.encode("utf-8", "surrogateescape") if text else proc.stderr).decode(errors="replace")
        raise OuroborosError(f"git {what} failed: {err.strip().splitlines()[-1:]}")
    return proc


class _RefWriter:
    """One `git update-ref --stdin` for the whole run, fed one transaction (`start` ... `commit`) per
    experiment: the settle's ref update without a git process per experiment.

    It is started like every harness git call (git dir named, the safe settings, the scrubbed
    environment, no descriptor of the harness's but its own) and talks over a socket pair, not pipes:
    `/proc/<pid>/fd/0` of a socket cannot be opened (ENXIO), so a run at level `process`, which shares
    the harness's uid, has no way to write commands into it (at the other levels it cannot see it).
    What such a run can still do to it (stop or kill it) ends in the one-shot `update-ref` of before:
    it is sent SIGCONT before each use, and any answer but `start: ok` and `commit: ok` (git ends
    itself when a transaction fails) closes it."""

    def __init__(self, argv: list[str]):
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(argv, stdin=theirs, stdout=theirs, stderr=subprocess.DEVNULL, env=git_env(),
                                         close_fds=True)
        finally:
            theirs.close()
        ours.settimeout(GIT_TIMEOUT_S)
        self.sock = ours

    def transaction(self, lines: str) -> bool:
        """Apply the update lines in one transaction; False (and the writer closed) where it did not."""
        try:
            self.proc.send_signal(signal.SIGCONT)
            self.sock.sendall(b"start\n" + lines.encode("utf-8", "surrogateescape") + b"commit\n")
            reply = b""
            while reply.count(b"\n") < 2:
                chunk = self.sock.recv(256)
                if not chunk:
                    break
                reply += chunk
        except OSError:  # socket.timeout included
            reply = b""
        if reply != b"start: ok\ncommit: ok\n":
            self.close()
            return False
        return True

    def alive(self) -> bool:
        return self.proc.poll() is None and self.sock.fileno() != -1

    def close(self) -> None:
        self.sock.close()  # git reads the end of its input and exits (a transaction not committed is dropped)
        self.proc.send_signal(signal.SIGCONT)  # a stopped one too
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def git(cwd: Path, *args: str, check: bool = True, input: str | None = None) -> str:
    """git in the user's own checkout (or a repo the harness just made), with the safe settings."""
    return _call([_GIT, "-C", str(cwd), *_SAFE, *args], f"{' '.join(args[:3])} in {cwd}", check, input).stdout


def repo_root(path: Path) -> Path:
    out = subprocess.run([_GIT, "rev-parse", "--show-toplevel"], cwd=path, capture_output=True, encoding="utf-8",
                         errors="surrogateescape", env=git_env())
    if out.returncode != 0:
        raise OuroborosError(f"{path} is not inside a git repository; run `git init && git add -A && "
                             "git commit -m baseline` there first")
    return Path(out.stdout.strip()).resolve()


def git_root(path: Path) -> Path:
    """The nearest folder at or above path holding a `.git` entry (a file in worktrees, a folder in
    repos), found without running git; path itself where there is none."""
    for p in (path, *path.parents):
        if (p / ".git").exists():
            return p
    return path


def exclude_records(repo: Path) -> None:
    """Ignore `.ouroboros/` through .git/info/exclude, so the user's files stay unchanged."""
    exclude = Path(git(repo, "rev-parse", "--git-path", "info/exclude").strip())
    exclude = exclude if exclude.is_absolute() else repo / exclude
    text = exclude.read_text(errors="surrogateescape") if exclude.exists() else ""  # written back byte for byte
    if f"/{RECORDS_DIR}/" not in text.split("\n") and f"{RECORDS_DIR}/" not in text.split("\n"):
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text(text + ("" if text.endswith("\n") or not text else "\n") + f"{RECORDS_DIR}/\n",
                           errors="surrogateescape")


def _status(repo: Path, sub: str, named: Callable[[str], bool] | None) -> tuple[list[str], list[str]]:
    """(paths that stop a run, untracked task-relative paths no task glob names)."""
    prefix = "" if sub in ("", ".") else sub.rstrip("/") + "/"
    tracked, untracked = [], []
    for line in git(repo, "status", "--porcelain=v1", "--untracked-files=all", "--", sub).splitlines():
        path = line[3:]
        rel = path[len(prefix):] if path.startswith(prefix) else path
        if line.startswith("??") and named is not None and not named(rel):
            untracked.append(rel)
        else:
            tracked.append(path)
    return tracked, untracked


def ensure_clean(repo: Path, sub: str = ".", named: Callable[[str], bool] | None = None) -> str:
    """The HEAD commit a run starts from; uncommitted changes are an error, since a run starts from HEAD.

    With `named` (a task-relative path -> whether a task glob names it), untracked files it does not
    name (run.log, scratch files) are no run's business and do not stop it (see `left_out`).
    """
    if not git(repo, "rev-parse", "--verify", "-q", "HEAD", check=False).strip():
        raise OuroborosError(f"{repo} has no commits; commit the task first: git add -A && git commit -m baseline")
    dirty, _ = _status(repo, sub, named)
    if dirty:
        raise OuroborosError(f"the working tree has uncommitted changes ({len(dirty)} paths, e.g. {dirty[0]}); "
                             "a run starts from HEAD: commit them (git add -A && git commit -m 'before ouroboros') "
                             "or stash them (git stash -u), then run again")
    return git(repo, "rev-parse", "HEAD").strip()


def left_out(repo: Path, sub: str, named: Callable[[str], bool]) -> list[str]:
    """Untracked files no task glob names: not part of the run (its worktree starts from HEAD)."""
    return _status(repo, sub, named)[1]


@dataclass
class Change:
    status: str  # two porcelain letters, e.g. " M", "??", " D", "R "
    path: str  # relative to the task folder, posix


DEEP_BYTES = 1024  # folders nested past this many bytes of path in the worktree are removed (remove_specials)
MAX_SNAPSHOT = 200_000  # worktree entries `Workspace.snapshot` lists; past it the loop resets with git


_FINE: dict[int, bool] = {}


def fine_ctime(folder: Path | str) -> bool:
    """Whether every write on folder's file system moves a file's change time, however soon after the last
    (probed once per file system: a scratch file written twice right after a stat). Kernels before 6.13 keep
    coarse change times (a clock tick, milliseconds) on most file systems, and so do vfat and some NFS: a
    write in the same tick as the last change leaves the change time as it was, and the guard's change list
    without git (`_changes_known`) would miss it. Where this says no, git status is asked every time."""
    try:
        dev = os.stat(folder).st_dev
    except OSError:
        return False
    if dev not in _FINE:
        fine = True
        try:
            fd, scratch = tempfile.mkstemp(prefix=".ouroboros-ctime-", dir=folder)
        except OSError:
            return False
        try:
            for _ in range(4):
                before = os.fstat(fd).st_ctime_ns
                os.write(fd, b"x")
                if os.fstat(fd).st_ctime_ns == before:
                    fine = False
                    break
        finally:
            os.close(fd)
            os.unlink(scratch)
        _FINE[dev] = fine
    return _FINE[dev]


class Workspace:
    """The run's worktree. `task_rel` is the task folder inside the repo ('.' for the root).

    Every git call names the repository's git dir and the worktree's own (found once, from the
    repository's records of its worktrees), so nothing written in the worktree can redirect git.
    """

    def __init__(self, repo: Path, task_rel: str, records: Path, tag: str):
        self.repo, self.task_rel, self.tag, self.records = repo, task_rel, tag, records
        self.path = records / "runs" / tag / "worktree"
        self.branch = f"ouroboros/{tag}"
        self._admin: Path | None = None
        self._filters: list[str] | None = None
        self._gitlinks: list[str] | None = None
        self._refs: _RefWriter | None = None
        self.exact: tuple[Meta, tuple[int, ...] | None, Callable[[str], tuple[bytes, int] | None]] | None = None
        self._refs_failed = 0  # writers failed in a row: past 3, one-shot calls only (git before 2.27 has no `start`)

    @property
    def task_dir(self) -> Path:
        return self.path / self.task_rel

    @property
    def prefix(self) -> str:
        return "" if self.task_rel in ("", ".") else self.task_rel.rstrip("/") + "/"

    # -- the git dirs, pinned ----------------------------------------------------------------
    @functools.cached_property
    def common(self) -> Path:
        """The repository's git dir (shared by all its worktrees), found once in the user's checkout."""
        dotgit = self.repo / ".git"
        if dotgit.is_dir() and not dotgit.is_symlink():
            return dotgit.resolve()
        out = git(self.repo, "rev-parse", "--git-common-dir").strip()
        return (self.repo / out).resolve()

    def _find_admin(self) -> Path | None:
        """The worktree's own git dir: the `worktrees/<name>` whose `gitdir` record names our path."""
        want = os.path.join(os.path.realpath(self.path), ".git")
        try:
            entries = list(os.scandir(self.common / "worktrees"))
        except OSError:
            return None
        for entry in entries:
            try:
                with open(os.path.join(entry.path, "gitdir"), errors="surrogateescape") as f:
                    recorded = f.read().strip()
            except OSError:
                continue
            if recorded == str(self.path / ".git") or os.path.realpath(recorded) == want:
                return Path(entry.path)
        return None

    @property
    def admin(self) -> Path:
        if self._admin is None:
            self._admin = self._find_admin()
            if self._admin is None:
                raise OuroborosError(f"{self.path} is not a worktree of {self.repo} (no record of it in "
                                     f"{self.common / 'worktrees'}); start a new run")
        return self._admin

    def dotgit_text(self) -> str:
        """What the worktree's `.git` file must hold; the guard puts it back when a run changed it."""
        return f"gitdir: {self.admin}\n"

    def _filter_args(self) -> list[str]:
        """-c options that blank every filter driver the repository's config defines."""
        if self._filters is None:
            names: set[str] = set()
            for cfg in (self.common / "config", self.admin / "config.worktree"):
                try:
                    text = cfg.read_text(errors="replace")
                except OSError:
                    continue
                if re.search(r"^\s*\[\s*include", text, re.MULTILINE | re.IGNORECASE):  # read it all
                    out = _call([_GIT, f"--git-dir={self.admin}", "config", "--name-only", "--get-regexp",
                                 r"^filter\."], "config", False).stdout
                    names.update(n.split(".", 1)[1].rsplit(".", 1)[0] for n in out.split() if n.count(".") >= 2)
                names.update(m.replace('\\"', '"').replace("\\\\", "\\") for m in _FILTER.findall(text))
            self._filters = [a for n in sorted(names) for k in ("clean", "smudge", "process")
                             for a in ("-c", f"filter.{n}.{k}=")] + \
                [a for n in sorted(names) for a in ("-c", f"filter.{n}.required=false")]
        return self._filters

    def git(self, *args: str, check: bool = True, text: bool = True, input: str | None = None,
            index: Path | None = None) -> str:
        argv = [_GIT, f"--git-dir={self.admin}", f"--work-tree={self.path}", *_SAFE, *self._filter_args(), *args]
        return _call(argv, f"{' '.join(args[:3])} in {self.path}", check, input=input, text=text, index=index).stdout

    def _repo_git(self, *args: str, check: bool = True, text: bool = True, input=None):
        """git on the repository itself (worktree bookkeeping, objects, refs), its git dir named."""
        return _call([_GIT, f"--git-dir={self.common}", *_SAFE, *args], f"{' '.join(args[:3])}", check,
                     input=input, text=text).stdout

    def open(self, base: str) -> None:
        """Create the worktree on a new branch at base, or reattach to an existing run's branch."""
        if self.path.is_dir() and self._find_admin() is not None:
            self._admin = self._find_admin()
            self.restore_dotgit()
            return
        has_branch = self._repo_git("rev-parse", "--verify", "-q", f"refs/heads/{self.branch}", check=False).strip()
        self._repo_git("worktree", "prune")
        if has_branch:
            self._repo_git("worktree", "add", "-f", str(self.path), self.branch)
        else:
            self._repo_git("worktree", "add", "-f", "-b", self.branch, str(self.path), base)
        self._admin = None

    def restore_dotgit(self) -> bool:
        """Put the worktree's `.git` file back if anything replaced it; whether it had to."""
        dotgit = self.path / ".git"
        want = self.dotgit_text()
        try:  # bytes, not text: the run may have written bytes that are not UTF-8
            if dotgit.is_file() and not dotgit.is_symlink() and dotgit.read_bytes() == os.fsencode(want):
                return False
        except OSError:
            pass
        readfile.remove_path(dotgit)  # a folder however deep (shutil.rmtree recurses once a level)
        dotgit.write_bytes(os.fsencode(want))
        return True

    def remove(self) -> None:
        self.close()
        self._repo_git("worktree", "remove", "--force", str(self.path), check=False)

    def close(self) -> None:
        """End the run's long-lived git process, if one was started (see `_update_refs`)."""
        if self._refs is not None:
            self._refs.close()
            self._refs = None

    def _update_refs(self, lines: str) -> bool:
        """One ref transaction (`update-ref --stdin` lines): through the run's long-lived writer where it
        works, else a git process of its own, as before; whether it was applied."""
        if self._refs_failed < 3:
            if self._refs is None or not self._refs.alive():
                self._refs = _RefWriter([_GIT, f"--git-dir={self.admin}", *_SAFE, "update-ref", "--stdin"])
            if self._refs.transaction(lines):
                self._refs_failed = 0
                return True
            self._refs, self._refs_failed = None, self._refs_failed + 1
        return _call([_GIT, f"--git-dir={self.admin}", *_SAFE, "update-ref", "--stdin"], "update-ref", False,
                     input=lines).returncode == 0

    def _gitdirs(self) -> tuple[Path, Path]:
        """The worktree's own git dir and the repository's common dir."""
        return self.admin, self.common

    def head(self) -> str:
        """HEAD's commit, read from git's files: no subprocess on the loop's hot path (seven times an
        experiment), without a Path or a text wrapper; regular files only: where either is something
        else (a folder, a link, a FIFO a run at level process put there), git answers, as it always did."""
        try:
            gitdir, common = self._gitdirs()
            data = read_regular_bytes(os.path.join(gitdir, "HEAD"), 1 << 16)
            if data is None:
                return self.git("rev-parse", "HEAD").strip()
            head = data.decode("utf-8", errors="replace").strip()  # garbage reads as a moved HEAD
            if not head.startswith("ref: "):
                return head
            ref = head[5:]
            data = read_regular_bytes(os.path.join(common, ref), 1 << 16)
            if data is not None:
                return data.decode("utf-8", errors="replace").strip()
            if os.path.lexists(os.path.join(common, ref)):  # a folder, a link, a FIFO where the ref should be
                return self.git("rev-parse", "HEAD").strip()
            for line in (common / "packed-refs").read_text(errors="replace").splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
        except (OSError, ValueError):  # ValueError: bytes that are not UTF-8 where git keeps text
            pass
        return self.git("rev-parse", "HEAD").strip()

    def index_key(self) -> tuple[int, ...] | None:
        """The worktree index's identity and change time: any write to it (git's or anyone's) moves them."""
        try:
            st = os.lstat(self.admin / "index")
        except OSError:
            return None
        return (st.st_mode, st.st_ino, st.st_ctime_ns, st.st_size)

    def changes(self) -> list[Change]:
        """Every path that differs from HEAD, untracked and ignored files included.

        Ignored files count: a proposal could otherwise hide a start-up hook behind .gitignore.

        Where the caller has set `exact` = (metadata, index key, committed) (the loop does, right after it
        made the worktree exactly HEAD and scrubbed it: `meta(self.path)` then, `index_key()` then, and
        task-relative path -> (bytes, git mode) of HEAD's files it holds), it is used once and the answer
        comes without git where that is provably git's answer (`_changes_known`); else git status is asked.
        """
        known, self.exact = self.exact, None
        if known is not None:
            found = self._changes_known(*known)
            if found is not None:
                return found
        out = self.git("status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignored=matching",
                       "--no-renames")
        prefix = self.prefix
        changes = []
        for entry in out.split("\0"):
            if len(entry) < 4:
                continue
            path = entry[3:]
            if path.startswith(prefix):
                path = path[len(prefix):]
            else:
                path = "../" + path  # outside the task folder: never editable
            changes.append(Change(entry[:2], path))
        return changes

    def _changes_known(self, before: Meta, index: tuple[int, ...] | None,
                       committed: Callable[[str], tuple[bytes, int] | None]) -> list[Change] | None:
        """What `git status` would list, read from the worktree alone, or None where that is not certain.

        Certain when, since `before` (the worktree then exactly HEAD, and the index HEAD's tree): the index
        was not written (its key unmoved), no attributes apply (git would convert bytes), the worktree
        holds the same entries of the same kinds (no new, deleted or retyped entry: nothing untracked or
        ignored, nothing deleted), and every entry whose inode or change time moved (no process can set a
        change time back) is a folder (git lists none) or a regular file of HEAD whose bytes the caller
        holds, with HEAD's executable bit (a mode change is git's to judge, core.fileMode). Then git
        lists exactly those files whose bytes differ from HEAD's, as " M". The `.git` file is the guard's."""
        if index is None or not fine_ctime(os.path.dirname(os.path.abspath(self.path))) or self.index_key() != index \
                or self.attributes_apply(before):
            return None
        now = meta(self.path)
        if now.keys() != before.keys():
            return None
        prefix, out = self.prefix, []
        for name, key in now.items():
            old = before[name]
            if (old[0] == key[0] and old[1] == key[1]) or name in ("", ".git"):
                continue
            if stat.S_IFMT(old[4]) != stat.S_IFMT(key[4]):
                return None
            if stat.S_ISDIR(key[4]):
                continue
            if not stat.S_ISREG(key[4]) or not name.startswith(prefix):
                return None
            held = committed(name[len(prefix):])
            if held is None or bool(key[4] & 0o100) != (held[1] == 0o100755):
                return None
            data = read_regular_bytes(os.path.join(self.path, name), len(held[0]) + 1)
            if data is None:
                return None
            if data != held[0]:
                out.append(Change(" M", name[len(prefix):]))
        return sorted(out, key=lambda c: os.fsencode(c.path))

    def commit(self, message: str, n: int, untracked: bool = True, pin: bool = True,
               only: list[str] | None = None) -> str:
        """Commit everything in the worktree and pin it under refs/ouroboros/<tag>/<n>.

        With untracked=False (the caller saw no new files) one `commit -a` does the add too. With
        pin=False the commit is made on a copy of the index (the worktree's own index still describes
        the commit the branch was at) and not pinned: `settle` pins it and moves the branch back or on
        in one ref transaction, and puts the files back without git (the loop's common path). With
        `only` (task-relative paths), the commit holds HEAD plus exactly those paths' changes: the
        index is reset first (whatever was staged is dropped), paths are literal, never globs.
        """
        index = None
        if not pin:
            index = self.attempt_index
            shutil.copyfile(self.admin / "index", index)
        if only is not None:
            self.git("read-tree", "HEAD", index=index)
            if only:
                self.git("add", "-A", "--pathspec-from-file=-", "--pathspec-file-nul",
                         input="\0".join(f":(top,literal){self.prefix}{rel}" for rel in only), index=index)
            untracked = True  # no -a: the index is the commit
        elif untracked:
            self.git("add", "-A", index=index)
        # The message goes by file (stdin), cleaned: agent text is data, never an argument (a NUL in
        # argv cannot even be passed) or an option.
        self.git("commit", "-q", "--no-verify", "--allow-empty", *(() if untracked else ("-a",)),
                 "--cleanup=verbatim", "-F", "-", input=clean_text(message).strip() or f"experiment {n}", index=index)
        sha = self.head()
        if pin:
            self.pin(n, sha)
        return sha

    def attributes_apply(self, entries) -> bool:
        """Whether attributes could make git commit other bytes than the worktree holds: a `.gitattributes`
        among the worktree's entries (names relative to it) or the repository's info/attributes. Without
        either, git stores the worktree's bytes as they are (no system or global attributes, autocrlf off)."""
        return any(n == ".gitattributes" or n.endswith("/.gitattributes") for n in entries) or \
            os.path.lexists(self.common / "info" / "attributes")

    def differs(self, commit: str) -> dict[str, tuple[bytes, int]]:
        """The task folder's files (task-relative) whose bytes in the worktree are not what a checkout of commit
        writes -> (those bytes, git mode). Where attributes apply, git's text and eol conversions make the commit
        hold other bytes than ran (a CR LF file stored with LF checks out LF again); a conversion that goes both
        ways (working-tree-encoding) is what a checkout writes, so the same bytes run again."""
        listing = self._repo_git("ls-tree", "-r", "-z", "--full-tree", commit, "--", self.prefix or ".", text=False)
        differ = {}
        for entry in listing.split(b"\0"):
            head, _, name = entry.partition(b"\t")
            fields = head.split()
            if not name or len(fields) != 3 or fields[1] != b"blob":
                continue
            rel = os.fsdecode(name)[len(self.prefix):]
            path = os.path.join(self.task_dir, rel)
            try:
                data = os.fsencode(os.readlink(path)) if fields[0] == b"120000" else readfile.read_regular_bytes(path, 1 << 62, whole=True)
            except OSError:
                data = None
            sha = fields[2].decode()
            if data is not None and hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == sha:
                continue
            want = self.show(commit, rel) if fields[0] == b"120000" else _call(  # -C: attributes are looked up
                [_GIT, "-C", str(self.path), f"--git-dir={self.admin}", f"--work-tree={self.path}", *_SAFE,  # from there
                 *self._filter_args(), "cat-file", "--filters", f"--path={self.prefix}{rel}", sha],
                "cat-file --filters", True, text=False).stdout
            if data != want:
                differ[rel] = (want, int(fields[0], 8))
        return differ

    def make_exact(self, commit: str) -> list[str]:
        """After a reset: rewrite each file git left with other bytes than a checkout of commit writes (a
        line-end change `git status` does not see); the paths rewritten."""
        bad = self.differs(commit)
        if bad:
            self._put_back([], {self.prefix + rel for rel in bad}, bad)
        return sorted(bad)

    @property
    def attempt_index(self) -> Path:
        """The index an unpinned attempt is committed with (see `commit`)."""
        return self.admin / "ouroboros-attempt-index"

    def pin(self, n: int, sha: str) -> None:
        self.git("update-ref", f"refs/ouroboros/{self.tag}/{n}", sha)

    def snapshot(self) -> dict[str, tuple[int, ...]] | None:
        """Every entry of the worktree (its `.git` file excepted) -> (mode, inode, ctime, size), read
        without git; None past MAX_SNAPSHOT entries. Any write, rename, chmod or link moves an entry's
        change time, which no process can set back, so two snapshots tell what was written between."""
        found: dict[str, tuple[int, ...]] = {}
        try:
            for name, st in _walk(self.path):
                if name != ".git":
                    found[name] = (st.st_mode, st.st_ino, st.st_ctime_ns, st.st_size)
                    if len(found) > MAX_SNAPSHOT:
                        return None
        except OSError:
            return None
        return found

    def settle(self, n: int, attempt: str, target: str, files: dict[str, tuple[bytes, int]],
               before: dict[str, tuple[int, ...]], proposed: list[str]) -> bool:
        """After an unpinned attempt (`commit(pin=False)`) ran: pin it, put the branch at target (the
        attempt when kept, the best commit when not) in one `update-ref --stdin`, and make the worktree
        exactly target without git: `files` are target's committed editable files (task-relative ->
        (bytes, mode), from the object store), `before` the snapshot taken right after the commit,
        `proposed` the task-relative paths the proposal changed. Whatever was written since `before`
        is deleted (new files and links) or rewritten from `files`; so are the proposed paths when the
        target is not the attempt. False, with nothing changed, where that cannot be done exactly
        (HEAD no longer on the branch at the attempt, a changed path target has no bytes for here,
        an entry whose kind changed, a new folder): the caller then resets and cleans with git."""
        head = self.admin / "HEAD"
        try:
            on_branch = head.read_text() == f"ref: refs/heads/{self.branch}\n"
        except OSError:
            on_branch = False
        after = self.snapshot()
        if not on_branch or after is None or self.head() != attempt:
            return False
        prefix = self.prefix
        rewrite: set[str] = set() if target == attempt else {prefix + p for p in proposed}
        delete: list[str] = []
        for name, key in after.items():
            old = before.get(name)
            if old is None:
                if stat.S_ISDIR(key[0]):  # a new folder (perhaps nested past any recursion limit): git clean
                    return False
                delete.append(name)
            elif old != key:
                if stat.S_IFMT(old[0]) != stat.S_IFMT(key[0]):
                    return False
                if not stat.S_ISDIR(key[0]):
                    rewrite.add(name)
        rewrite.update(name for name, key in before.items() if name not in after and not stat.S_ISDIR(key[0]))
        if any(not name.startswith(prefix) or name[len(prefix):] not in files for name in rewrite):
            return False
        refs = f"update refs/ouroboros/{self.tag}/{n} {attempt}\n"
        if target != attempt:
            refs += f"update refs/heads/{self.branch} {target} {attempt}\n"
        if not self._update_refs(refs):
            return False
        try:
            self._put_back(delete, rewrite, files)
            if target == attempt:
                self.adopt_index()
            else:
                self.attempt_index.unlink(missing_ok=True)
        except OSError:  # a folder the run made unwritable, the index copy gone: the caller resets with git
            return False
        return True

    def rewind(self, commit: str) -> None:
        """Put the run's branch back at commit, and HEAD on it, leaving the files as they are: an agent
        that committed or switched branches still gets its change recorded as an attempt."""
        self.git("symbolic-ref", "HEAD", f"refs/heads/{self.branch}")
        self.git("reset", "-q", "--soft", commit)

    def _put_back(self, delete: list[str], rewrite: set[str], files: dict[str, tuple[bytes, int]]) -> None:
        prefix = self.prefix
        for name in delete:  # files and links only (new folders are left to git)
            path = os.path.join(self.path, name)
            if os.path.lexists(path):
                os.unlink(path)
        for name in sorted(rewrite):
            data, mode = files[name[len(prefix):]]
            target = self.path / name
            if os.path.lexists(target):
                os.unlink(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            if mode == 0o120000:
                os.symlink(data, target)
                continue
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode & 0o777)
            with os.fdopen(fd, "wb") as f:
                f.write(data)

    def adopt_index(self) -> None:
        """Make the copy an attempt was committed with the worktree's index (it describes HEAD now)."""
        os.replace(self.attempt_index, self.admin / "index")

    def empty_gitlinks(self) -> None:
        """Remove everything inside each submodule's folder (a gitlink of the run's base; a submodule is never
        checked out in a run's worktree): git status, add, clean and reset never look in there, so code
        hidden in one would run without any commit holding it."""
        if self._gitlinks is None:
            out = self._repo_git("ls-tree", "-r", "-z", "--full-tree", self.head(), text=False)
            self._gitlinks = [os.fsdecode(e.partition(b"\t")[2]) for e in out.split(b"\0")
                              if e.startswith(b"160000 ")]
        for rel in self._gitlinks:
            fd = _open_inside(self.path, rel)
            if fd is None:
                continue
            try:
                for name in os.listdir(fd):
                    try:
                        if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                            readfile.remove_tree(fd, name)
                        else:
                            os.unlink(name, dir_fd=fd)
                    except OSError:
                        pass
            finally:
                os.close(fd)

    def remove_specials(self) -> None:
        """Remove every FIFO, socket and device in the worktree (git never lists or cleans one, and opens a
        `.gitattributes` or `.gitignore` it finds with a blocking read), and every folder nested deeper than
        DEEP_BYTES of path (git clean cannot reach past PATH_MAX and fails; a reset puts back what is
        tracked). Walked by folder descriptors, so no depth is out of reach."""
        def unlink(fd: int, name: str) -> None:  # by the folder's descriptor: no link on the way is followed
            try:
                os.unlink(name, dir_fd=fd)
            except OSError:
                pass

        trash = tempfile.mkdtemp(prefix=".ouroboros-deep-", dir=os.path.dirname(os.path.abspath(self.path)))
        tfd = os.open(trash, os.O_RDONLY | os.O_DIRECTORY)
        moved = []

        def deep(fd: int, name: str, rel: str) -> None:  # moved aside now (a rename), removed all at once below
            try:
                os.rename(name, str(len(moved)), src_dir_fd=fd, dst_dir_fd=tfd)
                moved.append(name)
            except OSError:
                pass

        try:
            for rel, st in readfile.walk(self.path, strict=False, max_bytes=DEEP_BYTES, on_deep=deep,
                                         on_special=unlink):
                if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                    try:  # a setuid file a run as root left would run as root for anyone reaching the worktree
                        os.chmod(os.path.join(self.path, rel), stat.S_IMODE(st.st_mode) & 0o1777)
                    except OSError:
                        pass
        finally:
            os.close(tfd)
            if not moved:
                os.rmdir(trash)
            else:
                parent = os.open(os.path.dirname(trash), os.O_RDONLY | os.O_DIRECTORY)
                try:
                    readfile.remove_tree(parent, os.path.basename(trash))  # one GNU rm, however many and deep
                finally:
                    os.close(parent)

    def reset(self, commit: str) -> None:
        """Make the worktree exactly `commit`: tracked files reset, untracked and ignored files gone."""
        self.remove_specials()
        self.git("reset", "-q", "--hard", commit)
        try:
            self.attempt_index.unlink(missing_ok=True)
        except OSError:
            pass
        self.clean()

    def clean(self) -> None:
        self.git("clean", "-q", "-ffdx")

    def diff(self, a: str, b: str) -> str:
        """git's diff, surrogateescaped: written with errors="surrogateescape" it is git's bytes again."""
        return self.git("diff", "--no-color", "--no-ext-diff", "--no-textconv", a, b)

    def show(self, commit: str, path: str) -> bytes:
        proc = _call([_GIT, f"--git-dir={self.common}", *_SAFE, "cat-file", "blob", f"{commit}:{self.prefix}{path}"],
                     "cat-file", False, text=False)
        if proc.returncode != 0:
            raise OuroborosError(f"{path} is not in commit {commit[:8]}")
        return proc.stdout

    def files_at(self, commit: str, wanted) -> dict[str, tuple[bytes, int]]:
        """{task-relative path: (bytes, git mode)} of the files of commit that `wanted(rel)` accepts,
        read from the object store (two git processes, whatever the number of files)."""
        listing = self._repo_git("ls-tree", "-r", "-z", "--full-tree", commit, "--", self.prefix or ".",
                                 text=False)
        items = []
        for entry in listing.split(b"\0"):
            if not entry:
                continue
            meta, _, name = entry.partition(b"\t")
            mode, kind, sha = meta.split()
            rel = name.decode(errors="surrogateescape")[len(self.prefix):]
            if kind == b"blob" and wanted(rel):
                items.append((rel, int(mode, 8), sha.decode()))
        if not items:
            return {}
        out = self._repo_git("cat-file", "--batch", text=False, input="".join(f"{s}\n" for _, _, s in items).encode())
        files, pos = {}, 0
        for rel, mode, _ in items:
            header_end = out.index(b"\n", pos)
            size = int(out[pos:header_end].split()[2])
            files[rel] = (out[header_end + 1:header_end + 1 + size], mode)
            pos = header_end + 1 + size + 1
        return files


_PLAIN_PATH = re.compile(r"^[A-Za-z0-9._/+-]+$")  # paths git writes in a diff header as they are


Meta = dict[str, tuple[int, int, int, int, int]]


def meta(root: Path) -> Meta:
    """Every entry under root, root itself ("") and its `.git` file included -> (inode, ctime, atime, mtime,
    mode), nanoseconds, links not followed. No process can set a change time back, so an entry whose inode
    and ctime are as before has the same contents, mode, times, extended attributes and size as before."""
    found: Meta = {}
    try:
        st = os.lstat(root)
    except OSError:
        return found
    found[""] = (st.st_ino, st.st_ctime_ns, st.st_atime_ns, st.st_mtime_ns, st.st_mode)
    try:
        for name, st in _walk(root, strict=False):
            found[name] = (st.st_ino, st.st_ctime_ns, st.st_atime_ns, st.st_mtime_ns, st.st_mode)
    except OSError:  # strict=False: a folder that cannot be listed is skipped, not raised
        pass
    return found


def _walk(root: Path, strict: bool = True) -> Iterator[tuple[str, os.stat_result]]:
    """(name relative to root, lstat) of every entry under root (readfile.walk: by folder descriptors,
    without recursion; a folder nested past readfile.MAX_DEPTH raises, or with strict=False is skipped)."""
    return readfile.walk(root, strict=strict)


def scrub(root: Path, before: Meta | None, remake_folders: bool = True) -> Meta:
    """Leave no trace in the worktree's metadata of what ran since `before` (`meta(root)` then; None: treat
    every entry as touched), and return the metadata now.

    A reset puts back contents; a folder's extended attributes, a file's mode bits, times or allocated
    blocks, a folder's size (ext4 never shrinks one) and the order its entries are listed in all survive
    it, and a run could carry a lucky result through them into its confirmation re-run or the next
    experiment. So every entry touched since `before` is made anew: a file is copied into a new inode
    (its git mode, executable or not, kept; holes stay holes), a link re-made, a folder re-made with its
    entries moved in, sorted, all made in a scratch folder of the harness's beside root (so nothing a
    folder holds, a default ACL, is inherited); an entry only read has its access time set back. Other
    kinds (FIFOs, sockets, devices), which git never lists, are removed. After a run the loop passes
    before=None: everything is made anew, so not even which entries were touched is left to read.
    Nothing untrusted runs while this does."""
    now = meta(root)
    folders = []
    scratch = tempfile.mkdtemp(prefix=".ouroboros-scrub-", dir=os.path.dirname(os.path.abspath(root)))
    try:
        _scrub(root, before, now, folders, scratch, remake_folders)
    finally:
        readfile.clear(scratch)
    return meta(root)


def _scrub(root: Path, before: Meta | None, now: Meta, folders: list, scratch: str, remake_folders: bool) -> None:
    for name, (ino, ctime, atime, _mtime, mode) in now.items():
        old = before.get(name) if before is not None else None
        path = os.path.join(root, name) if name else str(root)
        if old is not None and old[0] == ino and old[1] == ctime:
            if old[2] != atime:
                try:
                    os.utime(path, ns=(old[2], old[3]), follow_symlinks=False)
                except OSError:
                    pass
            continue
        perm = stat.S_IMODE(old[4] if old is not None and stat.S_IFMT(old[4]) == stat.S_IFMT(mode) else
                            (0o755 if stat.S_ISDIR(mode) else 0o644)) & 0o1777  # never setuid or setgid
        if stat.S_ISDIR(mode):
            folders.append((name, path, perm))
        elif stat.S_ISREG(mode):
            executable = mode & 0o100
            perm = (perm & ~0o111) | ((perm & 0o444) >> 2 if executable else 0)
            _anew(path, perm, _copy_into, scratch)
        elif stat.S_ISLNK(mode):
            _anew(path, None, lambda src, tmp: os.symlink(os.readlink(src), tmp), scratch)
        else:  # a FIFO, socket or device: git sees none, so no reset or clean removes one
            try:
                os.unlink(path)
            except OSError:
                pass
    for name, path, perm in sorted(folders, key=lambda f: -f[0].count("/") - (f[0] != "")):
        if remake_folders:
            _anew_folder(path, perm, scratch)
        else:
            _reset_folder(path, perm, before.get(name) if before is not None else None)


def _reset_folder(path: str, perm: int, old: tuple[int, int, int, int, int] | None) -> None:
    try:
        for key in os.listxattr(path, follow_symlinks=False):  # user.*, and ACLs (system.posix_acl_*)
            try:
                os.removexattr(path, key, follow_symlinks=False)
            except OSError:
                pass
        os.chmod(path, perm)
        if old is not None:
            os.utime(path, ns=(old[2], old[3]))
    except OSError:
        pass


def _copy_into(src: str, tmp: str) -> None:
    """A copy of src's bytes at tmp, holes kept as holes: what was sparse takes no more disk for the copy."""
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            size, pos = os.fstat(fd).st_size, 0
            while pos < size:
                try:
                    start = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError:  # ENXIO: nothing but a hole from pos on
                    break
                end = os.lseek(fd, start, os.SEEK_HOLE)
                while start < end:
                    data = os.pread(fd, min(end - start, 1 << 20), start)
                    if not data:
                        break
                    os.pwrite(out, data, start)
                    start += len(data)
                pos = end
            os.ftruncate(out, size)
        finally:
            os.close(out)
    finally:
        os.close(fd)


def _anew(path: str, perm: int | None, make: Callable[[str, str], None], scratch: str) -> None:
    """Replace path by a new inode made by make(path, tmp) in the harness's scratch folder (nothing the run set
    on a folder, a default ACL, is inherited there); owner kept where we may set it."""
    tmp = os.path.join(scratch, secrets.token_hex(8))
    try:
        st = os.lstat(path)
        make(path, tmp)
        if perm is not None:
            os.chmod(tmp, perm)
        if os.geteuid() == 0:
            os.chown(tmp, st.st_uid, st.st_gid, follow_symlinks=False)
        os.rename(tmp, path)
    except OSError:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _anew_folder(path: str, perm: int, scratch: str) -> None:
    """Re-make a folder: a new one made in the scratch folder, its entries moved in, the old one removed."""
    tmp = os.path.join(scratch, secrets.token_hex(8))
    try:
        st = os.lstat(path)
        os.mkdir(tmp, 0o700)
        for name in sorted(os.listdir(path)):
            os.rename(os.path.join(path, name), os.path.join(tmp, name))
        os.rmdir(path)
        os.rename(tmp, path)
        if os.geteuid() == 0:
            os.chown(path, st.st_uid, st.st_gid)
        os.chmod(path, perm)
    except OSError:  # put every entry back where it was
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            if not os.path.lexists(path):
                os.rename(tmp, path)
            else:
                for name in os.listdir(tmp):
                    os.rename(os.path.join(tmp, name), os.path.join(path, name))
                os.rmdir(tmp)


def _open_inside(root: Path, rel: str) -> int | None:
    """A descriptor of the folder rel under root, opened one component at a time with no link followed
    (a link in place of any folder on the way: None, so nothing outside root is ever touched)."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    for part in PurePosixPath(rel).parts:
        try:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = nxt
    return fd


def _lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    return [line + b"\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


PATCH_MAX_LINES = 20_000


def git_patch(prefix: str, old: dict[str, tuple[bytes, int]], new: dict[str, tuple[bytes, int]],
              paths: list[str]) -> str | None:
    """The patch `git diff --full-index` writes for text files modified in place (same mode), made
    without a git process: headers, full blob ids, hunks with three lines of context and git's
    default hunk headers (difflib's matching, so hunks may be cut where git's would not; `git apply`
    takes either). None where git must write it: a binary or non-UTF-8 file, a path git would
    quote, another kind of change."""
    out: list[str] = []
    for rel in sorted(paths):
        name = prefix + rel
        if rel not in old or rel not in new or old[rel][1] != new[rel][1] or not _PLAIN_PATH.match(name):
            return None
        a, b = old[rel][0], new[rel][0]
        if b"\0" in a[:8000] or b"\0" in b[:8000]:
            return None
        try:
            a_lines, b_lines = [x.decode() for x in _lines(a)], [x.decode() for x in _lines(b)]
        except UnicodeDecodeError:
            return None
        if a == b:
            continue
        if len(a_lines) > PATCH_MAX_LINES or len(b_lines) > PATCH_MAX_LINES:
            return None  # git's diff is linear where difflib's matching is not: a long file is git's to write
        ids = [hashlib.sha1(b"blob %d\0" % len(x) + x).hexdigest() for x in (a, b)]
        out.append(f"diff --git a/{name} b/{name}\nindex {ids[0]}..{ids[1]} {old[rel][1]:o}\n"
                   f"--- a/{name}\n+++ b/{name}\n")
        # autojunk: in a file of 200 lines or more, a line that makes up over 1% of it (blank lines,
        # comment rulers) is not matched on, which keeps the matching near-linear; small files match as git's
        matcher = difflib.SequenceMatcher(None, a_lines, b_lines)
        for group in matcher.get_grouped_opcodes(3):
            i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
            out.append(f"@@ -{_range(i1, i2)} +{_range(j1, j2)} @@{_funcname(a_lines, i1)}\n")
            for tag, k1, k2, m1, m2 in group:
                if tag == "equal":
                    out += [_line(" ", x) for x in a_lines[k1:k2]]
                    continue
                out += [_line("-", x) for x in a_lines[k1:k2]]
                out += [_line("+", x) for x in b_lines[m1:m2]]
    return "".join(out)


def _funcname(lines: list[str], start: int) -> str:
    """git's default hunk header context: the nearest line above the hunk that starts with a letter,
    `_` or `$`, cut at 79 bytes, trailing blanks dropped (a diff driver's own pattern is not used)."""
    for k in range(start - 1, -1, -1):
        line = lines[k]
        if line[:1].isascii() and (line[:1].isalpha() or line[:1] in "_$"):
            cut = line.encode()[:79].decode(errors="ignore").rstrip()
            return " " + cut
    return ""


def _range(start: int, stop: int) -> str:
    length = stop - start
    return f"{start + 1}" if length == 1 else f"{start + (1 if length else 0)},{length}"


def _line(mark: str, text: str) -> str:
    return mark + text if text.endswith("\n") else f"{mark}{text}\n\\ No newline at end of file\n"


CODE_SIZE_READ = 64 << 20  # per file: an agent's huge or endless file is measured by its first 64 MiB
CODE_SIZE_PACKED = 4 << 20  # bytes compressed; past this each byte counts as one (bounded time per experiment)


def code_size(root: Path, files: list[str]) -> int:
    """The size of the code that the simplicity rule compares: the LZMA-compressed bytes of every file
    listed (the editable files and the allowed new ones), names and contents, comments and whitespace
    included. Compression measures what the code says, not how it is laid out, so the same code
    folded into one line (`exec` of its own source), encoded, moved into a new file, or hidden in
    comments or whitespace that it reads back is no smaller; only removing something is."""
    blob = bytearray()
    for rel in sorted(files):  # regular files only, no link followed, at most 64 MiB read: an agent's link to a huge
        data = readfile.read_regular_bytes(root / rel, CODE_SIZE_READ)  # file or /proc/self/pagemap is not read
        if data is not None:
            blob += rel.encode("utf-8", "surrogateescape") + b"\0" + data + b"\0"
    data = bytes(blob[:CODE_SIZE_PACKED])
    # preset 9's 64 MiB dictionary costs ~40 ms to set up for a few kB; a dictionary as large as the input
    # finds every match it would, so the size is the same
    window = min(CODE_SIZE_PACKED, max(1 << 12, 1 << max(0, len(data) - 1).bit_length()))
    packed = lzma.compress(data, format=lzma.FORMAT_RAW,
                           filters=[{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": window}])
    return len(packed) + max(0, len(blob) - CODE_SIZE_PACKED)


MAX_PACKS = 40  # below git's gc.autoPackLimit (50), so the user's own next commit never starts a gc


def maintain(path: Path) -> None:
    """Pack what a run has added to the repository: its attempt refs into packed-refs, its loose objects
    (three per attempt) into one pack, and the packs into one when there are more than MAX_PACKS. The
    loop calls it every few hundred experiments, between experiments, so that neither `git` nor the
    harness slows down as refs pile up, and the user's next commit does not start git's auto-gc.
    Best effort: a repack another process holds a lock for is skipped until the next time."""
    git(path, "pack-refs", "--all", check=False)
    git(path, "repack", "-d", "-q", check=False)  # loose objects only: incremental, cheap
    packs = Path(git(path, "rev-parse", "--git-path", "objects/pack", check=False).strip() or ".")
    packs = packs if packs.is_absolute() else path / packs
    if len(list(packs.glob("*.pack"))) > MAX_PACKS:  # unreachable objects are kept, never dropped
        git(path, "repack", "-a", "-d", "-q", "--keep-unreachable", check=False)
