"""The judge: keep only a real improvement, in either direction."""

from __future__ import annotations

import pytest

from ouroboros.judge import Verdict, effective_min_delta, judge


@pytest.mark.parametrize("metric, best, minimize, min_delta, verdict", [
    (0.9, 1.0, True, 0.0, Verdict.KEEP),
    (1.0, 1.0, True, 0.0, Verdict.DISCARD),
    (1.1, 1.0, True, 0.0, Verdict.DISCARD),
    (0.95, 1.0, True, 0.1, Verdict.DISCARD),  # better, but not by more than min_delta
    (1.1, 1.0, False, 0.0, Verdict.KEEP),
    (0.9, 1.0, False, 0.0, Verdict.DISCARD),
    (float("nan"), 1.0, True, 0.0, Verdict.CRASH),
    (float("-inf"), 1.0, True, 0.0, Verdict.CRASH),
])
def test_verdicts(metric: float, best: float, minimize: bool, min_delta: float, verdict: Verdict) -> None:
    assert judge(metric, best, minimize, min_delta).verdict == verdict


def test_simplicity_keeps_an_equal_result_with_fewer_lines() -> None:
    assert judge(1.0, 1.0, True, 0.0, loc=90, best_loc=100).verdict == Verdict.KEEP
    assert judge(1.05, 1.0, True, 0.1, loc=90, best_loc=100).verdict == Verdict.KEEP
    assert judge(1.2, 1.0, True, 0.1, loc=90, best_loc=100).verdict == Verdict.DISCARD
    assert judge(1.0, 1.0, True, 0.0, loc=90, best_loc=100, simplicity=False).verdict == Verdict.DISCARD
    assert judge(1.0, 1.0, True, 0.0, loc=110, best_loc=100).verdict == Verdict.DISCARD


def test_noise_floor_raises_min_delta() -> None:
    assert effective_min_delta(0.01, None, 2.0) == 0.01
    assert effective_min_delta(0.01, 0.02, 2.0) == pytest.approx(0.04)
    assert effective_min_delta(0.1, 0.02, 2.0) == 0.1
