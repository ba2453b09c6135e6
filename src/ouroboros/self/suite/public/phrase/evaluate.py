"""PROTECTED. Evaluator of the suite task phrase (text): its `measure`. The task's evaluate
command is `python suitekit.py`, the suite's shared code, copied beside this file: it reads params.py.

`measure(values, seed)` is what the delta benchmark's trusted re-measurement calls.
"""

TARGET = 'the loop keeps only real gains'
WORDS = 6


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
