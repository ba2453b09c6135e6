"""`policy`: a knob agent whose own settings live in ouroboros/policy.py.

Each proposal either samples every knob afresh (the first STARTUP proposals, and then with
probability EXPLORE) or mutates MUTATE_KNOBS knobs of the current best by a Gaussian step of
MUTATE_SCALE times the knob's range (its log range for log-scale knobs). It starts from the files
in the worktree, which the loop has reset to the experiment's parent, so it works with both the
greedy and the tree search policy. Deterministic for a given seed and history.
"""

from __future__ import annotations

import math
import random

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from ouroboros import knobs, policyfile
from ouroboros.agents.base import Agent, Context, Proposal


def _sample(dist: BaseDistribution, rng: random.Random) -> knobs.Value:
    if isinstance(dist, CategoricalDistribution):
        return rng.choice(list(dist.choices))
    assert isinstance(dist, FloatDistribution | IntDistribution)
    lo, hi = float(dist.low), float(dist.high)
    x = math.exp(rng.uniform(math.log(lo), math.log(hi))) if dist.log else rng.uniform(lo, hi)
    return _fit(dist, x)


def _fit(dist: FloatDistribution | IntDistribution, x: float) -> knobs.Value:
    x = min(max(x, float(dist.low)), float(dist.high))
    if dist.step:
        x = float(dist.low) + round((x - float(dist.low)) / dist.step) * dist.step
        x = min(max(x, float(dist.low)), float(dist.high))
    return int(round(x)) if isinstance(dist, IntDistribution) else x


def _mutate(dist: BaseDistribution, value: knobs.Value, scale: float, rng: random.Random) -> knobs.Value:
    if isinstance(dist, CategoricalDistribution):
        others = [c for c in dist.choices if c != value]
        return rng.choice(others) if others else value
    assert isinstance(dist, FloatDistribution | IntDistribution)
    lo, hi, v = float(dist.low), float(dist.high), float(value)  # type: ignore[arg-type]
    if dist.log and v > 0:
        x = math.exp(math.log(v) + rng.gauss(0.0, scale * (math.log(hi) - math.log(lo))))
    else:
        x = v + rng.gauss(0.0, scale * (hi - lo))
    new = _fit(dist, x)
    if isinstance(dist, IntDistribution) and new == value:  # an integer step never rounds to nothing
        new = _fit(dist, v + (1 if rng.random() < 0.5 else -1) * (dist.step or 1))
    return new


class PolicyAgent(Agent):
    name = "policy"
    writes_code = False  # it only rewrites knob literals of the user's own code

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.knobs: list[knobs.Knob] = []
        self.dists: dict[str, BaseDistribution] = {}

    def start(self, ctx: Context) -> None:
        policyfile.values()  # a policy file that is not plain settings stops the run before the baseline
        self.knobs, self.dists = knobs.space(ctx.task, ctx.worktree, ctx.read_baseline)

    def propose(self, ctx: Context) -> Proposal:
        rng = random.Random(f"{self.seed}:{ctx.n}")
        current = {k.name: k.value for k in knobs.extract(ctx.worktree, sorted({k.path for k in self.knobs}))}
        names = [n for n in self.dists if n in current]
        done = len(ctx.history) - 1  # experiments after the baseline
        policy = policyfile.values()  # read as data: the file is the self task's editable, never run
        if done < policy["STARTUP"] or rng.random() < policy["EXPLORE"]:
            params = {n: _sample(self.dists[n], rng) for n in names}
            how = "explore"
        else:
            k = max(1, min(int(policy["MUTATE_KNOBS"]), len(names)))
            params = {n: _mutate(self.dists[n], current[n], float(policy["MUTATE_SCALE"]), rng)
                      for n in rng.sample(names, k)}
            how = "mutate"
        knobs.apply(ctx.worktree, self.knobs, params)
        changed = [f"{n} {knobs.format_value(current[n])}->{knobs.format_value(v)}"
                   for n, v in params.items() if not knobs.close(current[n], v)]
        return Proposal(f"{how}: " + (", ".join(changed) or "same knob values"), params=params)
