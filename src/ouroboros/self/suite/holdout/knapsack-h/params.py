"""EDITABLE. A knapsack: take items (TAKE_i) for the most value within weight 18; an overweight pack is worth nothing."""

TAKE_0 = False
TAKE_1 = False
TAKE_2 = False
TAKE_3 = False
TAKE_4 = False
TAKE_5 = False
TAKE_6 = False
TAKE_7 = False
