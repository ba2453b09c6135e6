"""Per-experiment overhead of the guard and the sandbox on examples/quadratic.

    python bench/guard_overhead.py [--repeats 30]

For each isolation level that works here, times the guard's check of a one-line change, and the
run and evaluate phases as the loop runs them (the run through sandbox.run with that level's
wrapper and the guard's after-run check; the evaluation through Loop._measure: a fresh folder from
the baseline's bytes plus the declared outputs, sandboxed, then the after-evaluation check), against
the same two commands started with a bare subprocess.run in the worktree. Overhead per experiment =
guard check + (wrapped run + wrapped evaluate) - (bare run + bare evaluate), medians over the
repeats. Target: <= 100 ms.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ouroboros import isolation, sandbox
from ouroboros.guard import Guard
from ouroboros.loop import Loop, Options
from ouroboros.scaffold import from_template
from ouroboros.task import load_task


def _ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def bench(level: str, repeats: int, root: Path) -> dict[str, float]:
    repo = from_template(root / level, "quadratic")
    task = load_task(repo)
    loop = Loop(task, Options(agent="random", max_experiments=1, tag="bench"))
    loop.isolation = isolation._CLASSES[level](task, loop.ws.task_dir, loop.records)
    guard = loop.guard = Guard(task, loop.ws)
    base = loop.run_rec.base_commit
    wt = loop.ws.task_dir
    train = wt / "train.py"
    original = train.read_text()
    env = sandbox.scrubbed_env({"OUROBOROS_BUDGET_S": "10", "OUROBOROS_SEED": "0"})
    out = root / f"{level}-logs"
    out.mkdir()
    guard_s, bare_s, wrapped_s = [], [], []
    for i in range(repeats):
        train.write_text(original.replace("STEPS = 200", f"STEPS = {200 + i % 2}"))
        t = time.perf_counter()
        violations = guard.check(base)
        guard_s.append(time.perf_counter() - t)
        assert violations == [], violations

        t = time.perf_counter()
        subprocess.run(["bash", "-c", task.task.run], cwd=wt, env=env, stdout=subprocess.DEVNULL, check=True)
        subprocess.run(["bash", "-c", task.task.evaluate], cwd=wt, env=env, stdout=subprocess.DEVNULL, check=True)
        bare_s.append(time.perf_counter() - t)

        t = time.perf_counter()
        guard.arm()
        outcome = loop._run_phase(out, env, f"run{i}.log")
        broke = guard.after("run", base)
        m = loop._measure(out, env, f"eval{i}.log")  # its own folder, from baseline bytes + outputs
        wrapped_s.append(time.perf_counter() - t)
        assert outcome.ok and not broke and m.error is None and loop._violation is None, (outcome, broke, m)
    train.write_text(original)
    return {"guard": _ms(guard_s), "bare": _ms(bare_s), "wrapped": _ms(wrapped_s),
            "overhead": _ms(guard_s) + _ms(wrapped_s) - _ms(bare_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"{'level':8} {'guard ms':>9} {'bare run+eval ms':>17} {'wrapped run+eval ms':>20} {'overhead ms':>12}")
    with tempfile.TemporaryDirectory(prefix="ouroboros-bench-") as tmp:
        for level in isolation.LEVELS:
            if not isolation.available(level):
                print(f"{level:8} (not available here)")
                continue
            r = bench(level, args.repeats, Path(tmp))
            verdict = "ok" if r["overhead"] <= 100 else "OVER the 100 ms target"
            print(f"{level:8} {r['guard']:9.1f} {r['bare']:17.1f} {r['wrapped']:20.1f} {r['overhead']:12.1f}  {verdict}")


if __name__ == "__main__":
    main()
