"""The study page's numbers: progress per condition, and the report's statistics over finished runs.

Reads the study folder's manifest (study.json, written by `ouroboros study run`) and each
condition's ledger read-only. The statistics are the report's own (`ouroboros.report.stats`), so the
dashboard and the final report never disagree; without the [report] extra the page shows progress only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ouroboros.errors import OuroborosError

MANIFEST = "study.json"


class StudyView:
    def __init__(self, folder: Path):
        folder = Path(folder).resolve()
        path = folder / MANIFEST
        if not path.is_file():
            raise OuroborosError(f"{folder} is not a study folder (no {MANIFEST}); give the folder "
                                 "`ouroboros study run` wrote (--dir, or .ouroboros/studies/<name>)")
        try:
            manifest = json.loads(path.read_text())
            self.spec = manifest["study"]
            self.conditions: dict[str, Path] = {c: Path(d) for c, d in manifest["conditions"].items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise OuroborosError(f"{path} is not a study manifest ({exc}); run `ouroboros study run` again") from exc
        self.folder, self.name = folder, self.spec.get("name", folder.name)
        self.task_dirs = list(dict.fromkeys(self.conditions.values()))

    def repeats(self) -> int:
        seeds = self.spec.get("seeds")
        return len(seeds) if seeds else int(self.spec.get("repeats", 0))

    def view(self, sources: list) -> dict[str, Any]:
        runs = [r for s in sources for r in s.runs() if r["study"] == self.name]
        progress = []
        for cond in self.conditions:
            mine = [r for r in runs if r["condition"] == cond]
            done = sum(r["status"] == "finished" for r in mine)
            running = sum(r["status"] == "running" for r in mine)
            progress.append({"condition": cond, "finished": done, "running": running,
                             "other": len(mine) - done - running,
                             "queued": max(self.repeats() - len(mine), 0), "runs": mine})
        return {"name": self.name, "progress": progress, **self._statistics(sources)}

    def _statistics(self, sources: list) -> dict[str, Any]:
        try:
            from ouroboros.report import stats
            from ouroboros.report.data import Attempt, RunData, best_so_far
        except ImportError:
            return {"stats": None, "note": "statistics need the report extra: pip install 'ouroboros[report]'"}
        finished = []
        for s in sources:
            for row in s.db.execute("SELECT * FROM runs WHERE study=? AND status='finished'", (self.name,)):
                attempts = tuple(Attempt(e["n"], e["status"], e["metric"], e["description"] or "")
                                 for e in s.experiments(row["tag"]) if e["status"] != "running")
                finished.append(RunData(row["tag"], row["condition"] or row["agent"], row["direction"],
                                        attempts=attempts, metric=row["metric"]))
        if not finished:
            return {"stats": None, "note": "no run has finished yet: statistics appear with the first"}
        curves = [{"tag": r.tag, "condition": r.condition, "best": best_so_far(r)} for r in finished]
        return {"stats": {"summary": stats.summary(finished), "pairs": stats.pairwise(finished),
                          "metric": finished[0].metric, "minimize": finished[0].minimize, "curves": curves},
                "note": ""}
