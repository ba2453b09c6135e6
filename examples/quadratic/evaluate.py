"""PROTECTED. The evaluator of the quadratic task: the true loss of the point in solution.json.

It computes the objective itself, so nothing train.py prints or computes can change the score.
It writes {"loss": ...} as JSON to $OUROBOROS_METRICS (and prints `loss: ...`).
"""

import json
import math
import os
import sys

# ---- fixed: the objective (do not change) -------------------------------------------------
CENTER = [3.0, -1.0, 0.5, 2.0]
SCALES = [1.0, 10.0, 100.0, 0.1]  # condition number 1000: plain gradient descent struggles


def objective(x):
    return sum(s * (xi - c) ** 2 for xi, c, s in zip(x, CENTER, SCALES, strict=True))


def main():
    try:
        with open("solution.json") as f:
            x = [float(v) for v in json.load(f)["x"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.exit(f"evaluate.py: no usable solution.json ({exc})")
    if len(x) != len(CENTER) or not all(math.isfinite(v) for v in x):
        sys.exit(f"evaluate.py: solution.json needs {len(CENTER)} finite numbers, got {x}")
    loss = objective(x)
    metrics = {"loss": loss}
    out = os.environ.get("OUROBOROS_METRICS")
    if out:
        with open(out, "w") as f:
            json.dump(metrics, f)
    print(f"loss: {loss:.6f}")


if __name__ == "__main__":
    main()
