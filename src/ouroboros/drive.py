"""Agent-driven mode and `ouroboros exp`: the agent runs the loop, the harness records it.

`ouroboros run --agent codex --drive agent --hours 8` runs the baseline, then starts the agent's
CLI once per session with the session prompt (program, rules, files, results, notes, guidance) and
an instruction to call `ouroboros exp -m "<description>"` for each experiment. `exp` is the only
way a result is recorded: under a lock on the run, it guards, commits, runs, evaluates, judges and
records the worktree's current change, keeps or reverts it, and prints the verdict for the agent.

When a session ends while the window is open (agents stop despite being told not to), the harness
starts another with the results so far. Sessions are counted in the run record (`sessions`) and
listed in its config (`session_log`); every experiment records the session it came from. Edits a
session leaves without calling `exp` are never recorded as results: they are saved as
`sessions/<k>.leftover.patch` and reverted before the next session.

What is fixed against the agent: the protected files' hashes and the git state are taken by the
harness from the pristine baseline before the first session (`guard.json`), not by `exp` from a
worktree the agent has already touched. What is not: an agent with full shell access can write the
records folder itself; read results from the ledger through `exp` and `log`, and prefer the
harness-driven mode where that matters.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

from ouroboros import sandbox, views
from ouroboros.agents import Agent, CommandAgent, PresetAgent, Proposal, make_agent
from ouroboros.agents.command import NOTES_FILE, bound_notes
from ouroboros.agents.presets import session_env
from ouroboros.errors import OuroborosError
from ouroboros.guard import Guard
from ouroboros.ledger import Experiment, Ledger
from ouroboros.loop import PROPOSING, Loop, Options, task_at
from ouroboros.memory import build_prompt
from ouroboros.task import RECORDS_DIR, Task

LOCK_FILE = "exp.lock"
GUARD_FILE = "guard.json"
EXIT_CLOSED = 3  # `exp` refused: the window is closed or the experiment limit is reached
STALL_SESSIONS = 3  # sessions in a row that record nothing end the run: the agent is not working


# -- options --------------------------------------------------------------------------------
def agent_options(**given: Any) -> dict[str, Any]:
    """The agent options given on the command line (None means not given)."""
    return {k: v for k, v in given.items() if v is not None}


def parse_price(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        tin, tout = (float(x) for x in text.split(","))
    except ValueError as exc:
        raise OuroborosError(f"--price {text!r}: give dollars per million tokens as IN,OUT, e.g. 0.15,0.60") from exc
    return [tin, tout]


def configure(task: Task, opts: Options, drive: str | None, options: dict[str, Any]) -> str:
    """Store the agent options with the run, check the agent can start, and say how it is driven.

    A new run keeps them in its config (so `--resume` rebuilds the same agent); on resume, options
    given again replace the recorded ones (e.g. a higher --spend-cap).
    """
    if drive not in (None, "harness", "agent"):
        raise OuroborosError(f"--drive {drive!r}: use harness (the loop asks the agent once per experiment) "
                             "or agent (the agent runs `ouroboros exp` itself)")
    if opts.resume:
        ledger = Ledger(task.root / RECORDS_DIR)
        run = ledger.run(opts.tag or "")
        if run is None:
            ledger.close()
            return drive or "harness"  # the loop reports the unknown tag
        stored = {**run.config.get("agent_options", {}), **options}
        if stored != run.config.get("agent_options", {}) or (drive and drive != run.config.get("drive")):
            run.config = {**run.config, "agent_options": stored, "drive": drive or run.config.get("drive")}
            ledger.save_run(run)
        spec, mode = run.agent, drive or run.config.get("drive") or "harness"
        ledger.close()
    else:
        stored, spec, mode = options, opts.agent, drive or "harness"
        opts.extra = {**opts.extra, "agent_options": stored, "drive": mode}
    agent = make_agent(spec, opts.seed or 0, stored)  # a missing CLI or a bad spec fails here, before any run
    if mode == "agent":
        _session_agent(agent)
    return mode


# -- the harness side: sessions ---------------------------------------------------------------
def _session_agent(agent: Agent) -> CommandAgent:
    if isinstance(agent, PresetAgent):
        if not agent.agent_driven:
            agent.session_argv(Path("."), Path("."))  # raises with the reason
        return agent
    if isinstance(agent, CommandAgent):
        return agent
    raise OuroborosError(f"--drive agent needs an agent that runs commands itself (a CLI preset or cmd:...), "
                         f"not {agent.name}; use --drive harness")


SESSION_TASK = """# How to work: you drive the loop (agent-driven mode)

Work autonomously, one experiment after another, until the run's window closes{until}.
For each experiment:
1. Edit the editable files in the current folder with ONE idea.
2. Run `ouroboros exp -m "<one line: what you changed and why>"`. It checks the rules, runs the code
   under the fixed budget, evaluates it out of your reach, and records the verdict; it prints one
   line with the verdict and the metric. A keep stays in the files; anything else is reverted to
   the best version so far.
3. Read the verdict, update your notes, and go on with the next idea.

If the program above describes its own experiment loop (autoresearch's program.md does), the harness
does those steps instead, and `ouroboros exp` replaces them all:
- creating a branch: the harness made the run's branch and worktree; stay on it;
- `git commit` of the change: `ouroboros exp` commits it;
- running the training (`uv run train.py > run.log` or the like): `ouroboros exp` runs it under the budget
  and keeps the log in the run's records (a run.log you leave in the folder is deleted);
- reading the result with grep: `ouroboros exp` prints the metric and the verdict;
- `git reset` after a worse result: `ouroboros exp` reverts it;
- appending to results.tsv: the harness records every experiment (`ouroboros log` shows them).

Rules of this mode:
- `ouroboros exp` is the only way a result counts. Numbers you measure yourself are not recorded.
- Never commit, reset, checkout or otherwise touch git: the harness owns the history.
- Never stop to ask a question and never stop early: keep experimenting until `ouroboros exp` says
  the window is closed (exit code 3).
- Keep your notes in {notes} (bounded to {max_notes} characters; the newest part is kept) and files
  you want to keep across experiments in {artifacts}. A person may add guidance in {guidance};
  read it again from time to time. `ouroboros log` shows every experiment so far.
"""


def session_prompt(loop: Loop, deadline: float | None) -> str:
    run_dir = loop.ledger.run_dir(loop.tag)
    base = build_prompt(loop.task, loop.ws.task_dir, loop.finished, run_dir)
    base = base.rsplit("# Your task", 1)[0].rstrip()
    until = f" (at {time.strftime('%Y-%m-%d %H:%M', time.localtime(deadline))})" if deadline else ""
    return base + "\n\n" + SESSION_TASK.format(
        until=until, notes=run_dir / NOTES_FILE, max_notes=loop.task.agent.notes_max_chars,
        artifacts=run_dir / "artifacts", guidance=run_dir / "guidance.md")


def _closed(loop: Loop, deadline: float | None) -> str | None:
    if deadline is not None and time.time() >= deadline:
        return "the run's window is closed"
    if not loop._left():
        return f"the limit of {loop.run_rec.config.get('max_experiments')} experiments is reached"
    return None


def drive(task: Task, opts: Options, console: Console) -> None:
    """Run the baseline, then agent sessions until the window closes or the limit is reached."""
    live = views.Live(console, task)
    loop = Loop(task, opts, on_experiment=live.line)
    opts.tag = loop.tag  # for the caller's resume hint
    live.header(loop, agent_driven=True)
    agent = _session_agent(loop.agent)
    loop.run_rec.config["agent_confined"] = False  # sessions run `ouroboros exp`, which writes the records
    run_dir = loop.ledger.run_dir(loop.tag)
    sessions_dir = run_dir / "sessions"
    sessions_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "artifacts").mkdir(exist_ok=True)
    hours = loop.run_rec.config.get("hours")
    deadline = time.time() + hours * 3600 if hours is not None else None
    stalls = 0
    with loop.running():
        loop.prepare()
        with _lock(run_dir):
            loop.guard.save(run_dir / GUARD_FILE)
            loop.run_rec.config["window_end"] = deadline
            loop.ledger.save_run(loop.run_rec)
        while (reason := _closed(loop, deadline)) is None:
            made = _session(loop, agent, sessions_dir, deadline, console, live)
            stalls = 0 if made else stalls + 1
            if stalls >= STALL_SESSIONS:
                loop.run_rec.status = "stalled"
                reason = f"{stalls} sessions in a row recorded no experiment"
                break
        console.print(f"agent-driven run ends: {reason}; {loop.run_rec.sessions} sessions", markup=False)
        loop.run_rec.config["stop_reason"] = reason
    live.summary(loop)


def _session(loop: Loop, agent: CommandAgent, sessions_dir: Path, deadline: float | None, console: Console,
             live: views.Live) -> int:
    """One agent session; the number of experiments it recorded."""
    run_dir = loop.ledger.run_dir(loop.tag)
    k = loop.run_rec.sessions + 1
    loop.run_rec.sessions = k
    loop.ledger.save_run(loop.run_rec)
    prompt_path = sessions_dir / f"{k}.prompt.md"
    prompt_path.write_text(session_prompt(loop, deadline))
    if isinstance(agent, PresetAgent):
        argv: list[str] | str = agent.session_argv(prompt_path, run_dir)
    else:
        argv = agent.command
    env = sandbox.marked(session_env(agent if isinstance(agent, PresetAgent) else None), run_dir)
    env.update({"OUROBOROS_TASK_DIR": str(loop.task.root), "OUROBOROS_RUN": loop.tag, "OUROBOROS_SESSION": str(k),
                "OUROBOROS_PROMPT": str(prompt_path), "OUROBOROS_NOTES": str(run_dir / NOTES_FILE),
                "OUROBOROS_ARTIFACTS": str(run_dir / "artifacts"), "PYTHONUNBUFFERED": "1"})
    slack = loop.budget + loop.task.task.grace_s + loop.task.task.eval_timeout + 60  # a begun `exp` may finish
    limit = agent.timeout or loop.task.agent.timeout
    timeout = (deadline - time.time() + slack) if deadline is not None else limit
    before = len(loop.finished)
    console.print(f"session {k}: {agent.name} starts (transcript {sessions_dir / f'{k}.log'})")
    started = time.time()
    outcome = sandbox.run(argv, loop.ws.task_dir, max(timeout, 1.0), 0.0, sessions_dir / f"{k}.log", env=env,
                          max_log_mb=200)
    with _lock(run_dir):
        loop.run_rec = loop.ledger.run(loop.tag) or loop.run_rec  # `exp` may have saved it (fingerprint)
        loop.run_rec.sessions = k
        loop.history = loop.ledger.experiments(loop.tag, finished_only=True)
        made = [e for e in loop.finished[before:]]
        for exp in made:
            live.line(exp, loop.best)
        leftover = [c for c in loop.ws.changes() if c.status != "!!"]  # ignored files are caches
        if leftover:
            loop.ws.git("add", "-A", "-N")  # new files into the patch too (intent to add; reset below)
            patch = loop.ws.git("diff", "--no-color", "--no-ext-diff", "--no-textconv", "HEAD")
            (sessions_dir / f"{k}.leftover.patch").write_text(patch, errors="surrogateescape")  # git's bytes
        loop.ws.reset(loop.best.commit_sha)
        bound_notes(run_dir / NOTES_FILE, loop.task.agent.notes_max_chars)
        usage = agent.usage((sessions_dir / f"{k}.log").read_text(errors="replace")) \
            if isinstance(agent, PresetAgent) else (0, 0, 0.0)
        log = loop.run_rec.config.setdefault("session_log", [])
        log.append({"session": k, "started": started, "ended": time.time(), "exit": outcome.returncode,
                    "timed_out": outcome.timed_out, "experiments": [e.n for e in made],
                    "left_unrecorded": len(leftover), "tokens_in": usage[0], "tokens_out": usage[1],
                    "cost_usd": usage[2]})
        loop.ledger.save_run(loop.run_rec)
    why = "timed out" if outcome.timed_out else f"exited {outcome.returncode}"
    console.print(f"session {k} {why} after {time.time() - started:.0f} s: {len(made)} experiments recorded"
                  + (f", {len(leftover)} unrecorded changes reverted" if leftover else ""))
    return len(made)


# -- the agent side: `ouroboros exp` ------------------------------------------------------------
@contextmanager
def _lock(run_dir: Path) -> Iterator[None]:
    """An exclusive lock on the run: two `exp` calls (or exp and the harness) never interleave."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def locate(task_dir: Path | None, tag: str | None, cwd: Path | None = None) -> tuple[Path, str]:
    """The task folder and run tag of an `exp` call: given, from the session's environment, or from
    the current folder when it is inside a run's worktree (.ouroboros/runs/<tag>/worktree/...)."""
    task_dir = task_dir or (Path(os.environ["OUROBOROS_TASK_DIR"]) if os.environ.get("OUROBOROS_TASK_DIR") else None)
    tag = tag or os.environ.get("OUROBOROS_RUN") or None
    here = (cwd or Path.cwd()).resolve()
    for p in (here, *here.parents):
        if p.name == "worktree" and p.parent.parent.name == "runs" and p.parent.parent.parent.name == RECORDS_DIR:
            tag = tag or p.parent.name
            task_dir = task_dir or p.parent.parent.parent.parent
            break
    if task_dir is None or tag is None:
        raise OuroborosError("ouroboros exp: no run found; call it from inside a run's worktree, or give "
                             "--task and --run (agent-driven sessions set OUROBOROS_TASK_DIR and OUROBOROS_RUN)")
    return task_dir, tag


class _Recorded(Agent):
    """Stands in for the session's agent inside `exp`: the change is already in the worktree."""

    def __init__(self, name: str):
        self.name = name


def exp(message: str, task_dir: Path | None = None, tag: str | None = None,
        console: Console | None = None) -> tuple[int, Experiment | None]:
    """Record the worktree's current change as one experiment; (exit code, experiment)."""
    console = console or Console(highlight=False)
    if not message.strip():
        raise OuroborosError('ouroboros exp: describe the change, e.g. ouroboros exp -m "raise LR to 0.002"')
    task_dir, tag = locate(task_dir, tag)
    records = Path(task_dir).resolve() / RECORDS_DIR
    if not (records / "ledger.sqlite").is_file():
        raise OuroborosError(f"ouroboros exp: no runs in {task_dir}; start one with ouroboros run")
    ledger = Ledger(records)
    run = ledger.run(tag)
    ledger.close()
    if run is None:
        raise OuroborosError(f"ouroboros exp: no run {tag!r} in {records}")
    # The run's own task, from its base commit: never the checkout's file, which the agent can edit.
    task = task_at(Path(task_dir), run.base_commit)
    run_dir = records / "runs" / tag
    _refuse_during_proposal(run_dir, tag)
    with _lock(run_dir):
        _refuse_during_proposal(run_dir, tag)
        loop = Loop(task, Options(tag=tag, resume=True), agent=_Recorded(run.agent))
        loop.run_rec.status = run.status  # recording one experiment neither starts nor ends the run
        loop.ledger.save_run(loop.run_rec)
        try:
            window_end = loop.run_rec.config.get("window_end")
            if window_end is not None and time.time() >= window_end:
                console.print("closed: the run's window is closed; nothing was recorded. Stop now.")
                return EXIT_CLOSED, None
            if not loop.finished:
                raise OuroborosError(f"ouroboros exp: run {tag!r} has no baseline yet; start it with ouroboros run")
            if not loop._left():
                console.print(f"closed: the limit of {loop.run_rec.config.get('max_experiments')} experiments is "
                              "reached; nothing was recorded. Stop now.")
                return EXIT_CLOSED, None
            loop.guard = _guard(loop, run_dir)
            session = int(os.environ.get("OUROBOROS_SESSION") or loop.run_rec.sessions or 0)
            options = loop.run_rec.config.get("agent_options", {})
            model = options.get("model") or (run.agent.partition(":")[2] if ":" in run.agent else "")
            result = loop.step(Proposal(" ".join(message.split()), model=model, session=session))
            bound_notes(run_dir / NOTES_FILE, task.agent.notes_max_chars)
        finally:
            loop.ws.close()
            loop.ledger.close()
    console.print(verdict_line(task, result, loop), soft_wrap=True, markup=False)  # agent text: data
    return 0, result


def _refuse_during_proposal(run_dir: Path, tag: str) -> None:
    """In harness-driven mode the harness records the proposal itself: an `exp` from inside it
    would record one experiment twice over."""
    try:
        pid = int((run_dir / PROPOSING).read_text().strip() or 0)
    except (OSError, ValueError):
        return
    if pid and pid != os.getpid() and psutil.pid_exists(pid):
        raise OuroborosError(f"ouroboros exp: run {tag!r} is harness-driven and its agent is proposing now; "
                             "exp records nothing here: edit the files and end, the harness runs and records "
                             "the experiment")


def _guard(loop: Loop, run_dir: Path) -> Guard:
    """The guard with the baseline's protected hashes and git state, not the worktree's of now."""
    guard = Guard(loop.task, loop.ws)
    saved = run_dir / GUARD_FILE
    if saved.exists():
        guard.load(saved)
    else:  # a harness-driven run: hash the protected files as they are in the base commit
        guard.protected = {rel: hashlib.sha256(loop.fixed[rel][0]).hexdigest() if rel in loop.fixed else None
                           for rel in guard.protected}
    return guard


def verdict_line(task: Task, e: Experiment, loop: Loop) -> str:
    best, base = loop.best, loop.finished[0]

    def fmt(v: float | None) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v:.6g}"

    kept = "kept in the files" if e.status == "keep" else f"reverted to the best (experiment {best.n})"
    why = f" ({e.reason})" if e.reason and e.status != "keep" else ""
    return (f"experiment {e.n}: {e.status}{why}; {task.metric.name} {fmt(e.metric)}, best {fmt(best.metric)}, "
            f"baseline {fmt(base.metric)} ({'lower' if task.minimize else 'higher'} is better); {kept}")
