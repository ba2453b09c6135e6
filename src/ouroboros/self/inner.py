"""The inner harness runner: one process of a version runs many `ouroboros` CLI invocations.

    python -m ouroboros.self.inner PLAN.json      (the version's source first on PYTHONPATH)

PLAN is {"jobs": J, "timeout": SECONDS, "runs": [{"name", "cwd", "log", "env", "steps": [argv, ...]}]}.
The process imports the version's CLI once, then forks one child per step (the steps of a run one
after another, each a fresh process as a resumed run is; up to J runs side by side). A child
redirects its output to the run's log, enters `cwd`, sets `env` and runs the version's own
`ouroboros.cli.main` with the step's argv: the same code path as `python -m ouroboros.cli`, without
paying the interpreter's start-up and the imports for every inner run (about a second each).

It is the version's code that runs here, and whoever starts it believes nothing it says: the last
line of its output is a JSON map of run name to the exit status of the run's last failed step (0 if
none), for error messages only; the delta benchmark and the gate judge from what they re-measure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import sys
import time
import traceback
from pathlib import Path


def _child(run: dict, argv: list[str]) -> None:
    """In the forked child: run one CLI invocation and leave with its exit status."""
    code = 1
    try:
        fd = os.open(run["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.setpgid(0, 0)
        os.chdir(run["cwd"])
        os.environ.update(run.get("env") or {})
        from ouroboros import cli

        sys.argv = ["ouroboros", *argv]
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001  the child must never return into the runner's loop
        traceback.print_exc()
    finally:
        try:
            import gc

            gc.collect()  # what the run left unreferenced (the ledger's connection) closes as at a normal exit
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run_plan(plan: dict) -> dict[str, int]:
    runs = list(plan["runs"])
    jobs = max(1, int(plan.get("jobs", 1)))
    timeout = float(plan.get("timeout", 600))
    pending = [(run, 0) for run in runs]
    active: dict[int, tuple[dict, int, float]] = {}  # pid -> (run, step, started)
    codes = {run["name"]: 0 for run in runs}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        while pending or active:
            while pending and len(active) < jobs:
                run, step = pending.pop(0)
                pid = os.fork()
                if pid == 0:
                    _child(run, run["steps"][step])
                active[pid] = (run, step, time.monotonic())
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                now = time.monotonic()
                for p, (run, _, started) in active.items():
                    if now - started > timeout:
                        _kill(p)
                        codes[run["name"]] = 124
                time.sleep(0.02)
                continue
            if pid not in active:
                continue
            run, step, _ = active.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            _kill(pid)  # whatever the step left in its process group
            if code != 0 and codes[run["name"]] == 0:
                codes[run["name"]] = code
            if code == 0 and step + 1 < len(run["steps"]):
                pending.insert(0, (run, step + 1))
    finally:
        for pid in list(active):
            _kill(pid)
    return codes


def _kill(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def log_tail(log: Path, cap: int = 16 << 10) -> str:
    """The last non-empty line of a log a version's runner could write (its folder is the runner's): a
    regular file only (no link followed, no FIFO waited on), its last `cap` bytes; "no output" when
    there is no such file or line."""
    try:
        fd = os.open(log, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return "no output"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "no output"
        os.lseek(fd, max(0, st.st_size - cap), os.SEEK_SET)
        data = os.read(fd, cap)
    except OSError:
        return "no output"
    finally:
        os.close(fd)
    lines = [ln for ln in data.decode("utf-8", errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def remove(path: Path) -> None:
    """Remove whatever is at `path` without following a link (a link, a FIFO, a file or a whole folder)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        try:
            shutil.rmtree(path)  # removes links inside, never what they point to
        except RecursionError:  # deeper than Python's limit: GNU rm walks any depth (this module imports
            import subprocess  # nothing of the harness, whose readfile.clear does the same)

            subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False)
    else:
        os.unlink(path)


def _checkout_of(folder: Path) -> Path | None:
    """The git work tree holding `folder` (the user's checkout, for a folder in its records), if any."""
    for parent in [folder, *folder.parents]:
        if (parent / ".git").exists():
            return parent
    return None


def confined(argv: list[str], work: Path, src: Path, required: bool = False) -> tuple[list[str], str]:
    """argv confined for a version's runner (bubblewrap): `work` is its only writable place; $HOME (the
    ledger key, the user's files), /tmp, /run and the git checkout holding `work` (the user's
    records and files) are out of its sight; the version's source and this interpreter are read-only;
    no network; no capabilities (it cannot remount what hides or protects); under a root harness it
    runs as uid and gid 65534 (nobody), owner of `work`, as level bwrap runs do (root would still
    write every file root owns); the kernel keyring calls fail (syscall_filter: start it through
    `syscall_filter.attached`, as spawn does). Without bubblewrap, argv as it is ("none"), or with
    `required` an OuroborosError: never a silent run with the caller's rights where confinement was
    promised."""
    from ouroboros import isolation, syscall_filter
    from ouroboros.errors import OuroborosError

    if not isolation.available("bwrap"):
        if required:
            where = "does not work here (nested?)" if shutil.which("bwrap") else "is not installed"
            raise OuroborosError(f"bubblewrap {where}: a version's runner, its own code, is not run unconfined")
        return argv, "none"
    root = isolation.drops_root()
    real = [Path(os.path.realpath(p)) for p in (work, src, sys.prefix, sys.base_prefix)]
    home = Path(os.path.expanduser("~"))
    masks = [Path("/tmp"), Path("/run"), home]
    checkout = _checkout_of(real[0])
    if checkout is not None:
        masks.append(checkout)
    if root:  # folders nobody cannot cross (/root): empty, with what the runner needs bound back in them
        masks += isolation._closed_ancestors(real, masks)
    args = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for mask in masks:
        if mask.is_dir() and mask != Path("/") and not os.path.islink(mask):
            # writable by the dropped runner, as on the host: /tmp for all, $HOME its own
            perms = {Path("/tmp"): "1777", home: "0777"}.get(mask) if root else None
            args += [*(["--perms", perms] if perms else []), "--tmpfs", str(mask)]
    for path in real[2:]:  # the interpreter and its packages, where a mask covers them
        if any(m in path.parents or m == path for m in masks):
            args += ["--ro-bind", str(path), str(path)]
    args += ["--bind", str(real[0]), str(real[0]), "--ro-bind", str(real[1]), str(real[1])]
    # bwrap makes a bind's missing parents inside a tmpfs 0700: a root harness's runs and agents inside
    # (dropped to NOBODY) could not reach the interpreter bound back under the masked $HOME
    args = isolation._open_parents(args) + ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                                            "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                                            *syscall_filter.bwrap_args()]
    if root:  # root without capabilities may not enter nobody's 0700 folder: the dropped runner does
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP", "--chdir", "/"]
        argv = [*isolation._DROP_ROOT, "env", "-C", str(real[0]), *argv]
        _give(real[0])
    else:
        args += ["--chdir", str(real[0])]
    return [*args, "--", *argv], "bwrap"


def _give(work: Path) -> None:
    """Under a root harness: `work` and all in it owned by nobody, the uid its runner drops to (links
    never followed). Owner, not group as for runs: the version's own git refuses a repo another user owns."""
    from ouroboros.isolation import NOBODY

    stack = [work]
    while stack:
        path = stack.pop()
        try:
            st = os.lstat(path)
            if (st.st_uid, st.st_gid) != (NOBODY, NOBODY):
                os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                with os.scandir(path) as it:
                    stack.extend(Path(e.path) for e in it)
        except OSError:
            continue


def spawn(src: Path, runs: list[dict], plan_path: Path, jobs: int = 2, timeout: float = 600,
          unconfined_ok: bool = False) -> dict[str, int]:
    """Run `runs` with the version at `src`, in a runner process of its own (the caller's side).

    The runner is confined (confined(): the plan's folder, which holds every run, is all it may
    write; no view of the user's checkout, records or ledger key) and gets a ledger key of its own.
    Where bubblewrap does not work, OuroborosError, unless the caller says a runner with its own rights
    is acceptable (`unconfined_ok`: the user's own `delta`, documented; a run phase, itself the sandbox).
    Returns each run's exit status as the runner tells it (124: past `timeout`), or raises
    OuroborosError when the runner itself dies or says nothing readable."""
    import subprocess

    from ouroboros import syscall_filter
    from ouroboros.errors import OuroborosError
    from ouroboros.self import versions

    work = plan_path.parent
    for run in runs:
        for key in ("cwd", "log"):
            if work.resolve() not in Path(run[key]).resolve().parents:
                raise OuroborosError(f"inner run {run['name']}: {run[key]} is outside the runner's folder {work}")
    # the folder may hold what an earlier runner left (delta and the holdout reuse theirs): a plan.json or
    # .config that is a link would have this side write through it, outside the sandbox
    remove(plan_path)
    fd = os.open(plan_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"jobs": jobs, "timeout": timeout, "runs": runs}))
    config = work / ".config"  # the version's own ledger key: never the user's
    remove(config)
    config.mkdir(mode=0o700)
    limit = timeout * (len(runs) + 1)  # every run past its own limit, one at a time, at worst
    argv, _ = confined([sys.executable, "-m", "ouroboros.self.inner", str(plan_path.resolve())], work, src,
                       required=not unconfined_ok)
    env = versions.environment(src, {"COLUMNS": "160", "OUROBOROS_CONFIG_DIR": str(config.resolve())})
    try:
        with syscall_filter.attached(argv) as (argv, fds):
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                                  timeout=limit, cwd=work, pass_fds=fds)
    except subprocess.TimeoutExpired:
        raise OuroborosError(f"the version at {src} ran its inner runs past {limit:g} s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    try:
        codes = json.loads(lines[-1])
        if not isinstance(codes, dict) or set(codes) != {r["name"] for r in runs}:
            raise ValueError(codes)
        return {str(k): int(v) for k, v in codes.items()}
    except (IndexError, ValueError, TypeError):
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise OuroborosError(f"the version at {src} could not run its inner runs (exit {proc.returncode}): "
                             f"{tail[0][:300]}") from None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m ouroboros.self.inner PLAN.json", file=sys.stderr)
        return 2
    plan = json.loads(Path(argv[0]).read_text())
    # imported once, before the forks: the children share the version's modules
    from ouroboros import cli, loop  # noqa: F401

    codes = run_plan(plan)
    print(json.dumps(codes), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
