"""The agent protocol: one required method, optional hooks that default to doing nothing.

Lifecycle, as the loop calls it:

    check(task)       once per process, before the baseline: fail early (a missing key or CLI)
    start(ctx)        once per process, before the first proposal (also on resume)
    observe(exp)      after every finished experiment, in order; on resume, once for each
                      experiment already in the ledger, so an agent can rebuild its state
    propose(ctx)      once per experiment: edit files under ctx.worktree, return a Proposal

Resume is exact when a proposal depends only on ctx (ctx.seed, ctx.n, ctx.history, the files)
and on what observe() was given: a run may be killed at any point (mid-proposal, mid-run,
mid-evaluation) and resumed in a new process, with a new agent instance, and the next proposals
must be those an uninterrupted run would have made. Draw randomness from ctx.seed (derived from
the run's seed and n, never from a generator carried across proposals), and rebuild any model
from ctx.history or observe(). A proposal whose experiment was never recorded is asked for again
with the same ctx. `ouroboros.testing.check_resume_contract` checks this for any agent.
    close()           once, when the loop ends for any reason

propose() may raise StopRun to end the run cleanly before the experiment begins (a spend cap).

An agent edits files in the worktree and nothing else. It never runs git, writes the ledger,
starts timers or enforces budgets: the harness owns those (workspace.py, ledger.py, sandbox.py),
so a new agent cannot break them. To fail a proposal, raise AgentError with a one-line reason;
the experiment is recorded as a crash and the loop goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ouroboros.ledger import Experiment
from ouroboros.task import Task


def experiment_seed(run_seed: int, n: int) -> int:
    """Experiment n's own seed: a function of the run's seed and n only (numpy's SeedSequence, so runs
    with neighbouring seeds do not share experiments' seeds the way run_seed + n would)."""
    from numpy.random import SeedSequence

    return int(SeedSequence([run_seed, n]).generate_state(1)[0])


class AgentError(Exception):
    """A proposal failed (the agent exited non-zero, timed out, replied garbage...).

    `usage` carries what the failed attempt cost (model, tokens, dollars), so the crash recorded
    for it still counts toward the run's spend.
    """

    def __init__(self, message: str, usage: Proposal | None = None):
        super().__init__(message)
        self.usage = usage

    def proposal(self) -> Proposal:
        """The Proposal the loop records for this failure: its reason, and what it cost."""
        u = self.usage or Proposal("")
        return Proposal(f"agent failed: {self}", model=u.model, session=u.session, tokens_in=u.tokens_in,
                        tokens_out=u.tokens_out, cost_usd=u.cost_usd)


class StopRun(Exception):
    """Raised by propose() to end the run cleanly before the experiment begins (a spend cap reached,
    a replay with nothing left to re-apply). Nothing of the experiment is recorded; the run's status
    becomes `status` and the message is kept in its config as `stop_reason`."""

    def __init__(self, message: str, status: str = "finished"):
        super().__init__(message)
        self.status = status


@dataclass
class Context:
    task: Task
    worktree: Path  # the task folder inside the run's worktree, at the best commit
    n: int  # the number of the experiment being proposed
    history: list[Experiment]  # finished experiments, baseline first
    best: Experiment
    run_dir: Path  # the run's records: notes.md, guidance.md, artifacts/
    exp_dir: Path  # this experiment's records: write agent.log here
    seed: int  # this experiment's seed: experiment_seed(run seed, n), the same after a resume
    prompt: Callable[[], str]  # the assembled prompt (memory.build_prompt), built on demand
    session: int = 0
    read_baseline: Callable[[str], str] | None = None  # a task-relative file as it was at the baseline
    # Wraps an agent's own process in the run's sandbox (phase "agent"): (argv, writable, readable, binds)
    # -> (argv, level), binds being (source, place in the sandbox) pairs bound writable (the private
    # copies of a CLI's config folders). None where the harness cannot confine it (no bubblewrap).
    confine: Callable[[list[str], list[Path], list[Path], list[tuple[Path, Path]]], tuple[list[str], str]] | None \
        = None


@dataclass
class Proposal:
    description: str
    params: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    session: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0


class Agent:
    """Subclass and implement propose(); the hooks are optional."""

    name = "agent"
    # Whether the agent writes code the harness then runs (a model, a CLI, a script): such an agent
    # is untrusted, and isolation level `process` is refused for it unless the user allows it.
    # A search over the task's own knobs writes values, not code.
    writes_code = True

    def check(self, task: Task) -> None:
        """Called once before the baseline: raise OuroborosError if the agent cannot work here (a
        missing key, a missing package), so that a run fails before it spends a baseline."""

    def start(self, ctx: Context) -> None:
        """Called once before the first proposal of this process."""

    def observe(self, exp: Experiment) -> None:
        """Called with every finished experiment (its verdict, metric and params)."""

    def propose(self, ctx: Context) -> Proposal:
        raise NotImplementedError

    def close(self) -> None:
        """Called once when the loop ends: stop sessions, release resources."""
