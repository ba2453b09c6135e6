"""Lineage: a run as a tree of experiments by parent, clades, and the `tree` search policy.

Every experiment records its parent (the commit it started from). The nodes that can be expanded
are the keeps (the baseline included): versions that passed the judge against their own parent.
A node's clade is the node and all its descendants. Its clade-metaproductivity estimate, as in the
Huxley-Gödel Machine, is the success rate of the experiments in its clade: successes are keeps
below the node, failures are every other verdict below it (and the node itself counts once as a
success, except the baseline). The `tree` policy draws one sample per node from
Beta(TREE_PRIOR + successes, TREE_PRIOR + failures) and expands the node with the largest draw
(Thompson sampling); `greedy` always extends the latest keep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ouroboros.ledger import Experiment

SEARCH_POLICIES = ("greedy", "tree")


@dataclass
class Node:
    exp: Experiment
    successes: int = 0
    failures: int = 0
    descendants: int = 0
    clade_best: float | None = None  # the best metric in the clade, the node's own included

    @property
    def rate(self) -> float:
        """The clade-metaproductivity estimate (posterior mean with a prior of 1, 1)."""
        return (1 + self.successes) / (2 + self.successes + self.failures)


def tree(history: list[Experiment], minimize: bool) -> dict[str, Node]:
    """Every keep by its commit, with its clade's counts."""
    keeps = [e for e in history if e.status == "keep"]
    nodes: dict[str, Node] = {}
    for e in keeps:
        nodes.setdefault(e.commit_sha, Node(e, clade_best=e.metric))
    for e in history:
        if e.status == "running" or e.n == 0:
            continue
        ok = e.status == "keep"
        if ok:
            nodes[e.commit_sha].successes += 1
        p, seen = e.parent, {e.commit_sha}
        while p in nodes and p not in seen:
            node = nodes[p]
            seen.add(p)
            node.descendants += 1
            node.successes += ok
            node.failures += not ok
            if e.metric is not None and ok and (node.clade_best is None or
                                                (e.metric < node.clade_best if minimize else e.metric > node.clade_best)):
                node.clade_best = e.metric
            p = node.exp.parent
    return nodes


def choose_parent(history: list[Experiment], minimize: bool, seed: int, n: int, prior: float) -> Experiment:
    """Thompson sampling over the keeps' clade-metaproductivity; deterministic for (seed, n)."""
    nodes = tree(history, minimize)
    rng = random.Random(f"tree:{seed}:{n}")
    draws = [(rng.betavariate(prior + node.successes, prior + node.failures), node.exp.n, node.exp)
             for node in nodes.values()]
    return max(draws, key=lambda d: (d[0], d[1]))[2]
