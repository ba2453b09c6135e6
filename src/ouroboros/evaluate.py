"""Obtain the metric of a finished run, out of the proposer's reach.

Trust levels (every experiment records its own):
- stdout: the metric is parsed from the run's own output (the autoresearch layout). Forgeable: the
  run can print any number. Reported as such.
- sealed: after the run, the task's evaluate command runs in a fresh folder that is not the run's
  worktree: the baseline commit's fixed files (everything but the editable files: the evaluator, its
  data, the task file), written from bytes the harness read from the object store at run start, plus
  the experiment's editable files as committed (read from the object store, not from the worktree
  the run could rewrite), plus only the run's declared outputs (`[task] outputs`) copied in as regular
  files. It runs in a fresh process with Python's safe-path mode (PYTHONSAFEPATH), so no file beside
  the evaluator shadows a module it imports, and writes its metrics as JSON to a path created after
  the run ended, read back only if it is a regular file of bounded size.
- isolated: sealed, and the evaluator itself keeps editable code out of its process (the task's
  evaluator decides this; examples/tinygpt runs the model in a child that never sees the targets).

Protects against (attacked in tests/cheats/): an edited or replaced evaluator; fake metric lines;
a module planted beside the evaluator (`json.py`); outputs that are links, FIFOs or devices; a
metrics file replaced by a FIFO, a link or a huge file; a process left by the evaluation phase
(it fails the experiment, so a grandchild cannot rewrite the metrics after they were written).

Does not protect against: an evaluator that imports editable code in its own process (then the
level is only sealed, and that code can do anything the evaluator can), or data the evaluator
reads from outside its folder (the data cache: see isolation.py).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import queue
import re
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ouroboros import readfile, sandbox
from ouroboros.errors import OuroborosError
from ouroboros.task import RECORDS_DIR, RESERVED_METRICS, Task, matches


@dataclass
class Measurement:
    metric: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    trust: str = "sealed"
    eval_s: float = 0.0
    error: str | None = None
    isolation: str = "process"


def parse_metric(text: str, task: Task) -> float | None:
    """The last match of the metric's pattern in text, or None."""
    found = task.metric.regex.findall(text)
    if not found:
        return None
    try:
        return float(found[-1] if isinstance(found[-1], str) else found[-1][0])
    except ValueError:
        return float("nan")


def _check(metric: Any, task: Task, where: str) -> tuple[float | None, str | None]:
    if metric is None:
        return None, f"{where} has no {task.metric.name}"
    try:
        value = float(metric)
    except (TypeError, ValueError):
        return None, f"{where} gave {task.metric.name}={metric!r}, not a number"
    if not math.isfinite(value):
        return None, f"{where} gave {task.metric.name}={value}"
    return value, None


def from_stdout(task: Task, run_log: Path) -> Measurement:
    text = run_log.read_text(errors="replace") if run_log.exists() else ""
    raw = parse_metric(text, task)
    extra = {}
    for line in text.splitlines()[-60:]:
        key, sep, value = line.partition(":")
        if sep and key.strip().isidentifier() and key.strip() not in RESERVED_METRICS:
            try:
                extra[key.strip()] = float(value)
            except ValueError:
                pass
    metric, error = _check(raw, task, "the run's output")
    return Measurement(metric, extra, "stdout", 0.0, error)


def parse_key(log: Path, key: str) -> float | None:
    """A `key: number` line from a run's summary (the last one), e.g. peak_vram_mb."""
    if not log.exists():
        return None
    found = re.findall(rf"^\s*{re.escape(key)}\s*:\s*([-+0-9.eE]+)\s*$", sandbox.tail_text(log), re.MULTILINE)
    try:
        return float(found[-1]) if found else None
    except ValueError:
        return None


METRICS_CAP = 1 << 20  # bytes: a metrics file is a small JSON object
METRICS_READ_S = 5.0


def _safe_paths(value: str) -> str:
    """Only absolute entries: an empty or relative one in PATH or PYTHONPATH would mean the
    evaluation folder, where the run's outputs lie."""
    return os.pathsep.join(p for p in value.split(os.pathsep) if os.path.isabs(p))


def _write(dest: Path, data: bytes, mode: int) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if mode == 0o120000:  # a symlink committed in the base commit: recreated as such
        os.symlink(data, dest)
        return
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755 if mode & 0o111 else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


MAX_DEPTH = 200  # folder levels of the run's task folder searched for outputs


def _walk_fds(source: Path):
    """(task-relative folder, its descriptor, its non-folder names) for every folder under source,
    opened by descriptor (relative to source's, no link followed: the run has ended, nothing swaps
    them); iterative (a folder nested past Python's recursion limit is no error), `.git` and the
    records skipped. Deeper than MAX_DEPTH raises OuroborosError (the experiment's crash)."""
    root = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    stack: list[tuple[str, int]] = [(".", 0)]
    try:
        while stack:
            rel_top, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise OuroborosError(f"the run left folders nested deeper than {MAX_DEPTH} levels "
                                     f"({rel_top[:60]!r}...); outputs must lie in a shallower tree")
            try:
                dfd = os.open(rel_top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root)
            except OSError:
                continue
            try:
                dirs, files = [], []
                with os.scandir(dfd) as it:
                    for entry in it:
                        (dirs if entry.is_dir(follow_symlinks=False) else files).append(entry.name)
                for d in sorted(dirs, reverse=True):
                    if d.lower() != ".git" and d != RECORDS_DIR:
                        stack.append((d if rel_top == "." else f"{rel_top}/{d}", depth + 1))
                yield rel_top, dfd, sorted(files)
            finally:
                os.close(dfd)
    finally:
        os.close(root)


def prepare_dir(folder: Path, fixed: dict[str, tuple[bytes, int]], source: Path, outputs: list[str],
                cap: int) -> list[str]:
    """Fill folder with the fixed files' baseline bytes and, from source (the run's task folder),
    the regular files matching outputs; what was refused, as notes (the run's file names quoted with
    repr: a name may hold a newline and a metric line, and the notes go into the evaluation's log).

    Nothing in source is followed or trusted: directories are walked by descriptor without following
    links, each file is opened with O_NOFOLLOW and O_NONBLOCK (a FIFO cannot block the harness) and
    copied only if fstat says it is a regular file, folders named `.git` are skipped, a fixed path
    always gets the baseline bytes, and the copied total is capped at `cap` bytes.
    """
    for rel, (data, mode) in fixed.items():
        _write(folder / rel, data, mode)
    notes: list[str] = []
    total = 0
    for rel_top, dfd, files in _walk_fds(source):
        for name in files:
            rel = name if rel_top == "." else f"{rel_top}/{name}"
            if rel in fixed or not matches(rel, outputs):
                continue
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
            except OSError as exc:
                notes.append(f"{rel!r}: not copied ({exc.strerror})")
                continue
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    notes.append(f"{rel!r}: not copied (not a regular file)")
                    continue
                data = f.read(cap - total + 1)
            total += len(data)
            if total > cap:
                raise OuroborosError(f"the run's outputs exceed {cap / 2**20:g} MB (max_artifact_mb) at {rel!r}")
            _write(folder / rel, data, st.st_mode)
    return notes


def read_metrics(path: Path, cap: int = METRICS_CAP, timeout: float = METRICS_READ_S) -> dict[str, Any] | None:
    """The evaluator's JSON object, from a regular file only (no link, FIFO or device), at most cap
    bytes, read within timeout; None where there is no file. Raises ValueError with the reason."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"the metrics file cannot be opened ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError("the metrics file is not a regular file")
        deadline = time.monotonic() + timeout
        chunks, size = [], 0
        while size <= cap:
            if time.monotonic() > deadline:
                raise ValueError(f"the metrics file was not read within {timeout:g} s")
            block = f.read(min(1 << 16, cap + 1 - size))
            if not block:
                break
            chunks.append(block)
            size += len(block)
    if size > cap:
        raise ValueError(f"the metrics file is larger than {cap} bytes")
    try:
        metrics = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"evaluator wrote invalid JSON: {exc}") from exc
    if not isinstance(metrics, dict):
        raise ValueError("evaluator's JSON is not an object")
    return metrics


def sealed(task: Task, source: Path, fixed: dict[str, tuple[bytes, int]], log_path: Path, env: dict[str, str],
           wrap: Any = None, command: str | None = None,
           committed: dict[str, tuple[bytes, int]] | None = None) -> Measurement:
    """Run the task's evaluate command in a fresh folder: the fixed files' baseline bytes plus the run's
    declared outputs copied from source (the run's task folder, which is never the evaluation's cwd).

    `committed` is the experiment's editable files as committed (the bytes the guard checked): given,
    they are written as they are and the run's copies of editable files are never taken; without it
    (callers that have no commit) the editable files are copied from source like outputs.

    `wrap(argv, writable, cwd) -> (argv, isolation)` lets the caller put the evaluation in a sandbox.
    """
    command = command or task.task.evaluate
    assert command
    root = Path(tempfile.mkdtemp(prefix="ouroboros-eval-"))
    isolation = "process"
    try:
        work, out_dir = root / "work", root / "out"
        work.mkdir()
        out_dir.mkdir()
        try:
            outputs = [*task.task.outputs] if committed is not None else [*task.task.editable, *task.task.outputs]
            notes = prepare_dir(work, {**(committed or {}), **fixed}, source, outputs,
                                int(task.bound.max_artifact_mb * 2**20))
        except OuroborosError as exc:
            return Measurement(None, {}, task.trust, 0.0, str(exc), isolation)
        metrics_path = out_dir / "metrics.json"
        argv: list[str] | str = command
        if wrap is not None:
            argv, isolation = wrap(["bash", "-c", command], [root], work)
        eval_env = {**env, "OUROBOROS_METRICS": str(metrics_path), "PYTHONSAFEPATH": "1",
                    "PATH": _safe_paths(env.get("PATH", "/usr/bin:/bin"))}
        if "PYTHONPATH" in env:
            eval_env["PYTHONPATH"] = _safe_paths(env["PYTHONPATH"])
        # The task's limits hold here too: evaluation-phase code (an evaluator that imports the run's
        # code) may not fill the disk (the whole evaluation folder is watched), memory or the log.
        outcome = sandbox.run(argv, work, task.task.eval_timeout, 0.0, log_path, env=eval_env, isolation=isolation,
                              memory_mb=task.bound.memory_mb, max_log_mb=task.bound.max_log_mb,
                              gpu=sandbox.cuda_present(), max_artifact_mb=task.bound.max_artifact_mb, watch=root,
                              filtered=True)
        output = sandbox.tail_text(log_path)  # the evaluator's own output: read before any note of ours follows it
        if notes:
            with open(log_path, "a") as log:
                log.write("".join(f"[ouroboros] {n}\n" for n in notes))

        def failed(why: str, metrics: dict[str, Any] | None = None) -> Measurement:
            return Measurement(None, metrics or {}, task.trust, outcome.wall_s, why, isolation)

        if outcome.timed_out:
            return failed(f"evaluator ran past eval_timeout ({task.task.eval_timeout:g} s)")
        if outcome.killed:
            return failed(f"evaluation {outcome.killed}")
        if outcome.returncode != 0:
            tail = output.strip().splitlines()[-1:] or ["no output"]
            return failed(f"evaluator exited {outcome.returncode}: {tail[0][:200]}")
        try:
            metrics = read_metrics(metrics_path)
        except ValueError as exc:
            return failed(str(exc))
        if metrics is None:
            metrics, raw = {}, parse_metric(output, task)
        else:
            metrics = {k: v for k, v in metrics.items() if k not in RESERVED_METRICS}  # the harness's own keys
            raw = metrics.get(task.metric.name)
        metric, error = _check(raw, task, "the evaluator's output")
        return Measurement(metric, metrics, task.trust, outcome.wall_s, error, isolation)
    finally:
        _remove_later(root)


_PID = os.getpid()
_QUEUE: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
_WORKER: threading.Thread | None = None


def _remove_later(folder: Path) -> None:
    """Delete an evaluation folder off the loop's path: unlinking can take tens of milliseconds on a
    busy disk, and nothing reads the folder again. One worker thread, started once, deletes them in
    turn (a thread per folder made the loop wait each time for the new thread to be scheduled).
    Finished before the harness exits; at once in a forked process (`--parallel` slots end with
    os._exit, which runs no atexit hook, and a fork has no worker)."""
    global _WORKER
    if os.getpid() != _PID:
        readfile.clear(folder)
        return
    if _WORKER is None or not _WORKER.is_alive():
        _WORKER = threading.Thread(target=_remover, name="ouroboros-remove", daemon=True)
        _WORKER.start()
    _QUEUE.put(folder)


def _remover() -> None:
    while (folder := _QUEUE.get()) is not None:
        readfile.clear(folder)


@atexit.register
def _finish_removals() -> None:
    if _WORKER is not None and _WORKER.is_alive():
        _QUEUE.put(None)
        _WORKER.join(timeout=30)
