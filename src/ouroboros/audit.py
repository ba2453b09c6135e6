"""`ouroboros audit TAG`: re-run a run's keeps from fresh exports and check their recorded metrics.

Each keep (or a random sample of them) is re-run from a `git archive` of its attempt commit into a
temporary folder, never from the run's worktree, so nothing the run left behind (caches, planted
files, an edited `.git`) takes part. The task file and the protected files (the evaluator, its
data) come from the run's base commit, and the isolation is the strongest that works on the
machine, whatever the task asks for. Run and evaluation are the loop's own (`Loop._execute`, with
the run's budget), and the re-runs are recorded as their own run, `audit-<tag>-<i>`, so an audit
loses nothing either.

Each keep is re-run with a fresh secret seed (`loop.secret_seed`, drawn when the re-run starts and
recorded with it), not the run's own: the run's seed can reach the agent (a crash's log is in the
next prompt), so code tuned to be lucky on it would "reproduce" with it. A keep that does not
reproduce under the fresh seed is re-run once more with the run's seed, to tell the reviewer which
it is: a number that holds only on the run's seed (seed luck, or a task noisier than measured), or
one that the commit does not give at all.

Reproduced means: |re-run - recorded| <= tolerance, where the tolerance is the judge's own smallest
gain that counts, max(judge.min_delta, judge.noise_z x the run's noise sigma). A task measured as
noisy (`ouroboros noise`) thus gets z sigmas; a task with neither (examples/quadratic) must
reproduce exactly, which a deterministic task does (under any seed). A keep that passed a
confirmation re-run also counts as reproduced when it matches that re-run. A difference below the
tolerance could not have earned a keep; one above it means the recorded number did not come from
that commit under a seed nobody could know in advance.
"""

from __future__ import annotations

import io
import random
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from rich.markup import escape
from rich.table import Table

from ouroboros import isolation, readfile
from ouroboros import loop as loop_module
from ouroboros.errors import OuroborosError
from ouroboros.judge import Verdict, effective_min_delta
from ouroboros.ledger import Experiment, Ledger, Run, fmt_metric
from ouroboros.loop import Loop, Options
from ouroboros.task import RECORDS_DIR, Task, load_task
from ouroboros.workspace import Workspace, repo_root


def export(repo: Path, commit: str, dest: Path) -> None:
    """Write the tree of `commit` into `dest` (emptied first), from git's objects only."""
    if dest.exists():
        readfile.clear(dest)
    dest.mkdir(parents=True)
    proc = subprocess.run(["git", "-C", str(repo), "-c", "core.attributesFile=/dev/null", "archive", "--format=tar",
                           commit], capture_output=True)
    if proc.returncode != 0:
        raise OuroborosError(f"cannot export commit {commit[:12]} for the audit: "
                             f"{proc.stderr.decode(errors='replace').strip()[:200]}; is it still in {repo}?")
    try:
        with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
            tar.extractall(dest, filter="data")  # no links or paths that leave dest
    except (tarfile.TarError, OSError) as exc:
        raise OuroborosError(f"commit {commit[:12]} cannot be exported safely ({exc}); audit it by hand") from exc


class Export:
    """The few workspace operations the loop's run and evaluation use, on a fresh export of a commit:
    cleaning re-exports it, so every re-run starts from the commit's bytes alone."""

    def __init__(self, repo: Path, task_rel: str, path: Path):
        self.repo, self.task_rel, self.path = repo, task_rel, path
        self.commit = ""
        self.objects: Workspace | None = None  # reads the repository's object store (set by AuditLoop)

    @property
    def task_dir(self) -> Path:
        return self.path / self.task_rel if self.task_rel not in ("", ".") else self.path

    def reset(self, commit: str) -> None:
        self.commit = commit
        export(self.repo, commit, self.path)

    def head(self) -> str:
        return self.commit

    def empty_gitlinks(self) -> None:
        """A fresh export holds no submodule's files."""

    def close(self) -> None:
        """Nothing to end: an export starts no long-lived git process."""

    def attributes_apply(self, entries) -> bool:
        """Every re-run starts from a fresh export, so nothing git's conversions hide outlives one."""
        return False

    def clean(self) -> None:
        self.reset(self.commit)

    def show(self, commit: str, rel: str) -> bytes:
        full = rel if self.task_rel in ("", ".") else f"{self.task_rel.rstrip('/')}/{rel}"
        proc = subprocess.run(["git", "-C", str(self.repo), "cat-file", "blob", f"{commit}:{full}"],
                              capture_output=True)
        if proc.returncode != 0:
            raise OuroborosError(f"{rel} is not in commit {commit[:8]}")
        return proc.stdout

    def files_at(self, commit: str, wanted) -> dict[str, tuple[bytes, int]]:
        """A commit's files from the object store (the evaluation takes the editable ones from here)."""
        assert self.objects is not None
        return self.objects.files_at(commit, wanted)

    def restore(self, commit: str, paths: list[str]) -> None:
        for rel in paths:
            target = self.task_dir / rel
            if target.is_symlink() or target.is_file():
                target.unlink()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.show(commit, rel))


class AuditLoop(Loop):
    """The loop's run and evaluation (`_execute`) on an export; it records into its own run."""

    settle_fast = False  # an export has no git to settle

    def __init__(self, task: Task, records: Path, audited: Run, tag: str, repo: Path, task_rel: str,
                 path: Path, protected: list[str]):
        self.task, self.opts = task, Options(agent="audit", tag=tag)
        self.on_experiment = lambda exp, best: None
        self.repo, self.records = repo, records
        self.ledger = Ledger(records)
        self.run_rec = Run(tag=tag, task=audited.task, agent="audit", metric=audited.metric,
                           direction=audited.direction, trust=task.trust, branch="", base_commit=audited.base_commit,
                           seed=audited.seed, fingerprint=audited.fingerprint, noise_sigma=audited.noise_sigma,
                           config={"audit_of": audited.tag, "budget": audited.config.get("budget")})
        self.tag = tag
        self.ledger.save_run(self.run_rec)
        self.ws = Export(repo, task_rel, path)
        self.ws.reset(audited.base_commit)
        self.budget = audited.config.get("budget") or task.task.budget
        self.history: list[Experiment] = []
        strongest = task.model_copy(update={"bound": task.bound.model_copy(update={"isolation": "auto"})})
        self.isolation = isolation.choose(strongest, self.ws.task_dir, records)
        # The export has no .git: mask the real task repo, and bind the whole export writable.
        self.isolation.repo, self.isolation.worktree = repo, path
        # A fresh export per re-run: no git state to watch, so the guard's after-phase checks are void.
        self.guard = SimpleNamespace(protected=dict.fromkeys(protected), arm=lambda: None, after=lambda *a: [])
        # The evaluation folder is built from the base commit's bytes, as in the audited run.
        self.ws.objects = Workspace(repo, task_rel, records, tag)
        self.fixed = self.ws.objects.files_at(audited.base_commit, lambda rel: not task.is_editable(rel))
        self._violation = None
        self._dirty = True

    def rerun(self, i: int, keep: Experiment, seed: int) -> Experiment:
        """Re-run `keep` from a fresh export of its commit with OUROBOROS_SEED=seed, as audit experiment i."""
        self.ws.reset(keep.commit_sha)
        self._dirty = False  # just exported
        exp = Experiment(self.tag, i, commit_sha=keep.commit_sha, parent=keep.commit_sha, agent="audit",
                         description=f"audit of {self.run_rec.config['audit_of']} experiment {keep.n} (seed {seed})",
                         params={"seed": seed})
        self.ledger.begin(exp)
        own, self.run_rec.seed = self.run_rec.seed, seed  # _execute hands the run record's seed to the run
        try:
            self._execute(exp, None)  # best None: measured as a baseline is, no judgement against anything
        finally:
            self.run_rec.seed = own
        return exp


@dataclass
class Row:
    n: int
    commit: str
    recorded: float | None
    again: float | None
    status: str  # reproduced | NOT REPRODUCED | failed (the re-run crashed or timed out)
    note: str = ""


@dataclass
class AuditResult:
    tag: str
    audit_tag: str
    tolerance: float
    isolation: str
    rows: list[Row] = field(default_factory=list)
    keeps: int = 0

    @property
    def ok(self) -> bool:
        return all(r.status == "reproduced" for r in self.rows)


def tolerance(task: Task, run: Run) -> float:
    return effective_min_delta(task.judge.min_delta, run.noise_sigma, task.judge.noise_z)


def reproduced(keep: Experiment, again: float, tol: float) -> bool:
    targets = [keep.metric, keep.metrics.get("confirm_metric")]
    return any(isinstance(t, int | float) and abs(again - t) <= tol for t in targets)


def audit(task: Task, tag: str, sample: int | None = None, seed: int = 0,
          echo: Callable[[str], None] | None = None) -> AuditResult:
    """Re-run the keeps of run `tag` (all, or `sample` drawn with `seed`) and compare; see the module doc."""
    records = task.root / RECORDS_DIR
    if not (records / "ledger.sqlite").exists():
        raise OuroborosError(f"no runs yet in {task.root}; nothing to audit")
    ledger = Ledger(records)
    run = ledger.run(tag)
    if run is None:
        raise OuroborosError(f"no run {tag!r} to audit; runs: {', '.join(r.tag for r in ledger.runs()) or 'none'}")
    keeps = [e for e in ledger.experiments(tag) if e.status == Verdict.KEEP]
    taken = {r.tag for r in ledger.runs()}
    ledger.close()
    chosen = sorted(random.Random(seed).sample(keeps, sample), key=lambda e: e.n) if sample and sample < len(keeps) \
        else keeps
    i = 1
    while f"audit-{tag}-{i}" in taken:
        i += 1
    repo = repo_root(task.root)
    task_rel = task.root.relative_to(repo).as_posix()
    with tempfile.TemporaryDirectory(prefix="ouroboros-audit-") as tmp:
        base = Path(tmp) / "base"
        export(repo, run.base_commit, base)
        base_task = load_task(base / task_rel)  # the evaluator and rules as they were when the run began
        protected = sorted(base_task.protected_files(base_task.root))
        loop = AuditLoop(base_task, records, run, f"audit-{tag}-{i}", repo, task_rel, Path(tmp) / "attempt",
                         protected)
        tol = tolerance(base_task, run)
        result = AuditResult(tag, loop.tag, tol, loop.isolation.level, keeps=len(keeps))
        n = 0  # the audit run's experiment numbers: one re-run per keep, two where the first disagrees
        try:
            for k, keep in enumerate(chosen):
                if echo:
                    echo(f"audit {escape(tag)}: re-running keep {keep.n} {escape(f'[{keep.commit_sha[:7]}]')} "
                         f"({k + 1}/{len(chosen)})")
                fresh = loop_module.secret_seed()  # drawn now: no agent could tune the code to it
                exp = loop.rerun(n, keep, fresh)
                n += 1
                if exp.status != Verdict.KEEP or exp.metric is None:
                    result.rows.append(Row(keep.n, keep.commit_sha, keep.metric, None, "failed",
                                           f"{exp.status}: {exp.reason}"))
                elif keep.metric is not None and reproduced(keep, exp.metric, tol):
                    result.rows.append(Row(keep.n, keep.commit_sha, keep.metric, exp.metric, "reproduced"))
                else:
                    diff = "" if keep.metric is None else f"off by {exp.metric - keep.metric:+.6g} with a fresh seed"
                    if keep.metric is not None:  # which it is: luck on the run's seed, or a number never produced
                        own = loop.rerun(n, keep, run.seed)
                        n += 1
                        if own.status == Verdict.KEEP and own.metric is not None and \
                                reproduced(keep, own.metric, tol):
                            diff += (f"; the run's own seed {run.seed} gives the recorded number: tuned to that seed, "
                                     "or the task is noisier than measured")
                    result.rows.append(Row(keep.n, keep.commit_sha, keep.metric, exp.metric, "NOT REPRODUCED", diff))
            loop.run_rec.status = "finished"
        finally:
            if loop.run_rec.status == "running":
                loop.run_rec.status = "stopped"
            loop.run_rec.config["audit"] = {"tolerance": tol, "rows": [r.__dict__ for r in result.rows],
                                            "finished": time.time()}
            loop.ledger.save_run(loop.run_rec)
            loop.ledger.close()
    return result


def table(result: AuditResult) -> Table:
    t = Table(title=f"audit of run {escape(result.tag)}: {len(result.rows)} of {result.keeps} keeps re-run, "
                    f"isolation {result.isolation}, tolerance {fmt_metric(result.tolerance)}")
    for col in ("n", "commit", "recorded", "re-run", "difference", "verdict", "note"):
        t.add_column(col)
    colors = {"reproduced": "green", "NOT REPRODUCED": "bold red", "failed": "red"}
    for r in result.rows:
        diff = "" if r.again is None or r.recorded is None else f"{r.again - r.recorded:+.6g}"
        t.add_row(str(r.n), r.commit[:7], fmt_metric(r.recorded), fmt_metric(r.again), diff,
                  f"[{colors[r.status]}]{r.status}[/]", escape(r.note[:200]))
    return t


def summary(result: AuditResult) -> str:
    bad = [r for r in result.rows if r.status != "reproduced"]
    where = f"recorded as run {escape(result.audit_tag)}"
    if not bad:
        return (f"all {len(result.rows)} re-run keeps reproduced within {fmt_metric(result.tolerance)} "
                f"({where})")
    return (f"[bold red]{len(bad)} of {len(result.rows)} keeps did not reproduce[/] "
            f"(experiments {', '.join(str(r.n) for r in bad)}): their recorded metrics did not come from their "
            f"commits under a fresh seed, or the task is noisier than measured (`ouroboros noise`); {where}")
