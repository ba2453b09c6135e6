"""The search's own settings: the knobs of Ouroboros's proposal policies.

Every ALL_CAPS literal here is read by the knob agents at proposal time (agents/policy.py for
`policy`, agents/search.py for `tpe`) and by the loop's `tree` search policy (self/lineage.py).
This is the editable region of the self task (`ouroboros init --template self`): when Ouroboros
improves itself offline, its own knob agent searches these values, and a kept version proposes
with the values it found. This file is read as data, never imported or run (policyfile.py parses it
with `ast`): it may hold only this docstring, comments and `NAME = number` lines for the settings
below; anything else is refused with an error naming the line.
"""

# ---- mutation (agent `policy`) -----------------------------------------------------------------
MUTATE_KNOBS = 1  # how many knobs one mutation changes (at most the number of knobs)
MUTATE_SCALE = 0.25  # a mutation's step, as a fraction of the knob's range (log range for log knobs)
EXPLORE = 0.2  # the chance that a proposal samples every knob afresh instead of mutating the best
STARTUP = 3  # proposals sampled afresh before mutations start

# ---- TPE (agent `tpe`) ---------------------------------------------------------------------------
TPE_STARTUP = 5  # random trials (the baseline counts) before TPE's model takes over

# ---- tree search (`[search] policy = "tree"`) ----------------------------------------------------
TREE_PRIOR = 1.0  # Beta prior pseudo-counts of a clade's success rate in Thompson sampling
