"""PROTECTED. Evaluator of the suite task phrase-h (text): reads the knobs of params.py without
running it (ast), writes its metrics as JSON to $OUROBOROS_METRICS and prints them.

`measure(values, seed)` is what the delta benchmark's trusted re-measurement calls.
"""

import ast
import json
import math
import os
import sys

TARGET = 'every change is measured twice'
WORDS = 5


def distance(a, b):
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def measure(values, seed):
    text = ' '.join(str(values[f'WORD_{i}']) for i in range(WORDS))
    return {'distance': float(distance(text, TARGET))}


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
