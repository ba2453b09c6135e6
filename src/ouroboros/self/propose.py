"""One proposal by a version of Ouroboros, in a process of its own: how `run --self` adopts a kept version.

    python -I -c "<puts SRC first on sys.path, runs this module>" SRC CONTEXT.json

Started by the trusted driver (driver.py, VersionAgent) inside the run's agent sandbox, in the
worktree, with the version's source at SRC: no view of the records, the ledger's key, the user's
checkout or $HOME. CONTEXT.json holds what the proposer may know (the agent spec, the run's seed,
the experiment number, the history, the knob files at the baseline, the prompt); the version's own
agent edits the worktree, and its description goes to $OUROBOROS_DESCRIPTION and its parameters
to the `out` file. Exit 1: the version could not start its agent; AGENT_FAILED: it started, and
this one proposal failed. Nothing here is believed: the trusted loop guards, commits, runs, evaluates,
judges and records what the worktree holds afterwards.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

AGENT_FAILED = 3  # the exit status for a failed proposal (the version itself started)


def main(context: Path) -> int:
    from ouroboros.agents import make_agent
    from ouroboros.agents.base import AgentError, Context
    from ouroboros.errors import OuroborosError
    from ouroboros.ledger import Experiment
    from ouroboros.task import load_task

    ctx = json.loads(context.read_text())
    scratch = Path(ctx["scratch"])
    try:
        task = load_task(Path.cwd())
        history = [Experiment(**e) for e in ctx["history"]]
        best = next(e for e in history if e.n == ctx["best"])
        agent = make_agent(ctx["agent"], ctx["seed"], ctx.get("options"))
        baseline = ctx["baseline"]

        def read_baseline(rel: str) -> str:
            if rel not in baseline:
                raise OuroborosError(f"{rel}: not among the knob files given to the version's proposer")
            return baseline[rel]

        c = Context(task, Path.cwd(), ctx["n"], history, best, scratch, scratch, ctx["exp_seed"],
                    lambda: ctx["prompt"], ctx.get("session", 0), read_baseline)
        agent.start(c)
    except (OuroborosError, AgentError) as exc:  # the version cannot propose at all
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        proposal = agent.propose(c)
    except (OuroborosError, AgentError) as exc:  # this proposal failed, as any agent's may
        print(f"error: {exc}", file=sys.stderr)
        return AGENT_FAILED
    Path(os.environ["OUROBOROS_DESCRIPTION"]).write_text(proposal.description.replace("\n", " ") + "\n")
    Path(ctx["out"]).write_text(json.dumps({"params": proposal.params}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
