"""EDITABLE. A noisy objective: the evaluator adds seeded noise; its true optimum is known."""

X0 = 4.0
X1 = 4.0
X2 = 4.0
