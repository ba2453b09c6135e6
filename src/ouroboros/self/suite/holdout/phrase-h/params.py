"""EDITABLE. Assemble a sentence from word choices (WORD_i) as close as possible to a hidden target (edit distance)."""

WORD_0 = 'eve'
WORD_1 = 'range'
WORD_2 = 'it'
WORD_3 = 'measles'
WORD_4 = 'trice'
