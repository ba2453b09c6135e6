"""EDITABLE. A badly conditioned quadratic bowl in four knobs."""

X0 = 0.0
X1 = 0.0
X2 = 0.0
X3 = 0.0
