"""Verdicts: keep only a real improvement.

keep      better than the best by more than min_delta; or, under the simplicity rule, within
          min_delta of the best with fewer lines of code
discard   measured, but not good enough
crash     the run exited non-zero, or the evaluation produced no usable metric
timeout   the run was killed at budget + grace
violation the guard refused the proposal before it ran
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    KEEP = "keep"
    DISCARD = "discard"
    CRASH = "crash"
    TIMEOUT = "timeout"
    VIOLATION = "violation"


def effective_min_delta(configured: float, noise_sigma: float | None, z: float) -> float:
    """The smallest gain that counts: the configured one, or z noise sigmas if that is larger."""
    return max(configured, z * noise_sigma) if noise_sigma else configured


def gain(metric: float, best: float, minimize: bool) -> float:
    """How much better metric is than best (positive is better), whatever the direction."""
    return best - metric if minimize else metric - best


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str


def judge(metric: float, best: float, minimize: bool, min_delta: float = 0.0,
          loc: int | None = None, best_loc: int | None = None, simplicity: bool = True) -> Judgement:
    if not math.isfinite(metric):
        return Judgement(Verdict.CRASH, f"metric is {metric}")
    g = gain(metric, best, minimize)
    if g > min_delta:
        return Judgement(Verdict.KEEP, f"improved by {g:.6g}")
    if simplicity and loc is not None and best_loc is not None and loc < best_loc and g >= -min_delta:
        return Judgement(Verdict.KEEP, f"within {min_delta:.3g} of the best with {best_loc - loc} fewer lines")
    return Judgement(Verdict.DISCARD, f"{'no better' if g <= 0 else 'gain'} {g:.6g} (needs > {min_delta:.3g})")
