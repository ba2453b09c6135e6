"""PROTECTED. Evaluator of the suite task constrained-h (constrained): its `measure`. The task's evaluate
command is `python suitekit.py`, the suite's shared code, copied beside this file: it reads params.py.

`measure(values, seed)` is what the delta benchmark's trusted re-measurement calls.
"""

A, B, R = 2.0, 1.0, 1.0


class Infeasible(Exception):
    """Knob values outside the feasible region: the evaluation fails."""


def measure(values, seed):
    x, y = float(values['X']), float(values['Y'])
    if A * x + B * y > R:
        raise Infeasible(f'{A:g}*X + {B:g}*Y = {A * x + B * y:.4g} > {R:g}')
    return {'loss': (x - 1.0) ** 2 + (y - 1.0) ** 2}
