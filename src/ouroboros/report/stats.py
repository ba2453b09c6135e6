"""The statistics table: each condition's final best (median, IQR), and rank tests between pairs.

Runs are independent samples, so conditions are compared with the two-sided Mann-Whitney U test
(no normality assumed; with few runs its p-values are coarse, which is the honest answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy.stats import mannwhitneyu

from ouroboros.report.data import RunData, by_condition, final


@dataclass(frozen=True)
class Summary:
    condition: str
    runs: int
    median: float | None
    q25: float | None
    q75: float | None
    best: float | None

    @property
    def iqr(self) -> float | None:
        return None if self.q25 is None or self.q75 is None else self.q75 - self.q25


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    p: float | None  # None when either side has fewer than 2 runs
    test: str = "Mann-Whitney U (two-sided)"


def finals(runs: list[RunData]) -> dict[str, list[float]]:
    return {c: [v for r in g if (v := final(r)) is not None] for c, g in by_condition(runs).items()}


def summary(runs: list[RunData]) -> list[Summary]:
    out = []
    minimize = runs[0].minimize if runs else True
    for cond, values in finals(runs).items():
        if not values:
            out.append(Summary(cond, 0, None, None, None, None))
            continue
        q25, med, q75 = (float(v) for v in np.percentile(values, [25, 50, 75]))
        out.append(Summary(cond, len(values), med, q25, q75, min(values) if minimize else max(values)))
    return out


def pairwise(runs: list[RunData]) -> list[Pair]:
    values = finals(runs)
    out = []
    for a, b in combinations(values, 2):
        x, y = values[a], values[b]
        if len(x) < 2 or len(y) < 2:
            out.append(Pair(a, b, None))
        elif len(set(x) | set(y)) == 1:
            out.append(Pair(a, b, 1.0))  # identical samples: no evidence of a difference
        else:
            out.append(Pair(a, b, float(mannwhitneyu(x, y, alternative="two-sided").pvalue)))
    return out
