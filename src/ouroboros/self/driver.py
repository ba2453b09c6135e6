"""`ouroboros run --self`: the loop turned on itself.

Each experiment is run by the latest kept version: this (trusted) driver exports it (versions.py)
and execs its CLI, `ouroboros run --resume TAG`, for one more experiment, with OUROBOROS_VERSION
set so the ledger records which version proposed and ran it (the experiment's `model` column). The
candidate that experiment proposes is judged by the task's trusted evaluator (gate, re-measured
delta benchmark); a rejected candidate is a crash, and the next experiment again starts from the
last kept version. A kept version that then fails to start is recorded as a crash of its own
(agent `self`), marked bad, and the driver goes back to the last good version. At the end the
first and the final version are compared on the holdout suite (runs/<tag>/self.json).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from ouroboros.errors import OuroborosError
from ouroboros.ledger import Experiment, Ledger
from ouroboros.self import versions
from ouroboros.self.delta import benchmark
from ouroboros.self.settings import load_settings
from ouroboros.task import RECORDS_DIR, Task
from ouroboros.workspace import ensure_clean, git, repo_root


def _tail(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()] if path.exists() else []
    return lines[-1][:300] if lines else "no output"


def run_self(task: Task, max_experiments: int, tag: str, agent: str = "policy", seed: int | None = 0,
             holdout: bool = True, echo: Callable[[str], None] = print) -> dict:
    repo = repo_root(task.root)
    records = task.root / RECORDS_DIR
    ledger = Ledger(records)
    cache = records / "versions"
    run = ledger.run(tag)
    base = run.base_commit if run else ensure_clean(repo, task.root.relative_to(repo).as_posix() or ".")
    state_path = ledger.run_dir(tag) / "self.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"bad": [], "first": base}
    log_dir = ledger.run_dir(tag) / "versions"
    log_dir.mkdir(parents=True, exist_ok=True)

    def finished() -> list[Experiment]:
        return ledger.experiments(tag, finished_only=True) if ledger.run(tag) else []

    while True:
        history = finished()
        done = len(history) - 1
        if done >= max_experiments:
            break
        good = [e.commit_sha for e in history if e.status == "keep" and e.commit_sha not in state["bad"]]
        version = good[-1] if good else base
        src = versions.install(repo, version, cache)
        start = ["--resume", tag] if ledger.run(tag) else ["--tag", tag, *([] if seed is None else ["--seed", str(seed)])]
        argv = versions.command("run", "-C", str(task.root), "--agent", agent, "--max-experiments", str(done + 1),
                                *start)
        log = log_dir / f"{len(history)}.log"
        echo(f"experiment {done + 1}: version {version[:12]}")
        with open(log, "wb") as out:
            proc = subprocess.run(argv, env=versions.environment(src, {"OUROBOROS_VERSION": version[:12],
                                                                       "COLUMNS": "160"}),
                                  stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        after = finished()
        if len(after) > len(history):
            for e in after[len(history):]:
                echo(f"  {e.n}: {e.status} {'' if e.metric is None else f'delta {e.metric:.4f} '}{e.reason[:120]}")
            continue
        if not history:
            raise OuroborosError(f"the first version {version[:12]} could not run the baseline (exit "
                                 f"{proc.returncode}): {_tail(log)}; see {log}")
        if version == base:
            raise OuroborosError(f"the base version {version[:12]} failed to start (exit {proc.returncode}): "
                                 f"{_tail(log)}; see {log}")
        state["bad"].append(version)
        n = max(e.n for e in ledger.experiments(tag)) + 1
        exp = Experiment(tag, n, commit_sha=version, parent=version, status="crash", agent="self",
                         model=version[:12], description=f"rollback: version {version[:12]} failed to start",
                         reason=f"version {version[:12]} exited {proc.returncode}: {_tail(log)}; rolled back")
        git(repo, "update-ref", f"refs/ouroboros/{tag}/{n}", version)  # every experiment's commit is pinned
        ledger.begin(exp)
        ledger.finish(exp)
        state_path.write_text(json.dumps(state, indent=1))
        echo(f"  {n}: crash: version {version[:12]} failed to start; back to the last good version")
    history = finished()
    keeps = [e for e in history if e.status == "keep" and e.commit_sha not in state["bad"]]
    state["final"] = keeps[-1].commit_sha
    state["versions"] = sorted({e.model for e in history if e.model})
    if holdout and state.get("holdout", {}).get("final") != state["final"]:
        cfg = load_settings(task.root)
        state["holdout"] = {"first": state["first"], "final": state["final"]}
        for key in ("first", "final"):
            sha = state[key]
            if key == "final" and sha == state["first"]:
                state["holdout"]["final_result"] = state["holdout"]["first_result"]
                break
            echo(f"holdout suite: version {sha[:12]} ({key})")
            result = benchmark(versions.install(repo, sha, cache), records / "holdout" / sha[:12], cfg.seeds,
                               cfg.experiments, "holdout", None, cfg.agent, cfg.search, cfg.jobs)
            state["holdout"][f"{key}_result"] = json.loads(result.to_json())
            echo(f"  {result.line()}")
    state_path.write_text(json.dumps(state, indent=1))
    ledger.close()
    return state
