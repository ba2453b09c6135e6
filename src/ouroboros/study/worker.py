"""One study run in its own process: `python -m ouroboros.study.worker SPEC.json RESULT.json`.

Every backend (local pool, Ray task, SLURM job) ends here, so a run behaves the same wherever it
lands. A run already finished under the same limits is skipped; any other recorded run with its tag
is resumed (`Options(resume=True)`), which continues an interrupted experiment from its commit.
The devices the run was given (CUDA_VISIBLE_DEVICES) and the host are written into its config.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from ouroboros import interrupt
from ouroboros.errors import OuroborosError
from ouroboros.ledger import Ledger, Run
from ouroboros.study.spec import Limits, RunSpec
from ouroboros.task import RECORDS_DIR


@dataclass
class RunResult:
    tag: str
    status: str  # finished | skipped | stopped | failed
    experiments: int = 0
    best: float | None = None
    error: str = ""


def is_done(run: Run | None, limits: Limits) -> bool:
    """Finished under the limits asked for now (a raised limit continues the run)."""
    if run is None or run.status != "finished":
        return False
    cfg = run.config
    return all(cfg.get(k) == getattr(limits, k) for k in ("max_experiments", "hours"))


def recorded(spec: RunSpec) -> Run | None:
    ledger = Ledger(spec.task_dir / RECORDS_DIR)
    try:
        return ledger.run(spec.tag)
    finally:
        ledger.close()


def execute(spec: RunSpec) -> RunResult:
    """Run (or resume, or skip) one study run in this process."""
    from ouroboros.loop import Loop, Options
    from ouroboros.task import load_task

    existing = recorded(spec)
    if is_done(existing, spec.limits):
        return RunResult(spec.tag, "skipped")
    lim = spec.limits
    opts = Options(agent=spec.agent, tag=spec.tag, max_experiments=lim.max_experiments, hours=lim.hours,
                   budget=lim.budget, seed=spec.seed, resume=existing is not None, study=spec.study,
                   condition=spec.condition, extra={"search": spec.search} if spec.search else {})
    loop = None
    try:
        loop = Loop(load_task(spec.task_dir), opts)
        loop.run_rec.config.update(devices=os.environ.get("CUDA_VISIBLE_DEVICES"), host=socket.gethostname(),
                                   pid=os.getpid())
        loop.ledger.save_run(loop.run_rec)
        print(f"run {spec.tag}: agent {spec.agent}, seed {spec.seed}, devices "
              f"{loop.run_rec.config['devices']!r}", flush=True)
        loop.run()
    except OuroborosError as exc:
        return RunResult(spec.tag, "failed", error=str(exc))
    except KeyboardInterrupt:
        return RunResult(spec.tag, "stopped", len(loop.finished) - 1 if loop else 0)
    best = loop.best
    return RunResult(spec.tag, "finished", len(loop.finished) - 1, best.metric)


def run_in_subprocess(spec_json: str, env: dict[str, str] | None = None,
                      started: list[subprocess.Popen] | None = None, cpus: list[int] | None = None) -> dict:
    """Run one spec in a fresh Python process; returns the RunResult as a dict.

    The process inherits this one's environment (so a Ray task's or SLURM job's device assignment
    reaches it) plus `env`, runs on the given CPU cores if any, and writes to the spec's log file.
    """
    spec = RunSpec.model_validate_json(spec_json)
    spec.log.parent.mkdir(parents=True, exist_ok=True)
    job = spec.log.with_suffix(".spec.json")
    result = spec.log.with_suffix(".result.json")
    job.write_text(spec_json)
    result.unlink(missing_ok=True)
    with open(spec.log, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ouroboros.study.worker", str(job), str(result)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, start_new_session=True,
                                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        if started is not None:
            started.append(proc)
        code = proc.wait()
    if result.exists():
        return json.loads(result.read_text())
    return asdict(RunResult(spec.tag, "failed", error=f"the run's process exited {code}; see {spec.log}"))


def main(argv: list[str]) -> int:
    interrupt.install()  # SIGTERM stops the run cleanly, so a later `study run` resumes it
    spec = RunSpec.model_validate_json(Path(argv[0]).read_text())
    try:
        result = execute(spec)
    except Exception:  # a harness bug: keep the traceback in the run's log, report a failure
        traceback.print_exc()
        result = RunResult(spec.tag, "failed", error="harness error; traceback in the log")
    Path(argv[1]).write_text(json.dumps(asdict(result)))
    print(f"run {spec.tag}: {result.status} {result.error}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
