"""PROTECTED. Evaluator of the suite task noisy (noisy): reads the knobs of params.py without
running it (ast), writes its metrics as JSON to $OUROBOROS_METRICS and prints them.

`measure(values, seed)` is what the delta benchmark's trusted re-measurement calls.
"""

import ast
import json
import math
import os
import random
import sys

CENTER = [1.5, -2.5, 0.5]
SIGMA = 0.3


def measure(values, seed):
    x = [float(values[f'X{i}']) for i in range(3)]
    true = sum((xi - c) ** 2 for xi, c in zip(x, CENTER, strict=True))
    noise = random.Random(f'{seed}:{x}').gauss(0.0, SIGMA)
    return {'loss': true + noise, 'true_loss': true}


class Infeasible(Exception):
    pass


def read_params(source):
    values = {}
    for stmt in ast.parse(source).body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            try:
                values[stmt.targets[0].id] = ast.literal_eval(stmt.value)
            except ValueError:
                pass
    return values


def main():
    try:
        with open("params.py") as f:
            values = read_params(f.read())
        metrics = measure(values, int(os.environ.get("OUROBOROS_SEED", "0")))
    except Infeasible as exc:
        sys.exit(f"infeasible: {exc}")
    except (OSError, SyntaxError, KeyError, TypeError, ValueError) as exc:
        sys.exit(f"evaluate.py: unusable params.py ({type(exc).__name__}: {exc})")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values()):
        sys.exit(f"evaluate.py: not finite: {metrics}")
    out = os.environ.get("OUROBOROS_METRICS")
    if out:
        with open(out, "w") as f:
            json.dump(metrics, f)
    for key, value in metrics.items():
        print(f"{key}: {value:.6f}")


if __name__ == "__main__":
    main()
