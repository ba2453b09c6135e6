"""Reading a git repository that a version's harness wrote, without letting it steer git.

The inner runs' repos (the delta benchmark's, the gate's) are written by the candidate's confined
runner: their config, hooks, info, refs and object store are the candidate's. git reads a repo's own
config on every call, and a config can make git run commands (a partial clone's promisor remote
fetches a missing object lazily with its `uploadpack` command; an fsmonitor, a hook). So git never
opens these repos: every call runs in a trusted, empty git dir of this process (no system or global
config), which borrows the inner repo's objects as an alternate (GIT_ALTERNATE_OBJECT_DIRECTORIES);
commit-graph and multi-pack-index files are not read (parents come from the commits themselves). Refs
are read here, as files, without git. The object store must hold only folders and regular files (a
FIFO would block git's open, a link reads elsewhere) and no alternates of its own; every call is
bounded in time.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from ouroboros.errors import OuroborosError
from ouroboros.readfile import read_regular
from ouroboros.task import first_link
from ouroboros.workspace import git_env

SHA = re.compile(r"[0-9a-f]{40}")
GIT_TIMEOUT = 120  # seconds for one git call on a small inner repo; a hang is a refusal
MAX_ENTRIES = 200_000  # entries in an inner object store (a real one holds a few hundred)
_SAFE = ["-c", "core.commitGraph=false", "-c", "core.multiPackIndex=false", "-c", "core.hooksPath=/dev/null",
         "-c", "core.fsmonitor=false", "-c", "gc.auto=0", "-c", "maintenance.auto=false", "-c", "core.pager=cat"]


@functools.cache
def _trusted_gitdir() -> Path:
    """An empty bare repository of this process's own (removed at exit)."""
    path = Path(tempfile.mkdtemp(prefix="ouroboros-evidence-"))
    atexit.register(shutil.rmtree, path, True)
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True, capture_output=True, env=git_env(),
                   stdin=subprocess.DEVNULL, timeout=GIT_TIMEOUT)
    return path


def _quote(path: str) -> str:
    """A path as one entry of GIT_ALTERNATE_OBJECT_DIRECTORIES (C-quoted: a colon cannot split it)."""
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class InnerRepo:
    """A repo at `repo` (its `.git` folder) written by a version's harness, read as evidence only."""

    def __init__(self, repo: Path):
        self.repo = repo
        self.gitdir = repo / ".git"
        self.objects = self.gitdir / "objects"
        for folder in (self.gitdir, self.objects):
            try:
                mode = os.lstat(folder).st_mode
            except OSError:
                raise OuroborosError(f"{repo.name}: no git repository was left in it") from None
            if not stat.S_ISDIR(mode):
                raise OuroborosError(f"{repo.name}: {folder.relative_to(repo)} is not a folder")
        self._check_objects()

    def _check_objects(self) -> None:
        seen, stack = 0, [self.objects]
        while stack:
            folder = stack.pop()
            with os.scandir(folder) as it:
                for entry in it:
                    seen += 1
                    rel = Path(entry.path).relative_to(self.objects).as_posix()
                    if seen > MAX_ENTRIES:
                        raise OuroborosError(f"{self.repo.name}: more than {MAX_ENTRIES} entries in its object store")
                    if rel in ("info/alternates", "info/http-alternates"):
                        raise OuroborosError(f"{self.repo.name}: its object store borrows another ({rel})")
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif not entry.is_file(follow_symlinks=False):
                        raise OuroborosError(f"{self.repo.name}: objects/{rel!r} is not a regular file")

    def ref(self, name: str, depth: int = 0) -> str | None:
        """The commit a ref names (HEAD, refs/...), read from the files (loose, then packed-refs); None if none.
        Only HEAD and names under refs/ without `..` are followed: a candidate's `ref: /etc/x` reads nothing."""
        if name != "HEAD" and (not name.startswith("refs/") or ".." in name.split("/") or "\0" in name):
            return None
        if first_link(self.gitdir, self.gitdir / name) is not None:  # refs -> somewhere outside: nothing read
            return None
        text = read_regular(self.gitdir / name, 4096)
        if text is not None:
            value = text.strip()
            if value.startswith("ref: ") and depth < 5:
                return self.ref(value[5:].strip(), depth + 1)
            return value if SHA.fullmatch(value) else None
        packed = read_regular(self.gitdir / "packed-refs", 16 << 20) or ""
        for line in packed.splitlines():
            sha, _, ref = line.partition(" ")
            if ref == name and SHA.fullmatch(sha):
                return sha
        return None

    def git(self, *args: str, check: bool = True) -> str:
        """git on the inner repo's objects, from the trusted empty git dir (no config, refs or hooks of its own)."""
        trusted = _trusted_gitdir()
        env = {**git_env(), "GIT_DIR": str(trusted), "GIT_ALTERNATE_OBJECT_DIRECTORIES": _quote(str(self.objects)),
               "GIT_NO_LAZY_FETCH": "1"}
        try:
            proc = subprocess.run(["git", *_SAFE, *args], capture_output=True, env=env, cwd=trusted,
                                  stdin=subprocess.DEVNULL, timeout=GIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise OuroborosError(f"{self.repo.name}: git {args[0]} on its objects ran past {GIT_TIMEOUT} s") from None
        if check and proc.returncode != 0:
            raise OuroborosError(f"{self.repo.name}: git {args[0]} failed: "
                                 f"{proc.stderr.decode(errors='replace').strip()[-200:]}")
        return proc.stdout.decode(errors="replace")
