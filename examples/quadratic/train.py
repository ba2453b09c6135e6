"""EDITABLE. Gradient descent with momentum on a badly conditioned quadratic; writes solution.json.

The knobs below are what `--agent random` and `--agent tpe` search.
"""

import json
import math

# ---- knobs ------------------------------------------------------------------------------------
LEARNING_RATE = 0.001  # step size; above 2/100 the stiffest axis diverges
MOMENTUM = 0.5  # heavy-ball momentum in [0, 1): speeds up the flat axes
STEPS = 200  # gradient steps; each costs microseconds
START = 0.0  # every coordinate starts here
CLIP = 100.0  # gradient norm clip: guards against divergence at large learning rates

# The objective as train.py believes it to be (the evaluator has its own copy).
CENTER = [3.0, -1.0, 0.5, 2.0]
SCALES = [1.0, 10.0, 100.0, 0.1]


def grad(x):
    return [2 * s * (xi - c) for xi, c, s in zip(x, CENTER, SCALES, strict=True)]


def main():
    x = [START] * len(CENTER)
    v = [0.0] * len(CENTER)
    for _ in range(STEPS):
        g = grad(x)
        norm = math.sqrt(sum(gi * gi for gi in g))
        if norm > CLIP:
            g = [gi * CLIP / norm for gi in g]
        v = [MOMENTUM * vi - LEARNING_RATE * gi for vi, gi in zip(v, g, strict=True)]
        x = [xi + vi for xi, vi in zip(x, v, strict=True)]
        if not all(math.isfinite(xi) for xi in x):
            break
    with open("solution.json", "w") as f:
        json.dump({"x": x}, f)
    loss = sum(s * (xi - c) ** 2 for xi, c, s in zip(x, CENTER, SCALES, strict=True))
    print(f"train_loss: {loss:.6f}")


if __name__ == "__main__":
    main()
