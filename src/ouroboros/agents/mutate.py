"""`mutate` and `random:K`: change one to K knobs of the best experiment so far.

Resampling every knob at once rarely finds an improvement on real code (a dozen coupled settings
moved together); a few at a time, from the best so far, is how people tune. `mutate` moves each
chosen knob near its current value (a neighbouring choice, a factor of up to 2 on a log scale, a
step of about a sixth of the range otherwise); `random:K` draws each chosen knob anew from its
whole range. Both pick 1 to K knobs (3 by default) per proposal, and resample any proposal that
breaks a `[knobs] constraint`, so none is run. They keep no state: the best so far is what the
worktree holds when propose() is called, so a resumed run goes on the same way.
"""

from __future__ import annotations

import math
import random

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from ouroboros import knobs
from ouroboros.agents.base import Agent, AgentError, Context, Proposal

RESAMPLES = 500


class MutateAgent(Agent):
    def __init__(self, name: str = "mutate", seed: int = 0, fresh: bool = False, max_changes: int = 3):
        if max_changes < 1:
            raise ValueError("max_changes must be at least 1")
        self.name, self.seed, self.fresh, self.max_changes = name, seed, fresh, max_changes
        self.rng = random.Random(seed)

    def start(self, ctx: Context) -> None:
        self.knobs, self.dists = knobs.space(ctx.task, ctx.worktree, ctx.read_baseline)
        self.space = knobs.space_of(ctx.task, ctx.worktree, ctx.read_baseline)

    def propose(self, ctx: Context) -> Proposal:
        rng = random.Random(f"{self.seed}:{ctx.n}")  # the same proposal for the same experiment on resume
        files = sorted({k.path for k in self.knobs})
        current = {k.name: k.value for k in knobs.extract(ctx.worktree, files)}
        names = sorted(n for n in self.dists if n in current)
        if not names:
            raise AgentError("the best commit's files define none of the searched knobs any more")
        for _ in range(RESAMPLES):
            chosen = rng.sample(names, rng.randint(1, min(self.max_changes, len(names))))
            params = {n: self._move(rng, self.dists[n], current[n]) for n in chosen}
            params = {n: v for n, v in params.items() if not knobs.close(v, current[n])}
            if params and not self.space.violated({**current, **params}):
                break
        else:
            raise AgentError(f"no change out of {RESAMPLES} tries met the [knobs] constraints; widen the knob "
                             "ranges or loosen the constraints")
        knobs.apply(ctx.worktree, self.knobs, params)
        changed = [f"{n} {knobs.format_value(current[n])}->{knobs.format_value(v)}" for n, v in sorted(params.items())]
        return Proposal(", ".join(changed), params=params)

    def _move(self, rng: random.Random, dist: BaseDistribution, value: knobs.Value) -> knobs.Value:
        if isinstance(dist, CategoricalDistribution):
            choices = list(dist.choices)
            if not self.fresh and value in choices and all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                                             for c in choices):
                i = choices.index(value)
                return choices[max(0, min(len(choices) - 1, i + rng.choice((-1, 1))))]
            return rng.choice([c for c in choices if c != value] or choices)
        assert isinstance(dist, (IntDistribution, FloatDistribution))
        low, high = dist.low, dist.high
        if self.fresh:
            new = math.exp(rng.uniform(math.log(low), math.log(high))) if dist.log else rng.uniform(low, high)
        elif dist.log and float(value) > 0:
            new = float(value) * 2 ** rng.uniform(-1, 1)
        else:
            new = float(value) + rng.gauss(0, (high - low) / 6)
        new = min(high, max(low, new))
        if dist.step:
            new = low + round((new - low) / dist.step) * dist.step
        if isinstance(dist, IntDistribution):
            out = int(round(new))
            if out == value and not self.fresh:
                out = min(high, max(low, out + rng.choice((-1, 1)) * (dist.step or 1)))
            return out
        return float(new)
