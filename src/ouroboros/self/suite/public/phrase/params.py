"""EDITABLE. Assemble a sentence from word choices (WORD_i) as close as possible to a hidden target (edit distance)."""

WORD_0 = 'this'
WORD_1 = 'log'
WORD_2 = 'leaps'
WORD_3 = 'lonely'
WORD_4 = 'meal'
WORD_5 = 'gins'
