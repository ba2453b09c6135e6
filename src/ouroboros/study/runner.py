"""`ouroboros study run`: prepare each condition's task, plan conditions x repeats, run what is left.

Each condition gets its own copy of the task repo under the study folder
(`<study dir>/conditions/<condition>/`, a git clone of the task repo's HEAD), with the condition's
program file and knob overrides written in and committed. So the baseline of every run already has
them, every condition's runs share one ledger, and the user's repo is never touched. The copy is made
once; if the condition's program or knobs change later, the study says so instead of mixing results.

Re-running `study run` skips runs that finished under the same limits and resumes the others.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ouroboros import knobs
from ouroboros.errors import OuroborosError
from ouroboros.ledger import Ledger
from ouroboros.study import executors
from ouroboros.study.spec import Condition, RunSpec, Study
from ouroboros.study.worker import is_done
from ouroboros.task import RECORDS_DIR, load_task
from ouroboros.workspace import ensure_clean, exclude_records, git, repo_root

MANIFEST = "study.json"


def default_dir(study: Study) -> Path:
    return study.root / RECORDS_DIR / "studies" / study.name


def _condition_key(study: Study, cond: Condition) -> dict:
    program = (study.root / cond.program).read_bytes() if cond.program else b""
    return {"task": str(study.task_path(cond)), "program": cond.program,
            "program_sha256": hashlib.sha256(program).hexdigest(), "knobs": cond.knobs}


def prepare_condition(study: Study, cond: Condition, out: Path) -> Path:
    """The condition's task folder: a clone of the task repo with its overrides committed."""
    key = _condition_key(study, cond)
    marker = out / "conditions" / f"{cond.name}.json"
    clone = out / "conditions" / cond.name
    source = study.task_path(cond)
    if cond.program and not (study.root / cond.program).is_file():
        raise OuroborosError(f"condition {cond.name}: program file {study.root / cond.program} not found")
    if marker.exists():
        old = json.loads(marker.read_text())
        if {k: old.get(k) for k in key} != key:
            raise OuroborosError(f"condition {cond.name} changed since its runs began ({marker}); give the "
                                 f"changed condition a new name, or delete {clone} to start it over")
        return Path(old["task_dir"])
    task = load_task(source)  # a clear error for a wrong task path, before anything is copied
    repo = repo_root(source)
    rel = source.relative_to(repo).as_posix()
    base = ensure_clean(repo, rel or ".")
    clone.parent.mkdir(parents=True, exist_ok=True)
    git(clone.parent, "clone", "-q", "--no-hardlinks", str(repo), clone.name)
    git(clone, "checkout", "-q", "-B", "main", base)
    task_dir = clone / rel
    changed = []
    if cond.program:
        (task_dir / task.task.program).write_bytes((study.root / cond.program).read_bytes())
        changed.append(f"program {cond.program}")
    if cond.knobs:
        found = {k.name: k for k in knobs.extract(task_dir, task.editable_files(task_dir))}
        unknown = sorted(set(cond.knobs) - set(found))
        if unknown:
            raise OuroborosError(f"condition {cond.name}: no knob {', '.join(unknown)} in the task's editable "
                                 f"files; knobs: {', '.join(sorted(found)) or 'none'}")
        knobs.apply(task_dir, list(found.values()), dict(cond.knobs))
        changed.append("knobs " + ", ".join(f"{k}={v}" for k, v in cond.knobs.items()))
    if changed:
        git(clone, "add", "-A")
        git(clone, "commit", "-q", "-m", f"study {study.name}, condition {cond.name}: {'; '.join(changed)}")
    exclude_records(clone)
    load_task(task_dir)
    Ledger(task_dir / RECORDS_DIR).close()  # create the ledger once, before runs open it side by side
    marker.write_text(json.dumps({**key, "task_dir": str(task_dir), "source_commit": base}, indent=1))
    return task_dir


@dataclass
class Planned:
    spec: RunSpec
    state: str  # new | resume | done


def plan(study: Study, out: Path) -> list[Planned]:
    """Every run of the study, with what a `study run` would do with it now."""
    planned = []
    for cond in study.conditions:
        task_dir = prepare_condition(study, cond, out)
        ledger = Ledger(task_dir / RECORDS_DIR)
        try:
            for k, seed in enumerate(study.seed_list):
                tag = study.tag(cond, k)
                spec = RunSpec(study=study.name, condition=cond.name, tag=tag, agent=cond.agent, seed=seed,
                               task_dir=task_dir, limits=study.limits_for(cond), log=out / "logs" / f"{tag}.log",
                               search=cond.search)
                run = ledger.run(tag)
                state = "done" if is_done(run, spec.limits) else ("resume" if run else "new")
                planned.append(Planned(spec, state))
        finally:
            ledger.close()
    _write_manifest(study, out)
    return planned


def _write_manifest(study: Study, out: Path) -> None:
    """What `report --study DIR` reads: the study, and where each condition's ledger is."""
    conds = {c.name: json.loads((out / "conditions" / f"{c.name}.json").read_text())["task_dir"]
             for c in study.conditions}
    (out / MANIFEST).write_text(json.dumps({"study": study.model_dump(mode="json"), "root": str(study.root),
                                            "conditions": conds}, indent=1))


def run_study(study: Study, out: Path | None = None, backend: str = "local", address: str | None = None,
              gpus: list[str] | None = None, cluster: str | None = None,
              echo: Callable[[str], None] = print) -> list[dict]:
    out = (out or default_dir(study)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    planned = plan(study, out)
    todo = [p.spec for p in planned if p.state != "done"]
    counts = Counter(p.state for p in planned)
    echo(f"study {study.name}: {len(planned)} runs ({counts['done']} finished, skipped; {counts['resume']} to "
         f"resume; {counts['new']} new) on backend {backend}; records in {out}")

    def on_result(r: dict) -> None:
        best = "-" if r.get("best") is None else f"{r['best']:.6g}"
        extra = f"  {r['error']}" if r.get("error") else ""
        echo(f"  {r['tag']}: {r['status']}, {r.get('experiments', 0)} experiments, best {best}{extra}")

    if not todo:
        return []
    if backend == "local":
        return executors.run_local(todo, study.resources, on_result, gpus=gpus)
    if backend == "ray":
        return executors.run_ray(todo, study.resources, on_result, address=address)
    if backend == "slurm":
        return executors.run_slurm(todo, study.resources, on_result, out / "submitit", cluster=cluster)
    raise OuroborosError(f"unknown backend {backend!r}; choose local, ray or slurm")


def study_dir(path: Path) -> Path:
    """The study folder from a study file or the folder itself (what `report --study` accepts)."""
    from ouroboros.study.spec import load_study

    path = Path(path).resolve()
    if path.is_dir() and (path / MANIFEST).is_file():
        return path
    if path.is_file():
        out = default_dir(load_study(path))
        if (out / MANIFEST).is_file():
            return out
        raise OuroborosError(f"study {path} has not run yet (no {out / MANIFEST}); run `ouroboros study run {path}`")
    raise OuroborosError(f"{path} is neither a study file nor a study folder (with {MANIFEST})")
