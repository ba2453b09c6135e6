"""The gate a version passes before it is adopted: the agent contract and a cheat subset, run by
the candidate's own harness in a process of its own.

`python -m ouroboros.self.gate` (with the candidate first on PYTHONPATH) runs:
- the agent contract suite (`ouroboros.testing.check_agent_contract`) with the candidate's `policy`
  agent on a fresh copy of the suite task `bowl`: every verdict recorded, nothing outside the
  editable files touched, a resumed run proposes again;
- the cheat subset GATE_ATTACKS: the agent-time attacks on the guard (edit the evaluator, raise the
  budget, rewrite git history) and the forged metric line, chosen because they take about a second
  each and fail if an edited agent or policy module weakens the guard or the evaluation in-process.
  The rest of the cheat suite targets the sandbox and the trust boundary, which the self task
  protects byte for byte; `ouroboros cheats` runs it all.

It prints one line per check and exits 1 if any fails. `gate(src)` runs it for the outer harness.
Does not protect against: a candidate that forges the gate's own exit status (its code runs in the
gate's process); the delta benchmark's trusted re-measurement still catches forged results.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ouroboros.self import versions

GATE_ATTACKS = ["edit-evaluator", "raise-budget", "git-history", "fake-metric"]


def gate(src: Path, timeout: float = 300) -> list[str]:
    """The gate's failures for the version at `src` (empty: it passes)."""
    try:
        proc = subprocess.run([sys.executable, "-m", "ouroboros.self.gate"], env=versions.environment(src),
                              capture_output=True, text=True, errors="replace", timeout=timeout,
                              stdin=subprocess.DEVNULL, cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired:
        return [f"the gate ran past {timeout:g} s"]
    if proc.returncode == 0:
        return []
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("FAIL")]
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
    return lines or [f"the gate did not run: {tail[0][:300]}"]


def _contract(work: Path) -> None:
    from ouroboros.agents import make_agent
    from ouroboros.self.suite import load_suite
    from ouroboros.testing import check_agent_contract, commit_all

    task = work / "contract"
    shutil.copytree(load_suite("public", ["bowl"])[0].path, task, ignore=shutil.ignore_patterns("__pycache__"))
    (task / ".gitignore").write_text(".ouroboros/\n__pycache__/\n")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=task, check=True)
    commit_all(task, "gate: contract task")
    check_agent_contract(lambda: make_agent("policy", 0), task, experiments=3)


def main() -> int:
    from ouroboros import cheats

    failed = 0
    with tempfile.TemporaryDirectory(prefix="ouroboros-gate-") as tmp:
        work = Path(tmp)
        try:
            _contract(work)
            print("ok   agent contract (policy)", flush=True)
        except Exception as exc:  # the candidate's agent or harness broke the contract
            print(f"FAIL agent contract (policy): {type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                  flush=True)
            failed += 1
        for name in GATE_ATTACKS:
            attack = next(a for a in cheats.ATTACKS if a.name == name)
            try:
                result = cheats.run_attack(attack, work / name)
                ok, why = result.ok, f"{result.verdict}: {result.caught_by}"
            except Exception as exc:  # the candidate's harness broke while being attacked
                ok, why = False, f"{type(exc).__name__}: {exc}"
            print(f"{'ok  ' if ok else 'FAIL'} cheat {name}: {' '.join(why.split())[:300]}", flush=True)
            failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
