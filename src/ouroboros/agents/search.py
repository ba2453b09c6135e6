"""`random` and `tpe`: classical search over the task's knobs with Optuna's ask/tell.

They need no model: each proposal asks the sampler for values of every knob, rewrites those
literals in the editable files, and tells the sampler the metric when the verdict is in.
"""

from __future__ import annotations

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState, create_trial

from ouroboros import knobs
from ouroboros.agents.base import Agent, Context, Proposal
from ouroboros.ledger import Experiment

optuna.logging.set_verbosity(optuna.logging.WARNING)


class SearchAgent(Agent):
    writes_code = False  # it only rewrites knob literals of the user's own code
    def __init__(self, name: str, seed: int = 0):
        self.name, self.seed = name, seed
        self.study: optuna.Study | None = None
        self.dists: dict[str, BaseDistribution] = {}
        self.knobs: list[knobs.Knob] = []
        self.pending: dict[int, optuna.trial.Trial] = {}

    def start(self, ctx: Context) -> None:
        self.knobs, self.dists = knobs.space(ctx.task, ctx.worktree, ctx.read_baseline)
        sampler: optuna.samplers.BaseSampler
        if self.name == "tpe":
            sampler = optuna.samplers.TPESampler(seed=ctx.seed, n_startup_trials=5, multivariate=True)
        else:
            sampler = optuna.samplers.RandomSampler(seed=ctx.seed)
        direction = "minimize" if ctx.task.minimize else "maximize"
        self.study = optuna.create_study(direction=direction, sampler=sampler)

    def _params(self, exp: Experiment) -> dict:
        if exp.params:
            return {k: v for k, v in exp.params.items() if k in self.dists}
        if exp.n == 0:  # the baseline: the knobs' values as written
            return {k.name: k.value for k in self.knobs if k.name in self.dists
                    and self.dists[k.name]._contains(self.dists[k.name].to_internal_repr(k.value))}
        return {}

    def observe(self, exp: Experiment) -> None:
        assert self.study is not None
        value = exp.metric if exp.status in ("keep", "discard") else None
        trial = self.pending.pop(exp.n, None)
        if trial is not None:
            self.study.tell(trial, value, state=TrialState.COMPLETE if value is not None else TrialState.FAIL)
            return
        params = self._params(exp)
        if params and len(params) == len(self.dists):
            self.study.add_trial(create_trial(
                params=params, distributions=self.dists, value=value,
                state=TrialState.COMPLETE if value is not None else TrialState.FAIL))

    def propose(self, ctx: Context) -> Proposal:
        assert self.study is not None
        trial = self.study.ask(self.dists)
        self.pending[ctx.n] = trial
        current = {k.name: k.value for k in knobs.extract(ctx.worktree, sorted({k.path for k in self.knobs}))}
        params = dict(trial.params)
        knobs.apply(ctx.worktree, self.knobs, params)
        changed = [f"{name} {knobs.format_value(current[name])}->{knobs.format_value(v)}"
                   for name, v in params.items() if name in current and not knobs.close(current[name], v)]
        return Proposal(", ".join(changed) or "same knob values", params=params)
