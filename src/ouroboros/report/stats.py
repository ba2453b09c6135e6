"""The statistics a reviewer expects, on each run's final gain over its own baseline.

Per condition: median and IQR of the final gain, with a bootstrap 95% confidence interval of the
median (scipy.stats.bootstrap, BCa where it is defined). Between conditions: the two-sided
Mann-Whitney U test (runs are independent samples; no normality assumed), its effect size as
Cliff's delta and the common-language effect size, and Holm's correction across all pairs. With
few runs the p-values are coarse, which is the honest answer.

The gain, not the raw final metric, is compared: the same code measured under other conditions
(machine load, a different baseline) moves a run's raw metric from its baseline on, not its gain.
`baselines` says in words when the conditions' baselines differ by more than their noise.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy.stats import bootstrap, mannwhitneyu

from ouroboros.report.data import RunData, baseline, by_condition, final, final_gain

ALPHA = 0.05
TEST = "Mann-Whitney U (two-sided) on the final gain over each run's own baseline, Holm-corrected across pairs"


@dataclass(frozen=True)
class Summary:
    condition: str
    runs: int
    median: float | None  # final best metric (raw)
    q25: float | None
    q75: float | None
    best: float | None
    baseline_median: float | None = None
    baseline_min: float | None = None
    baseline_max: float | None = None
    gain_median: float | None = None  # final gain over own baseline (positive: better)
    gain_q25: float | None = None
    gain_q75: float | None = None
    gain_ci: tuple[float, float] | None = None  # bootstrap 95% CI of the median gain
    rel_median: float | None = None  # the same as a fraction of the baseline
    rel_ci: tuple[float, float] | None = None
    ratio_median: float | None = None  # final / baseline: what is left of it (losses shrinking by decades)

    @property
    def iqr(self) -> float | None:
        return None if self.q25 is None or self.q75 is None else self.q75 - self.q25

    @property
    def gain_iqr(self) -> float | None:
        return None if self.gain_q25 is None or self.gain_q75 is None else self.gain_q75 - self.gain_q25


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    p: float | None  # None when either side has fewer than 2 runs
    test: str = TEST
    u: float | None = None  # U of a
    p_holm: float | None = None
    cliffs_delta: float | None = None  # P(a gains more) - P(b gains more), in [-1, 1]
    cles: float | None = None  # P(a's gain > b's gain) + half the ties
    n_a: int = 0
    n_b: int = 0

    @property
    def significant(self) -> bool:
        return self.p_holm is not None and self.p_holm < ALPHA


def gains(runs: list[RunData]) -> dict[str, list[float]]:
    return {c: [g[0] for r in grp if (g := final_gain(r)) is not None] for c, grp in by_condition(runs).items()}


def finals(runs: list[RunData]) -> dict[str, list[float]]:
    return {c: [v for r in g if (v := final(r)) is not None] for c, g in by_condition(runs).items()}


def median_ci(values: list[float], seed: int = 0) -> tuple[float, float] | None:
    """Bootstrap 95% confidence interval of the median (BCa; percentile where BCa is undefined)."""
    if len(values) < 2:
        return None
    if len(set(values)) == 1:
        return values[0], values[0]
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa warns on degenerate resamples; then percentile is used
            ci = bootstrap((np.asarray(values),), np.median, confidence_level=0.95, method=method,
                           n_resamples=9999, rng=np.random.default_rng(seed)).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            return float(ci.low), float(ci.high)
    return None


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q25, med, q75 = (float(v) for v in np.percentile(values, [25, 50, 75]))
    return q25, med, q75


def summary(runs: list[RunData]) -> list[Summary]:
    out = []
    minimize = runs[0].minimize if runs else True
    for cond, group in by_condition(runs).items():
        values = [v for r in group if (v := final(r)) is not None]
        if not values:
            out.append(Summary(cond, 0, None, None, None, None))
            continue
        q25, med, q75 = _quartiles(values)
        bases = [b for r in group if (b := baseline(r)) is not None]
        fg = [g for r in group if (g := final_gain(r)) is not None]
        absolute = [g[0] for g in fg]
        rel = [g[1] for g in fg if g[1] is not None]
        g25, gmed, g75 = _quartiles(absolute) if absolute else (None, None, None)
        out.append(Summary(
            cond, len(values), med, q25, q75, min(values) if minimize else max(values),
            float(np.median(bases)) if bases else None, min(bases, default=None), max(bases, default=None),
            gmed, g25, g75, median_ci(absolute), float(np.median(rel)) if rel else None, median_ci(rel),
            float(np.median([f / b for f, b in zip(values, bases, strict=False) if b])) if len(bases) == len(values)
            and all(bases) else None))
    return out


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (scipy.stats offers only Benjamini-Hochberg/-Yekutieli)."""
    known = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))
        out[i] = running
    return out


def pairwise(runs: list[RunData]) -> list[Pair]:
    values = gains(runs)
    raw = []
    for a, b in combinations(values, 2):
        x, y = values[a], values[b]
        if len(x) < 2 or len(y) < 2:
            raw.append(Pair(a, b, None, n_a=len(x), n_b=len(y)))
            continue
        if len(set(x) | set(y)) == 1:  # identical samples: no evidence of a difference
            u, p = len(x) * len(y) / 2, 1.0
        else:
            res = mannwhitneyu(x, y, alternative="two-sided")
            u, p = float(res.statistic), float(res.pvalue)
        cles = u / (len(x) * len(y))
        raw.append(Pair(a, b, p, u=u, cliffs_delta=2 * cles - 1, cles=cles, n_a=len(x), n_b=len(y)))
    adjusted = holm([p.p for p in raw])
    return [Pair(p.a, p.b, p.p, p.test, p.u, h, p.cliffs_delta, p.cles, p.n_a, p.n_b)
            for p, h in zip(raw, adjusted, strict=True)]


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"


def verdicts(runs: list[RunData], pairs: list[Pair], summaries: list[Summary] | None = None) -> list[str]:
    """Each pair's result in words: which condition gained more, or "no significant difference"."""
    med = {s.condition: s for s in (summaries if summaries is not None else summary(runs))}
    out = []
    for p in pairs:
        if p.p is None:
            out.append(f"{p.a} vs {p.b}: not tested (fewer than 2 runs with a baseline on a side).")
            continue
        metric = runs[0].metric
        numbers = (f"median final {metric} {_g(med[p.a].median)} vs {_g(med[p.b].median)}, median gain over the "
                   f"baseline {_g(med[p.a].gain_median)} vs {_g(med[p.b].gain_median)}; Mann-Whitney U = "
                   f"{p.u:g}, p = {p.p:.3g}, Holm-adjusted p = {p.p_holm:.3g}; Cliff's delta = "
                   f"{p.cliffs_delta:+.2f}")
        if not p.significant:
            out.append(f"{p.a} vs {p.b}: no significant difference in the final gain over the baseline ({numbers}).")
        else:
            win, lose = (p.a, p.b) if (p.cliffs_delta or 0) > 0 else (p.b, p.a)
            share = p.cles if win == p.a else 1 - (p.cles or 0)
            out.append(f"{win} gained more than {lose} ({numbers}): in {share:.0%} of pairs of runs, {win}'s run "
                       "gained more.")
    return out


def baselines(runs: list[RunData], z: float = 2.0) -> str:
    """Whether the conditions' baselines differ by more than their noise, in words.

    The noise is the floor `ouroboros noise` stored (z x sigma), where the runs have one; else the
    spread of the baselines within each condition (the same code measured again)."""
    groups = {c: [b for r in g if (b := baseline(r)) is not None] for c, g in by_condition(runs).items()}
    groups = {c: v for c, v in groups.items() if v}
    every = [b for v in groups.values() for b in v]
    if not every:
        return "No run measured its baseline."
    metric = runs[0].metric
    if len(set(every)) == 1:
        return (f"Every run's baseline measured {metric} = {every[0]:.6g}: the unchanged code gives the same value "
                "each time, so the raw metric and the gain over the baseline rank runs alike.")
    meds = {c: float(np.median(v)) for c, v in groups.items()}
    gap = max(meds.values()) - min(meds.values())
    sigmas = [r.noise_sigma for r in runs if r.noise_sigma]
    if sigmas:
        noise, what = z * float(np.median(sigmas)), f"{z:g} x the noise floor sigma {float(np.median(sigmas)):.4g} " \
                                                     "measured with `ouroboros noise`"
    else:
        noise = max(max(v) - min(v) for v in groups.values())
        what = "the largest spread of baselines within one condition"
    spread = f"Baselines range from {min(every):.6g} to {max(every):.6g} across runs."
    medians = ", ".join(f"{c} {m:.6g}" for c, m in meds.items())
    if len(meds) > 1 and gap > noise:
        return (f"The conditions' baselines differ by more than their noise: medians {medians} differ by {gap:.4g}, "
                f"more than {noise:.4g} ({what}). {spread} Compare the gains over each run's own baseline, not the "
                f"raw {metric}: part of any raw difference between conditions is the baselines'.")
    return (f"The conditions' baselines agree within their noise (medians {medians}; difference {gap:.4g}, noise "
            f"{noise:.4g}: {what}). {spread} Differences in the raw {metric} smaller than this spread are noise, "
            "which is why the tests below use each run's gain over its own baseline.")
