"""Figures (matplotlib, Agg): each written as PNG and SVG, from the data in data.py only."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["text.parse_math"] = False  # labels hold agent text: `$...$` is text, never TeX
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ouroboros.report.data import BOXES, CategoryStat, Curve, GainLines, RunView  # noqa: E402

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
BASELINE_COLOR = "#7f7f7f"


def palette(conditions: list[str], baseline: str | None) -> dict[str, str]:
    others = [c for c in conditions if c != baseline]
    colors = {c: COLORS[i % len(COLORS)] for i, c in enumerate(others)}
    if baseline is not None:
        colors[baseline] = BASELINE_COLOR
    return colors


def _maybe_log(ax, values: list[float]) -> None:
    """A log scale where positive values span more than two decades (losses shrinking toward 0)."""
    if values and min(values) > 0 and max(values) / min(values) > 100:
        ax.set_yscale("log")


def save(fig: Figure, out: Path, stem: str) -> Path:
    """Write <stem>.png and <stem>.svg; returns the SVG's path."""
    out.mkdir(parents=True, exist_ok=True)
    with plt.rc_context({"svg.hashsalt": stem, "svg.fonttype": "path"}):
        fig.savefig(out / f"{stem}.png", dpi=110, bbox_inches="tight")
        fig.savefig(out / f"{stem}.svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return out / f"{stem}.svg"


def curves_figure(curves: dict[str, Curve], baseline: str | None, metric: str, minimize: bool) -> Figure:
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = palette(list(curves), baseline)
    for cond, c in curves.items():
        is_base = cond == baseline
        color = colors[cond]
        label = f"{cond} (baseline, n={c.runs})" if is_base else f"{cond} (n={c.runs})"
        ax.fill_between(c.x, c.q25, c.q75, color=color, alpha=0.12 if is_base else 0.2, step="post", lw=0)
        ax.step(c.x, c.median, where="post", color=color, lw=2, ls=":" if is_base else "-", label=label)
        if not is_base:
            ax.step(range(len(c.best_line)), c.best_line, where="post", color=color, lw=1, ls="--", alpha=0.9)
            ax.plot(*c.best_at, marker="*", ms=14, color=color, mec="black", mew=0.6, ls="none")
    _maybe_log(ax, [v for c in curves.values() for v in c.q25 + c.q75 + c.best_line])
    ax.set_xlabel("experiment (0 = baseline)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"best {metric} so far ({'lower' if minimize else 'higher'} is better)")
    ax.set_title("best so far: median, interquartile band, best run dashed (star: its best)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right" if minimize else "lower right")
    return fig


GAIN_LABELS = {
    "ratio": "best so far / own baseline (log scale; 1 = no gain)",
    "percent": "gain over own baseline (% of experiment 0)",
    "absolute": "gain over own baseline",
}


def gain_figure(g: GainLines, baseline: str | None, minimize: bool) -> Figure:
    """Every run's best so far relative to its own baseline (thin), each condition's median (thick)."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = palette(list(g.lines), baseline)
    for cond, lines in g.lines.items():
        color = colors[cond]
        for _, values in lines:
            ax.step(range(len(values)), values, where="post", color=color, lw=0.8, alpha=0.45)
        ax.step(range(len(g.median[cond])), g.median[cond], where="post", color=color, lw=2.4,
                ls=":" if cond == baseline else "-", label=f"{cond}: median of {len(lines)} runs (thin: each run)")
    if g.scale == "ratio":
        ax.set_yscale("log")
    ax.axhline(1.0 if g.scale == "ratio" else 0.0, color="black", lw=0.8)
    better = ("lower" if minimize else "higher") if g.scale == "ratio" else "higher"
    ax.set_ylabel(f"{GAIN_LABELS[g.scale]}; {better} is better", fontsize=9)
    ax.set_xlabel("experiment (0 = the run's own baseline)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("gain over each run's own baseline, per run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def boxes_figure(boxes: dict[str, dict[str, list[tuple[str, float]]]], baseline: str | None,
                 notes: dict[str, dict[str, str]] | None = None, titles: dict[str, str] | None = None,
                 log: tuple[str, ...] = ()) -> Figure:
    """One panel per box plot; a condition for which a panel carries no information gets its reason
    written in place of its dots. `titles` overrides panel titles; panels in `log` get a log axis."""
    keys = list(BOXES)
    notes = notes or {}
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4.2))
    rng = np.random.default_rng(0)  # the jitter is fixed, so the same data gives the same picture
    for ax, key in zip(axes, keys, strict=True):
        groups = boxes[key]
        conds = list(groups)
        colors = palette(conds, baseline)
        said = notes.get(key, {})
        data = [[] if c in said else [v for _, v in groups[c]] for c in conds]
        shown = [i for i, d in enumerate(data) if d]
        if shown:
            ax.boxplot([data[i] for i in shown], positions=[i + 1 for i in shown], widths=0.5, showfliers=False,
                       medianprops={"color": "black"})
        for i, d in enumerate(data):
            ax.scatter(i + 1 + rng.uniform(-0.15, 0.15, len(d)), d, s=14, color=colors[conds[i]], alpha=0.8,
                       zorder=3)
        for i, c in enumerate(conds):
            if c in said or not data[i]:
                ax.text(i + 1, 0.5, textwrap.fill(said.get(c, "no data"), 16), transform=ax.get_xaxis_transform(),
                        ha="center", va="center", fontsize=8, color="#555555", style="italic")
        ax.set_xlim(0.4, len(conds) + 0.6)
        if not shown:
            ax.set_yticks([])
        elif key in log:
            ax.set_yscale("log")
        ax.set_xticks(range(1, len(conds) + 1), conds, rotation=20, ha="right", fontsize=8)
        ax.set_title((titles or {}).get(key, BOXES[key][0]), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def categories_figure(stats: dict[str, dict[str, CategoryStat]], baseline: str | None, top: int = 40,
                      notes: dict[str, str] | None = None) -> Figure:
    """Every category (up to `top`, with the number left out said in the title), and in words the
    conditions whose bars would say nothing."""
    notes = notes or {}
    conds = list(stats)
    colors = palette(conds, baseline)
    score: dict[str, float] = {}
    for per in stats.values():
        for cat, s in per.items():
            score[cat] = max(score.get(cat, 0.0), s.share + 1e-6 * s.tried)
    ranked = sorted(score, key=lambda c: (-score[c], c))
    cats = ranked[:top][::-1]
    left_out = len(ranked) - len(cats)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 1.6 + 0.3 * max(len(cats), 1) * max(1, len(conds) / 2)
                                                 + 0.25 * len(notes)), sharey=True)
    height = 0.8 / max(len(conds), 1)
    for j, cond in enumerate(conds):
        if not any(s.improved for s in stats[cond].values()):
            continue  # its bars would all be zero: the note below says why
        y = np.arange(len(cats)) + (j - (len(conds) - 1) / 2) * height
        share = [stats[cond][c].share if c in stats[cond] else 0.0 for c in cats]
        gain = [stats[cond][c].mean_gain or 0.0 if c in stats[cond] else 0.0 for c in cats]
        ax.barh(y, share, height=height, color=colors[cond], label=cond)
        ax2.barh(y, gain, height=height, color=colors[cond])
    ax.set_yticks(range(len(cats)), cats, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of runs in which it improved the best")
    ax2.set_xlabel("mean gain when it did")
    ax.legend(fontsize=8, loc="lower right")
    for a in (ax, ax2):
        a.grid(axis="x", alpha=0.3)
    title = "idea categories (agent's [tag], or the knobs / code regions changed)"
    if left_out:
        title += f"; {left_out} more not shown"
    fig.suptitle(title, fontsize=10)
    if not cats:
        ax.text(0.5, 0.5, "no experiment after the baseline", transform=ax.transAxes, ha="center", color="#555555")
    fig.tight_layout()
    if notes:
        fig.subplots_adjust(bottom=0.12 + 0.06 * len(notes))
        fig.text(0.01, 0.01, "\n".join(textwrap.fill(n, 150) for n in notes.values()), fontsize=8,
                 color="#555555", style="italic", va="bottom")
    return fig


def run_figure(view: RunView, minimize: bool) -> Figure:
    fig, ax = plt.subplots(figsize=(9, 5))
    if view.attempts:
        n, m, _ = zip(*view.attempts, strict=True)
        ax.scatter(n, m, color="#b0b0b0", s=16, label="attempt", zorder=2)
    if view.steps:
        xs, ys = zip(*view.steps, strict=True)
        last = max(xs[-1], max((a[0] for a in view.attempts), default=0), max((f[0] for f in view.failed), default=0))
        ax.step(list(xs) + [last], list(ys) + [ys[-1]], where="post", color="#2ca02c", lw=2, label="best so far")
    if view.failed:
        lo, hi = ax.get_ylim()
        ax.scatter([f[0] for f in view.failed], [hi] * len(view.failed), marker="x", color="#d62728", s=20,
                   label="crash / timeout / violation", clip_on=False)
    for i, (n, m, desc) in enumerate(view.keeps):
        ax.scatter([n], [m], color="#2ca02c", s=30, zorder=3)
        label = textwrap.shorten(desc, 48, placeholder="...")
        ax.annotate(label, (n, m), xytext=(6, 10 + 9 * (i % 3)), textcoords="offset points", fontsize=7,
                    rotation=20, color="#1a5e1a")
    _maybe_log(ax, [a[1] for a in view.attempts])
    ax.set_xlabel("experiment")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{view.metric} ({'lower' if minimize else 'higher'} is better)")
    ax.set_title(f"run {view.tag}: {len(view.attempts)} measured, {len(view.keeps)} kept")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
