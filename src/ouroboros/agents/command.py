"""`cmd:<shell command>`: any program that edits files, run in the worktree once per experiment.

The program gets, in its environment:
    OUROBOROS_PROMPT       path of the assembled prompt (program, rules, files, results, last failure)
    OUROBOROS_DESCRIPTION  path where it may write a one-line description of its change
    OUROBOROS_EXPERIMENT   the experiment number
    OUROBOROS_NOTES        path of the notes file it may keep across experiments
    OUROBOROS_ARTIFACTS    a folder for files it wants to keep across experiments
Its output goes to the experiment's agent.log. A non-zero exit or a run past the agent timeout
fails the proposal (recorded as a crash with the reason), and the loop goes on.

Confinement: where the run has bubblewrap, the program runs in the run's sandbox (phase "agent"):
with the network and its environment (its key), but with only the worktree and the files above
writable, its own config folders in $HOME (`home_dirs`) as private copies made for the proposal (only
a refreshed login goes back: `HomeCopy`), and the records, the user's checkout, the repository's git
dir and the rest of $HOME invisible. Files named by absolute path in the command and the folders on
its PATH are visible read-only. Without bubblewrap it runs with the user's rights, and the run says so.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import tempfile
import time
from pathlib import Path

from ouroboros import readfile, sandbox
from ouroboros.agents.base import Agent, AgentError, Context, Proposal
from ouroboros.readfile import read_regular_bytes

NOTES_FILE = "notes.md"
TRUNCATED = "[... older notes dropped: notes.md is kept under {max} characters ...]\n"


def bound_notes(path: Path, max_chars: int) -> None:
    """Keep the agent's notes under max_chars: the newest text survives, behind a marker."""
    if not path.exists():
        return
    text = path.read_text(errors="replace")
    if len(text) <= max_chars:
        return
    marker = TRUNCATED.format(max=max_chars)
    keep = text[len(text) - max(0, max_chars - len(marker)):]
    cut = keep.find("\n")  # start at a line boundary where there is one
    if 0 <= cut < len(keep) // 2:
        keep = keep[cut + 1:]
    path.write_text(marker + keep)


# What an installation needs beside its folder of programs: libraries (npm's lib/node_modules, a venv's
# site-packages), helpers (pyenv's libexec), the versions that shims point into and pyenv's choice among
# them (its `version` file: without it every shim answers "command not found"), a venv's pyvenv.cfg.
_INSTALL_PARTS = ("lib", "lib64", "libexec", "versions", "version", "pyvenv.cfg")


def _tool_folder(folder: Path) -> list[Path]:
    """A folder of programs and, for a `bin` or pyenv's `shims`, the installation parts beside it."""
    out = [folder]
    if folder.name in ("bin", "shims"):
        out += [folder.parent / part for part in _INSTALL_PARTS if (folder.parent / part).exists()]
    return out


# A private copy of a CLI's config folders: files above this size are left out (caches, histories).
COPY_FILE_MAX = 16 << 20
COPY_TOTAL_MAX = 256 << 20
LOGIN_MAX = 64 << 10


class HomeCopy:
    """Private copies of a confined program's config folders in $HOME, made for one proposal and bound at their
    places in the sandbox's private $HOME, so the program finds its settings and login and writes what it likes,
    but nothing it writes (a hook in settings.json, an MCP server, a notify command, a poisoned cache) reaches
    the real folders, which the CLI reads unconfined at its next start. Only the login files (`logins`: a
    refreshed OAuth token) go back, and only as a JSON object of at most 64 KiB of the same shape (the same keys at
    every depth, lists of the same length, every value of the same type: a refresh changes values, nothing else),
    over a file that existed and that nothing else changed meanwhile."""

    def __init__(self, names: tuple[str, ...], skip: tuple[str, ...] = (), logins: tuple[str, ...] = ()):
        self.home = Path(os.path.expanduser("~"))
        self.root = Path(tempfile.mkdtemp(prefix="ouroboros-agent-home-"))  # mode 0700: it holds logins
        self.binds: list[tuple[Path, Path]] = []
        self._left = COPY_TOTAL_MAX
        self._before = {rel: _read_login(Path(os.path.realpath(self.home / rel))) for rel in logins}
        for name in names:
            src, dest = self.home / name, self.root / name
            try:
                if src.is_dir():
                    shutil.copytree(src, dest, ignore=self._ignore(src, skip), ignore_dangling_symlinks=True)
                elif src.is_file() and src.stat().st_size <= COPY_FILE_MAX:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dest)
                else:
                    continue
            except (OSError, shutil.Error):
                if not dest.exists():  # a partial copy is still the program's to use; none, nothing to bind
                    continue
            self.binds.append((dest, src))

    def _ignore(self, top: Path, skip: tuple[str, ...]):
        def ignore(folder: str, names: list[str]) -> set[str]:
            out = {n for n in names if Path(folder) == top and n in skip}
            for n in names:
                try:
                    st = os.stat(os.path.join(folder, n))  # links followed: their targets are outside the sandbox
                except OSError:
                    out.add(n)
                    continue
                if stat.S_ISDIR(st.st_mode):
                    continue
                if not stat.S_ISREG(st.st_mode) or st.st_size > min(COPY_FILE_MAX, self._left):
                    out.add(n)  # FIFOs, sockets (a copy would block on them), caches too large to copy
                elif n not in out:
                    self._left -= st.st_size
            return out

        return ignore

    def give_back(self) -> None:
        """Copy each login the program refreshed back to its real place (atomically, mode 0600)."""
        for rel, before in self._before.items():
            real = Path(os.path.realpath(self.home / rel))
            after = _read_login(self.root / rel)
            if before is None or after is None or after == before or _read_login(real) != before:
                continue
            try:
                old, new = json.loads(before), json.loads(after)
                if not isinstance(old, dict) or not _same_shape(old, new):
                    continue
            except (ValueError, RecursionError):  # nested past json's (or the comparison's) depth
                continue
            tmp = real.with_name(f".{real.name}.ouroboros-{os.getpid()}")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(after)
                os.replace(tmp, real)
            except OSError:
                tmp.unlink(missing_ok=True)

    def remove(self) -> None:
        readfile.clear(self.root)


def _same_shape(old: object, new: object) -> bool:
    """Whether new has old's JSON shape: same keys at every depth, same list lengths, same value types
    (a null stays null: an API key where there was none is not a refresh)."""
    if type(old) is not type(new):
        return False
    if isinstance(old, dict):
        return old.keys() == new.keys() and all(_same_shape(old[k], new[k]) for k in old)
    if isinstance(old, list):
        return len(old) == len(new) and all(_same_shape(a, b) for a, b in zip(old, new, strict=True))
    return True


def _read_login(path: Path) -> bytes | None:
    """A login file's bytes: a regular file (no link, FIFO or device) of at most LOGIN_MAX bytes, else None."""
    return read_regular_bytes(path, LOGIN_MAX, whole=True)


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    """{path: (size, mtime_ns)} of every entry under folder, links not followed."""
    out: dict[str, tuple[int, int]] = {}
    stack = [str(folder)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    out[entry.path] = (st.st_size, st.st_mtime_ns)
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            pass
    return out


def _drop_new(folder: Path, kept: dict[str, tuple[int, int]]) -> None:
    """Remove every entry under folder that is not in `kept` as it was (new or changed files, folders)."""
    now = _listing(folder)
    for path in sorted(now, key=len, reverse=True):  # children before their folders
        if path in kept and (now[path] == kept[path] or os.path.isdir(path) and not os.path.islink(path)):
            continue
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                readfile.clear(path)
            else:
                os.unlink(path)
        except OSError:
            pass


class CommandAgent(Agent):
    def __init__(self, command: str, timeout: float | None = None, name: str | None = None):
        if not command.strip():
            raise AgentError("cmd: needs a command, e.g. --agent 'cmd:python my_agent.py'")
        self.command, self.timeout = command, timeout
        self.name = name or f"cmd:{command}"

    def env(self, ctx: Context, prompt_path: Path, desc_path: Path) -> dict[str, str]:
        artifacts = ctx.run_dir / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        return {**sandbox.marked(None, ctx.run_dir), "OUROBOROS_PROMPT": str(prompt_path), "OUROBOROS_DESCRIPTION": str(desc_path),
                "OUROBOROS_EXPERIMENT": str(ctx.n), "OUROBOROS_NOTES": str(ctx.run_dir / NOTES_FILE),
                "OUROBOROS_ARTIFACTS": str(artifacts), "PYTHONUNBUFFERED": "1"}

    def argv(self, ctx: Context, prompt_path: Path) -> list[str] | str:
        return self.command

    home_dirs: tuple[str, ...] = ()  # folders (relative to $HOME) the program keeps its config and login in

    def readable(self) -> list[Path]:
        """What the confined program must see besides the system: the files its command names, its program's
        folder and the folders on PATH (version managers, npm prefixes in $HOME), each with only what an
        installation needs beside its `bin` (`_tool_folder`), never the whole folder above it: ~/.cargo
        holds credentials.toml beside ~/.cargo/bin, ~/.local holds keyrings beside ~/.local/bin."""
        out = []
        try:
            words = shlex.split(self.command)
        except ValueError:
            words = []
        for word in words:
            if word.startswith("/") and os.path.exists(word):
                out.append(Path(word))
        exe = shutil.which(words[0]) if words else None
        if exe:  # the program and the installation it lives in (npm's lib/node_modules beside bin/)
            for p in {Path(exe), Path(os.path.realpath(exe))}:
                out += _tool_folder(p.parent)
        home = Path(os.path.expanduser("~"))
        for entry in os.environ.get("PATH", "").split(os.pathsep):  # version managers (pyenv, nvm) in $HOME
            p = Path(entry)
            if p.is_absolute() and home in p.parents:
                for q in {p, Path(os.path.realpath(p))}:
                    out += _tool_folder(q)
        return [p for p in dict.fromkeys(out) if p not in (home, Path("/"))]

    home_skip: tuple[str, ...] = ()  # entries of home_dirs not copied into the sandbox (histories, transcripts)
    logins: tuple[str, ...] = ()  # files (relative to $HOME) of home_dirs holding the login, copied back

    def confined(self, ctx: Context, argv: list[str] | str, writable: list[Path],
                 readable: list[Path], home: HomeCopy | None = None) -> list[str] | str:
        """argv inside the run's sandbox where the harness can confine it; records whether it did. The
        program's config folders in $HOME are `home`'s private copies, never the real ones."""
        if ctx.confine is None:
            return argv
        for path in writable:
            if not path.exists():
                path.touch()  # a file bound into the sandbox must exist; bound, it cannot be swapped for a link
        wrapped, level = ctx.confine(["bash", "-c", argv] if isinstance(argv, str) else argv, writable,
                                     [*readable, *self.readable()], home.binds if home is not None else [])
        self.confinement = level
        return wrapped

    confinement = "none"  # the sandbox level the last proposal ran in ("none": with the user's rights)

    def scratch(self, ctx: Context) -> list[Path]:
        """Further record files the program writes (aider's histories)."""
        return []

    def propose(self, ctx: Context) -> Proposal:
        prompt_path, desc_path = ctx.exp_dir / "prompt.md", ctx.exp_dir / "description.txt"
        prompt_path.write_text(ctx.prompt())
        desc_path.unlink(missing_ok=True)
        desc_path.touch()
        timeout = self.timeout or ctx.task.agent.timeout
        start = time.monotonic()
        env = self.env(ctx, prompt_path, desc_path)
        (ctx.run_dir / NOTES_FILE).touch()
        home = HomeCopy(self.home_dirs, self.home_skip, self.logins) if ctx.confine is not None else None
        artifacts, cap = ctx.run_dir / "artifacts", int(ctx.task.bound.max_artifact_mb * 2**20)
        kept = _listing(artifacts)
        try:
            argv = self.confined(ctx, self.argv(ctx, prompt_path),
                                 [desc_path, ctx.run_dir / NOTES_FILE, artifacts, *self.scratch(ctx)],
                                 [prompt_path], home)
            try:
                outcome = sandbox.run(argv, ctx.worktree, timeout, 0.0, ctx.exp_dir / "agent.log", env=env,
                                      max_log_mb=50, max_artifact_mb=ctx.task.bound.max_artifact_mb, watch=artifacts)
            finally:
                for path in (ctx.run_dir / NOTES_FILE, artifacts, desc_path):  # what the agent closed (mode 000)
                    readfile.reopen(path)
                bound_notes(ctx.run_dir / NOTES_FILE, ctx.task.agent.notes_max_chars)
                if home is not None and self.confinement != "none":
                    home.give_back()
                # The artifacts folder is kept across experiments, on the real disk: it holds at most
                # max_artifact_mb in all, and what a proposal wrote past that is removed with it.
                held = sandbox.du(artifacts)
                if held > cap:
                    _drop_new(artifacts, kept)
        finally:
            if home is not None:
                home.remove()
        if held > cap:
            raise AgentError(f"the agent left {held / 2**20:.1f} MB in its artifacts folder, more than "
                             f"max_artifact_mb={ctx.task.bound.max_artifact_mb:g} (what it wrote there was removed)")
        if outcome.timed_out:
            raise AgentError(f"agent ran past its timeout ({timeout:g} s)")
        if outcome.returncode != 0:
            tail = (ctx.exp_dir / "agent.log").read_text(errors="replace").strip().splitlines()[-1:]
            raise AgentError(f"agent exited {outcome.returncode}" + (f": {tail[0][:160]}" if tail else ""))
        try:  # agent-written bytes, read once: not necessarily UTF-8, nor a regular file
            lines = desc_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        description = lines[0] if lines else ""
        return Proposal(description or f"{self.name} change ({time.monotonic() - start:.0f} s)")
