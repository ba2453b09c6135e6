"""The self task's trusted evaluator: the gate, then the delta benchmark's re-measurement.

Started by the task's protected `evaluate.py` with `python -I`, from a private copy of the
protected source (so nothing the run phase planted on a path, in a cache or beside a module is
imported). Steps, each a crash of the experiment when it fails:

1. the gate (gate.py) against the candidate (the worktree's src/);
2. every inner run the run phase left in .self/work/ is re-measured with the suite's trusted
   evaluators, and its ledger's claims must be reproduced (delta.collect);
3. the delta score with its interval is written as the metric `delta` (maximize).
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

from ouroboros import policyfile
from ouroboros.errors import OuroborosError
from ouroboros.self.delta import collect, score
from ouroboros.self.gate import gate
from ouroboros.self.settings import WORK, load_settings
from ouroboros.self.suite import load_suite
from ouroboros.task import TASK_FILE


def main(root: Path) -> int:
    try:
        cfg = load_settings(root)
        policyfile.read(root / "src" / "ouroboros" / "policy.py")  # the candidate's settings: literals only
        if cfg.gate:
            # the candidate's runner is the protected code where only the policy file (data) is editable;
            # anything wider runs the candidate's own code, which must then be confined
            own_code = _editable(root) == ["src/ouroboros/policy.py"]
            failures = gate(root / "src", own_code=own_code)
            if failures:
                print(f"gate failed: {'; '.join(failures)[:600]}", flush=True)
                return 1
            print("gate: passed", flush=True)
        runs = [collect(root / WORK / f"{t.name}-s{s}", t, s, cfg.experiments)
                for t in load_suite("public", cfg.tasks) for s in cfg.seeds]
    except OuroborosError as exc:
        print(f"rejected: {exc}", flush=True)
        return 1
    result = score(runs, "public", cfg.seeds, cfg.experiments, cfg.agent, cfg.search)
    metrics = {"delta": result.delta, "delta_low": result.low, "delta_high": result.high,
               "area": sum(r.area for r in runs) / len(runs), "final": sum(r.final for r in runs) / len(runs),
               **{f"task_{k}": v for k, v in result.tasks.items()}}
    out = os.environ.get("OUROBOROS_METRICS")
    if out:
        Path(out).write_text(json.dumps(metrics))
    print(result.line(), flush=True)
    print(f"delta: {result.delta:.6f}", flush=True)
    return 0


def _editable(root: Path) -> list[str] | None:
    """The task's editable patterns, from its task file (the base commit's: fixed in the evaluation folder)."""
    try:
        return list(tomllib.loads((root / TASK_FILE).read_text())["task"]["editable"])
    except (OSError, KeyError, TypeError, ValueError):
        return None
