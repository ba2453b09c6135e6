"""False keeps with and without the noise floor, on a synthetic task with known true effects.

    python bench/noise_false_keeps.py [--runs 200] [--experiments 100] [--sigma 0.02] [--z 2]

Each proposal has a true effect on the metric (minimize): 20% are real improvements (gain drawn
from |N(0, 2 sigma)|), 80% are neutral or harmful (|N(0, sigma)| worse, a quarter of them exactly 0).
The measured metric is the true one plus N(0, sigma) noise. The judge (ouroboros.judge) decides
greedily (keep if better: min_delta 0, the examples' default), with the noise floor
max(0, z * sigma_hat) where sigma_hat comes from R baseline re-runs (ouroboros.noise.estimate),
and with the floor plus a confirmation re-run (judge.confirm).
A false keep is a keep whose true effect is not an improvement over the true best at the time.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys

from ouroboros.judge import Verdict, effective_min_delta, judge
from ouroboros.noise import estimate


def one_run(rng: random.Random, n: int, sigma: float, min_delta: float, confirm: bool) -> tuple[int, int, float]:
    true_best = 1.0
    seen_best = true_best + rng.gauss(0, sigma)
    keeps = false_keeps = 0
    for _ in range(n):
        if rng.random() < 0.2:
            effect = -abs(rng.gauss(0, 2 * sigma))
        else:
            effect = 0.0 if rng.random() < 0.25 else abs(rng.gauss(0, sigma))
        true = true_best + effect
        seen = true + rng.gauss(0, sigma)
        if judge(seen, seen_best, True, min_delta, simplicity=False).verdict != Verdict.KEEP:
            continue
        if confirm:
            seen = max(seen, true + rng.gauss(0, sigma))  # the worse of the two, as loop._judge does
            if judge(seen, seen_best, True, min_delta, simplicity=False).verdict != Verdict.KEEP:
                continue
        keeps += 1
        false_keeps += true >= true_best
        true_best, seen_best = true, seen
    return keeps, false_keeps, true_best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--experiments", type=int, default=100)
    ap.add_argument("--sigma", type=float, default=0.02)
    ap.add_argument("--z", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=5, help="baseline re-runs behind the noise floor")
    args = ap.parse_args()
    print(f"command: python {' '.join(sys.argv)}")
    print(f"noise sigma {args.sigma:g}; floor = {args.z:g} x sigma estimated from {args.repeats} baseline re-runs")
    print(f"{'judge':<28} {'keeps/run':>9} {'false keeps/run':>16} {'false-keep rate':>16} {'final true':>11}")
    for label, floor, confirm in (("greedy keep-if-better", False, False), ("noise floor", True, False),
                                  ("noise floor + confirmation", True, True)):
        rng = random.Random(0)
        totals = []
        for _ in range(args.runs):
            sigma_hat = estimate([1.0 + rng.gauss(0, args.sigma) for _ in range(args.repeats)])
            min_delta = effective_min_delta(0.0, sigma_hat if floor else None, args.z)
            totals.append(one_run(rng, args.experiments, args.sigma, min_delta, confirm))
        keeps = sum(t[0] for t in totals)
        false = sum(t[1] for t in totals)
        print(f"{label:<28} {keeps / args.runs:>9.2f} {false / args.runs:>16.2f} "
              f"{false / max(keeps, 1):>16.1%} {statistics.median(t[2] for t in totals):>11.4f}")


if __name__ == "__main__":
    main()
