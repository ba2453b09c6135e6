"""`random` and `tpe`: classical search over the task's knobs with Optuna's ask/tell.

They need no model: each proposal asks the sampler for values of every knob and rewrites those
literals in the editable files. They keep no state between proposals: each one rebuilds Optuna's
study from the finished experiments (their recorded params and metrics) and seeds the sampler with
the experiment's own seed, so a resumed run proposes exactly what an uninterrupted one would.

A proposal that breaks a `[knobs] constraint` is resampled, never run. Crashes and infeasible
samples are told to Optuna as failed trials, and also added as completed trials marked infeasible
(a constraint value above 0) with the worst metric seen: TPE ignores failed trials, but it puts
infeasible ones among the bad, so it learns to avoid the region.
"""

from __future__ import annotations

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState, create_trial

from ouroboros import knobs, policyfile
from ouroboros.agents.base import Agent, AgentError, Context, Proposal
from ouroboros.ledger import Experiment

optuna.logging.set_verbosity(optuna.logging.WARNING)

RESAMPLES = 500  # samples drawn for one feasible proposal before the agent gives up
_INFEASIBLE = {"constraints": (1.0,)}  # Optuna's system attribute for constraint values


class SearchAgent(Agent):
    writes_code = False  # it only rewrites knob literals of the user's own code
    def __init__(self, name: str, seed: int = 0):
        self.name, self.seed = name, seed
        self.dists: dict[str, BaseDistribution] = {}
        self.knobs: list[knobs.Knob] = []

    def start(self, ctx: Context) -> None:
        self.knobs, self.dists = knobs.space(ctx.task, ctx.worktree, ctx.read_baseline)
        self.space = knobs.space_of(ctx.task, ctx.worktree, ctx.read_baseline)  # its constraints

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        if self.name == "tpe":
            startup = int(policyfile.values()["TPE_STARTUP"])  # read as data, never run
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)
        return optuna.samplers.RandomSampler(seed=seed)

    def _params(self, exp: Experiment) -> dict:
        if exp.params:
            return {k: v for k, v in exp.params.items() if k in self.dists}
        if exp.n == 0:  # the baseline: the knobs' values as written
            return {k.name: k.value for k in self.knobs if k.name in self.dists
                    and self.dists[k.name]._contains(self.dists[k.name].to_internal_repr(k.value))}
        return {}

    def study(self, ctx: Context) -> optuna.Study:
        """Optuna's study as the ledger has it: one trial per finished experiment with a full set of
        knob values (failed ones as FAIL), in order, and a sampler seeded with this experiment's seed."""
        study = optuna.create_study(direction="minimize" if ctx.task.minimize else "maximize",
                                    sampler=self._sampler(ctx.seed))
        values = [e.metric for e in ctx.history if e.status in ("keep", "discard") and e.metric is not None]
        worst = (max(values) if ctx.task.minimize else min(values)) if values else None
        for exp in ctx.history:
            params = self._params(exp)
            if not params or len(params) != len(self.dists):
                continue
            value = exp.metric if exp.status in ("keep", "discard") else None
            study.add_trial(create_trial(params=params, distributions=self.dists, value=value,
                                         state=TrialState.COMPLETE if value is not None else TrialState.FAIL))
            if value is None and exp.status in ("crash", "timeout"):
                self._infeasible(study, params, worst)
        return study

    def _infeasible(self, study: optuna.Study, params: dict, worst: float | None) -> None:
        """A completed trial marked infeasible, valued at the worst metric seen (TPE ranks it among the bad)."""
        if worst is not None and len(params) == len(self.dists):
            study.add_trial(create_trial(params=params, distributions=self.dists, value=worst,
                                         system_attrs=dict(_INFEASIBLE)))

    def propose(self, ctx: Context) -> Proposal:
        study = self.study(ctx)
        values = [t.value for t in study.trials if t.value is not None]
        worst = (max(values) if ctx.task.minimize else min(values)) if values else None
        for _ in range(RESAMPLES):
            trial = study.ask(self.dists)
            if not self.space.violated(trial.params):
                break
            study.tell(trial, state=TrialState.FAIL)  # never run
            self._infeasible(study, dict(trial.params), worst)
        else:
            raise AgentError(f"no proposal out of {RESAMPLES} samples met the [knobs] constraints "
                             f"({'; '.join(text for text, _ in self.space.constraints)}); "
                             "widen the knob ranges or loosen the constraints")
        current = {k.name: k.value for k in knobs.extract(ctx.worktree, sorted({k.path for k in self.knobs}))}
        params = dict(trial.params)
        knobs.apply(ctx.worktree, self.knobs, params)
        changed = [f"{name} {knobs.format_value(current[name])}->{knobs.format_value(v)}"
                   for name, v in params.items() if name in current and not knobs.close(current[name], v)]
        return Proposal(", ".join(changed) or "same knob values", params=params)
