"""Ouroboros improves itself: the suite, the delta benchmark, versions, the gate, lineage.

This package is part of the trusted core: the self task (`ouroboros init --template self`) protects
it, and the trusted evaluator imports only it, never the editable policy or agents. So nothing here
may import ouroboros.agents or ouroboros.loop at module level, and nothing anywhere imports
ouroboros.policy (the editable policy file is read as data: ouroboros/policyfile.py). The exception
is driver.py (`run --self`, run by the user's installation and never by the evaluator), whose agent
subclasses the command agent.
"""
