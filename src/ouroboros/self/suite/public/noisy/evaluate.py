"""PROTECTED. Evaluator of the suite task noisy (noisy): its `measure`. The task's evaluate
command is `python suitekit.py`, the suite's shared code, copied beside this file: it reads params.py.

`measure(values, seed)` is what the delta benchmark's trusted re-measurement calls.
"""

import random

CENTER = [1.5, -2.5, 0.5]
SIGMA = 0.3


def measure(values, seed):
    x = [float(values[f'X{i}']) for i in range(3)]
    true = sum((xi - c) ** 2 for xi, c in zip(x, CENTER, strict=True))
    noise = random.Random(f'{seed}:{x}').gauss(0.0, SIGMA)
    return {'loss': true + noise, 'true_loss': true}
