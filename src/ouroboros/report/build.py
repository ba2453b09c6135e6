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


def _ci(ci: tuple[float, float] | None, scale: float = 1.0, digits: int = 6) -> str:
    return "-" if ci is None else f"[{ci[0] * scale:.{digits}g}, {ci[1] * scale:.{digits}g}]"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.6g}%"


def runs_report(runs: list[data.RunData], out: Path, title: str, baseline: str | None, subtitle: str = "") -> Path:
    """Figures and page for any set of runs grouped by condition (a study, or runs of one task)."""
    out.mkdir(parents=True, exist_ok=True)
    metric, minimize = runs[0].metric, runs[0].minimize
    curves = data.curves(runs)
    gains = data.gain_lines(runs)
    boxes = data.boxes(runs)
    box_titles: dict[str, str] = {}
    if gains.scale == "ratio":  # gains of 99.99% and 99.9999999% look alike; what is left of the baseline does not
        boxes["gain"] = {c: [(t, v[-1]) for t, v in lines] for c, lines in gains.lines.items()}
        box_titles["gain"] = "final best / own baseline (log; 1 = no gain)"
    cats = data.category_stats(runs)
    summary, pairs = stats.summary(runs), stats.pairwise(runs)
    findings = [stats.baselines(runs), *stats.verdicts(runs, pairs, summary)]
    base = baseline if baseline in curves else None
    figs = [
        {"id": "gain", "svg": figures.save(figures.gain_figure(gains, base, minimize), out, "gain"),
         "caption": "Each run's best so far against its own baseline (experiment 0), one thin line per run, the "
                    "condition's median thick: baseline noise shifts a whole run's raw metric, not this."},
        {"id": "best_so_far", "svg": figures.save(figures.curves_figure(curves, base, metric, minimize), out,
                                                  "best_so_far"),
         "caption": f"The raw {metric}: best so far per condition, median line, interquartile band; the best single "
                    "run dashed, with a star at its best point." + (f" The {base} baseline is dotted grey."
                                                                     if base else "")},
        {"id": "per_run", "svg": figures.save(figures.boxes_figure(boxes, base, data.box_notes(runs), box_titles,
                                                                     ("gain",) if box_titles else ()), out, "per_run"),
         "caption": "Each dot is one run: its final gain over its own baseline, acceptance rate, agent sessions "
                    "after the first, and valid experiments against the number of budget-long experiments that fit "
                    "in the run's window. Where a panel carries no information for a condition, it says why."},
        {"id": "categories", "svg": figures.save(figures.categories_figure(cats, base, notes=data.category_notes(runs)),
                                                 out, "categories"),
         "caption": "Idea categories: the share of runs in which the category improved the best, and the mean "
                    "gain when it did."},
    ]
    tables = [
        {"id": "summary", "title": f"final gain over each run's own baseline, per condition ({metric}, "
                                   f"{'lower' if minimize else 'higher'} is better)",
         "note": "Gain: how much better the run's final best is than its own experiment 0 (positive is better). "
                 "CI: bootstrap 95% confidence interval of the median (scipy.stats.bootstrap, 9999 resamples).",
         "header": ["condition", "runs", "baseline median [min, max]", f"final {metric} median", "median gain",
                    "gain IQR", "gain 95% CI", "median relative gain", "relative 95% CI", "median final / baseline"],
         "rows": [[s.condition, s.runs,
                   f"{_fmt(s.baseline_median)} [{_fmt(s.baseline_min)}, {_fmt(s.baseline_max)}]",
                   _fmt(s.median), _fmt(s.gain_median), _fmt(s.gain_iqr), _ci(s.gain_ci), _pct(s.rel_median),
                   _ci(s.rel_ci, 100) + ("%" if s.rel_ci else ""), _fmt(s.ratio_median, 4)] for s in summary]},
        {"id": "pairs", "title": "between conditions", "note": stats.TEST,
         "header": ["condition A", "condition B", "runs A, B", "U", "p", "Holm p", "Cliff's delta",
                    "P(A gains more)", "result"],
         "rows": [[p.a, p.b, f"{p.n_a}, {p.n_b}", _fmt(p.u), _fmt(p.p, 3), _fmt(p.p_holm, 3),
                   "-" if p.cliffs_delta is None else f"{p.cliffs_delta:+.2f}", _pct(p.cles),
                   "n/a (fewer than 2 runs)" if p.p is None else
                   ("significant" if p.significant else "no significant difference")] for p in pairs],
         "text_last": True},
        {"id": "runs", "title": "runs",
         "header": ["run", "condition", "seed", f"baseline {metric}", f"final {metric}", "gain", "relative gain",
                    "keeps"],
         "rows": [[r.tag, r.condition, r.seed, _fmt(data.baseline(r)), _fmt(data.final(r)),
                   _fmt(g[0] if (g := data.final_gain(r)) else None), _pct(g[1] if g else None),
                   data.keeps_after_baseline(r)] for r in runs]},
    ]
    (out / "report.json").write_text(json.dumps({
        "findings": findings, "summary": [asdict(s) for s in summary], "pairs": [asdict(p) for p in pairs],
        "curves": {k: asdict(v) for k, v in curves.items()}, "gain": asdict(gains), "boxes": boxes,
        "runs": [{"tag": r.tag, "condition": r.condition, "seed": r.seed, "baseline": data.baseline(r),
                  "final": data.final(r), "gain": data.final_gain(r)} for r in runs],
        "categories": {c: {k: asdict(s) for k, s in per.items()} for c, per in cats.items()}}, indent=1))
    return html.page(out, title, subtitle, figs, tables, findings)


SELF_FIRST = ("versions", "holdout")  # a self run's tables, above the experiments; the lineage's below


def run_report(task: Task, tag: str | None, out: Path) -> Path:
    run = load.one_run(task.root, tag)
    view = data.run_view(run)
    svg = figures.save(figures.run_figure(view, run.minimize), out, "run")
    rows = [[a.n, a.status, _fmt(a.metric), a.description] for a in run.attempts]
    header = ["n", "status", run.metric, "description"]
    if any(a.tokens_in or a.tokens_out for a in run.attempts):  # tokens per proposal, where the agent said
        rows = [[*r[:3], f"{a.tokens_in} / {a.tokens_out}", r[3]] for r, a in zip(rows, run.attempts, strict=True)]
        header = [*header[:3], "tokens in / out", header[3]]
    from ouroboros.self.report import sections

    lineage_figs, lineage_tables = sections(task, run.tag, out)
    return html.page(out, f"run {run.tag}", f"task {task.name}, agent {run.agent}, seed {run.seed}, metric "
                     f"{run.metric} ({run.direction})",
                     [{"id": "run", "svg": svg, "caption": "Every attempt in grey, the running best as a step "
                       "line, each keep labelled with its description; crosses mark attempts without a metric."},
                      *lineage_figs],
                     [*(t for t in lineage_tables if t["id"] in SELF_FIRST),
                      {"id": "experiments", "title": "experiments", "header": header, "rows": rows, "text_last": True},
                      *(t for t in lineage_tables if t["id"] not in SELF_FIRST)])
