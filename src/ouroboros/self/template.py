"""`ouroboros init --template self DIR`: a task made of Ouroboros's own source.

Editable: src/ouroboros/policy.py, the search's own settings (widen `editable` to agents/ and
memory.py for a coding agent). Protected: the trusted core that measures and records (this
package with the suite and the delta benchmark, the judge, the ledger, the guard, the sandbox, the
evaluation, the workspace), the task's evaluate.py and delta.toml. The metric is the delta score of
the candidate version (maximize). The holdout suite is not copied: it stays in the installation.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ouroboros.errors import OuroborosError
from ouroboros.task import load_task
from ouroboros.workspace import exclude_records, git

PACKAGE = Path(__file__).resolve().parents[1]

PROTECTED = ["evaluate.py", "delta.toml", "src/ouroboros/__init__.py", "src/ouroboros/errors.py",
             "src/ouroboros/self/**", "src/ouroboros/judge.py", "src/ouroboros/ledger.py", "src/ouroboros/guard.py",
             "src/ouroboros/sandbox.py", "src/ouroboros/isolation.py", "src/ouroboros/evaluate.py",
             "src/ouroboros/workspace.py", "src/ouroboros/task.py", "src/ouroboros/knobs.py",
             "src/ouroboros/testing.py", "src/ouroboros/cheats.py", "src/ouroboros/scaffold.py",
             "src/ouroboros/policyfile.py",
             "examples/quadratic/**"]

TOML = """\
# Ouroboros improving itself: the candidate is this repo's src/ouroboros; its score is the delta
# benchmark (delta.toml): the candidate runs as the inner harness on the suite, and the trusted
# evaluator gates it and re-measures what it kept. `ouroboros run --self` runs each experiment with
# the latest kept version. Without a language model the proposer is the `policy` agent, searching
# the knobs of the policy module: the search's own settings.
[task]
name = "self"
program = "program.md"
editable = ["src/ouroboros/policy.py"]
protected = {protected}
run = "PYTHONPATH=src python -m ouroboros.self.task_run"
evaluate = "python -I evaluate.py"
outputs = [".self/work/**"]  # the inner runs' ledgers and kept params, for the evaluator
budget = 900
grace = 30
eval_timeout = 600

[metric]
name = "delta"
direction = "maximize"

[judge]
min_delta = 0.005

[search]
policy = "greedy"

[knobs]
MUTATE_KNOBS = {{ low = 1, high = 4 }}
MUTATE_SCALE = {{ low = 0.02, high = 1.0, log = true }}
EXPLORE = {{ low = 0.0, high = 0.6 }}
STARTUP = {{ low = 0, high = 6 }}
TPE_STARTUP = {{ low = 1, high = 10 }}
TREE_PRIOR = {{ low = 0.2, high = 5.0, log = true }}
"""

DELTA = """\
# The delta benchmark the self task scores each candidate with (protected).
seeds = [0, 1]
experiments = {experiments}   # inner experiments per suite task and seed
agent = "policy"
search = "greedy"
jobs = 2
gate = true
"""

EVALUATE = '''\
"""PROTECTED. The self task's evaluator, run as `python -I evaluate.py` in the worktree.

-I keeps PYTHONPATH, the user's site and this folder off the path; the protected source (and the
cheat suite's task, examples/quadratic) is copied to a private folder first (no __pycache__), so
nothing the run phase wrote is imported.
"""
import shutil
import sys
import tempfile
from pathlib import Path

root = Path.cwd()
private = Path(tempfile.mkdtemp(prefix="ouroboros-self-eval-"))
try:
    for part in ("src/ouroboros", "examples/quadratic"):
        shutil.copytree(root / part, private / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(private / "src"))
    from ouroboros.self.task_eval import main

    code = main(root)
finally:
    shutil.rmtree(private, ignore_errors=True)
sys.exit(code)
'''

PROGRAM = """\
# self

Make Ouroboros better at improving things. The score is the delta benchmark: the version in this
repo runs as the inner harness on a suite of small tasks, and its mean normalized improvement
(area under the best-so-far curve and final gain) is measured by a trusted evaluator you cannot
change. Higher is better.

- Edit only src/ouroboros/policy.py: the ALL_CAPS settings of the proposal policies. It is read as
  data, never run: only `NAME = number` lines for its known settings are accepted.
- A version must pass the gate (the agent contract and the cheat subset) to be kept.
- Results the inner harness claims are re-measured; a claim that does not reproduce is a crash.
"""


def from_template(directory: Path, experiments: int = 6) -> Path:
    if directory.exists() and any(directory.iterdir()):
        raise OuroborosError(f"{directory} exists and is not empty; pick a new folder")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ouroboros", "holdout", "solution.json")
    shutil.copytree(PACKAGE, directory / "src" / "ouroboros", ignore=ignore)
    examples = PACKAGE.parents[1] / "examples" / "quadratic"
    if not examples.is_dir():
        raise OuroborosError("the self template needs examples/quadratic (the cheat suite's task), which ships "
                             "with the source checkout; install with `pip install -e .` from a clone")
    shutil.copytree(examples, directory / "examples" / "quadratic", ignore=ignore)
    protected = "[" + ", ".join(f'"{p}"' for p in PROTECTED) + "]"
    (directory / "ouroboros.toml").write_text(TOML.format(protected=protected))
    (directory / "delta.toml").write_text(DELTA.format(experiments=experiments))
    (directory / "evaluate.py").write_text(EVALUATE)
    (directory / "program.md").write_text(PROGRAM)
    (directory / ".gitignore").write_text(".ouroboros/\n.self/\n__pycache__/\n*.pyc\nsolution.json\n")
    git(directory, "init", "-q", "-b", "main")
    git(directory, "add", "-A")
    git(directory, "commit", "-q", "-m", "baseline: Ouroboros's own source as a task (ouroboros init --template self)")
    exclude_records(directory)
    load_task(directory)
    return directory
