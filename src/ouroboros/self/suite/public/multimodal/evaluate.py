"""PROTECTED. Evaluator of the suite task multimodal (multimodal): its `measure`. The task's evaluate
command is `python suitekit.py`, the suite's shared code, copied beside this file: it reads params.py.

`measure(values, seed)` is what the delta benchmark's trusted re-measurement calls.
"""

import math

SHIFT = [0.5, -1.5]


def measure(values, seed):
    z = [float(values[f'X{i}']) - s for i, s in enumerate(SHIFT)]
    return {'loss': 10 * len(z) + sum(zi * zi - 10 * math.cos(2 * math.pi * zi) for zi in z)}
