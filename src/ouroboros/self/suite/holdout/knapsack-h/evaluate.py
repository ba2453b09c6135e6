"""PROTECTED. Evaluator of the suite task knapsack-h (combinatorial): reads the knobs of params.py without
running it (ast), writes its metrics as JSON to $OUROBOROS_METRICS and prints them.

`measure(values, seed)` is what the delta benchmark's trusted re-measurement calls.
"""

import ast
import json
import math
import os
import sys

VALUES = [6, 14, 9, 12, 5, 11, 8, 10]
WEIGHTS = [3, 8, 5, 7, 2, 6, 4, 6]
CAPACITY = 18


def measure(values, seed):
    take = [bool(values[f'TAKE_{i}']) for i in range(len(VALUES))]
    weight = sum(w for t, w in zip(take, WEIGHTS, strict=True) if t)
    value = sum(v for t, v in zip(take, VALUES, strict=True) if t)
    return {'value': float(value if weight <= CAPACITY else 0), 'weight': float(weight)}


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
