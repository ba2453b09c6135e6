"""Walking the judge: a chain of small steps must not get what one big step cannot.

Judge-level (fast): a keep is whatever `judge` and `implausible` decide against `standing`, the
same calls `Loop._judge` makes, with a confirmation re-run played by `rerun`.
"""

from __future__ import annotations

from ouroboros.judge import Verdict, implausible, judge, standing
from ouroboros.ledger import Experiment


def _keep(n: int, metric: float, loc: int, confirmed: bool = False) -> Experiment:
    return Experiment("t", n, status="keep", metric=metric, loc=loc,
                      metrics={"confirm_metric": metric} if confirmed else {})


def _play(steps: list[tuple[float, int]], min_delta: float, plausibility: float | None = None,
          rerun=None) -> tuple[list[Experiment], list[int]]:
    """Judge each (metric, loc) in turn as the loop does; returns the keeps and the re-run steps."""
    keeps, reruns = [_keep(0, 0.0, 100)], []
    for i, (metric, loc) in enumerate(steps, start=1):
        st = standing(keeps, minimize=True)
        verdict = judge(metric, st.best, True, min_delta, loc, st.loc, simplicity=True)
        if verdict.verdict != Verdict.KEEP:
            continue
        confirmed = False
        if implausible(metric, st, True, plausibility):
            reruns.append(i)
            again = rerun(metric) if rerun else metric
            worse = max(metric, again)
            if judge(worse, st.best, True, min_delta, loc, st.loc, simplicity=True).verdict != Verdict.KEEP:
                continue
            metric, confirmed = worse, True
        keeps.append(_keep(i, metric, loc, confirmed))
    return keeps, reruns


def test_ten_simplicity_keeps_each_a_little_worse_do_not_drift_the_best() -> None:
    min_delta = 0.05
    # Each proposal is 0.045 worse than the last keep and 3 lines shorter: within the tolerance of
    # the last keep every time. Judged against the last keep, ten such keeps took the best to 0.45.
    metric, loc = 0.0, 100
    steps = []
    for _ in range(10):
        metric, loc = metric + 0.045, loc - 3
        steps.append((metric, loc))
    keeps, _ = _play(steps, min_delta)
    assert standing(keeps, minimize=True).best == 0.0
    assert all(k.metric <= min_delta for k in keeps)  # never further than one tolerance from the best
    assert len(keeps) == 2  # only the first step was within min_delta of the best ever kept


def test_simplicity_keeps_at_the_same_level_still_pass() -> None:
    keeps, _ = _play([(0.01, 90), (0.02, 80), (0.0, 70)], min_delta=0.05)
    assert [k.loc for k in keeps] == [100, 90, 80, 70]


def test_a_gain_above_plausibility_split_into_six_steps_is_rerun() -> None:
    # Baseline 0; six keeps of 0.1 each (a forged gain worth 0.6 > plausibility 0.5). The re-run
    # with another seed shows the truth (no gain), so the step that crosses the bound is discarded.
    steps = [(-0.1 * i, 100) for i in range(1, 7)]
    keeps, reruns = _play(steps, min_delta=0.0, plausibility=0.5, rerun=lambda m: 0.0)
    assert reruns == [6]  # each step alone (0.1) is plausible; the sum since the baseline is not
    assert [k.n for k in keeps] == [0, 1, 2, 3, 4, 5]
    assert standing(keeps, minimize=True).best == -0.5


def test_a_confirmed_keep_moves_the_plausibility_anchor() -> None:
    steps = [(-0.1 * i, 100) for i in range(1, 13)]
    keeps, reruns = _play(steps, min_delta=0.0, plausibility=0.5)  # honest: re-runs agree
    assert reruns == [6, 12]  # checked once per 0.5 of gain, not at every step
    assert len(keeps) == 13 and standing(keeps, minimize=True).anchor == keeps[12].metric


def test_standing_is_direction_aware() -> None:
    keeps = [_keep(0, 1.0, 10), _keep(1, 3.0, 12), _keep(2, 2.9, 8)]
    st = standing(keeps, minimize=False)
    assert (st.best, st.loc, st.anchor) == (3.0, 8, 1.0)
    assert implausible(3.2, st, False, 2.0) and not implausible(2.9, st, False, 2.0)
