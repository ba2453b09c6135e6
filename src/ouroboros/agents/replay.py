"""`replay:<run>`: re-apply a recorded run's proposals in order, to reproduce it elsewhere.

`<run>` is a tag in this task's ledger, or the path of a run's records folder copied from another
machine (`.ouroboros/runs/<tag>`, holding results.tsv and exp/<n>/diff.patch). Experiment n of the
replay applies the diff that experiment n of the recorded run proposed, with its description; a
recorded agent failure fails again. When the recorded proposals run out the run ends cleanly.

The diffs were taken against the best commit of their time, so they apply as long as the replay
keeps what the recorded run kept; a diff that no longer applies fails its experiment (a crash
saying the replay diverged). Patches are applied with `git apply` to the working files only: the
index and the history stay the harness's.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ouroboros.agents.base import Agent, AgentError, Context, Proposal, StopRun
from ouroboros.errors import OuroborosError
from ouroboros.workspace import git_root

FAILED = "agent failed: "


class ReplayAgent(Agent):
    def __init__(self, source: str):
        if not source:
            raise OuroborosError("replay: needs a run, e.g. --agent replay:nov23-1 or replay:/path/.ouroboros/runs/nov23-1")
        self.source = source
        self.name = f"replay:{source}"
        self.run_dir = Path(".")
        self.steps: list[tuple[str, str]] = []  # (status, description) per experiment, baseline first

    def start(self, ctx: Context) -> None:
        path = Path(self.source).expanduser()
        candidates = [path, ctx.run_dir.parent / self.source]
        found = next((p for p in candidates if (p / "results.tsv").is_file()), None)
        if found is None:
            raise OuroborosError(f"replay: no recorded run at {self.source!r} (looked for results.tsv in "
                                 f"{', '.join(str(p) for p in candidates)})")
        if found.resolve() == ctx.run_dir.resolve():
            raise OuroborosError("replay: a run cannot replay itself; give another run's tag or folder")
        self.run_dir = found
        rows = (found / "results.tsv").read_text(errors="replace").splitlines()[1:]
        self.steps = [(cols[3], cols[4] if len(cols) > 4 else "") for cols in (r.split("\t") for r in rows)]

    def propose(self, ctx: Context) -> Proposal:
        if ctx.n >= len(self.steps):
            raise StopRun(f"replay finished: all {len(self.steps) - 1} proposals of {self.run_dir} re-applied")
        _, description = self.steps[ctx.n]
        if description.startswith(FAILED):
            raise AgentError(description[len(FAILED):])
        patch = self.run_dir / "exp" / str(ctx.n) / "diff.patch"
        if not patch.is_file():
            raise AgentError(f"replay: {patch} is missing")
        if patch.read_bytes().strip():  # git's bytes, not necessarily UTF-8
            root = git_root(ctx.worktree)
            proc = subprocess.run(["git", "apply", "--whitespace=nowarn", str(patch.resolve())], cwd=root,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise AgentError(f"replay diverged: experiment {ctx.n}'s diff does not apply here "
                                 f"({proc.stderr.strip().splitlines()[-1:] or ['?']})")
        return Proposal(description)


