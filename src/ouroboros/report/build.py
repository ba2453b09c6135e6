"""`ouroboros report`: load runs, compute each figure's data, draw it, write the page."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ouroboros.errors import OuroborosError
from ouroboros.report import data, figures, html, load, stats
from ouroboros.task import Task


def _fmt(v: float | None, digits: int = 6) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def study_report(study: Path, out: Path) -> Path:
    from ouroboros.study.runner import study_dir
    from ouroboros.study.spec import Study

    folder = study_dir(study)
    manifest, runs = load.study_runs(folder)
    if not runs:
        raise OuroborosError(f"study {manifest['study']['name']} has no runs yet; `ouroboros study run` first")
    spec = Study.model_validate(manifest["study"])
    return runs_report(runs, out, f"study {spec.name}", spec.baseline_condition,
                       f"{len(runs)} runs, {len({r.condition for r in runs})} conditions, "
                       f"{spec.repeats} repeats; records in {folder}")


def runs_report(runs: list[data.RunData], out: Path, title: str, baseline: str | None, subtitle: str = "") -> Path:
    """Figures and page for any set of runs grouped by condition (a study, or runs of one task)."""
    out.mkdir(parents=True, exist_ok=True)
    metric, minimize = runs[0].metric, runs[0].minimize
    curves = data.curves(runs)
    boxes = data.boxes(runs)
    cats = data.category_stats(runs)
    summary, pairs = stats.summary(runs), stats.pairwise(runs)
    base = baseline if baseline in curves else None
    figs = [
        {"id": "best_so_far", "svg": figures.save(figures.curves_figure(curves, base, metric, minimize), out,
                                                  "best_so_far"),
         "caption": "Best so far per condition: median line, interquartile band; the best single run dashed, "
                    "with a star at its best point." + (f" The {base} baseline is dotted grey." if base else "")},
        {"id": "per_run", "svg": figures.save(figures.boxes_figure(boxes, base), out, "per_run"),
         "caption": "Each dot is one run: acceptance rate, agent sessions after the first, and valid "
                    "experiments against the number of budget-long experiments that fit in the run's window."},
        {"id": "categories", "svg": figures.save(figures.categories_figure(cats, base), out, "categories"),
         "caption": "Idea categories: the share of runs in which the category improved the best, and the mean "
                    "gain when it did."},
    ]
    tables = [
        {"id": "summary", "title": f"final best {metric} per condition",
         "header": ["condition", "runs", "median", "IQR", "q25", "q75", "best"],
         "rows": [[s.condition, s.runs, _fmt(s.median), _fmt(s.iqr), _fmt(s.q25), _fmt(s.q75), _fmt(s.best)]
                  for s in summary]},
        {"id": "pairs", "title": "rank tests between conditions", "note": pairs[0].test if pairs else "",
         "header": ["condition A", "condition B", "p-value"],
         "rows": [[p.a, p.b, _fmt(p.p, 3) if p.p is not None else "n/a (fewer than 2 runs)"] for p in pairs]},
    ]
    (out / "report.json").write_text(json.dumps({
        "summary": [asdict(s) for s in summary], "pairs": [asdict(p) for p in pairs],
        "curves": {k: asdict(v) for k, v in curves.items()}, "boxes": boxes,
        "categories": {c: {k: asdict(s) for k, s in per.items()} for c, per in cats.items()}}, indent=1))
    return html.page(out, title, subtitle, figs, tables)


def run_report(task: Task, tag: str | None, out: Path) -> Path:
    run = load.one_run(task.root, tag)
    view = data.run_view(run)
    svg = figures.save(figures.run_figure(view, run.minimize), out, "run")
    rows = [[a.n, a.status, _fmt(a.metric), a.description] for a in run.attempts]
    return html.page(out, f"run {run.tag}", f"task {task.name}, metric {run.metric} ({run.direction})",
                     [{"id": "run", "svg": svg, "caption": "Every attempt in grey, the running best as a step "
                       "line, each keep labelled with its description; crosses mark attempts without a metric."}],
                     [{"id": "experiments", "title": "experiments", "header": ["n", "status", run.metric,
                                                                               "description"],
                       "rows": rows, "text_last": True}])
