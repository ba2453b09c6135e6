"""Executors: where study runs execute. Each run is its own process running the loop (worker.py).

local   a pool on this machine: slots from the CPU and GPU counts, each run pinned to its GPUs
        with CUDA_VISIBLE_DEVICES and to its own CPU cores (where there are enough), each in its
        own worktree (the loop makes one per run tag)
ray     each run a Ray task asking for `num_cpus` and `num_gpus`; Ray assigns the devices.
        Needs the package on every node and a filesystem that every node sees at the same path.
slurm   each run a SLURM job through submitit (its `local` and `debug` clusters work without SLURM)

An executor takes the run specs and returns one result dict per spec (worker.RunResult), in any
order; `on_result` is called as each one ends.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from ouroboros.errors import OuroborosError
from ouroboros.study.spec import Resources, RunSpec
from ouroboros.study.worker import run_in_subprocess

OnResult = Callable[[dict], None]


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d for d in env.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def slot_plan(res: Resources, cpus: int, gpus: list[str]) -> list[list[str]]:
    """The local pool's slots: one list of GPU ids per slot (empty lists for CPU-only runs).

    Slots are as many as the CPUs and the GPUs both allow, capped by `res.slots` when it is set.
    """
    n = max(cpus // res.cpus, 1)
    if res.gpus:
        if len(gpus) < res.gpus:
            raise OuroborosError(f"each run asks for {res.gpus} GPU(s) but {len(gpus)} are visible "
                                 f"({','.join(gpus) or 'none'}); set resources.gpus = 0, or pass --gpus 0,1,...")
        n = min(n, len(gpus) // res.gpus)
    if res.slots is not None:
        n = min(n, res.slots) if res.gpus else res.slots
    return [gpus[i * res.gpus:(i + 1) * res.gpus] for i in range(n)]


def cpu_cores(per_slot: int, slots: int) -> list[list[int]] | None:
    """Disjoint CPU cores per slot (so runs that size their threads by affinity do not contend),
    or None where there are fewer cores than the slots need."""
    try:
        avail = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None
    if len(avail) < per_slot * slots:
        return None
    return [avail[i * per_slot:(i + 1) * per_slot] for i in range(slots)]


def run_local(specs: list[RunSpec], res: Resources, on_result: OnResult, gpus: list[str] | None = None,
              cpus: int | None = None) -> list[dict]:
    slots = slot_plan(res, cpus or cpu_count(), visible_gpus() if gpus is None else gpus)
    cores = cpu_cores(res.cpus, len(slots))
    free: queue.Queue[tuple[list[str], list[int] | None]] = queue.Queue()
    for i, s in enumerate(slots):
        free.put((s, cores[i] if cores else None))
    started: list[subprocess.Popen] = []

    def one(spec: RunSpec) -> dict:
        devices, cpu_set = free.get()
        try:
            env = {"CUDA_VISIBLE_DEVICES": ",".join(devices)} if res.gpus else {}
            return run_in_subprocess(spec.model_dump_json(), env, started, cpu_set)
        finally:
            free.put((devices, cpu_set))

    results = []
    pool = ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="study-slot")
    try:
        futures = [pool.submit(one, s) for s in specs]
        for fut in as_completed(futures):
            results.append(fut.result())
            on_result(results[-1])
    except KeyboardInterrupt:
        for f in futures:
            f.cancel()
        for proc in started:  # each run saves itself as `stopped` on SIGTERM, and resumes next time
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in started:
            proc.wait()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def _ray_task(spec_json: str) -> dict:
    return run_in_subprocess(spec_json)  # Ray has set CUDA_VISIBLE_DEVICES for this task already


def run_ray(specs: list[RunSpec], res: Resources, on_result: OnResult, address: str | None = None) -> list[dict]:
    try:
        import ray
    except ImportError as exc:
        raise OuroborosError("the ray backend needs Ray: pip install 'ouroboros[ray]'") from exc
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise OuroborosError(f"could not reach a Ray cluster at {address or 'a new local one'}: {exc}; "
                                 "start one with `ray start --head` and pass --address auto") from exc
    remote = ray.remote(num_cpus=res.cpus, num_gpus=res.gpus, max_retries=0)(_ray_task)
    pending = [remote.remote(s.model_dump_json()) for s in specs]
    results = []
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results.append(ray.get(done[0]))
            on_result(results[-1])
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)  # SIGINT to the task; its run is resumed by the next `study run`
        raise
    return results


def run_slurm(specs: list[RunSpec], res: Resources, on_result: OnResult, folder: Path,
              cluster: str | None = None) -> list[dict]:
    """SLURM jobs through submitit; cluster `local` or `debug` runs them here (for tests and laptops)."""
    try:
        import submitit
    except ImportError as exc:
        raise OuroborosError("the slurm backend needs submitit: pip install 'ouroboros[slurm]'") from exc
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params: dict = {"timeout_min": res.timeout_min, "cpus_per_task": res.cpus, "name": "ouroboros"}
    if res.gpus:
        params["gpus_per_node"] = res.gpus
    if res.partition:
        params["slurm_partition"] = res.partition
    executor.update_parameters(**params)
    jobs = [executor.submit(run_in_subprocess, s.model_dump_json()) for s in specs]
    results = []
    for spec, job in zip(specs, jobs, strict=True):
        try:
            results.append(job.result())
        except Exception as exc:  # a job that died outside our code (node failure, time limit)
            results.append({"tag": spec.tag, "status": "failed", "experiments": 0, "best": None,
                            "error": f"slurm job {job.job_id}: {exc}"})
        on_result(results[-1])
    return results
