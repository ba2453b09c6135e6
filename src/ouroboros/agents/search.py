"""`random` and `tpe`: classical search over the task's knobs with Optuna's ask/tell.

They need no model: each proposal asks the sampler for values of every knob, rewrites those
literals in the editable files, and tells the sampler the metric when the verdict is in.

A proposal that breaks a `[knobs] constraint` is resampled, never run. Crashes and infeasible
samples are told to Optuna as failed trials, and also added as completed trials marked infeasible
(a constraint value above 0) with the worst metric seen: TPE ignores failed trials, but it puts
infeasible ones among the bad, so it learns to avoid the region.
"""

from __future__ import annotations

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState, create_trial

from ouroboros import knobs
from ouroboros.agents.base import Agent, AgentError, Context, Proposal
from ouroboros.ledger import Experiment

optuna.logging.set_verbosity(optuna.logging.WARNING)

RESAMPLES = 500  # samples drawn for one feasible proposal before the agent gives up
_INFEASIBLE = {"constraints": (1.0,)}  # Optuna's system attribute for constraint values


class SearchAgent(Agent):
    writes_code = False  # it only rewrites knob literals of the user's own code
    def __init__(self, name: str, seed: int = 0):
        self.name, self.seed = name, seed
        self.study: optuna.Study | None = None
        self.dists: dict[str, BaseDistribution] = {}
        self.knobs: list[knobs.Knob] = []
        self.pending: dict[int, optuna.trial.Trial] = {}
        self.values: list[float] = []  # metrics seen, for the worst value an infeasible trial gets

    def start(self, ctx: Context) -> None:
        self.knobs, self.dists = knobs.space(ctx.task, ctx.worktree, ctx.read_baseline)
        self.space = knobs.space_of(ctx.task, ctx.worktree, ctx.read_baseline)  # its constraints
        self.minimize = ctx.task.minimize
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

    def _infeasible(self, params: dict) -> None:
        """A completed trial marked infeasible, valued at the worst metric seen (TPE ranks it among the bad)."""
        if not self.values or len(params) != len(self.dists):
            return
        worst = max(self.values) if self.minimize else min(self.values)
        assert self.study is not None
        self.study.add_trial(create_trial(params=params, distributions=self.dists, value=worst,
                                          system_attrs=dict(_INFEASIBLE)))

    def observe(self, exp: Experiment) -> None:
        assert self.study is not None
        value = exp.metric if exp.status in ("keep", "discard") else None
        if value is not None:
            self.values.append(value)
        trial = self.pending.pop(exp.n, None)
        params = dict(trial.params) if trial is not None else self._params(exp)
        if trial is not None:
            self.study.tell(trial, value, state=TrialState.COMPLETE if value is not None else TrialState.FAIL)
        elif params and len(params) == len(self.dists):
            self.study.add_trial(create_trial(
                params=params, distributions=self.dists, value=value,
                state=TrialState.COMPLETE if value is not None else TrialState.FAIL))
        if value is None and exp.status in ("crash", "timeout") and params:
            self._infeasible(params)

    def propose(self, ctx: Context) -> Proposal:
        assert self.study is not None
        for _ in range(RESAMPLES):
            trial = self.study.ask(self.dists)
            if not self.space.violated(trial.params):
                break
            self.study.tell(trial, state=TrialState.FAIL)  # never run
            self._infeasible(dict(trial.params))
        else:
            raise AgentError(f"no proposal out of {RESAMPLES} samples met the [knobs] constraints "
                             f"({'; '.join(text for text, _ in self.space.constraints)}); "
                             "widen the knob ranges or loosen the constraints")
        self.pending[ctx.n] = trial
        current = {k.name: k.value for k in knobs.extract(ctx.worktree, sorted({k.path for k in self.knobs}))}
        params = dict(trial.params)
        knobs.apply(ctx.worktree, self.knobs, params)
        changed = [f"{name} {knobs.format_value(current[name])}->{knobs.format_value(v)}"
                   for name, v in params.items() if name in current and not knobs.close(current[name], v)]
        return Proposal(", ".join(changed) or "same knob values", params=params)
