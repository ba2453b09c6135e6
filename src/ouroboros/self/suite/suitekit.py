"""PROTECTED. The code every suite task shares, and its evaluate command: `python suitekit.py`.

One copy lives in the package (src/ouroboros/self/suite/suitekit.py); it is copied beside a suite
task's evaluate.py, as a protected file of the task, wherever a suite task becomes a repo
(SuiteTask.export: the delta benchmark's inner runs, the gate, `ouroboros init --template suite:NAME`).

Run in the evaluation folder, it reads the knobs of params.py without running it (ast), calls
`measure(values, seed)` of the evaluate.py beside it (loaded by its path: the evaluation runs in
Python's safe-path mode, where the script's folder is not on the import path), writes the metrics as
JSON to $OUROBOROS_METRICS and prints them. The delta benchmark's trusted re-measurement calls
`read_params` and `measure` itself. An evaluate.py may define `Infeasible` (an exception its measure
raises for knob values outside the feasible region).
"""

import ast
import importlib.util
import json
import math
import os
import sys
from pathlib import Path


def read_params(source):
    values = {}
    for stmt in ast.parse(source).body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            try:
                values[stmt.targets[0].id] = ast.literal_eval(stmt.value)
            except ValueError:
                pass
    return values


def load_evaluator(path):
    spec = importlib.util.spec_from_file_location("suite_evaluate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    evaluator = load_evaluator(Path(__file__).resolve().parent / "evaluate.py")
    infeasible = getattr(evaluator, "Infeasible", ())
    try:
        with open("params.py") as f:
            values = read_params(f.read())
        metrics = evaluator.measure(values, int(os.environ.get("OUROBOROS_SEED", "0")))
    except infeasible as exc:
        sys.exit(f"infeasible: {exc}")
    except (OSError, SyntaxError, KeyError, TypeError, ValueError) as exc:
        sys.exit(f"unusable params.py ({type(exc).__name__}: {exc})")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values()):
        sys.exit(f"not finite: {metrics}")
    out = os.environ.get("OUROBOROS_METRICS")
    if out:
        with open(out, "w") as f:
            json.dump(metrics, f)
    for key, value in metrics.items():
        print(f"{key}: {value:.6f}")


if __name__ == "__main__":
    main()
