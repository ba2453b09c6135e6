"""Verdicts: keep only a real improvement.

keep      better than the best by more than min_delta; or, under the simplicity rule, within
          min_delta of the best with code at least SIMPLER (2%) smaller than the code it replaces
discard   measured, but not good enough
crash     the run exited non-zero, or the evaluation produced no usable metric
timeout   the run was killed at budget + grace
violation the guard refused the proposal before it ran

What a result is compared with (`standing`): the best metric ever kept in the run, not the last
keep, so a chain of simplicity keeps, each within min_delta of the one before, cannot walk the best
away (each must stay within min_delta of the best ever kept). The plausibility bound applies to the
gain since the last confirmed keep (the baseline, or a keep whose confirmation re-run agreed), so a
gain too large to believe cannot be split into smaller steps that each pass unchecked: once the
steps add up past the bound, the next keep is re-run before it counts.

What "smaller code" means (`loc`, workspace.code_size): the compressed size of every editable and
allowed-new file, comments and whitespace included, so neither folding the same code into fewer
lines, nor moving it into a new file, nor hiding it in comments it reads back is smaller; and the
size must drop by SIMPLER of the replaced code's, so shuffling a few bytes is not a simplification.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


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


SIMPLER = 0.02  # the simplicity rule's margin: code this fraction smaller than the code it replaces


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
    if simplicity and loc is not None and best_loc and loc <= best_loc * (1 - SIMPLER) and g >= -min_delta:
        return Judgement(Verdict.KEEP, f"within {min_delta:.3g} of the best with {1 - loc / best_loc:.0%} smaller code "
                                       f"({best_loc} -> {loc} compressed bytes)")
    return Judgement(Verdict.DISCARD, f"{'no better' if g <= 0 else 'gain'} {g:.6g} (needs > {min_delta:.3g})")


@dataclass(frozen=True)
class Standing:
    """What the next result is judged against."""

    best: float        # the best metric ever kept
    loc: int | None    # code size of the last keep (workspace.code_size): the code a proposal replaces
    anchor: float      # the metric of the last confirmed keep, where the plausibility bound starts


def standing(keeps: Sequence[Any], minimize: bool) -> Standing:
    """From a run's keeps in order (experiments with .n, .metric, .loc, .metrics), the baseline first."""
    measured = [k for k in keeps if k.metric is not None and math.isfinite(k.metric)]
    if not measured:
        raise ValueError("a run's standing needs a measured keep (its baseline)")
    best = min(k.metric for k in measured) if minimize else max(k.metric for k in measured)
    confirmed = [k for k in measured if k.n == 0 or "confirm_metric" in (k.metrics or {})]
    anchor = (confirmed or measured)[-1].metric
    return Standing(best, keeps[-1].loc if keeps else None, anchor)


def implausible(metric: float, st: Standing, minimize: bool, plausibility: float | None) -> bool:
    """A gain since the last confirmed keep above `plausibility`: re-run it before it can count."""
    return plausibility is not None and gain(metric, st.anchor, minimize) > plausibility
