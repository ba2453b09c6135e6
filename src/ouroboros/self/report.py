"""The lineage part of `ouroboros report --run TAG`: the tree of experiments, clade scores, and
for a self run the versions used, the delta scores with their intervals, and the holdout check."""

from __future__ import annotations

import textwrap
from pathlib import Path

from ouroboros.ledger import Experiment, Ledger
from ouroboros.self.lineage import tree
from ouroboros.task import RECORDS_DIR, Task


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"


def lineage_figure(exps: list[Experiment], minimize: bool, metric: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = tree(exps, minimize)
    by_commit = {e.commit_sha: e for e in exps if e.status == "keep"}
    measured = [e.metric for e in exps if e.metric is not None]
    top = (max(measured) if measured else 1.0)
    fig, ax = plt.subplots(figsize=(9, 5))
    for e in exps:
        p = by_commit.get(e.parent)
        y = e.metric if e.metric is not None else top
        if p is not None and e.n > 0 and p.metric is not None:
            ax.plot([p.n, e.n], [p.metric, y], color="#2ca02c" if e.status == "keep" else "#c8c8c8", lw=1, zorder=1)
        if e.status == "keep":
            ax.scatter([e.n], [y], color="#2ca02c", s=36, zorder=3)
            node = nodes[e.commit_sha]
            ax.annotate(f"{_fmt(e.metric)} | clade {_fmt(node.clade_best)} ({node.successes}:{node.failures})",
                        (e.n, y), xytext=(5, 6), textcoords="offset points", fontsize=7, color="#1a5e1a")
        elif e.metric is not None:
            ax.scatter([e.n], [y], color="#9a9a9a", s=16, zorder=2)
        else:
            ax.scatter([e.n], [y], marker="x", color="#d62728", s=22, zorder=2)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("experiment (edges join each experiment to its parent)")
    ax.set_ylabel(f"{metric} ({'lower' if minimize else 'higher'} is better)")
    ax.set_title("lineage: keeps green (own score | clade best, successes:failures), discards grey, failures x")
    ax.grid(alpha=0.3)
    return fig


def tree_rows(exps: list[Experiment], minimize: bool) -> list[list]:
    """The lineage tree as table rows, depth first: each keep under the keep it started from, with its
    own score, its clade's best score and its clade's counts."""
    nodes = tree(exps, minimize)
    children: dict[str, list[str]] = {}
    roots = []
    for sha, node in nodes.items():
        parent = node.exp.parent
        if parent in nodes and parent != sha and node.exp.n > 0:
            children.setdefault(parent, []).append(sha)
        else:
            roots.append(sha)
    rows: list[list] = []
    stack = [(sha, 0) for sha in sorted(roots, key=lambda c: -nodes[c].exp.n)]
    while stack:
        sha, depth = stack.pop()
        node = nodes[sha]
        e = node.exp
        rows.append([("· " * depth) + ("└ " if depth else "") + str(e.n), _fmt(e.metric), _fmt(node.clade_best),
                     f"{node.successes}:{node.failures}", node.descendants, e.description])
        stack += [(c, depth + 1) for c in sorted(children.get(sha, []), key=lambda c: -nodes[c].exp.n)]
    return rows


def sections(task: Task, tag: str, out: Path) -> tuple[list[dict], list[dict]]:
    """Figures and tables for the run page."""
    from ouroboros.report import figures

    records = task.root / RECORDS_DIR
    ledger = Ledger(records)
    try:
        exps = ledger.experiments(tag, finished_only=True)
        run = ledger.run(tag)
    finally:
        ledger.close()
    if not exps or run is None:
        return [], []
    minimize = run.direction == "minimize"
    svg = figures.save(lineage_figure(exps, minimize, run.metric), out, "lineage")
    figs = [{"id": "lineage", "svg": svg, "caption": "The lineage tree: every experiment joined to its parent; "
             "each keep shows its own score, its clade's best score, and its clade's successes (keeps, itself "
             "included) and failures (every other verdict below it)."}]
    nodes = tree(exps, minimize)
    sign = -1 if minimize else 1
    rows = []
    for node in nodes.values():
        e = node.exp
        gain = None if node.clade_best is None or e.metric is None else sign * (node.clade_best - e.metric)
        rows.append((gain or 0.0, [e.n, _fmt(e.metric), _fmt(node.clade_best), _fmt(gain), node.descendants,
                                   f"{node.rate:.2f}", e.description]))
    rows.sort(key=lambda r: -r[0])
    tables = [{"id": "lineage-tree", "title": "lineage tree",
               "note": "every keep under the keep it started from (depth shown by dots); own score, the best "
                       "score in its clade (itself and its descendants), and the clade's successes:failures",
               "header": ["n", run.metric, "clade best", "successes:failures", "descendants", "description"],
               "rows": tree_rows(exps, minimize), "text_last": True},
              {"id": "clades", "title": "changes whose descendants improved most",
               "note": "clade gain: the best score among a keep's descendants minus its own (0 when none improved "
                       "on it); CMP: the clade's success rate (keeps among descendants, Beta(1,1) posterior mean)",
               "header": ["n", run.metric, "clade best", "clade gain", "descendants", "CMP", "description"],
               "rows": [r[1] for r in rows], "text_last": True}]
    state = run.config.get("self")  # the chained run row, not the copy in runs/<tag>/self.json
    if isinstance(state, dict):
        tables += _self_tables(state, exps)
    return figs, tables


def _self_tables(state: dict, exps: list[Experiment]) -> list[dict]:
    rows = []
    for e in exps:
        m = e.metrics
        ci = f"{m['delta_low']:.4f} .. {m['delta_high']:.4f}" if "delta_low" in m else "-"
        rows.append([e.n, e.model or "-", e.status, _fmt(e.metric), ci,
                     textwrap.shorten(e.reason or e.description, 120, placeholder="...")])
    tables = [{"id": "versions", "title": "versions and delta scores",
               "note": "version: the commit of Ouroboros that proposed and ran the experiment; delta: the "
                       "candidate's score on the public suite, with its bootstrap 95% interval over tasks",
               "header": ["n", "version", "verdict", "delta", "95% CI", "reason"], "rows": rows, "text_last": True}]
    hold = state.get("holdout")
    if hold and "first_result" in hold:
        first, final = hold["first_result"], hold["final_result"]
        overlap = first["low"] <= final["high"] and final["low"] <= first["high"]
        verdict = "the intervals overlap: no clear difference" if overlap else \
            ("the final version is better" if final["delta"] > first["delta"] else "the final version is worse")
        tables.append({"id": "holdout", "title": "holdout suite: first vs final version", "note": verdict,
                       "header": ["version", "commit", "delta", "95% CI"],
                       "rows": [[k, hold[k][:12], f"{r['delta']:.4f}", f"{r['low']:.4f} .. {r['high']:.4f}"]
                                for k, r in (("first", first), ("final", final))]})
    return tables
