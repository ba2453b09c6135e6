"""The delta benchmark: how good a version of Ouroboros is at improving things.

A version runs as the inner harness (its own process, its own source) on every suite task for a
fixed number of experiments and seeds (`run_inner`, the version's runner confined: inner.py). The
outer harness then re-measures every experiment each inner run evaluated with the suite's trusted
evaluators (`collect`): the inner ledger is read only for which commit each experiment tried and
what it claims, and every claim must be reproduced; its verdicts are not used. Scores:

    curve      c_k = normalized best-so-far after k experiments, by this side's greedy replay over its
               own measurements (0 = the task's baseline, 1 = its best)
    area       mean of c_1 .. c_E (area under the normalized best-so-far curve)
    final      c_E (the final normalized gain)
    run score  (area + final) / 2
    task score the median of the run scores over seeds
    delta      the mean of the task scores, with a bootstrap 95% interval over tasks

Deterministic for the same version, suite, seeds and experiments: the inner agents are seeded, the
suite's evaluators are deterministic (the noisy task's noise is seeded), and the bootstrap is too.

Does not protect against: an inner harness that is itself the candidate's code (a self task whose
editable region includes agents/**) can read the suite's evaluators and claim commits it did not
find by searching; they reproduce. With the default self task the inner harness is the protected
code, and the editable policy file is data (policyfile.py).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import stat
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ouroboros.errors import OuroborosError
from ouroboros.readfile import read_regular
from ouroboros.self import inner, versions
from ouroboros.self.evidence import SHA, InnerRepo
from ouroboros.self.suite import SuiteTask, load_suite

TAG = "delta"
CLAIM_RTOL = 1e-6


class ClaimError(OuroborosError):
    """The inner ledger claims a result the trusted re-measurement does not reproduce."""


@dataclass
class RunScore:
    task: str
    seed: int
    curve: list[float]
    area: float
    final: float
    score: float
    keeps: int
    best: float | None  # the re-measured best value of the scored metric


@dataclass
class DeltaResult:
    split: str
    seeds: list[int]
    experiments: int
    agent: str
    search: str
    delta: float
    low: float
    high: float
    tasks: dict[str, float] = field(default_factory=dict)  # task -> median run score over seeds
    runs: list[RunScore] = field(default_factory=list)

    def line(self) -> str:
        return f"delta {self.delta:.4f} (95% CI {self.low:.4f} .. {self.high:.4f}; {self.split} suite, " \
               f"{len(self.tasks)} tasks x {len(self.seeds)} seeds x {self.experiments} experiments)"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def run_dir(work: Path, task: SuiteTask, seed: int) -> Path:
    return work / f"{task.name}-s{seed}"


def prepare_run(task: SuiteTask, seed: int, work: Path) -> Path:
    """A fresh, committed copy of the suite task for one inner run."""
    dest = run_dir(work, task, seed)
    inner.remove(dest)  # an earlier runner's folder: a link there is removed, never written through
    inner.remove(dest.parent / f"{dest.name}.log")
    return task.commit_to(dest, f"suite task {task.name}")


def run_many(src: Path, items: list[tuple[SuiteTask, int]], experiments: int, work: Path, agent: str = "policy",
             search: str = "greedy", jobs: int = 2, timeout: float = 600, unconfined_ok: bool = True) -> list[Path]:
    """Inner runs: fresh copies of the suite tasks, all run by one process of the version at `src`
    (self/inner.py: one fork per run, `jobs` side by side). Without bubblewrap the runner has this
    process's rights (documented) unless `unconfined_ok` is False."""
    work.mkdir(parents=True, exist_ok=True)
    runs, dests = [], []
    for task, seed in items:
        dest = prepare_run(task, seed, work)
        argv = ["run", "-C", str(dest), "--agent", agent, "--max-experiments", str(experiments), "--seed", str(seed),
                "--tag", TAG, *(["--search", search] if search != "greedy" else [])]
        runs.append({"name": dest.name, "cwd": str(dest), "log": str(dest.parent / f"{dest.name}.log"),
                     "steps": [argv]})
        dests.append(dest)
    codes = inner.spawn(src, runs, work / "plan.json", jobs, timeout, unconfined_ok)
    for (task, seed), dest in zip(items, dests, strict=True):
        code = codes[dest.name]
        if code == 124:
            raise OuroborosError(f"the inner harness ran past {timeout:g} s on {task.name} (seed {seed})")
        if code != 0:
            tail = inner.log_tail(dest.parent / f"{dest.name}.log")  # the runner's folder: no FIFO, no link
            raise OuroborosError(f"the inner harness failed on {task.name} (seed {seed}, exit {code}): "
                                 f"{' '.join(tail.split())[:300]}")
    return dests


def run_inner(src: Path, task: SuiteTask, seed: int, experiments: int, work: Path, agent: str = "policy",
              search: str = "greedy", timeout: float = 600) -> Path:
    """One inner run: a fresh copy of the suite task, the version at `src` as its harness."""
    return run_many(src, [(task, seed)], experiments, work, agent, search, 1, timeout)[0]


QUERY_STEPS = 20_000_000  # sqlite VM steps all queries on one inner ledger may take (a real one needs far fewer)


def open_inner_ledger(db: Path, where: str) -> sqlite3.Connection:
    """A read-only connection to a ledger a version's harness wrote (hostile), safe to query: a regular
    file (and so its journal files; a FIFO would block the open, a link reads elsewhere), whose schema
    holds only plain tables and indexes (a view runs its own query, any length of it; a trigger or
    virtual table is code of the writer's), every query on it bounded in steps and value length.
    OuroborosError otherwise, naming `where`."""
    for path in (db, *(db.with_name(db.name + s) for s in ("-wal", "-shm", "-journal"))):
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            if path == db:
                raise OuroborosError(f"{where} left no ledger") from None
            continue
        if not stat.S_ISREG(mode):
            raise OuroborosError(f"{where}: {path.name} is not a regular file; a ledger is one")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    steps = [0]

    def bounded() -> int:
        steps[0] += 10_000
        return steps[0] > QUERY_STEPS  # nonzero: sqlite interrupts the query

    con.set_progress_handler(bounded, 10_000)
    con.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1 << 20)
    try:
        planted = con.execute("SELECT type, name FROM sqlite_master WHERE type NOT IN ('table', 'index') "
                              "OR upper(ltrim(sql)) LIKE 'CREATE VIRTUAL%'").fetchone()
        if planted is None:
            generated = [r[1] for r in con.execute("SELECT * FROM pragma_table_xinfo('experiments')") if r[6]]
            planted = ("generated column", generated[0]) if generated else None
    except sqlite3.Error as exc:
        con.close()
        raise OuroborosError(f"{where}: the ledger is unreadable: {exc}") from exc
    if planted is not None:
        con.close()
        raise OuroborosError(f"{where}: the ledger holds a {planted[0]} {str(planted[1])[:80]!r}, which Ouroboros "
                             "never creates; the version is refused")
    return con


def claims(dest: Path) -> list[tuple[int, str, str, float | None]]:
    """(n, commit, status, metric) of every inner experiment, as the inner ledger tells it."""
    db = dest / ".ouroboros" / "ledger.sqlite"
    db = db if os.path.lexists(db) else dest / "ledger.sqlite"  # an export (export_inner)
    con = open_inner_ledger(db, f"the inner run in {dest}")
    try:
        rows = con.execute("SELECT n, commit_sha, status, metric FROM experiments WHERE tag=? ORDER BY n",
                           (TAG,)).fetchall()
        return [(int(n), str(c), str(s), None if m is None else float(m)) for n, c, s, m in rows]
    except (sqlite3.Error, ValueError, TypeError) as exc:
        raise OuroborosError(f"the inner ledger in {dest} is unreadable: {exc}") from exc
    finally:
        con.close()


def export_inner(dest: Path, out: Path) -> None:
    """Copy what collect() reads (the ledger and the params.py of every evaluated experiment) to `out`,
    without git."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "ledger.sqlite").unlink(missing_ok=True)
    # sqlite's own copy: it reads what the inner ledger still holds in its write-ahead log
    source = open_inner_ledger(dest / ".ouroboros" / "ledger.sqlite", f"the inner run in {dest}")
    copy = sqlite3.connect(out / "ledger.sqlite")
    try:
        source.backup(copy)
    except sqlite3.Error as exc:
        raise OuroborosError(f"the inner ledger in {dest} is unreadable: {exc}") from exc
    finally:
        copy.close()
        source.close()
    (out / "keeps").mkdir(exist_ok=True)
    repo = InnerRepo(dest)
    for n, commit, status, _claimed in claims(dest):
        if n == 0 or status in ("keep", "discard"):  # what collect() re-measures
            (out / "keeps" / f"{commit}.py").write_text(_params_at(dest, commit, repo))


PARAMS_MAX = 1 << 20  # bytes of a version's params.py the outer side reads


def _params_at(dest: Path, commit: str, repo: InnerRepo | None = None) -> str:
    """params.py at an inner experiment's commit: from the inner repo's objects, read through a trusted git
    dir (evidence.py: git never reads the candidate's repo config), or from an export."""
    if not SHA.fullmatch(commit):
        raise ClaimError(f"the inner ledger of {dest.name} names {commit[:50]!r}, which is not a commit id")
    if not os.path.lexists(dest / ".git"):
        text = read_regular(dest / "keeps" / f"{commit}.py")  # an export: no link, no FIFO
        if text is None:
            raise ClaimError(f"the inner ledger of {dest.name} names commit {commit[:12]}, which has no params.py")
        return text
    try:
        inner = repo or InnerRepo(dest)
        size = inner.git("cat-file", "-s", f"{commit}:params.py").strip()
        if not size.isdigit() or int(size) > PARAMS_MAX:  # zeros compress 1000:1: never read a blob whole unseen
            raise ClaimError(f"the inner ledger of {dest.name} names commit {commit[:12]}, whose params.py is "
                             f"{size[:20]} bytes (at most {PARAMS_MAX} are read)")
        return inner.git("cat-file", "blob", f"{commit}:params.py")
    except ClaimError:
        raise
    except OuroborosError as exc:
        raise ClaimError(f"the inner ledger of {dest.name} names commit {commit[:12]}, which has no params.py "
                         f"({exc})") from None


def collect(dest: Path, task: SuiteTask, seed: int, experiments: int) -> RunScore:
    """Score an inner run from this process's own re-measurement of every experiment it evaluated.

    The inner ledger says which commit each experiment tried and what it measured; every such claim
    (keeps and discards, the baseline included) must be reproduced by the trusted evaluator, or the
    version is rejected (ClaimError). The inner verdicts are not used: the best-so-far curve is this
    process's own greedy replay over the re-measured values (an experiment counts when its metric
    beats the best so far; the curve follows the scored metric of that best)."""
    rows = claims(dest)
    repo = InnerRepo(dest) if os.path.lexists(dest / ".git") else None
    if [r[0] for r in rows] != list(range(experiments + 1)):
        raise ClaimError(f"the inner ledger of {dest.name} records experiments {[r[0] for r in rows]}, "
                         f"not 0..{experiments}")
    metric_name = _metric_name(task)
    best, best_metric = task.baseline, None
    curve = []
    keeps = 0
    for n, commit, status, claimed in rows:
        if n == 0 or status in ("keep", "discard"):  # an evaluated experiment (the others get no credit)
            keeps += n > 0 and status == "keep"
            measured = task.measure(_params_at(dest, commit, repo), seed)
            if measured is None:
                raise ClaimError(f"{task.name} seed {seed}: the inner ledger claims a {status} at experiment {n} "
                                 f"({metric_name} {claimed}), but its params are infeasible to the trusted evaluator")
            again = measured[metric_name]
            if claimed is None or not math.isclose(claimed, again, rel_tol=CLAIM_RTOL, abs_tol=1e-9):
                raise ClaimError(f"{task.name} seed {seed}: the inner ledger claims {metric_name} {claimed} at "
                                 f"experiment {n}; the trusted re-measurement gives {again:.6g}")
            better = best_metric is None or ((again < best_metric) if task.minimize else (again > best_metric))
            if better:
                best_metric = again
                if n > 0:
                    best = measured[task.score]
        if n > 0:
            curve.append(task.normalize(best))
    area = sum(curve) / len(curve) if curve else 0.0
    final = curve[-1] if curve else 0.0
    return RunScore(task.name, seed, curve, area, final, (area + final) / 2, keeps, best)


def _metric_name(task: SuiteTask) -> str:
    return tomllib.loads((task.path / "ouroboros.toml").read_text())["metric"]["name"]


def score(runs: list[RunScore], split: str, seeds: list[int], experiments: int, agent: str,
          search: str) -> DeltaResult:
    import numpy as np
    from scipy import stats

    tasks: dict[str, float] = {}
    for name in dict.fromkeys(r.task for r in runs):
        tasks[name] = float(np.median([r.score for r in runs if r.task == name]))
    values = np.array(list(tasks.values()))
    delta = float(values.mean())
    if len(values) < 2 or np.ptp(values) == 0:
        low = high = delta
    else:
        ci = stats.bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=2000, method="percentile",
                             random_state=0).confidence_interval
        low, high = float(ci.low), float(ci.high)
    return DeltaResult(split, seeds, experiments, agent, search, delta, low, high, tasks, runs)


def benchmark(src: Path, work: Path, seeds: list[int], experiments: int, split: str = "public",
              names: list[str] | None = None, agent: str = "policy", search: str = "greedy",
              jobs: int = 2) -> DeltaResult:
    """Run the version at `src` on the suite and score it (inner runs side by side, `jobs` at a time)."""
    plan = benchmark_runs(src, work, seeds, experiments, split, names, agent, search, jobs)
    runs = [collect(dest, task, seed, experiments) for dest, task, seed in plan]
    return score(runs, split, seeds, experiments, agent, search)


def benchmark_runs(src: Path, work: Path, seeds: list[int], experiments: int, split: str = "public",
                   names: list[str] | None = None, agent: str = "policy", search: str = "greedy",
                   jobs: int = 2) -> list[tuple[Path, SuiteTask, int]]:
    """The inner runs of a benchmark, without scoring them (the self task's run phase)."""
    plan = [(t, s) for t in load_suite(split, names) for s in seeds]
    dests = run_many(src, plan, experiments, work, agent, search, jobs)
    return [(dest, task, seed) for dest, (task, seed) in zip(dests, plan, strict=True)]


def compare(refs: list[str], repo: Path | None, seeds: list[int], experiments: int, split: str,
            names: list[str] | None, agent: str, search: str, jobs: int,
            echo: Callable[[str], None] = print) -> list[DeltaResult]:
    """`ouroboros delta`: benchmark each version; with two, say whether they differ."""
    if search not in ("greedy", "tree"):
        raise OuroborosError(f"--search {search!r}: choose greedy or tree")
    if len(refs) > 2:
        raise OuroborosError(f"give one or two --version, not {len(refs)}")
    repo = (repo or versions.source_repo()).resolve()
    cache = repo / ".ouroboros" / "versions"
    results = []
    for ref in refs:
        sha = versions.resolve(repo, ref)
        src = versions.install(repo, sha, cache)
        result = benchmark(src, repo / ".ouroboros" / "delta" / f"{sha[:12]}-{split}", seeds, experiments, split,
                           names, agent, search, jobs)
        echo(f"{ref} ({sha[:12]}): {result.line()}")
        for name, value in result.tasks.items():
            echo(f"  {name:<14} {value:.4f}")
        results.append(result)
    if len(results) == 2:
        a, b = results
        verdict = "the intervals overlap: no clear difference" if a.low <= b.high and b.low <= a.high else \
            f"{refs[0] if a.delta > b.delta else refs[1]} is better (the intervals do not overlap)"
        echo(f"{refs[1]} - {refs[0]}: {b.delta - a.delta:+.4f}; {verdict}")
    return results
