"""How long `ouroboros report --study` takes over a large study: 100 runs x 100 experiments.

    python bench/report_speed.py [--runs 100] [--experiments 100]

Writes a synthetic study (two conditions, ledgers written directly) to a temporary folder, then
times the report: loading the ledgers, the figures' data, PNG + SVG figures and the HTML page.
Target: under 10 s.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from ouroboros.ledger import Experiment, Ledger, Run
from ouroboros.report import build


def synthetic_study(folder: Path, runs: int, exps: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    conds = {}
    for c, cond in enumerate(("random", "tpe")):
        task_dir = folder / "conditions" / cond
        ledger = Ledger(task_dir / ".ouroboros")
        ledger.db.execute("BEGIN")
        for k in range(runs // 2):
            tag = f"big-{cond}-r{k}"
            ledger.save_run(Run(tag, agent=cond, metric="loss", study="big", condition=cond, seed=k,
                                status="finished", config={"budget": 60.0, "max_experiments": exps}))
            best, t = 10.0, 0.0
            for n in range(exps + 1):
                m = best * rng.uniform(0.85 - 0.03 * c, 1.25) if n else best
                keep = n == 0 or m < best
                best = m if keep else best
                status = "keep" if keep else rng.choice(["discard"] * 8 + ["crash"])
                t += 60
                ledger.begin(Experiment(tag, n, status=status, metric=None if status == "crash" else m,
                                        description=f"[{rng.choice(['lr', 'arch', 'optim', 'data'])}] idea {n}",
                                        params={"LR": rng.random()}, started=t - 60, finished=t))
        ledger.db.execute("COMMIT")
        ledger.close()
        conds[cond] = str(task_dir)
    manifest = {"study": {"name": "big", "task": ".", "repeats": runs // 2, "limits": {"max_experiments": exps},
                          "conditions": [{"name": c, "agent": c} for c in conds]}, "conditions": conds}
    (folder / "study.json").write_text(json.dumps(manifest))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--experiments", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = synthetic_study(Path(tmp) / "study", args.runs, args.experiments)
        start = time.perf_counter()
        page = build.study_report(folder, Path(tmp) / "report")
        elapsed = time.perf_counter() - start
        size = sum(p.stat().st_size for p in page.parent.iterdir()) / 1e6
    print(f"command: python {' '.join(sys.argv)}")
    print(f"report over {args.runs} runs x {args.experiments} experiments: {elapsed:.2f} s "
          f"({size:.1f} MB written; target < 10 s: {'ok' if elapsed < 10 else 'MISSED'})")


if __name__ == "__main__":
    main()
