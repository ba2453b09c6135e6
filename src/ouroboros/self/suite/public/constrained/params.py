"""EDITABLE. Reach the point (1, 1) without leaving 1x + 1y <= 1: infeasible knobs crash the evaluation."""

X = -1.0
Y = -1.0
