"""Ouroboros improves itself: the suite, the delta benchmark, versions, the gate, lineage.

This package is part of the trusted core: the self task (`ouroboros init --template self`) protects
it, and the trusted evaluator imports only it, never the editable policy or agents. So nothing here
may import ouroboros.agents, ouroboros.policy or ouroboros.loop at module level.
"""
