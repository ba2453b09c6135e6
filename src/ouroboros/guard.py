"""The guard: refuse a proposal that breaks the task's bound, before anything of it runs.

Protects against (each is attacked in tests/cheats/):
- changes outside the editable globs, and new files outside `allow_new_files`;
- any change to a protected file (the task file, the evaluator, danger zones), however it is made:
  the protected files are hashed against the baseline, not just asked of `git status`;
- frozen dependency files (pyproject.toml, requirements*.txt, uv.lock, setup.*);
- interpreter start-up hooks (sitecustomize.py, usercustomize.py, *.pth, conftest.py, .env) unless a
  glob names them explicitly;
- symlinks that leave the worktree or point at a protected file, and hardlinks of any kind;
- git history, config or hooks rewritten by the agent (HEAD must still be the best commit); changed
  config, hooks and info files are put back at once, so a planted hook never runs in the user's
  checkout (the harness's own git calls run with hooks switched off anyway);
- file names that are not UTF-8 (git and the harness address them byte for byte, but records,
  prompts and tools could not name them);
- any entry named `.git` inside the worktree, at any depth (git does not see files in a folder of
  that name, so they would escape the commit and the checks), and a replaced worktree `.git` file;
- diffs larger than `max_diff_lines`;
- filling the git object store through attempts: a new or changed file over `max_artifact_mb`, or
  more than that in all; a violating attempt is committed with only what the bound allows (the
  changes that broke no rule, while their sum fits the cap: `admitted`), the rest is `withheld` and
  named in its reason.

New files matching `[bound] ignore` (logs an agent leaves, e.g. run.log) are deleted, not judged.

`after` runs the file checks again once the run phase (and again once the evaluation) has ended,
without starting git: a protected file touched during the phase (even if put back byte for byte: its
inode change time moved), a `.git` entry, git config, hooks or HEAD changed are violations.

Does not protect against: what a run reads or sends at run time (sandbox.py's and isolation.py's
job), or a change that is within the rules but games the metric (the evaluator's and the judge's job).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import stat
from pathlib import Path

from ouroboros import readfile
from ouroboros.isolation import available
from ouroboros.ledger import HARNESS_LOCK, drop_planted, hold, planted, schema_version
from ouroboros.readfile import read_regular, remove_path
from ouroboros.task import Task, matches
from ouroboros.workspace import Workspace

MAX_DEPTH = 200  # folder levels the guard walks in one change; deeper is a violation
MAX_ENTRIES = 200_000  # entries the guard walks in one change; more is a violation

STARTUP_HOOKS = ("sitecustomize.py", "usercustomize.py", "*.pth", "conftest.py", ".env", ".pythonrc*")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Hashes:
    """File hashes with a stat cache, so unchanged large danger zones cost one stat each."""

    def __init__(self) -> None:
        self._cache: dict[Path | str, tuple[tuple[int, ...], str]] = {}

    def __call__(self, path: Path | str) -> str | None:
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):  # a link (to a file or not), a folder, a FIFO...: from the one lstat
            return f"not a regular file (mode {st.st_mode:o})"
        key = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        hit = self._cache.get(path)
        if hit and hit[0] == key:
            return hit[1]
        digest = _digest(path)
        self._cache[path] = (key, digest)
        return digest


def _stat_key(path: Path) -> tuple[int, ...] | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_ctime_ns, st.st_mtime_ns, st.st_size, st.st_mode, st.st_nlink)


def _named_git(root: Path) -> list[Path]:
    """Every entry named `.git` (any case) under root, root's own `.git` excepted; links not followed."""
    found, stack = [], [str(root)]
    while stack:
        top = stack.pop()
        try:
            with os.scandir(top) as it:
                for entry in it:
                    if entry.name.lower() == ".git":
                        if top != str(root) or entry.name != ".git":
                            found.append(Path(entry.path))
                    elif entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            pass
    return found


def _listing(root: str) -> list[tuple[str, bool]]:
    """Everything under root as (path, whether it is a file or a link to one) pairs, links not followed
    into; iterative (no recursion limit), and at most MAX_DEPTH levels and MAX_ENTRIES entries (what lies
    beyond is one entry, so a change there still differs from the snapshot). The git snapshot's walk,
    three times an experiment: no Path objects, no sort, and no stat per entry (the kind comes with the
    folder's listing; a link alone costs a stat, as Path.is_file does)."""
    found: list[tuple[str, bool]] = []
    stack = [(root, 0)]
    while stack:
        top, depth = stack.pop()
        if depth > MAX_DEPTH or len(found) > MAX_ENTRIES:
            found.append((os.path.join(top, "..."), False))
            continue
        try:
            with os.scandir(top) as it:
                entries = list(it)
        except OSError:
            continue
        for e in entries:
            try:
                is_file, is_dir = e.is_file(), e.is_dir(follow_symlinks=False)
            except OSError:
                is_file, is_dir = False, False
            found.append((e.path, is_file))
            if is_dir:
                stack.append((e.path, depth + 1))
    return found


def _utf8(name: str) -> bool:
    """Whether a path read with surrogateescape (git's output, os.fsdecode) was valid UTF-8 bytes."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _hook_named(rel: str, patterns: list[str]) -> bool:
    """Whether a glob names this start-up hook itself, not merely a wildcard that happens to match."""
    base = os.path.basename(rel)
    return any(os.path.basename(p) == base or p == rel for p in patterns)


class Guard:
    """Created once per run from the baseline worktree; `check` before every run of a proposal."""

    unsafe: list[Path] = []
    withheld: list[str] = []
    admitted: list[str] | None = None
    note = ""
    _bytes = 0

    def __init__(self, task: Task, ws: Workspace):
        self.task, self.ws = task, ws
        self.hash = _Hashes()
        self.protected = {rel: self.hash(ws.task_dir / rel) for rel in task.protected_files(ws.task_dir)}
        self._stats: dict[str, tuple[int, ...] | None] = {}
        self._git_dirs = self._git_paths()
        self.git_state = self._git_snapshot()
        self._git_files = {p: (Path(p).read_bytes(), Path(p).stat().st_mode) for p, h in self.git_state.items()
                           if h not in (None, "dir") and Path(p).is_file() and not Path(p).is_symlink()}

    def save(self, path: Path) -> None:
        """Keep the baseline's hashes and git files, for guards made later in other processes
        (`ouroboros exp`), when the worktree and .git may already have been changed."""
        files = {p: [base64.b64encode(data).decode(), mode] for p, (data, mode) in self._git_files.items()}
        path.write_text(json.dumps({"protected": self.protected, "git_state": self.git_state, "git_files": files}))

    def load(self, path: Path) -> None:
        data = json.loads(path.read_text())
        self.protected, self.git_state = data["protected"], data["git_state"]
        self._git_files = {p: (base64.b64decode(d), mode) for p, (d, mode) in data.get("git_files", {}).items()}

    def _git_paths(self) -> list[Path]:
        gitdir, common = self.ws._gitdirs()
        return [common / "config", common / "hooks", common / "info", gitdir / "config.worktree"]

    def _git_snapshot(self) -> dict[str, str | None]:
        state: dict[str, str | None] = {}
        for path in self._git_dirs:
            if path.is_dir():
                for child, is_file in _listing(str(path)):
                    state[child] = self.hash(child) if is_file else "dir"
            else:
                state[str(path)] = self.hash(path)
        return state

    def head(self) -> str | None:
        return self.ws.head()

    def _restore_git(self) -> None:
        """Put git's config, hooks and info back as they were: a planted hook must never run."""
        now = self._git_snapshot()
        for path in sorted(set(now) - set(self.git_state), reverse=True):  # children before parents
            remove_path(Path(path))  # however deep (shutil.rmtree recurses once a level)
        for path, digest in self.git_state.items():
            p = Path(path)
            if digest == "dir":
                if p.is_symlink() or not p.is_dir():
                    p.unlink(missing_ok=True)
                p.mkdir(parents=True, exist_ok=True)
            elif path in self._git_files and now.get(path) != digest:
                data, mode = self._git_files[path]
                if p.is_symlink() or p.is_dir():
                    remove_path(p)
                p.write_bytes(data)
                os.chmod(p, mode & 0o7777)
            elif digest is None and now.get(path) is not None:
                remove_path(p)

    def check(self, best_commit: str) -> list[str]:
        """Every way the current worktree breaks the bound; empty when the proposal may run."""
        task, bound = self.task, self.task.bound
        out: list[str] = []
        head = self.head()
        if head != best_commit:
            out.append(f"HEAD moved from {best_commit[:8]} to {(head or '?')[:8]}: the harness owns git history")
        if self._git_snapshot() != self.git_state:
            out.append("git config, hooks or info changed: the harness owns .git (put back as it was)")
            self._restore_git()
        out += self._git_entries()
        for rel, digest in self.protected.items():
            if self.hash(self.ws.task_dir / rel) != digest:
                out.append(f"protected file {rel} changed (it must stay byte-identical to the baseline)")
        self.unsafe: list[Path] = []  # entries that must not reach git: removed before the attempt is committed
        self.withheld: list[str] = []  # changes kept out of the attempt's commit (each broke the bound)
        self.admitted: list[str] | None = None  # what the commit may hold when something is withheld
        self.note = ""
        cap = int(bound.max_artifact_mb * 2**20)
        sized: list[tuple[str, int]] = []  # (rel, bytes) of each change that broke nothing by itself
        total = 0
        changes = self.changes = self._drop_ignored(self.ws.changes())
        for change in changes:
            rel = change.path
            path = self.ws.task_dir / rel
            new = change.status in ("??", "!!")
            before, self._bytes, withhold = len(out), 0, False
            if change.status != "!!" and not _utf8(rel):
                out.append(f"the file name {ascii(os.fsencode(rel))[1:]} is not UTF-8 (records, prompts and tools "
                           "name files in UTF-8)")
            if change.status == "!!" and not task.is_protected(rel):
                # Ignored files (caches, build output) are deleted before the run; only the ones
                # that could act at start-up or alias another file matter.
                if any(fnmatch.fnmatch(os.path.basename(rel.rstrip("/")), h) for h in STARTUP_HOOKS):
                    out.append(f"{rel} is an interpreter start-up hook (hidden by .gitignore)")
                out.extend(self._links(rel.rstrip("/"), self.ws.task_dir / rel.rstrip("/")))
                continue
            if rel.startswith("../"):
                out.append(f"{rel[3:]} is outside the task folder")
            elif task.is_protected(rel):
                if rel not in self.protected:
                    out.append(f"{rel} is protected")
                elif self.hash(path) == self.protected[rel]:  # same bytes, but git sees a change: its mode
                    out.append(f"protected file {rel} changed its mode (it must stay as in the baseline)")
                else:  # already named above ("protected file ... changed"): only kept out of the commit
                    withhold = True
            elif matches(rel, bound.frozen):
                out.append(f"{rel} is a frozen dependency file")
            elif any(fnmatch.fnmatch(os.path.basename(rel), h) for h in STARTUP_HOOKS) and not _hook_named(
                    rel, task.task.editable + bound.allow_new_files):
                out.append(f"{rel} is an interpreter start-up hook; name it in editable to allow it")
            elif new and not (task.is_editable(rel) or matches(rel, bound.allow_new_files)):
                out.append(f"new file {rel} is not allowed (editable: {', '.join(task.task.editable)}"
                           + (f"; allow_new_files: {', '.join(bound.allow_new_files)})" if bound.allow_new_files
                              else ")"))
            elif not new and not task.is_editable(rel):
                out.append(f"{rel} is not editable (editable: {', '.join(task.task.editable)})")
            out.extend(self._links(rel, path, cap=cap))
            total += self._bytes
            if len(out) > before or withhold:
                self.withheld.append(rel.rstrip("/"))
            else:
                sized.append((rel.rstrip("/"), self._bytes))
        if total > cap:
            # Each file under the cap, but many of them: the sum is what the git object store keeps.
            out.append(f"the attempt's new and changed files hold {total / 2**20:.1f} MB in all, more than "
                       f"max_artifact_mb={bound.max_artifact_mb:g}")
        if out and (self.withheld or total > cap):
            # A violating attempt is still committed (its record), but only with what the bound
            # allows: files that broke no rule, in path order, while their sum stays under the cap.
            self.admitted, room = [], cap
            for rel, size in sorted(sized):
                if size <= room:
                    self.admitted.append(rel)
                    room -= size
                else:
                    self.withheld.append(rel)
            if self.withheld:
                shown = sorted(r if _utf8(r) else ascii(os.fsencode(r))[2:-1] for r in self.withheld)
                self.note = "not committed: " + ", ".join(shown[:10]) + (
                    f" and {len(shown) - 10} more" if len(shown) > 10 else "")
                out.append(self.note)
        if bound.max_diff_lines is not None and changes:
            lines = self._diff_lines(changes)
            if lines > bound.max_diff_lines:
                out.append(f"the diff has {lines} lines, more than max_diff_lines={bound.max_diff_lines}")
        return out

    def _git_entries(self) -> list[str]:
        """A replaced worktree `.git` file, and any other entry named `.git` (removed at once: git
        cannot see inside one, so it would survive the revert)."""
        out = []
        if self.ws.restore_dotgit():
            out.append("the worktree's .git file was replaced: the harness owns git (put back)")
        for path in _named_git(self.ws.path):
            rel = path.relative_to(self.ws.path).as_posix()
            out.append(f"{rel} is named .git: no file or folder of that name may be written in the worktree")
            remove_path(path)
        return out

    def arm(self) -> None:
        """Note the protected files' and the records' inodes and change times just before a phase starts."""
        self._stats = {rel: _stat_key(self.ws.task_dir / rel) for rel in self.protected}
        self._record_keys = {p: _stat_key(p) for p in self._records()}
        self._schema = schema_version(self.ws.records) if self._records_reachable() else None

    _record_keys: dict[Path, tuple[int, ...] | None] = {}
    _lock_fd: int | None = None

    def _hold_again(self) -> None:
        fd = hold(self.ws.records / "runs" / self.ws.tag)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        self._lock_fd = fd

    _schema: int | None = None

    def _records(self) -> list[Path]:
        """The run's own records that no phase writes (the harness writes them between phases): at level process
        a run reaches them (docs/security.md), at bwrap and unshare they are masked. Not the ledger itself,
        which other runs of the task (a study's repeats) write at any time: its schema is checked instead."""
        records = getattr(self.ws, "records", None)
        if records is None:
            return []
        run_dir = records / "runs" / self.ws.tag
        return [run_dir / "results.tsv", run_dir / HARNESS_LOCK]

    def _records_reachable(self) -> bool:
        """Whether this run's phases can reach the records: level process, asked for or the only one here."""
        level = self.task.bound.isolation
        return getattr(self.ws, "records", None) is not None and (
            level == "process" or (level == "auto" and not any(available(lv) for lv in ("bwrap", "unshare"))))

    def after(self, phase: str, best_commit: str) -> list[str]:
        """The bound after a phase (run or evaluate) ended, checked from files alone (no git)."""
        readfile.reopen(self.ws.path)  # what the phase closed (mode 000) is seen, judged and cleaned like the rest
        out: list[str] = []
        head = self.head()
        if head != best_commit:
            out.append(f"HEAD moved from {best_commit[:8]} to {(head or '?')[:8]} during the {phase}")
        if self._git_snapshot() != self.git_state:
            out.append(f"git config, hooks or info changed during the {phase} (put back as it was)")
            self._restore_git()
        out += [f"{v} (during the {phase})" for v in self._git_entries()]
        touched = [p.name for p, key in self._record_keys.items() if _stat_key(p) != key]
        if self._schema is not None and schema_version(self.ws.records) != self._schema and planted(self.ws.records):
            touched.append("an index, trigger or view in ledger.sqlite")  # it would fail or forge the next write
            drop_planted(self.ws.records)
        if touched:
            out.append(f"the records ({', '.join(touched)}) were written during the {phase}")
            if HARNESS_LOCK in touched:  # a lock file put in its place: held again, or readers think the run dead
                self._hold_again()
        for rel, digest in self.protected.items():
            path = self.ws.task_dir / rel
            if self._stats and _stat_key(path) != self._stats.get(rel):
                out.append(f"protected file {rel} was touched during the {phase} (it must not be written, "
                           "even if put back)")
            elif self.hash(path) != digest:
                out.append(f"protected file {rel} changed during the {phase}")
        return out

    def _drop_ignored(self, changes: list) -> list:
        """New files matching `[bound] ignore` (run.log, results.tsv...) are deleted, not judged."""
        if not self.task.bound.ignore:
            return changes
        kept = []
        for change in changes:
            rel = change.path.rstrip("/")
            if change.status in ("??", "!!") and not rel.startswith("../") and matches(rel, self.task.bound.ignore):
                remove_path(self.ws.task_dir / rel)
            else:
                kept.append(change)
        return kept

    def _links(self, rel: str, path: Path, cap: int | None = None) -> list[str]:
        """Links that leave the worktree or alias a protected file, hardlinks, and anything that is
        not a regular file, a folder or a link (FIFOs, sockets, devices), under path. Walked with an
        explicit stack (no recursion: a folder nested past Python's recursion limit is just deep),
        and a tree deeper than MAX_DEPTH or larger than MAX_ENTRIES is itself a violation."""
        bad: list[str] = []
        stack = [(rel, path, 0)]
        seen = 0
        while stack:
            rel, path, depth = stack.pop()
            seen += 1
            if seen > MAX_ENTRIES:
                return bad + [f"{rel}: more than {MAX_ENTRIES} entries in one change (not walked further)"]
            if depth > MAX_DEPTH:
                return bad + [f"{rel}: folders nested deeper than {MAX_DEPTH} levels"]
            try:
                st = path.lstat()
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                bad += self._link(rel, path)
            elif stat.S_ISREG(st.st_mode):
                self._bytes += st.st_size
                if st.st_nlink > 1:
                    bad.append(f"{rel} is a hardlink ({st.st_nlink} names): links may not alias other files")
                if cap is not None and st.st_size > cap:
                    bad.append(f"{rel} is {st.st_size / 2**20:.1f} MB, more than max_artifact_mb="
                               f"{cap / 2**20:g} (not committed)")
                    self.unsafe.append(path)
            elif stat.S_ISDIR(st.st_mode):
                try:
                    with os.scandir(path) as it:
                        names = sorted(e.name for e in it)
                except OSError as exc:
                    bad.append(f"{rel} cannot be read ({exc.strerror})")
                    continue
                stack.extend((f"{rel}/{n}", path / n, depth + 1) for n in reversed(names))
            else:
                bad.append(f"{rel} is not a regular file, folder or link (mode {st.st_mode:o})")
                self.unsafe.append(path)
        return bad

    def _link(self, rel: str, path: Path) -> list[str]:
        target = Path(os.path.realpath(path))
        root = self.ws.path.resolve()
        if root not in target.parents and target != root:
            return [f"{rel} is a symlink that leaves the worktree ({os.readlink(path)})"]
        inside = target.relative_to(self.ws.task_dir.resolve()).as_posix() \
            if self.ws.task_dir.resolve() in target.parents else None
        if inside is None or self.task.is_protected(inside):
            return [f"{rel} is a symlink to a protected or outside file ({os.readlink(path)})"]
        return []

    def _diff_lines(self, changes: list) -> int:
        total = 0
        for line in self.ws.git("diff", "--numstat", "HEAD").splitlines():
            added, deleted, _ = line.split("\t", 2)
            total += int(added) + int(deleted) if added.isdigit() and deleted.isdigit() else 0
        cap = int(self.task.bound.max_artifact_mb * 2**20)
        for change in changes:
            if change.status in ("??", "!!"):  # a regular file only, bounded: never a link to a FIFO or /dev/zero
                total += len((read_regular(self.ws.task_dir / change.path, cap) or "").splitlines())
        return total
