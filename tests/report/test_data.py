from __future__ import annotations

import pytest

from ouroboros.report import data, stats
from ouroboros.report.data import Attempt, RunData


def run(tag: str, cond: str, metrics: list[tuple[str, float | None]], direction: str = "minimize",
        t: float = 10.0, **kw) -> RunData:
    attempts = tuple(Attempt(n, s, m, description=kw.get("desc", {}).get(n, f"e{n}"), started=n * t,
                             finished=(n + 1) * t, params=kw.get("params", {}).get(n, {}))
                     for n, (s, m) in enumerate(metrics))
    return RunData(tag, cond, direction, budget=kw.get("budget", t), attempts=attempts)


A = run("a0", "agent", [("keep", 5.0), ("discard", 6.0), ("keep", 4.0), ("crash", None), ("keep", 3.0)])
B = run("a1", "agent", [("keep", 5.0), ("keep", 2.0)])
R = run("r0", "random", [("keep", 5.0), ("discard", 5.5), ("discard", 7.0)])


def test_best_so_far_moves_only_on_keeps_and_follows_the_direction() -> None:
    assert data.best_so_far(A) == [5.0, 5.0, 4.0, 4.0, 3.0]
    up = run("u", "c", [("keep", 1.0), ("discard", 9.0), ("keep", 2.0)], direction="maximize")
    assert data.best_so_far(up) == [1.0, 1.0, 2.0]
    assert data.best_so_far(run("f", "c", [("crash", None)])) == []


def test_curves_take_median_and_quartiles_over_runs_carried_forward() -> None:
    curves = data.curves([A, B, R])
    c = curves["agent"]
    assert c.x == [0, 1, 2, 3, 4] and c.runs == 2
    # B ended at experiment 1 and is carried forward at 2.0
    assert c.median == [5.0, 3.5, 3.0, 3.0, 2.5]
    assert c.q25[1] == pytest.approx(2.75) and c.q75[1] == pytest.approx(4.25)
    assert c.best_tag == "a1" and c.best_at == (1, 2.0)
    assert curves["random"].median == [5.0, 5.0, 5.0]


def test_box_values_per_run() -> None:
    assert data.acceptance(A) == pytest.approx(2 / 4)
    assert data.acceptance(run("b", "c", [("keep", 1.0)])) is None
    sessions = RunData("s", "c", sessions=3, attempts=(Attempt(0, "keep", 1.0), Attempt(1, "keep", 0.5, session=2)))
    assert data.sessions_after_first(sessions) == 2
    assert data.sessions_after_first(A) is None  # no sessions at all: not a row of zeros
    # 4 experiments over a 40 s window of 10 s budgets: 3 valid (keep/discard) of 4 possible
    assert data.valid_vs_max(A) == (3, 4.0, 0.75)
    boxes = data.boxes([A, B, R])
    assert boxes["acceptance"]["agent"] == [("a0", 0.5), ("a1", 1.0)]
    assert boxes["sessions"]["agent"] == [] and boxes["gain"]["agent"] == [("a0", 40.0), ("a1", 60.0)]
    assert boxes["valid"]["random"] == [("r0", 1.0)]


def test_categories_prefer_the_agents_tag_then_the_diff_then_params() -> None:
    assert data.categories(Attempt(1, "keep", 1.0, description="[Optimizer] try adamw")) == {"optimizer"}
    diff = ("--- a/train.py\n+++ b/train.py\n@@ -3,3 +3,3 @@\n-LR = 0.1\n+LR = 0.2\n"
            "@@ -20,4 +20,4 @@ def model(x):\n-    return x\n+    return 2 * x\n")
    assert data.categories(Attempt(1, "keep", 1.0, diff=diff)) == {"knob:LR", "code:train.py:model"}
    by_params = Attempt(1, "keep", 1.0, params={"LR": 0.2, "WD": 0.1})
    assert data.categories(by_params, {"LR": 0.1, "WD": 0.1}) == {"knob:LR"}
    assert data.categories(Attempt(1, "keep", 1.0)) == {"other"}


def test_category_stats_share_of_runs_and_mean_gain() -> None:
    x = run("x", "c", [("keep", 10.0), ("keep", 8.0), ("discard", 9.0), ("keep", 7.0)],
            desc={1: "[lr] up", 2: "[arch] wider", 3: "[lr] down"})
    y = run("y", "c", [("keep", 10.0), ("discard", 11.0)], desc={1: "[arch] deeper"})
    stats_ = data.category_stats([x, y])["c"]
    assert stats_["lr"].improved == 1 and stats_["lr"].share == 0.5 and stats_["lr"].mean_gain == pytest.approx(1.5)
    assert stats_["arch"].tried == 2 and stats_["arch"].improved == 0 and stats_["arch"].mean_gain is None


def test_run_view_has_every_attempt_the_steps_and_the_labelled_keeps() -> None:
    view = data.run_view(A)
    assert [a[0] for a in view.attempts] == [0, 1, 2, 4]
    assert view.failed == [(3, "crash")]
    assert view.steps == [(0, 5.0), (1, 5.0), (2, 4.0), (3, 4.0), (4, 3.0)]
    assert view.keeps == [(0, 5.0, "e0"), (2, 4.0, "e2"), (4, 3.0, "e4")]


def test_statistics_table_and_rank_test() -> None:
    good = [run(f"g{i}", "good", [("keep", 5.0), ("keep", 1.0 + i / 10)]) for i in range(6)]
    bad = [run(f"b{i}", "bad", [("keep", 5.0), ("keep", 3.0 + i / 10)]) for i in range(6)]
    rows = {s.condition: s for s in stats.summary(good + bad)}
    assert rows["good"].median == pytest.approx(1.25) and rows["good"].iqr == pytest.approx(0.25)
    assert rows["good"].best == 1.0 and rows["bad"].runs == 6
    (pair,) = stats.pairwise(good + bad)
    assert pair.p is not None and pair.p < 0.01
    same = stats.pairwise(good[:1] + bad)
    assert same[0].p is None


def test_gain_is_against_each_runs_own_baseline_in_either_direction() -> None:
    assert data.baseline(A) == 5.0 and data.gain_curve(A) == [0.0, 0.0, 1.0, 1.0, 2.0]
    assert data.final_gain(A) == (2.0, pytest.approx(0.4))
    up = run("u", "c", [("keep", 2.0), ("keep", 3.0)], direction="maximize")
    assert data.final_gain(up) == (1.0, 0.5)
    failed = run("f", "c", [("crash", None), ("keep", 1.0)])
    assert data.baseline(failed) is None and data.final_gain(failed) is None
    assert data.final_gain(run("z", "c", [("keep", 0.0), ("keep", -1.0)])) == (1.0, None)


def test_gain_lines_use_a_log_ratio_only_when_runs_span_decades() -> None:
    near = data.gain_lines([A, B])
    assert near.scale == "percent" and near.lines["agent"][0] == ("a0", [0.0, 0.0, 20.0, 20.0, 40.0])
    assert near.median["agent"] == [0.0, 30.0, 40.0, 40.0, 50.0]
    far = data.gain_lines([run("d", "c", [("keep", 10.0), ("keep", 1e-3)])])
    assert far.scale == "ratio" and far.lines["c"] == [("d", [1.0, 1e-4])]


def test_box_and_category_notes_say_which_panels_carry_nothing() -> None:
    flat = [run(f"f{i}", "flat", [("keep", 5.0), ("discard", 6.0)], desc={1: "[lr] up"}) for i in range(2)]
    notes = data.box_notes([A, *flat])
    assert notes["sessions"] == {"agent": "no sessions: one agent call per experiment",
                                 "flat": "no sessions: one agent call per experiment"}
    assert notes["acceptance"] == {"flat": "nothing kept in 2 experiments"}
    assert notes["gain"] == {"flat": "no run improved on its baseline"}
    knobs = run("k", "knobs", [("keep", 5.0), ("keep", 4.0), ("discard", 6.0)],
                params={1: {"X": 1, "Y": 2}, 2: {"X": 3, "Y": 4}})
    cat = data.category_notes([knobs, *flat, A])
    assert "nothing was kept" in cat["flat"] and "same 2 categories together" in cat["knobs"]
    assert "agent" not in cat


def test_summary_gives_median_iqr_and_a_bootstrap_ci_of_the_gain() -> None:
    runs = [run(f"g{i}", "good", [("keep", 5.0 + i), ("keep", 1.0 + i)]) for i in range(8)]
    (s,) = stats.summary(runs)
    assert s.gain_median == 4.0 and s.gain_iqr == 0.0 and s.gain_ci == (4.0, 4.0)  # every run gained 4
    assert s.baseline_min == 5.0 and s.baseline_max == 12.0
    spread = [run(f"s{i}", "s", [("keep", 10.0), ("keep", 10.0 - i)]) for i in range(10)]
    (t,) = stats.summary(spread)
    low, high = t.gain_ci
    assert low < t.gain_median < high and 1 <= low and high <= 8
    assert t.rel_median == pytest.approx(0.45)


def test_pairs_report_u_cliffs_delta_and_holm_adjusted_p() -> None:
    good = [run(f"g{i}", "good", [("keep", 5.0), ("keep", 1.0 + i / 10)]) for i in range(6)]
    bad = [run(f"b{i}", "bad", [("keep", 5.0), ("keep", 3.0 + i / 10)]) for i in range(6)]
    same = [run(f"c{i}", "same", [("keep", 5.0), ("keep", 3.0 + i / 10)]) for i in range(6)]
    pairs = {(p.a, p.b): p for p in stats.pairwise(good + bad + same)}
    gb = pairs[("good", "bad")]
    assert gb.u == 36 and gb.cliffs_delta == 1.0 and gb.cles == 1.0  # every good run gained more
    # three pairs; good-bad and good-same share the smallest p: Holm multiplies it by 3
    assert gb.p < 0.01 and gb.p_holm == pytest.approx(3 * gb.p) and gb.significant
    bs = pairs[("bad", "same")]
    assert bs.cliffs_delta == 0.0 and bs.p_holm == 1.0 and not bs.significant
    words = stats.verdicts(good + bad + same, list(pairs.values()))
    assert any(w.startswith("good gained more than bad") for w in words)
    assert any(w.startswith("bad vs same: no significant difference") for w in words)


def test_holm_multiplies_the_smallest_p_by_the_number_of_tests_and_stays_monotone() -> None:
    assert stats.holm([0.01, 0.04, None, 0.03]) == [pytest.approx(0.03), pytest.approx(0.06), None,
                                                    pytest.approx(0.06)]


def test_baselines_are_called_different_only_beyond_their_noise() -> None:
    same = [run(f"a{i}", "a", [("keep", 5.0), ("keep", 4.0)]) for i in range(3)]
    assert "Every run's baseline measured metric = 5" in stats.baselines(same)
    noisy = [run(f"a{i}", "a", [("keep", 5.0 + i), ("keep", 4.0)]) for i in range(3)] + \
            [run(f"b{i}", "b", [("keep", 5.5 + i), ("keep", 4.0)]) for i in range(3)]
    assert stats.baselines(noisy).startswith("The conditions' baselines agree within their noise")
    apart = [run(f"a{i}", "a", [("keep", 5.0 + i / 10), ("keep", 4.0)]) for i in range(3)] + \
            [run(f"b{i}", "b", [("keep", 9.0 + i / 10), ("keep", 4.0)]) for i in range(3)]
    text = stats.baselines(apart)
    assert text.startswith("The conditions' baselines differ by more than their noise") and "a 5.1, b 9.1" in text
    floored = [RunData(r.tag, r.condition, attempts=r.attempts, noise_sigma=5.0) for r in apart]
    assert "agree within their noise" in stats.baselines(floored) and "ouroboros noise" in stats.baselines(floored)
