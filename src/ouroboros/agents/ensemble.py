"""An ensemble: several agents with weights, one of them drawn (seeded) for each experiment.

`--agent "api:gpt-4o-mini=0.7,api:llama3.1=0.3"`: every member starts and observes every
experiment; only the drawn one proposes, and the experiment records its model.
"""

from __future__ import annotations

import random

from ouroboros.agents.base import Agent, Context, Proposal
from ouroboros.ledger import Experiment
from ouroboros.task import Task


class EnsembleAgent(Agent):
    def __init__(self, members: list[tuple[Agent, float]]):
        self.members = members
        self.name = ",".join(f"{a.name}={w:g}" for a, w in members)
        self.writes_code = any(a.writes_code for a, _ in members)

    def check(self, task: Task) -> None:
        for agent, _ in self.members:
            agent.check(task)

    def start(self, ctx: Context) -> None:
        for agent, _ in self.members:
            agent.start(ctx)

    def observe(self, exp: Experiment) -> None:
        for agent, _ in self.members:
            agent.observe(exp)

    def propose(self, ctx: Context) -> Proposal:
        agents, weights = zip(*self.members, strict=True)
        agent = random.Random(ctx.seed).choices(agents, weights=weights)[0]
        proposal = agent.propose(ctx)
        proposal.model = proposal.model or agent.name
        return proposal

    def close(self) -> None:
        for agent, _ in self.members:
            agent.close()
