"""Taking a run's result home (`ouroboros best`) and cleaning up after runs (`ouroboros prune`).

`best` reads the ledger and the run's commits, which live in the user's repository; `--apply`
writes the best commit's diff from the baseline into the user's checkout as uncommitted changes,
`--branch` points a new branch at the best commit. `prune` removes a run's worktree, its
environment folder, its branch and its attempt refs, and keeps the ledger and the run's logs.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from ouroboros import readfile
from ouroboros.errors import OuroborosError
from ouroboros.ledger import Experiment, Ledger, Run
from ouroboros.task import RECORDS_DIR, Task
from ouroboros.workspace import git, repo_root


@dataclass
class Best:
    run: Run
    baseline: Experiment
    best: Experiment
    keeps: list[Experiment]  # the keeps that led to the best, baseline excluded
    diff: str  # from the baseline's commit to the best's, repository-relative paths

    @property
    def gain(self) -> float | None:
        if self.best.metric is None or self.baseline.metric is None:
            return None
        return self.best.metric - self.baseline.metric


def _ledger(task: Task) -> Ledger:
    if not (task.root / RECORDS_DIR / "ledger.sqlite").exists():
        raise OuroborosError(f"no runs yet in {task.root}; start one with `ouroboros run -C {task.root} --agent "
                             "random -n 10`")
    return Ledger(task.root / RECORDS_DIR)


def _run(ledger: Ledger, tag: str | None) -> Run:
    runs = ledger.runs()
    if not runs:
        raise OuroborosError("no runs yet; start one with `ouroboros run --agent random -n 10`")
    run = ledger.run(tag) if tag else runs[-1]
    if run is None:
        raise OuroborosError(f"no run {tag!r}; runs: {', '.join(r.tag for r in runs)}")
    return run


def _has(repo: Path, sha: str) -> bool:
    return bool(git(repo, "cat-file", "-t", sha, check=False).strip() == "commit")


def best(task: Task, tag: str | None) -> Best:
    """The best experiment of a run (the latest when tag is None) and its diff from the baseline."""
    ledger = _ledger(task)
    try:
        run = _run(ledger, tag)
        exps = ledger.experiments(run.tag, finished_only=True)
    finally:
        ledger.close()
    keeps = [e for e in exps if e.status == "keep"]
    if not keeps:
        raise OuroborosError(f"run {run.tag} has no finished baseline yet; run it first "
                             f"(`ouroboros run -C {task.root} --resume {run.tag}`)")
    repo = repo_root(task.root)
    top = keeps[-1]
    if run.config.get("pruned") or not _has(repo, top.commit_sha):
        raise OuroborosError(f"run {run.tag} was pruned: its commits are gone (the ledger keeps the numbers; each "
                             f"experiment's diff.patch is in {task.root / RECORDS_DIR / 'runs' / run.tag / 'exp'})")
    diff = git(repo, "diff", "--no-color", "--no-ext-diff", "--binary", keeps[0].commit_sha, top.commit_sha)
    return Best(run, keeps[0], top, keeps[1:], diff)


def apply(task: Task, found: Best) -> list[str]:
    """Write the best diff into the user's checkout as uncommitted changes; the changed paths."""
    if not found.diff:
        raise OuroborosError(f"run {found.run.tag}: no experiment beat the baseline, so there is nothing to apply")
    repo = repo_root(task.root)
    proc = subprocess.run(["git", "-C", str(repo), "apply", "--binary", "--whitespace=nowarn", "-"],
                          input=found.diff.encode(errors="surrogateescape"), capture_output=True)
    if proc.returncode != 0:
        why = (proc.stderr.decode(errors="replace").strip().splitlines() or ["?"])[0]
        raise OuroborosError(f"the best diff does not apply to your checkout ({why}); put it on a branch instead: "
                             f"ouroboros best {found.run.tag} -C {task.root} --branch ouroboros-best-{found.run.tag}")
    names = git(repo, "apply", "--numstat", "-", input=found.diff)
    return [line.split("\t", 2)[2] for line in names.splitlines() if line.count("\t") >= 2]


def branch(task: Task, found: Best, name: str) -> None:
    repo = repo_root(task.root)
    if git(repo, "check-ref-format", "--branch", name, check=False).strip() != name:
        raise OuroborosError(f"--branch {name!r} is not a valid branch name; pick another, e.g. "
                             f"ouroboros-best-{found.run.tag}")
    if git(repo, "rev-parse", "--verify", "-q", f"refs/heads/{name}", check=False).strip():
        raise OuroborosError(f"branch {name} exists already; pick another name, e.g. --branch {name}-2")
    git(repo, "branch", name, found.best.commit_sha)


@dataclass
class Prunable:
    run: Run
    worktree: Path | None
    env: Path | None
    refs: list[str]  # the run's branch and attempt refs


def prunable(task: Task, tag: str | None, all_finished: bool) -> list[Prunable]:
    """What `prune` would remove, for one run or every run that is not running."""
    if (tag is None) == (not all_finished):
        raise OuroborosError("give a run's tag, or --all-finished (every run that is not running)")
    ledger = _ledger(task)
    try:
        runs = [_run(ledger, tag)] if tag else [r for r in ledger.runs() if r.status != "running"]
    finally:
        ledger.close()
    repo = repo_root(task.root)
    out = []
    for run in runs:
        run_dir = task.root / RECORDS_DIR / "runs" / run.tag
        refs = git(repo, "for-each-ref", "--format=%(refname)", f"refs/ouroboros/{run.tag}/").split()
        if git(repo, "rev-parse", "--verify", "-q", f"refs/heads/ouroboros/{run.tag}", check=False).strip():
            refs.insert(0, f"refs/heads/ouroboros/{run.tag}")
        worktree = run_dir / "worktree"
        env = run_dir / "env"
        out.append(Prunable(run, worktree if worktree.exists() else None, env if env.exists() else None, refs))
    return [p for p in out if p.worktree or p.env or p.refs]


def prune(task: Task, items: list[Prunable]) -> None:
    """Remove the worktrees, environments, branches and attempt refs; the ledger and logs stay."""
    repo = repo_root(task.root)
    for p in items:
        if p.worktree is not None:
            git(repo, "worktree", "remove", "--force", str(p.worktree), check=False)
            readfile.clear(p.worktree)
        if p.env is not None:
            readfile.clear(p.env)
    git(repo, "worktree", "prune")
    refs = [r for p in items for r in p.refs]
    if refs:
        git(repo, "update-ref", "--stdin", input="".join(f"delete {r}\n" for r in refs))
    ledger = Ledger(task.root / RECORDS_DIR)
    try:
        for p in items:
            p.run.config["pruned"] = True
            ledger.save_run(p.run)
    finally:
        ledger.close()
