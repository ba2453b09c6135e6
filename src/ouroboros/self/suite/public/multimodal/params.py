"""EDITABLE. A shifted Rastrigin function: many local minima, one global."""

X0 = 3.0
X1 = 3.0
