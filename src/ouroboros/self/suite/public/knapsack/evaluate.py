"""PROTECTED. Evaluator of the suite task knapsack (combinatorial): its `measure`. The task's evaluate
command is `python suitekit.py`, the suite's shared code, copied beside this file: it reads params.py.

`measure(values, seed)` is what the delta benchmark's trusted re-measurement calls.
"""

VALUES = [10, 13, 7, 8, 15, 4, 9, 11]
WEIGHTS = [5, 7, 3, 4, 8, 2, 5, 6]
CAPACITY = 20


def measure(values, seed):
    take = [bool(values[f'TAKE_{i}']) for i in range(len(VALUES))]
    weight = sum(w for t, w in zip(take, WEIGHTS, strict=True) if t)
    value = sum(v for t, v in zip(take, VALUES, strict=True) if t)
    return {'value': float(value if weight <= CAPACITY else 0), 'weight': float(weight)}
