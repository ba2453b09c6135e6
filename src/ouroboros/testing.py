"""Test kit for agents: the contract every agent must keep, a fake OpenAI-compatible server, and
stand-in executables for the coding-agent CLIs. Third-party agents can use it the same way:

    from ouroboros.testing import check_agent_contract, check_resume_contract

    def test_my_agent_keeps_the_contract(quadratic_task_root):
        check_agent_contract(lambda: MyAgent(), quadratic_task_root)

    def test_my_agent_resumes_exactly(quadratic_task_root):    # for agents that are deterministic
        check_resume_contract(lambda: MyAgent(), quadratic_task_root)   # given their seed

Nothing here reaches the network: the fake server listens on 127.0.0.1 on a free port.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ouroboros.agents.base import Agent, Context, Proposal
from ouroboros.ledger import Experiment, Ledger
from ouroboros.loop import Loop, Options
from ouroboros.task import RECORDS_DIR, load_task
from ouroboros.workspace import git

VERDICTS = {"keep", "discard", "crash", "timeout"}


# -- the contract ----------------------------------------------------------------------------------
def check_agent_contract(make: Callable[[], Agent], task_root: Path, experiments: int = 2,
                         allow_crash: bool = False) -> list[Experiment]:
    """Run a fresh agent for a few experiments, then resume with another; assert the protocol.

    Checked: every experiment ends in a verdict and none is a violation (the agent edits only
    editable files and never touches git); descriptions are one non-empty line; the agent's name is
    recorded; the branch holds only the harness's commits; a resumed run (a new agent instance,
    rebuilt through observe) proposes again. With allow_crash False, no proposal fails.
    """
    task = load_task(task_root)
    loop = Loop(task, Options(agent="contract", tag="contract", max_experiments=experiments), agent=make())
    run = loop.run()
    assert run.status in ("finished", "spend_cap"), f"the run ended {run.status}"
    _check(loop, task_root, allow_crash)
    loop.ledger.close()
    again = Loop(task, Options(tag="contract", resume=True, max_experiments=experiments + 1), agent=make())
    again.run()
    exps = _check(again, task_root, allow_crash)
    assert len(exps) == experiments + 2, f"resume did not add one experiment: {[e.n for e in exps]}"
    again.ledger.close()
    return exps


def _check(loop: Loop, task_root: Path, allow_crash: bool) -> list[Experiment]:
    exps = Ledger(task_root / RECORDS_DIR).experiments(loop.tag)
    assert exps and exps[0].description == "baseline"
    for e in exps[1:]:
        assert e.status in VERDICTS, f"experiment {e.n}: {e.status} ({e.reason})"
        assert allow_crash or e.status != "crash", f"experiment {e.n} crashed: {e.reason}"
        assert e.description.strip() and "\n" not in e.description, f"experiment {e.n}: bad description"
        assert e.agent == loop.agent.name
    commits = git(loop.ws.path, "rev-list", f"{loop.run_rec.base_commit}..{loop.ws.branch}").split()
    keeps = [e for e in exps[1:] if e.status == "keep"]
    assert len(commits) == len(keeps), "the branch holds commits the harness did not make"
    assert not loop.ws.changes(), "the worktree is not clean after the run"
    return exps


# -- exact resume ----------------------------------------------------------------------------------
INTERRUPT_POINTS = ("propose", "run", "evaluate", "record")
"""Where check_resume_contract stops a run: after the agent edited the files (its experiment not yet
begun), after the run phase (before the evaluation), after the evaluation (before the verdict is
recorded), and after the verdict is recorded (between experiments)."""


class Killed(BaseException):
    """SIGKILL, in-process: not a KeyboardInterrupt, so the loop's Ctrl-C handling does not run and the
    run stays recorded as `running`, as after a real kill."""


class _Interrupted(Agent):
    """The agent under test, seen through a proxy that can stop the loop right after a proposal."""

    def __init__(self, inner: Agent, hit: Callable[[str, int], None]):
        self.inner, self.hit, self.name = inner, hit, inner.name

    def check(self, task: Any) -> None:
        self.inner.check(task)

    def start(self, ctx: Context) -> None:
        self.inner.start(ctx)

    def observe(self, exp: Experiment) -> None:
        self.inner.observe(exp)

    def propose(self, ctx: Context) -> Proposal:
        proposal = self.inner.propose(ctx)
        self.hit("propose", ctx.n)
        return proposal

    def close(self) -> None:
        self.inner.close()


class _StoppingLoop(Loop):
    """The loop, stopped by an exception at one (point, experiment) of INTERRUPT_POINTS."""

    stop: tuple[str, int] | None = None
    exc: type[BaseException] = KeyboardInterrupt

    def hit(self, point: str, n: int) -> None:
        if self.stop == (point, n):
            raise self.exc(f"stopped at {point} of experiment {n}")

    def _run_phase(self, exp_dir: Path, env: dict[str, str], name: str = "run.log") -> Any:
        outcome = super()._run_phase(exp_dir, env, name)
        if name == "run.log":
            self.hit("run", int(exp_dir.name))
        return outcome

    def _measure(self, exp_dir: Path, env: dict[str, str], name: str = "eval.log", command: str | None = None) -> Any:
        measurement = super()._measure(exp_dir, env, name, command)
        if name == "eval.log":
            self.hit("evaluate", int(exp_dir.name))
        return measurement


def _loop(make: Callable[[], Agent], task_root: Path, opts: Options, stop: tuple[str, int] | None,
          exc: type[BaseException]) -> _StoppingLoop:
    holder: list[_StoppingLoop] = []
    agent = _Interrupted(make(), lambda point, n: holder[0].hit(point, n))
    loop = _StoppingLoop(load_task(task_root), opts, agent=agent,
                         on_experiment=lambda exp, best: holder[0].hit("record", exp.n))
    loop.stop, loop.exc = stop, exc
    holder.append(loop)
    return loop


def recorded_proposals(task_root: Path, tag: str) -> list[tuple]:
    """What a run proposed and what came of it, experiment by experiment: (n, description, params,
    diff.patch, status, metric). Commit ids and times are left out: they differ between runs."""
    ledger = Ledger(task_root / RECORDS_DIR)
    try:
        out = []
        for e in ledger.experiments(tag):
            diff = ledger.run_dir(tag) / "exp" / str(e.n) / "diff.patch"
            out.append((e.n, e.description, e.params, diff.read_text() if diff.is_file() else "", e.status, e.metric))
        return out
    finally:
        ledger.close()


def check_resume_contract(make: Callable[[], Agent], task_root: Path, experiments: int = 4, seed: int = 1234,
                          points: tuple[str, ...] = INTERRUPT_POINTS, kill: bool = False) -> None:
    """Interrupt a run at every experiment index and resume it each time; assert that it proposes and
    decides exactly what an uninterrupted run with the same seed does.

    For each point of `points` (see INTERRUPT_POINTS), one run is stopped at that point of
    experiment 0 (1 for `propose`), resumed by a new Loop with a new agent from `make()`, stopped at
    the same point of the next experiment, and so on to the last; then it is resumed to the end.
    The stop is Ctrl-C (KeyboardInterrupt), or with kill=True a stand-in for SIGKILL (the run is
    left `running`, as a killed process leaves it). Its records must equal the reference run's:
    the same experiments 0..N, each once, with the same description, params, diff, verdict and
    metric. Needs a deterministic task (the quadratic example) and an agent that is deterministic
    given its Context (seed, n, history): random and tpe are.
    """
    exc: type[BaseException] = Killed if kill else KeyboardInterrupt
    ref = _loop(make, task_root, Options(tag="ref", max_experiments=experiments, seed=seed), None, exc)
    ref.run()
    ref.ledger.close()
    want = recorded_proposals(task_root, "ref")
    assert [e[0] for e in want] == list(range(experiments + 1)), f"the reference run ended early: {want}"
    for point in points:
        tag = f"stop-{point}"
        opts = Options(tag=tag, max_experiments=experiments, seed=seed)
        for n in range(1 if point == "propose" else 0, experiments + 1):
            if point in ("run", "evaluate") and want[n][4] not in ("keep", "discard"):
                continue  # nothing was run or evaluated there (a violation, a failed proposal)
            loop = _loop(make, task_root, opts, (point, n), exc)
            try:
                loop.run()
            except exc:
                pass
            else:
                raise AssertionError(f"the run was not stopped at {point} of experiment {n}")
            finally:
                loop.ledger.close()
            opts = Options(tag=tag, resume=True)
        loop = _loop(make, task_root, opts, None, exc)
        loop.run()
        loop.ledger.close()
        got = recorded_proposals(task_root, tag)
        for a, b in zip(want, got, strict=False):
            assert a == b, (f"stopped at every {point}, resumed: experiment {a[0]} differs from the uninterrupted "
                            f"run's:\n  uninterrupted {a[1]!r} {a[4]} {a[5]}\n  resumed       {b[1]!r} {b[4]} {b[5]}")
        assert len(got) == len(want), f"stopped at every {point}, resumed: {len(got)} experiments, not {len(want)}"


# -- a fake OpenAI-compatible server -------------------------------------------------------------
Reply = str | Callable[[dict], str]


class FakeOpenAI:
    """Serves POST /v1/chat/completions with scripted replies, in order (the last one repeats).

    A reply is a string or a function of the request body. `requests` keeps every request body;
    `status` (e.g. 500) makes the next reply an error instead. Usage is counted as 1 token per 4
    characters, like a rough tokenizer.
    """

    def __init__(self, replies: list[Reply] | None = None, model: str = "fake-model"):
        self.replies, self.model = list(replies or ["DESCRIPTION: nothing"]), model
        self.requests: list[dict] = []
        self.status: int | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                fake.requests.append(body)
                if fake.status is not None:
                    status, fake.status = fake.status, None
                    return self._send(status, {"error": {"message": "scripted failure", "type": "server_error"}})
                reply = fake.replies[min(len(fake.requests) - 1, len(fake.replies) - 1)]
                text = reply(body) if callable(reply) else reply
                prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
                self._send(200, {
                    "id": f"chatcmpl-{len(fake.requests)}", "object": "chat.completion", "created": 0,
                    "model": body.get("model", fake.model),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": prompt // 4, "completion_tokens": len(text) // 4,
                              "total_tokens": prompt // 4 + len(text) // 4}})

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def knob_edit(name: str, old: str, new: str, path: str = "train.py", description: str = "") -> Callable[[dict], str]:
    """A reply that changes one knob with a SEARCH/REPLACE block, copying the knob's whole line
    (comment included) from the prompt the way a model does. With no such line in the prompt the
    SEARCH text is the bare assignment, which the agent then fails to find."""

    def reply(body: dict) -> str:
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []) if m.get("role") == "user")
        m = re.search(rf"^{re.escape(name)} = {re.escape(old)}\b.*$", prompt, re.MULTILINE)
        line = m.group(0) if m else f"{name} = {old}"
        return (f"DESCRIPTION: {description or f'{name} {old} -> {new}'}\n\n{path}\n<<<<<<< SEARCH\n{line}\n"
                f"=======\n{line.replace(f'{name} = {old}', f'{name} = {new}', 1)}\n>>>>>>> REPLACE\n")

    return reply


# -- stand-in CLIs ---------------------------------------------------------------------------------
def stand_in(bin_dir: Path, name: str, body: str) -> Path:
    """An executable `name` in bin_dir running the Python `body` (with this interpreter).

    The body sees `argv` (the arguments), `record(**extra)` (appends argv, cwd and the OUROBOROS_*
    environment as a JSON line to $STANDIN_LOG) and the usual modules os, sys, json, re, subprocess.
    """
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\n" + STANDIN_HEAD + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


STANDIN_HEAD = """import json, os, re, subprocess, sys
argv = sys.argv[1:]
def record(**extra):
    env = {k: v for k, v in os.environ.items() if k.startswith(("OUROBOROS_", "OPENCODE_"))}
    with open(os.environ["STANDIN_LOG"], "a") as f:
        f.write(json.dumps({"argv": argv, "cwd": os.getcwd(), "env": env, **extra}) + "\\n")
"""


def path_with(bin_dir: Path) -> str:
    return str(bin_dir) + os.pathsep + os.environ.get("PATH", "")


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300,
        check: bool = False) -> subprocess.CompletedProcess:
    """Run the real `ouroboros` CLI in a subprocess, the way a user (or an agent) does."""
    proc = subprocess.run([sys.executable, "-m", "ouroboros.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ouroboros {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def commit_all(repo: Path, message: str = "change") -> None:
    """Commit everything in repo (a task under test), with a throwaway identity."""
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], cwd=repo,
                   check=True)
