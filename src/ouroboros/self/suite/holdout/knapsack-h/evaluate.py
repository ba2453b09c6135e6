"""PROTECTED. Evaluator of the suite task knapsack-h (combinatorial): its `measure`. The task's evaluate
command is `python suitekit.py`, the suite's shared code, copied beside this file: it reads params.py.

`measure(values, seed)` is what the delta benchmark's trusted re-measurement calls.
"""

VALUES = [6, 14, 9, 12, 5, 11, 8, 10]
WEIGHTS = [3, 8, 5, 7, 2, 6, 4, 6]
CAPACITY = 18


def measure(values, seed):
    take = [bool(values[f'TAKE_{i}']) for i in range(len(VALUES))]
    weight = sum(w for t, w in zip(take, WEIGHTS, strict=True) if t)
    value = sum(v for t, v in zip(take, VALUES, strict=True) if t)
    return {'value': float(value if weight <= CAPACITY else 0), 'weight': float(weight)}
