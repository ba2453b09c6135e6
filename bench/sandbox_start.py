"""What a sandbox start costs per phase: a bwrap per phase (what the loop does) against one sandbox per
run with a fresh PID and mount namespace per phase inside it (issue 14, item 3; measured, not adopted).

    python bench/sandbox_start.py [--phases 200]

A: the loop's own wrapper, `Bwrap.wrap(["true"], "run")` on examples/quadratic, started `--phases` times
   (with its keyring filter: a memfd per start, as sandbox.run does); A0, interleaved with A: the same
   without the filter, so A - A0 is what the filter costs a start.
B: one bwrap (the same mounts, capabilities kept so that it can make namespaces) whose shell starts
   `--phases` phases, each `unshare --pid --fork --mount-proc --mount` with a fresh tmpfs over /tmp
   and the reaper shell, as a per-run sandbox would; timed inside, so B excludes the one start it pays.
U: level unshare's wrapper, `Unshare.wrap(["true"], "run")` on the same task, started `--phases` times
   (interleaved with A; its view is made by mountview.py in one process), where unshare works.
Each prints the median and mean per phase in ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ouroboros import isolation, syscall_filter
from ouroboros.loop import Loop, Options
from ouroboros.scaffold import from_template
from ouroboros.task import load_task

PHASE = ("unshare --pid --fork --mount-proc --mount -- bash -c "
         "'mount -t tmpfs -o size=1m none /tmp && bash -c \"$0\" true' " + repr(isolation._REAPER))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phases", type=int, default=200)
    args = ap.parse_args()
    if not isolation.available("bwrap"):
        sys.exit("bwrap does not work here")
    with tempfile.TemporaryDirectory() as tmp:
        root = from_template(Path(tmp) / "q", "quadratic")
        loop = Loop(load_task(root), Options(agent="random", tag="s", max_experiments=0))
        loop.ws.open(loop.run_rec.base_commit)
        iso = loop.isolation
        argv, _ = iso.wrap(["true"], "run")
        at = argv.index("--seccomp")
        bare = argv[:at] + argv[at + 2:]
        a, a0, u = [], [], []
        unshare = None
        if isolation.available("unshare"):
            unshare = isolation.Unshare(loop.task, loop.ws.task_dir, loop.records, None)
            uargv, _ = unshare.wrap(["true"], "run")
        for _ in range(args.phases):
            if unshare is not None:
                t = time.perf_counter()
                subprocess.run(uargv, stdin=subprocess.DEVNULL, check=True, cwd=loop.ws.task_dir)
                u.append(time.perf_counter() - t)
            t = time.perf_counter()
            with syscall_filter.attached(argv) as (started, fds):
                subprocess.run(started, stdin=subprocess.DEVNULL, check=True, cwd=loop.ws.task_dir, pass_fds=fds)
            a.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run(bare, stdin=subprocess.DEVNULL, check=True, cwd=loop.ws.task_dir)
            a0.append(time.perf_counter() - t)
        # the same mounts, one start, capabilities kept for the per-phase namespaces
        cut = argv.index("--cap-drop")
        outer = argv[:cut] + ["--", "bash", "-c",
                              f'for i in $(seq {args.phases}); do s=$EPOCHREALTIME; {PHASE} || exit 1; '
                              'echo $s $EPOCHREALTIME; done']
        t = time.perf_counter()
        out = subprocess.run(outer, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=loop.ws.task_dir)
        total = time.perf_counter() - t
        if out.returncode:
            sys.exit(f"per-run sandbox failed: {out.stderr.strip()[-300:]}")
        b = [float(e) - float(s) for s, e in (line.split() for line in out.stdout.splitlines())]
        loop.ledger.close()
    print(f"command: python bench/sandbox_start.py --phases {args.phases}; load {os.getloadavg()[0]:.1f}; "
          f"{os.cpu_count()} cores; bwrap {shutil.which('bwrap')}")
    for name, xs in (("A bwrap per phase", a), ("A0 the same, no filter", a0), ("B phase in a per-run bwrap", b),
                     ("U unshare per phase", u)):
        if not xs:
            continue
        print(f"{name:<28} median {statistics.median(xs) * 1000:6.1f} ms  mean {statistics.fmean(xs) * 1000:6.1f} ms")
    print(f"B's whole run incl. its one start: {total * 1000:.0f} ms for {args.phases} phases")
    diff = [x - y for x, y in zip(a, a0, strict=True)]
    print(f"the keyring filter per start (A - A0, paired): median {statistics.median(diff) * 1000:+.2f} ms")


if __name__ == "__main__":
    main()
