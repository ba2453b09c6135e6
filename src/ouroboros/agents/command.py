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
with the network and its environment (its key), but with only the worktree, the files above and
its own config folder in $HOME (`home_dirs`) writable, and the records, the user's checkout, the
repository's git dir and the rest of $HOME invisible. Files named by absolute path in the command
are visible read-only. Without bubblewrap it runs with the user's rights, and the run says so.
"""

from __future__ import annotations

import os
import shlex
import shutil
import time
from pathlib import Path

from ouroboros import sandbox
from ouroboros.agents.base import Agent, AgentError, Context, Proposal

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
                shutil.rmtree(path, ignore_errors=True)
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
        return {**os.environ, "OUROBOROS_PROMPT": str(prompt_path), "OUROBOROS_DESCRIPTION": str(desc_path),
                "OUROBOROS_EXPERIMENT": str(ctx.n), "OUROBOROS_NOTES": str(ctx.run_dir / NOTES_FILE),
                "OUROBOROS_ARTIFACTS": str(artifacts), "PYTHONUNBUFFERED": "1"}

    def argv(self, ctx: Context, prompt_path: Path) -> list[str] | str:
        return self.command

    home_dirs: tuple[str, ...] = ()  # folders (relative to $HOME) the program keeps its config and login in

    def readable(self) -> list[Path]:
        """What the confined program must see besides the system: the files its command names."""
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
                out += [p.parent, p.parent.parent] if p.parent.name == "bin" else [p.parent]
        home = Path(os.path.expanduser("~"))
        for entry in os.environ.get("PATH", "").split(os.pathsep):  # version managers (pyenv, nvm) in $HOME
            p = Path(entry)
            if p.is_absolute() and home in p.parents:
                out.append(home / p.relative_to(home).parts[0])
        return [p for p in dict.fromkeys(out) if p not in (home, Path("/"))]

    def confined(self, ctx: Context, argv: list[str] | str, writable: list[Path],
                 readable: list[Path]) -> list[str] | str:
        """argv inside the run's sandbox where the harness can confine it; records whether it did."""
        if ctx.confine is None:
            return argv
        home = Path(os.path.expanduser("~"))
        for path in writable:
            if not path.exists():
                path.touch()  # a file bound into the sandbox must exist; bound, it cannot be swapped for a link
        wrapped, level = ctx.confine(["bash", "-c", argv] if isinstance(argv, str) else argv,
                                     [*writable, *(home / d for d in self.home_dirs)],
                                     [*readable, *self.readable()])
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
        argv = self.confined(ctx, self.argv(ctx, prompt_path),
                             [desc_path, ctx.run_dir / NOTES_FILE, ctx.run_dir / "artifacts", *self.scratch(ctx)],
                             [prompt_path])
        artifacts, cap = ctx.run_dir / "artifacts", int(ctx.task.bound.max_artifact_mb * 2**20)
        kept = _listing(artifacts)
        try:
            outcome = sandbox.run(argv, ctx.worktree, timeout, 0.0, ctx.exp_dir / "agent.log", env=env, max_log_mb=50,
                                  max_artifact_mb=ctx.task.bound.max_artifact_mb, watch=artifacts)
        finally:
            bound_notes(ctx.run_dir / NOTES_FILE, ctx.task.agent.notes_max_chars)
            # The artifacts folder is kept across experiments, on the real disk: it holds at most
            # max_artifact_mb in all, and what a proposal wrote past that is removed with it.
            held = sandbox.du(artifacts)
            if held > cap:
                _drop_new(artifacts, kept)
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
