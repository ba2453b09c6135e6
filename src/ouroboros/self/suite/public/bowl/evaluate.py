"""PROTECTED. Evaluator of the suite task bowl (quadratic): its `measure`. The task's evaluate
command is `python suitekit.py`, the suite's shared code, copied beside this file: it reads params.py.

`measure(values, seed)` is what the delta benchmark's trusted re-measurement calls.
"""

CENTER = [3.0, -1.0, 0.5, 2.0]
SCALES = [1.0, 10.0, 100.0, 0.1]


def measure(values, seed):
    x = [float(values[f'X{i}']) for i in range(4)]
    return {'loss': sum(s * (xi - c) ** 2 for xi, c, s in zip(x, CENTER, SCALES, strict=True))}
