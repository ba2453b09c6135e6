"""The loop: propose, guard, commit, run, evaluate, judge, record; keep or revert. Resumable.

One experiment reads top to bottom in `Loop.experiment`. Outcomes are verdicts, not exceptions: an
exception escaping the loop is a harness bug, except OuroborosError (a user's mistake) and
KeyboardInterrupt (Ctrl-C), after which `ouroboros run --resume TAG` continues: an experiment
that had not finished is run again from its recorded attempt commit, so none is lost or counted
twice.

Resume is exact: every proposal is a function of the run's seed, the experiment's number and the
finished experiments before it (`Context.seed` is derived from the first two, and agents rebuild
their state from the ledger), so a run killed at any point and resumed makes the same proposals an
uninterrupted run with the same seed makes. `ouroboros.testing.check_resume_contract` checks it.
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import secrets
import shlex
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ouroboros import chain, evaluate, isolation, noise, readfile, sandbox
from ouroboros.agents import Agent, AgentError, Context, Proposal, StopRun, make_agent
from ouroboros.agents.base import experiment_seed
from ouroboros.errors import OuroborosError
from ouroboros.guard import Guard
from ouroboros.judge import Verdict, effective_min_delta, implausible, judge, standing
from ouroboros.ledger import Experiment, Ledger, Run, clean_text, hold, one_line
from ouroboros.memory import build_prompt
from ouroboros.task import RECORDS_DIR, TASK_FILE, Task, load_task
from ouroboros.workspace import (
    Meta,
    Workspace,
    code_size,
    ensure_clean,
    exclude_records,
    git_patch,
    left_out,
    maintain,
    meta,
    repo_root,
    scrub,
)

MAINTAIN_EVERY = 250  # experiments between packing the run's refs and objects (workspace.maintain)


@dataclass
class Options:
    agent: str = "random"
    tag: str | None = None
    max_experiments: int | None = None
    hours: float | None = None
    budget: float | None = None
    seed: int | None = None  # None: a fresh seed is drawn for a new run and recorded
    resume: bool = False
    study: str | None = None
    condition: str | None = None
    extra: dict = field(default_factory=dict)
    allow_weak_isolation: bool = False  # let an agent that writes code run at level `process`


PROPOSING = "proposing"  # in the run folder while the harness asks its agent: `exp` refuses then
SETUP_DONE = ".setup-done"


def check_command(command: str, root: Path, what: str) -> None:
    """Fail before the baseline when the command's program cannot be found (a typo, a missing tool)."""
    try:
        first = shlex.split(command)[0] if command.strip() else ""
    except ValueError as exc:
        raise OuroborosError(f"task.{what} {command!r} is not a valid shell command: {exc}") from exc
    if not first or "=" in first or "$" in first:
        return
    if "/" in first:
        found = (root / first).exists()
    else:  # bash itself says whether it is a program, a builtin or a keyword (ulimit, [[, case...)
        found = subprocess.run(["bash", "-c", 'type -t -- "$1"', "_", first], cwd=root, capture_output=True,
                               env=sandbox.scrubbed_env()).stdout.strip() != b""
    if not found:
        raise OuroborosError(f"task.{what}: program {first!r} not found (PATH or task folder); install it or fix "
                             f"the command in ouroboros.toml")


def export(repo: Path, commit: str, dest: Path) -> None:
    """The files of commit, written into dest (git archive: no checkout, no filters, no hooks)."""
    proc = subprocess.run(["git", "-C", str(repo), "-c", "core.fsmonitor=false", "archive", "--format=tar", commit],
                          capture_output=True)
    if proc.returncode != 0:
        raise OuroborosError(f"could not export commit {commit[:8]} of {repo}: "
                             f"{proc.stderr.decode(errors='replace').strip()[:200]}")
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        tar.extractall(dest, filter="data")


def task_at(root: Path, commit: str) -> Task:
    """The task as its file was in commit (a run's base commit): what the run obeys, whatever the
    checkout's ouroboros.toml says now (an agent may have edited it between two calls)."""
    root = Path(root).resolve()
    proc = subprocess.run(["git", "-C", str(root), "-c", "core.fsmonitor=false", "show",
                           "--no-textconv", f"{commit}:./{TASK_FILE}"], capture_output=True)
    if proc.returncode != 0:
        raise OuroborosError(f"{TASK_FILE} is not in the run's base commit {commit[:8]}; the run's records do "
                             f"not belong to {root}")
    return load_task(root, proc.stdout.decode(errors="replace"))


def task_changes(old: Task, new: Task) -> list[str]:
    """The task file keys (section.key) whose values differ."""
    a, b = old.model_dump(), new.model_dump()
    out = []
    for section in sorted(set(a) | set(b)):
        x, y = a.get(section), b.get(section)
        if isinstance(x, dict) and isinstance(y, dict):
            out += [f"{section}.{k}" for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)]
        elif x != y:
            out.append(section)
    return out


def fresh_seed() -> int:
    """A new run's seed when none is given: drawn from the OS, recorded with the run, shown by `log`."""
    return secrets.randbelow(2**31)


def secret_seed() -> int:
    """The seed of a confirmation re-run (and of an audit's re-run): drawn from the OS when the re-run
    starts, never derived from the run's seed or the experiment's number, so no agent can know it before
    the verdict (a run's seed reaches the next prompt through a crash's log; an experiment's number is
    the agent's own). Recorded with the experiment afterwards (`confirm_seed` in its metrics)."""
    return secrets.randbelow(2**31)


def budget_agreement(task: Task, budget: float) -> str | None:
    """A note when a protected file defines its own time budget (TIME_BUDGET = 300) other than the task's."""
    from ouroboros import knobs

    for rel in task.protected_files():
        if not rel.endswith(".py"):
            continue
        found = knobs.code_budget((task.root / rel).read_text(errors="replace"))
        if found is None or math.isclose(found[1], budget):
            continue
        name, seconds, line = found
        kill = budget + task.task.grace_s
        if seconds >= budget:
            return (f"{rel}:{line} sets {name} = {seconds:g} s, but the task's budget is {budget:g} s (killed at "
                    f"{kill:g} s): runs will likely end as timeouts; raise [task] budget (or --budget) above {seconds:g}")
        return (f"{rel}:{line} sets {name} = {seconds:g} s, the code's own limit; the task's budget of {budget:g} s "
                f"(killed at {kill:g} s) bounds the whole run, start-up and evaluation included: --budget does not "
                f"change {name}")
    return None


def default_tag(ledger: Ledger) -> str:
    stem = datetime.now().strftime("%b%d").lower()
    taken = {r.tag for r in ledger.runs()}
    i = 1
    while f"{stem}-{i}" in taken:
        i += 1
    return f"{stem}-{i}"


_NO_MODULE = re.compile(r"No module named '([\w.]+)'")


def crash_cause(log: Path) -> str:
    """The last lines of a run's log, on one line, with an install hint for a missing module."""
    lines = [ln.strip() for ln in (sandbox.tail_text(log) if log.exists() else "").splitlines() if ln.strip()]
    if not lines:
        return ""
    cause = "".join(c if c.isprintable() else "?" for c in " | ".join(lines[-2:])[-300:])
    missing = _NO_MODULE.search(" ".join(lines[-5:]))
    hint = f" (install {missing.group(1).split('.')[0]} into the run's environment, or install it with a [task] " \
           "setup)" if missing else ""
    return f"; the log ends: {cause}{hint}"


def _stat(path: Path) -> tuple[int, ...] | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return (st.st_mode, st.st_ino, st.st_dev, st.st_ctime_ns, st.st_mtime_ns, st.st_size)


FILES_KEPT = 64  # commits whose editable files the loop keeps in memory (keeps are parents)


class Loop:
    settle_fast = True  # commit and settle attempts with the few-process path (a slot of --parallel does not)
    _pending: tuple | None = None  # (n, attempt, proposed paths, worktree snapshot) of an unpinned attempt
    _meta: Meta | None = None  # the worktree's metadata after the last scrub (workspace.scrub)
    _remake = True  # scrub re-makes folders; not while an agent-driven session's agent lives in the worktree
    _watched: int | None = None  # the worktree's size (sandbox.du) for the next run phase, from that snapshot
    _files: dict[str, dict[str, tuple[bytes, int]]] | None = None
    _as_head: tuple | None = None  # (metadata, index key, HEAD) right after the worktree was made exactly HEAD

    def __init__(self, task: Task, options: Options, agent: Agent | None = None,
                 on_experiment: Callable[[Experiment, Experiment], None] | None = None):
        self.task, self.opts = task, options
        self.on_experiment = on_experiment or (lambda exp, best: None)
        self.left_out: list[str] = []  # untracked files of the user's checkout the run does not see
        self.running_log: tuple[str, Path, float] | None = None  # (n, run.log, start) while a run phase runs
        self.repo = repo_root(task.root)
        self.records = task.root / RECORDS_DIR
        exclude_records(self.repo)
        self.ledger = Ledger(self.records)
        self.run_rec = self._open_run()
        self.tag = self.run_rec.tag
        self.warnings: list[str] = []
        if options.resume:  # the run goes on under the task it started with
            base_task = task_at(task.root, self.run_rec.base_commit)
            changed = task_changes(base_task, task)
            if changed:
                self.warnings.append(f"{TASK_FILE} in the checkout differs from the run's base commit "
                                     f"({', '.join(changed[:6])}); the run goes on with the base commit's task, "
                                     "start a new run to use the new one")
            self.task = task = base_task
        # The agent is made and checked (a missing CLI or key) before anything is recorded.
        self.agent = agent or make_agent(self.run_rec.agent, self.run_rec.seed,
                                         self.run_rec.config.get("agent_options"))
        self.agent.check(task)
        self.ws = Workspace(self.repo, task.root.relative_to(self.repo).as_posix(), self.records, self.tag)
        self.env_dir = self.ledger.run_dir(self.tag) / "env"
        self.isolation = isolation.choose(task, self.ws.task_dir, self.records, self.env_dir)
        allowed = options.allow_weak_isolation or bool(self.run_rec.config.get("allow_weak_isolation"))
        isolation.require_boundary(self.isolation.level, self.agent, allowed)
        if options.allow_weak_isolation:  # the user's choice holds for the run's resumes and `exp` calls
            self.run_rec.config["allow_weak_isolation"] = True
        # recorded with the run: whether the agent's own process ran inside the sandbox
        self.run_rec.config["agent_confined"] = self.agent_confined if hasattr(self.agent, "command") else None
        self.ledger.save_run(self.run_rec)
        self.ws.open(self.run_rec.base_commit)
        self.budget = options.budget or self.run_rec.config.get("budget") or task.task.budget
        self.history = self.ledger.experiments(self.tag)
        self._dirty = True  # the worktree may hold ignored files (caches) that are no proposal's part
        self._violation: str | None = None  # a bound broken during an evaluation or a confirmation run

    # -- setup -------------------------------------------------------------------------------
    def _open_run(self) -> Run:
        """The run to continue, or a new one (saved by the caller once its agent checks out)."""
        opts = self.opts
        if opts.resume:
            run = self.ledger.run(opts.tag or "")
            if run is None:
                known = ", ".join(r.tag for r in self.ledger.runs()) or "none"
                raise OuroborosError(f"no run {opts.tag!r} to resume in {self.records} (runs: {known})")
            chain.refuse_broken(self.ledger, self.repo, run.tag)
            base = self.ledger.experiments(run.tag)[:1]
            if base and base[0].status not in ("keep", "running"):
                raise OuroborosError(f"run {run.tag!r} failed at its baseline ({base[0].status}: {base[0].reason}); "
                                     "fix the task, commit, and start a new run")
            if opts.seed is not None and opts.seed != run.seed:
                raise OuroborosError(f"run {run.tag!r} was made with seed {run.seed}; --resume continues it with "
                                     f"that seed, so drop --seed {opts.seed} (or start a new run with it)")
            cfg = dict(run.config)
            for key in ("max_experiments", "hours", "budget"):
                if getattr(opts, key) is not None:
                    cfg[key] = getattr(opts, key)
            run.config, run.status = cfg, "running"
            return run
        tag = opts.tag or default_tag(self.ledger)
        if self.ledger.run(tag) is not None:
            raise OuroborosError(f"run {tag!r} already exists; continue it with `ouroboros run --resume {tag}` "
                                 "or pick another --tag")
        sub = self.task.root.relative_to(self.repo).as_posix() or "."
        base = ensure_clean(self.repo, sub, self.task.names)
        self.left_out = left_out(self.repo, sub, self.task.names)
        check_command(self.task.task.run, self.task.root, "run")
        if self.task.task.evaluate:
            check_command(self.task.task.evaluate, self.task.root, "evaluate")
        run = Run(tag=tag, task=self.task.name, agent=opts.agent, metric=self.task.metric.name,
                  direction=self.task.metric.direction, trust=self.task.trust, branch=f"ouroboros/{tag}",
                  base_commit=base, seed=fresh_seed() if opts.seed is None else opts.seed, study=opts.study,
                  condition=opts.condition,
                  noise_sigma=noise.stored_sigma(self.records, base),  # from `ouroboros noise`
                  config={"max_experiments": opts.max_experiments, "hours": opts.hours, "budget": opts.budget,
                          **opts.extra})
        return run

    @property
    def finished(self) -> list[Experiment]:
        return [e for e in self.history if e.status != "running"]

    @property
    def best(self) -> Experiment:
        keeps = [e for e in self.history if e.status == Verdict.KEEP]
        return keeps[-1]

    def _context(self, n: int, best: Experiment | None = None) -> Context:
        run_dir = self.ledger.run_dir(self.tag)
        history = self.finished
        return Context(self.task, self.ws.task_dir, n, history, best or self.best, run_dir, self.ledger.exp_dir(self.tag, n),
                       experiment_seed(self.run_rec.seed, n),
                       lambda: build_prompt(self.task, self.ws.task_dir, history, run_dir),
                       self.run_rec.sessions,
                       lambda rel: self.ws.show(self.run_rec.base_commit, rel).decode(errors="replace"),
                       confine=self.confine_agent)

    @property
    def agent_confined(self) -> bool:
        """Whether CLI and cmd: agents run inside the sandbox (level bwrap only: the weaker levels
        cannot hide the records or the checkout from a process that needs the network)."""
        return self.isolation.level == "bwrap"

    def confine_agent(self, argv: list[str], writable: list[Path], readable: list[Path],
                      binds: list[tuple[Path, Path]] | None = None) -> tuple[list[str], str]:
        if not self.agent_confined:
            return argv, "none"
        if shutil.which("prlimit"):  # no file the agent writes grows past max_artifact_mb
            argv = ["prlimit", f"--fsize={int(self.task.bound.max_artifact_mb * 2**20)}", "--", *argv]
        return self.isolation.wrap(argv, "agent", writable, readable, binds=binds)

    def _left(self) -> bool:
        cfg = self.run_rec.config
        done = len(self.finished) - 1
        if cfg.get("max_experiments") is not None and done >= cfg["max_experiments"]:
            return False
        if cfg.get("hours") is not None and sum(e.wall_s for e in self.finished) >= cfg["hours"] * 3600:
            return False
        return True

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> Run:
        with self.running():
            self.prepare()
            while self._left():
                self.step()
        return self.run_rec

    @contextmanager
    def running(self) -> Iterator[None]:
        """How a run ends, whoever drives it: finished (unless the driver set another status), the
        agent's StopRun (a spend cap: nothing half-recorded), or Ctrl-C; the record is saved and the
        agent closed in every case."""
        lock = hold(self.ledger.run_dir(self.tag))
        try:
            yield
            if self.run_rec.status == "running":
                self.run_rec.status = "finished"
        except StopRun as exc:
            self.ws.reset(self.best.commit_sha)
            self.run_rec.status = exc.status
            self.run_rec.config["stop_reason"] = str(exc)
        except KeyboardInterrupt:
            self.run_rec.status = "stopped"
            raise
        except OuroborosError as exc:  # e.g. a failed baseline: `--resume` can go on once it is fixed
            self.run_rec.status = "failed"
            self.run_rec.config["stop_reason"] = str(exc)
            raise
        finally:
            self.ledger.save_run(self.run_rec)
            self.agent.close()
            self.ws.close()
            os.close(lock)

    def prepare(self) -> None:
        """Set up the run's environment, recover from a kill, run the baseline if there is none,
        start the agent on the history."""
        self.setup()
        pending = self._recover()
        if not self.finished:
            self.baseline()
        self.agent.start(self._context(len(self.history)))
        for exp in self.finished:
            self.agent.observe(exp)
        if pending is not None:
            self._execute(pending, self.best)

    def setup(self) -> None:
        """Run `[task] setup` once per run (again on --resume only if it never finished).

        It is trusted: the task's own command from the base commit, run in a fresh export of that
        commit (never in the worktree an agent edits; a temporary folder deleted after it, since it holds
        the hidden files), with the network, and with the data cache
        and the run's environment folder writable; experiments then see both read-only.
        """
        command = self.task.task.setup
        if not command:
            return
        done = self.env_dir / SETUP_DONE
        stamp = f"{self.run_rec.base_commit} {command}"
        if done.is_file() and done.read_bytes() == stamp.encode(errors="surrogateescape"):
            return
        if self.env_dir.exists():
            shutil.rmtree(self.env_dir)  # a half-made environment from a killed setup
        self.env_dir.mkdir(parents=True)
        # The export holds the base commit's hidden files: it lives outside the environment folder
        # (which experiments see read-only) and is gone before the first experiment starts.
        with tempfile.TemporaryDirectory(prefix="ouroboros-setup-", ignore_cleanup_errors=True) as tmp:
            src = Path(tmp) / "src"
            src.mkdir()
            export(self.repo, self.run_rec.base_commit, src)
            self._run_setup(command, src)
        done.write_text(stamp)

    def _run_setup(self, command: str, src: Path) -> None:
        cache = isolation.cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        venv = self.env_dir / "venv"
        env = sandbox.scrubbed_env({"OUROBOROS_ENV": str(self.env_dir), "OUROBOROS_CACHE": str(cache),
                                    "UV_PROJECT_ENVIRONMENT": str(venv), "VIRTUAL_ENV": str(venv)},
                                   allow=self.task.bound.env)
        env["PATH"] = str(venv / "bin") + os.pathsep + env["PATH"]
        env = sandbox.marked(env, self.ledger.run_dir(self.tag))
        log = self.ledger.run_dir(self.tag) / "setup.log"
        task_src = src / self.task.root.relative_to(self.repo)
        outcome = sandbox.run(["bash", "-c", command], task_src, self.task.task.setup_timeout, 0.0, log, env=env,
                              max_log_mb=50)
        if not outcome.ok:
            why = "timed out" if outcome.timed_out else outcome.killed or f"exited {outcome.returncode}"
            tail = sandbox.tail_text(log, 400).strip().splitlines()[-1:]
            raise OuroborosError(f"[task] setup {command!r} {why}" + (f" ({tail[0][:160]})" if tail else "")
                                 + f"; see {log}, fix the command, commit, and resume with "
                                 f"`ouroboros run --resume {self.tag}`")

    def experiment_env(self, extra: dict[str, str]) -> dict[str, str]:
        """The environment of run and evaluate: scrubbed, with the project's environment when setup made one."""
        env_dir = getattr(self, "env_dir", None)  # loops built without __init__ (the audit's) have none
        venv = isolation.project_env(env_dir) if env_dir is not None else None
        env = sandbox.scrubbed_env({"OUROBOROS_CACHE": str(isolation.cache_dir()), **extra}, venv=venv,
                                   allow=self.task.bound.env)
        ledger, tag = getattr(self, "ledger", None), getattr(self, "tag", None)
        if ledger is None or not tag:
            return env
        mark = self.__dict__.get("_mark")
        if mark is None or mark[0] != tag:  # the run's mark is the same for all its experiments: made once
            mark = self.__dict__["_mark"] = (tag, sandbox.run_mark(ledger.run_dir(tag)))
        return {**env, sandbox.MARK: mark[1]}

    def interpreter(self) -> str:
        """Which Python experiments run with, in words (the run header says it)."""
        venv = isolation.project_env(self.env_dir)
        if venv is not None:
            return f"the project's environment {venv}"
        if self.task.task.setup:
            return "the harness's Python (setup made no env/venv)"
        return "the harness's Python (no [task] setup)"

    def _recover(self) -> Experiment | None:
        """After a kill: the unfinished experiment to re-run from its commit, with the worktree there."""
        pending = [e for e in self.history if e.status == "running"]
        self.history = self.finished
        if pending:  # a killed harness may have left experiments running (slots of --parallel too)
            sandbox.kill_inside(self.ledger.run_dir(self.tag))
        self.ledger.write_tsv(self.tag)
        if not self.history:
            return None
        for exp in pending[1:]:  # the rest of an interrupted --parallel round: recorded, not re-run
            exp.status, exp.reason = Verdict.CRASH, "interrupted with its round; not re-run"
            self.ledger.finish(exp)
            self.history.append(exp)
        readfile.reopen(self.ws.path)  # what a killed run closed (mode 000) stops git clean
        self.ws.reset(self.best.commit_sha)
        self._exact(self.best.commit_sha)
        self.guard = Guard(self.task, self.ws)
        if pending:
            self.ws.reset(pending[0].commit_sha)
            self._exact(pending[0].commit_sha)
            self.ws.pin(pending[0].n, pending[0].commit_sha)  # a killed attempt may not be pinned yet
            return pending[0]
        return None

    def baseline(self) -> Experiment:
        base = self.run_rec.base_commit
        self.ws.reset(base)
        self._exact(base)  # a checkout under the repository's eol attributes may hold other bytes than base
        self.guard = Guard(self.task, self.ws)
        self.ws.pin(0, base)
        exp = Experiment(self.tag, 0, commit_sha=base, parent=base, description="baseline", agent="baseline",
                         model=os.environ.get("OUROBOROS_VERSION", ""),
                         loc=code_size(self.ws.task_dir, self.task.code_files(self.ws.task_dir)))
        self.ledger.begin(exp)
        self._execute(exp, None)
        if exp.status != Verdict.KEEP:
            log = self.ledger.exp_dir(self.tag, 0) / "run.log"
            raise OuroborosError(f"the baseline failed ({exp.status}: {exp.reason}){crash_cause(log)}; fix the task "
                                 f"first, see {log}")
        return exp

    def step(self, proposal: Proposal | None = None) -> Experiment:
        """One experiment: propose, guard, commit, then run, evaluate, judge, record.

        With a proposal given, the worktree already holds the change (agent-driven mode: the
        agent edited the files itself and called `ouroboros exp`), and the agent is not asked.
        """
        n = max(e.n for e in self.history) + 1
        exact, self._as_head = self._as_head, None
        if proposal is not None or not self.settle_fast:
            exact = None
        best = self._parent(n) if proposal is None else self.best
        self._remake = proposal is None
        ctx = self._context(n, best)
        start = time.monotonic()
        failure = None
        if proposal is None:
            marker = self.ledger.run_dir(self.tag) / PROPOSING
            marker.write_text(str(os.getpid()))
            try:
                proposal = self.agent.propose(ctx)
            except AgentError as exc:
                proposal, failure = exc.proposal(), str(exc)
            finally:
                marker.unlink(missing_ok=True)
        exp = Experiment(self.tag, n, parent=best.commit_sha, description=clean_text(proposal.description),
                         agent=self.agent.name, model=proposal.model or os.environ.get("OUROBOROS_VERSION", ""),
                         session=proposal.session or ctx.session,
                         tokens_in=proposal.tokens_in, tokens_out=proposal.tokens_out, cost_usd=proposal.cost_usd,
                         params=proposal.params, agent_s=time.monotonic() - start)
        closed = readfile.reopen(self.ws.path)  # a folder the agent closed (mode 000) hides its files from git
        self.ws.remove_specials()  # before any git call: git would block on a FIFO named .gitattributes
        if exact is not None and exact[2] == best.commit_sha:  # what git status says, read without it where it can be
            self.ws.exact = (exact[0], exact[1], self._files_of(best.commit_sha).get)
        violations = self.guard.check(best.commit_sha)  # also after a failed agent: it lists what must not reach git
        violations += [f"protected file {rel} had its permissions taken away" for rel in
                       (os.path.relpath(self.ws.path / name, self.ws.task_dir) for name in closed)
                       if not rel.startswith("..") and self.task.is_protected(rel)]
        self.ws.exact = None
        if failure:
            violations = []
        changes = self.guard.changes if not failure else self.ws.changes()
        if not failure and not violations and not changes:
            failure = "the proposal changed no file"
        if self.ws.head() != best.commit_sha:  # history rewritten: the branch goes back, the change is kept
            self.ws.rewind(best.commit_sha)
        for path in self.guard.unsafe:  # FIFOs, devices, files over max_artifact_mb: never in git
            path.unlink(missing_ok=True)
        self.ws.empty_gitlinks()  # git never looks inside a submodule's folder
        self._meta = scrub(self.ws.path, self._meta, self._remake)  # what the agent left in metadata never reaches the run
        if failure and self.guard.withheld:  # a failed agent's leftovers: the same files stay out of git
            failure += f" ({self.guard.note})"
        fast = (self.settle_fast and not failure and not violations and not self.guard.withheld
                and self._simple(changes, best.commit_sha))
        stats = {c.path: _stat(self.ws.task_dir / c.path) for c in changes} if fast else {}
        try:
            exp.commit_sha = self.ws.commit(exp.description, n, untracked=any(c.status == "??" for c in changes),
                                            pin=not fast, only=self.guard.admitted if self.guard.withheld else None)
        except OuroborosError as exc:  # what the agent left cannot be committed: this attempt fails, the run goes on
            failure = failure or f"the attempt could not be committed ({str(exc)[:200]})"
            fast = False
            self.ws.reset(best.commit_sha)
            exp.commit_sha = self.ws.commit(exp.description, n, untracked=False)
        if not failure and not violations and self.ws.attributes_apply(self._meta or ()):
            converted = sorted(self.ws.differs(exp.commit_sha))
            if converted:
                violations = [f"git committed other bytes than the worktree holds for {', '.join(converted[:5])} "
                              "(the repository's .gitattributes: text, eol, ident or working-tree-encoding), so "
                              "what would run is not what the commit holds; write the files as git stores them"]
        self._dirty = any(c.status == "!!" for c in changes)
        exp.loc = code_size(self.ws.task_dir, self.task.code_files(self.ws.task_dir))  # the simplicity rule's size
        attempt = self._read_attempt(best.commit_sha, exp.commit_sha, stats) if fast else None
        if attempt is not None:
            self.isolation.open_worktree()
            before = self.ws.snapshot()
            self._pending = (n, exp.commit_sha, list(stats), before) if before is not None else None
            patch = git_patch(self.ws.prefix, self._files_of(best.commit_sha), attempt, [c.path for c in changes])
        else:
            patch = None
        if fast and self._pending is None:  # the files moved while git read them: pinned, reverted with git
            self.ws.adopt_index()
            self.ws.pin(n, exp.commit_sha)
        (ctx.exp_dir / "diff.patch").write_text(patch if patch is not None else
                                                self.ws.diff(best.commit_sha, exp.commit_sha),
                                                errors="surrogateescape")
        self.ledger.begin(exp)
        if failure or violations:
            exp.status = Verdict.CRASH if failure else Verdict.VIOLATION
            exp.reason = failure or "; ".join(violations)
            exp.wall_s = time.monotonic() - start
            self._record(exp, best)
            return exp
        self._execute(exp, best, start)
        return exp

    def _parent(self, n: int) -> Experiment:
        """The experiment's parent: the latest keep (greedy), or a keep drawn by the tree policy."""
        if (self.run_rec.config.get("search") or self.task.search.policy) != "tree":
            return self.best
        from ouroboros import policyfile
        from ouroboros.self.lineage import choose_parent

        prior = float(policyfile.values()["TREE_PRIOR"])  # read as data, never run (the self task's editable)
        parent = choose_parent(self.finished, self.task.minimize, self.run_rec.seed, n, prior)
        if self.ws.head() != parent.commit_sha:
            self.ws.reset(parent.commit_sha)
        return parent

    # -- the common path's bookkeeping without git (see Workspace.settle) ----------------------
    def _files_of(self, commit: str) -> dict[str, tuple[bytes, int]]:
        """A commit's editable files as committed (task-relative -> (bytes, git mode)): the object
        store's, read once per commit; kept for the keeps (parents) and the attempt under way."""
        if self._files is None:
            self._files = {}
        if commit not in self._files:
            self._files[commit] = self.ws.files_at(commit, self.task.is_editable)
            while len(self._files) > FILES_KEPT:
                del self._files[next(iter(self._files))]
        return self._files[commit]

    def _simple(self, changes: list, best: str) -> bool:
        """Whether a proposal is the common kind whose attempt the loop can settle without git:
        editable regular files modified in place, their executable bit as in the best commit."""
        if not changes or any(c.status != " M" or c.path.startswith("../") or not self.task.is_editable(c.path)
                              for c in changes):
            return False
        files = self._files_of(best)
        for c in changes:
            st = _stat(self.ws.task_dir / c.path)
            if st is None or not stat.S_ISREG(st[0]) or c.path not in files or \
                    bool(st[0] & 0o100) != (files[c.path][1] == 0o100755):
                return False
        return True

    def _read_attempt(self, best: str, attempt: str, stats: dict) -> dict[str, tuple[bytes, int]] | None:
        """The attempt's editable files: the best commit's, with the changed ones read from the worktree.
        A file is taken only if nothing touched it from before the commit until after it was read (its
        inode and change time unmoved), so these are the bytes git committed; None otherwise."""
        files = dict(self._files_of(best))
        for rel, key in stats.items():
            path = self.ws.task_dir / rel
            try:
                data = path.read_bytes()
            except OSError:
                return None
            if key is None or _stat(path) != key:
                return None
            files[rel] = (data, files[rel][1])
        assert self._files is not None
        self._files[attempt] = files
        return files

    def _settle(self, exp: Experiment, best: Experiment) -> bool:
        """Pin the pending attempt, put branch and worktree at the new best (without git where it can)."""
        pending, self._pending = self._pending, None
        if pending is None or pending[0] != exp.n or pending[1] != exp.commit_sha:
            return False
        n, sha, proposed, before = pending
        target = sha if exp.status == Verdict.KEEP else best.commit_sha
        if not self.ws.settle(n, sha, target, self._files_of(target), before, proposed):
            self.ws.pin(n, sha)
            self.ws.reset(target)
        if target != sha:
            self._files.pop(sha, None)
        return True

    def _execute(self, exp: Experiment, best: Experiment | None, start: float | None = None) -> None:
        """Run, evaluate and judge an attempt already committed and begun in the ledger."""
        start = start if start is not None else time.monotonic()
        exp_dir = self.ledger.exp_dir(self.tag, exp.n)
        env = self.experiment_env({"OUROBOROS_BUDGET_S": f"{self.budget:g}",
                                   "OUROBOROS_SEED": str(self.run_rec.seed)})
        # The worktree's size for the disk cap, from the snapshot taken right after the commit where there is
        # one (nothing has written the worktree since, unless a clean follows): the run does not walk it again.
        pending = self._pending
        self._watched = None
        if not self._dirty and pending is not None and pending[0] == exp.n and pending[1] == exp.commit_sha:
            self._watched = sandbox.du_of((key[0], key[3]) for key in pending[3].values()) + \
                sandbox.du_entry(self.ws.path / ".git")  # the snapshot leaves out the worktree's .git file
        if self._dirty:
            self.ws.clean()
        self._dirty = True
        self._violation = None
        self.guard.arm()
        self.running_log = (str(exp.n), exp_dir / "run.log", time.monotonic())  # for the live progress line
        outcome = self._run_phase(exp_dir, env)
        self.running_log = None
        exp.run_s, exp.peak_rss_mb, exp.isolation = outcome.wall_s, outcome.peak_rss_mb, outcome.isolation
        vram = evaluate.parse_key(exp_dir / "run.log", "peak_vram_mb")
        exp.peak_gpu_mb = outcome.peak_gpu_mb or vram or None
        broke = self.guard.after("run", exp.commit_sha)
        if broke:  # the verdict; what the sandbox stopped on the way is said too
            exp.status, exp.reason = Verdict.VIOLATION, "; ".join(broke) + (
                f"; the sandbox also stopped the run: {outcome.killed}" if outcome.killed else "")
        elif outcome.timed_out:
            exp.status, exp.reason = Verdict.TIMEOUT, f"killed at budget + grace ({self.budget + self.task.task.grace_s:g} s)"
        elif not outcome.ok:
            exp.status = Verdict.CRASH
            exp.reason = f"run {outcome.killed}" if outcome.killed else f"run exited {outcome.returncode}"
        else:
            m = self._measure(exp_dir, env)
            exp.eval_s, exp.trust, exp.metrics = m.eval_s, m.trust, m.metrics
            if m.error is None and self.task.metric.fingerprint:
                m.error = self._fingerprint(m.metrics.get(self.task.metric.fingerprint))
            if self._violation:
                exp.status, exp.reason = Verdict.VIOLATION, self._violation
            elif m.error:
                exp.status, exp.reason = Verdict.CRASH, m.error
            else:
                exp.metric = m.metric
                exp.status, exp.reason = self._judge(exp, best, exp_dir, env)
                if self._violation:  # in a confirmation re-run or the holdout's evaluation
                    exp.status, exp.reason = Verdict.VIOLATION, self._violation
        exp.wall_s = time.monotonic() - start
        self._record(exp, best)

    def _run_phase(self, exp_dir: Path, env: dict[str, str], name: str = "run.log") -> sandbox.Outcome:
        watched, self._watched = self._watched, None  # the worktree's size from _execute, for this run only
        argv, level = self.isolation.wrap(["bash", "-c", self.task.task.run], "run")
        self.guard.arm()  # after wrapping: a root harness's wrap opens the worktree to the run's uid (isolation._grant)
        return sandbox.run(argv, self.ws.task_dir, self.budget, self.task.task.grace_s, exp_dir / name, env=env,
                           memory_mb=self.task.bound.memory_mb, max_log_mb=self.task.bound.max_log_mb,
                           isolation=level, gpu=sandbox.cuda_present(), max_processes=self.task.bound.max_processes,
                           max_artifact_mb=self.task.bound.max_artifact_mb, watch=self.ws.path,
                           overhead=self.isolation.overhead, watched=watched, filtered=True)

    def _measure(self, exp_dir: Path, env: dict[str, str], name: str = "eval.log",
                 command: str | None = None) -> evaluate.Measurement:
        """The metric of the run that just ended, from the evaluation phase (or the run's output at trust
        level stdout). A bound broken during the evaluation is left in `self._violation`."""
        if not (command or self.task.task.evaluate):
            return evaluate.from_stdout(self.task, exp_dir / name.replace("eval", "run"))
        head = self.ws.head()
        self.guard.arm()
        try:
            committed = self._files_of(head)  # the bytes the guard checked and git committed, not the run's
            m = evaluate.sealed(self.task, self.ws.task_dir, self.fixed, exp_dir / name, env,
                                wrap=lambda argv, writable, cwd: self._wrap_evaluation(argv, writable, cwd),
                                command=command, committed=committed)
        except (OSError, RecursionError, ValueError, OuroborosError) as exc:  # what the run left broke the evaluation
            m = evaluate.Measurement(None, {}, self.task.trust, 0.0,
                                     f"the evaluation could not be prepared: {str(exc)[:200]}", self.isolation.level)
        broke = self.guard.after("evaluation", head)
        if broke:
            self._violation = self._violation or "; ".join(broke)
        return m

    def _wrap_evaluation(self, argv: list[str], writable: list[Path], cwd: Path) -> tuple[list[str], str]:
        wrapped = self.isolation.wrap(argv, "evaluate", writable, cwd=cwd)
        self.guard.arm()  # after wrapping, as for the run phase
        return wrapped

    @functools.cached_property
    def fixed(self) -> dict[str, tuple[bytes, int]]:
        """The base commit's files that no run may change (all but the editable ones), as bytes read
        once from the object store: what every evaluation folder is built from."""
        return self.ws.files_at(self.run_rec.base_commit, lambda rel: not self.task.is_editable(rel))

    def _fingerprint(self, value: object) -> str | None:
        if value is None:
            return f"the evaluator reported no {self.task.metric.fingerprint}"
        seen = clean_text(str(value))  # reported text: stored as data (a lone surrogate cannot reach sqlite)
        if self.run_rec.fingerprint is None:
            self.run_rec.fingerprint = seen
            self.ledger.save_run(self.run_rec)
        elif seen != self.run_rec.fingerprint:
            return (f"{self.task.metric.fingerprint} {one_line(seen, 80)} differs from the baseline's "
                    f"{one_line(self.run_rec.fingerprint, 80)}: results on different data are never compared")
        return None

    def _judge(self, exp: Experiment, best: Experiment | None, exp_dir: Path,
               env: dict[str, str]) -> tuple[Verdict, str]:
        if best is None:  # the baseline's holdout too: the first keep is compared with it
            if self.task.task.holdout:
                exp.holdout = self._measure(exp_dir, env, "holdout.log", self.task.task.holdout).metric
            return Verdict.KEEP, "baseline"
        j = self.task.judge
        min_delta = effective_min_delta(j.min_delta, self.run_rec.noise_sigma, j.noise_z)
        assert exp.metric is not None
        # Against the best ever kept, and the gain since the last confirmed keep (judge.standing), so
        # neither the simplicity tolerance nor the plausibility bound can be walked step by step.
        st = standing([e for e in self.history if e.status == Verdict.KEEP], self.task.minimize)
        verdict = judge(exp.metric, st.best, self.task.minimize, min_delta, exp.loc, st.loc, j.simplicity)
        suspect = implausible(exp.metric, st, self.task.minimize, j.plausibility)
        if verdict.verdict == Verdict.KEEP and (j.confirm or suspect):
            seed = secret_seed()  # drawn now, not predictable from anything the agent saw
            again = self._confirm(exp, exp_dir, env, seed)
            exp.metrics["confirm_seed"] = seed  # recorded with the row, after the re-run
            if again is None:
                return Verdict.DISCARD, "the confirmation re-run failed"
            exp.metrics["confirm_metric"] = again
            worse = max(exp.metric, again) if self.task.minimize else min(exp.metric, again)
            second = judge(worse, st.best, self.task.minimize, min_delta, exp.loc, st.loc, j.simplicity)
            if second.verdict != Verdict.KEEP:
                why = "implausible gain" if suspect else "confirmation"
                return Verdict.DISCARD, f"{why}: re-run with a fresh seed gave {again:.6g}, not a keep"
            exp.metric = worse
        if verdict.verdict == Verdict.KEEP and self.task.task.holdout:
            h = self._measure(exp_dir, env, "holdout.log", self.task.task.holdout)
            exp.holdout = h.metric
        return verdict.verdict, verdict.reason

    def _exact(self, commit: str | None) -> None:
        """Where attributes apply, the files git's reset left with other bytes than commit's are rewritten."""
        if commit and self.ws.attributes_apply(self._meta or meta(self.ws.path)):
            self.ws.make_exact(commit)

    def _confirm(self, exp: Experiment, exp_dir: Path, env: dict[str, str], seed: int) -> float | None:
        env = {**env, "OUROBOROS_SEED": str(seed)}
        if self._pending is not None:  # the reset below is git's: the attempt leaves the path without git
            self.ws.adopt_index()
            self.ws.pin(self._pending[0], self._pending[1])
            self._pending = None
        self.ws.reset(exp.commit_sha)  # from the commit: nothing the first run wrote, tracked files included
        self._exact(exp.commit_sha)
        self.ws.empty_gitlinks()  # git never looks inside a submodule's folder
        self._meta = scrub(self.ws.path, None, self._remake)  # nor in metadata (xattrs, modes, times, sizes): all anew
        self.guard.arm()
        outcome = self._run_phase(exp_dir, env, "confirm.log")
        broke = self.guard.after("confirmation run", exp.commit_sha)
        if broke:
            self._violation = self._violation or "; ".join(broke)
        if not outcome.ok or broke:
            return None
        m = self._measure(exp_dir, env, "confirm-eval.log") if self.task.task.evaluate else \
            evaluate.from_stdout(self.task, exp_dir / "confirm.log")
        return m.metric if m.error is None and m.metric is not None and math.isfinite(m.metric) else None

    def _record(self, exp: Experiment, best: Experiment | None) -> None:
        settled = best is not None and self._settle(exp, best)  # pinned before the row is final
        self.ledger.finish(exp)
        self.history.append(exp)
        if settled:
            pass
        elif exp.status != Verdict.KEEP and best is not None:
            self.ws.reset(best.commit_sha)
        else:  # a keep: its commit, not what the run wrote into tracked files (state, links) since
            self.ws.reset(exp.commit_sha) if exp.commit_sha else self.ws.clean()
        if not settled:
            self._exact(best.commit_sha if exp.status != Verdict.KEEP and best is not None else exp.commit_sha)
        self.ws.empty_gitlinks()  # git never looks inside a submodule's folder
        self._meta = scrub(self.ws.path, None, self._remake)  # nor what it left in metadata: everything made anew
        if self.settle_fast:  # the next proposal starts from here (Workspace._changes_known)
            self._as_head = (self._meta, self.ws.index_key(), self.ws.head())
        self._dirty = False
        if best is not None:
            self.agent.observe(exp)
        keeps = [e for e in self.history if e.status == Verdict.KEEP]
        self.on_experiment(exp, keeps[-1] if keeps else exp)
        if exp.n and exp.n % MAINTAIN_EVERY == 0:  # between experiments: in no experiment's wall time
            maintain(self.repo)  # the repository itself: never git steered by a file in the worktree
