"""Git for a run: one worktree and branch per run, attempt commits, keep and revert.

The user's checkout is never touched: a run works in `.ouroboros/runs/<tag>/worktree` on branch
`ouroboros/<tag>`, and every attempt's commit stays reachable under `refs/ouroboros/<tag>/<n>`.
Git runs through the CLI with hooks, signing and the user's identity switched off, so that nothing
in the repo's config (or planted in it by a proposal) runs when the harness commits.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ouroboros.errors import OuroborosError
from ouroboros.ledger import clean_text
from ouroboros.task import RECORDS_DIR

_SAFE = ["-c", "core.hooksPath=/dev/null", "-c", "commit.gpgsign=false", "-c", "user.name=ouroboros",
         "-c", "user.email=ouroboros@localhost", "-c", "core.fsmonitor=false", "-c", "gc.auto=0"]


_GIT = shutil.which("git") or "git"


def git(cwd: Path, *args: str, check: bool = True, input: str | None = None) -> str:
    # An absolute executable, no cwd= and close_fds=False let CPython use posix_spawn instead of
    # fork: a few milliseconds saved per call, and the loop makes several calls per experiment.
    try:
        proc = subprocess.run([_GIT, "-C", str(cwd), *_SAFE, *args], capture_output=True, text=True, input=input,
                              close_fds=False)
    except FileNotFoundError as exc:
        raise OuroborosError("git is not installed; install it (apt-get install git)") from exc
    if check and proc.returncode != 0:
        raise OuroborosError(f"git {' '.join(args[:3])} failed in {cwd}: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout


def repo_root(path: Path) -> Path:
    out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path, capture_output=True, text=True)
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
    text = exclude.read_text() if exclude.exists() else ""
    if f"/{RECORDS_DIR}/" not in text.split("\n") and f"{RECORDS_DIR}/" not in text.split("\n"):
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text(text + ("" if text.endswith("\n") or not text else "\n") + f"{RECORDS_DIR}/\n")


def ensure_clean(repo: Path, sub: str = ".") -> str:
    """The HEAD commit of a clean checkout; a dirty tree is an error, since a run starts from HEAD."""
    if not git(repo, "rev-parse", "--verify", "-q", "HEAD", check=False).strip():
        raise OuroborosError(f"{repo} has no commits; commit the task first: git add -A && git commit -m baseline")
    dirty = git(repo, "status", "--porcelain", "--", sub).splitlines()
    if dirty:
        raise OuroborosError(f"the working tree has uncommitted changes ({len(dirty)} paths, e.g. "
                             f"{dirty[0][3:]}); a run starts from HEAD, so commit or stash them first")
    return git(repo, "rev-parse", "HEAD").strip()


@dataclass
class Change:
    status: str  # two porcelain letters, e.g. " M", "??", " D", "R "
    path: str  # relative to the task folder, posix


class Workspace:
    """The run's worktree. `task_rel` is the task folder inside the repo ('.' for the root)."""

    def __init__(self, repo: Path, task_rel: str, records: Path, tag: str):
        self.repo, self.task_rel, self.tag = repo, task_rel, tag
        self.path = records / "runs" / tag / "worktree"
        self.branch = f"ouroboros/{tag}"

    @property
    def task_dir(self) -> Path:
        return self.path / self.task_rel

    def git(self, *args: str, check: bool = True) -> str:
        return git(self.path, *args, check=check)

    def open(self, base: str) -> None:
        """Create the worktree on a new branch at base, or reattach to an existing run's branch."""
        if (self.path / ".git").exists():
            return
        has_branch = git(self.repo, "rev-parse", "--verify", "-q", f"refs/heads/{self.branch}", check=False).strip()
        git(self.repo, "worktree", "prune")
        if has_branch:
            git(self.repo, "worktree", "add", "-f", str(self.path), self.branch)
        else:
            git(self.repo, "worktree", "add", "-f", "-b", self.branch, str(self.path), base)

    def remove(self) -> None:
        git(self.repo, "worktree", "remove", "--force", str(self.path), check=False)

    def _gitdirs(self) -> tuple[Path, Path]:
        """The worktree's own git dir and the repository's common dir."""
        dotgit = self.path / ".git"
        gitdir = Path(dotgit.read_text().split(":", 1)[1].strip()) if dotgit.is_file() else dotgit
        common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve() \
            if (gitdir / "commondir").exists() else gitdir
        return gitdir, common

    def head(self) -> str:
        """HEAD's commit, read from git's files: no subprocess on the loop's hot path."""
        try:
            gitdir, common = self._gitdirs()
            head = (gitdir / "HEAD").read_text().strip()
            if not head.startswith("ref: "):
                return head
            ref = head[5:]
            if (common / ref).exists():
                return (common / ref).read_text().strip()
            for line in (common / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
        except OSError:
            pass
        return self.git("rev-parse", "HEAD").strip()

    def changes(self) -> list[Change]:
        """Every path that differs from HEAD, untracked and ignored files included.

        Ignored files count: a proposal could otherwise hide a start-up hook behind .gitignore.
        """
        out = self.git("status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignored=matching",
                       "--no-renames")
        prefix = "" if self.task_rel in ("", ".") else self.task_rel.rstrip("/") + "/"
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

    def commit(self, message: str, n: int, untracked: bool = True) -> str:
        """Commit everything in the worktree and pin it under refs/ouroboros/<tag>/<n>.

        With untracked=False (the caller saw no new files) one `commit -a` does the add too.
        """
        if untracked:
            self.git("add", "-A")
        # The message goes by file (stdin), cleaned: agent text is data, never an argument (a NUL in
        # argv cannot even be passed) or an option.
        git(self.path, "commit", "-q", "--no-verify", "--allow-empty", *(() if untracked else ("-a",)),
            "--cleanup=verbatim", "-F", "-", input=clean_text(message).strip() or f"experiment {n}")
        sha = self.head()
        self.pin(n, sha)
        return sha

    def pin(self, n: int, sha: str) -> None:
        self.git("update-ref", f"refs/ouroboros/{self.tag}/{n}", sha)

    def rewind(self, commit: str) -> None:
        """Put the run's branch back at commit, and HEAD on it, leaving the files as they are: an agent
        that committed or switched branches still gets its change recorded as an attempt."""
        self.git("symbolic-ref", "HEAD", f"refs/heads/{self.branch}")
        self.git("reset", "-q", "--soft", commit)

    def reset(self, commit: str) -> None:
        """Make the worktree exactly `commit`: tracked files reset, untracked and ignored files gone."""
        self.git("reset", "-q", "--hard", commit)
        self.clean()

    def clean(self) -> None:
        self.git("clean", "-q", "-ffdx")

    def diff(self, a: str, b: str) -> str:
        return self.git("diff", "--no-color", "--no-ext-diff", a, b)

    def show(self, commit: str, path: str) -> bytes:
        rel = path if self.task_rel in ("", ".") else f"{self.task_rel.rstrip('/')}/{path}"
        proc = subprocess.run(["git", "show", f"{commit}:{rel}"], cwd=self.path, capture_output=True)
        if proc.returncode != 0:
            raise OuroborosError(f"{path} is not in commit {commit[:8]}")
        return proc.stdout

    def restore(self, commit: str, paths: list[str]) -> None:
        """Put back the given task-relative files exactly as they were in commit."""
        if paths:
            prefix = "" if self.task_rel in ("", ".") else self.task_rel.rstrip("/") + "/"
            self.git("checkout", commit, "--", *[prefix + p for p in paths])


def count_loc(root: Path, files: list[str]) -> int:
    """Lines of code: non-blank lines that are not only a comment. The simplicity rule compares these."""
    total = 0
    for rel in files:
        try:
            text = (root / rel).read_text(errors="replace")
        except OSError:
            continue
        total += sum(1 for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    return total
