"""`ouroboros run --self`: the loop turned on itself.

This (trusted) driver runs the loop and records every experiment itself, with its own ledger and
key. What a kept version changes is how the next experiment is proposed: each proposal is made by
the latest kept version, exported (versions.py) and started afresh in a process of its own
(self/propose.py, an exec, not an import), confined in the run's agent sandbox: the worktree is its
only writable place, and the records, the ledger's key, the user's checkout and $HOME are out of its
sight. It returns only edits in the worktree and a description; the trusted loop guards, commits,
runs, evaluates (gate, re-measured delta benchmark), judges and records them, with the version in
each experiment's `model` column. A rejected candidate is a crash, and the next experiment again
starts from the last kept version. A kept version whose proposer fails to start (a policy file
that is not plain settings, a broken agent) is recorded as a crash of its own (agent `self`),
marked bad, and the driver goes back to the last good version. At the end the first and the final
version are compared on the holdout suite, each run confined too. The bad versions and the holdout
comparison are kept in the run's ledger row (`config["self"]`, chained like every row); the copy in
runs/<tag>/self.json is for reading only.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from ouroboros import sandbox
from ouroboros.agents.base import AgentError, Context, Proposal
from ouroboros.agents.command import CommandAgent
from ouroboros.errors import OuroborosError
from ouroboros.ledger import Experiment, Ledger
from ouroboros.readfile import read_regular
from ouroboros.self import versions
from ouroboros.self.delta import benchmark
from ouroboros.self.inner import remove
from ouroboros.self.propose import AGENT_FAILED
from ouroboros.self.settings import load_settings
from ouroboros.task import RECORDS_DIR, Task
from ouroboros.workspace import ensure_clean, repo_root

# what CommandAgent.env gives an agent besides the harness's environment
_CONTRACT_VARS = ("OUROBOROS_PROMPT", "OUROBOROS_DESCRIPTION", "OUROBOROS_EXPERIMENT", "OUROBOROS_NOTES",
                  "OUROBOROS_ARTIFACTS", "PYTHONUNBUFFERED", sandbox.MARK)

# -I: no PYTHONPATH, no user site, not the worktree on the path; the version's source goes first
LAUNCH = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import runpy; "
          "runpy.run_module('ouroboros.self.propose', run_name='__main__', alter_sys=True)")


class VersionAgent(CommandAgent):
    """The agent of `run --self`: each proposal by the latest good kept version, confined."""

    writes_code = True  # the version's code runs: never at isolation level process unless allowed (check())

    def __init__(self, spec: str, repo: Path, cache: Path, base: str, state: dict, save: Callable[[], None],
                 timeout: float | None = None):
        super().__init__(f"version proposer {spec}", timeout, name=spec)
        self.spec, self.repo, self.cache, self.base, self.state, self.save = spec, repo, cache, base, state, save
        self.seed = 0  # the run's seed, set once the loop has opened the run
        from ouroboros.agents import make_agent

        self.inner = make_agent(spec, 0)  # the spec's agent as made here: checked now, its files and config folders
        self.home_dirs = tuple(getattr(self.inner, "home_dirs", ()))
        self.version = base
        self.src: Path | None = None
        self.context: Path | None = None  # what the proposer may know (read-only to it)

    def needs(self, task: Task) -> tuple[list[str], bool]:
        """The environment variables the inner agent declares (an api: agent's key, a CLI preset's keys,
        the task's `[bound] env`) and whether it needs the network (a language-model or cmd: agent; a knob
        agent needs neither): all the proposer, a version's code, is given of the harness's environment."""
        from ouroboros.agents.api import ApiAgent
        from ouroboros.agents.ensemble import EnsembleAgent

        members = [a for a, _ in self.inner.members] if isinstance(self.inner, EnsembleAgent) else [self.inner]
        keys, network = list(task.bound.env), False
        for agent in members:
            if isinstance(agent, ApiAgent):
                keys.append(agent.api_key_env or task.agent.api_key_env)
                network = True
            elif isinstance(agent, CommandAgent):
                keys += getattr(agent, "env_keys", ())
                network = True
        return keys, network

    def check(self, task: Task) -> None:
        self.inner.check(task)
        # a knob agent on the default self task: the versions differ only in the policy file, which is
        # data, so what runs is the protected code; anything wider runs the versions' own code
        self.writes_code = bool(getattr(self.inner, "writes_code", True)) or \
            list(task.task.editable) != ["src/ouroboros/policy.py"]

    def latest(self, history: list[Experiment]) -> str:
        good = [e.commit_sha for e in history if e.status == "keep" and e.commit_sha not in self.state["bad"]]
        return good[-1] if good else self.base

    def readable(self) -> list[Path]:
        extra = self.inner.readable() if isinstance(self.inner, CommandAgent) else []
        return [p for p in [self.src, self.context, Path(sys.prefix), Path(sys.base_prefix), *extra] if p is not None]

    def argv(self, ctx: Context, prompt_path: Path) -> list[str]:
        return [sys.executable, "-I", "-c", LAUNCH, str(self.src), str(self.context)]

    def env(self, ctx: Context, prompt_path: Path, desc_path: Path) -> dict[str, str]:
        # A version's own agents need a ledger key (a cmd: agent inside it marks its processes with one):
        # a throwaway key in its scratch folder, never the user's, which it could neither read nor should.
        # Not the harness's environment (a version's code reads every secret in it): the scrubbed one of
        # experiments, the variables the inner agent declares, and the agent contract's own.
        config = ctx.exp_dir / "version" / ".config"
        config.mkdir(parents=True, exist_ok=True)
        given = super().env(ctx, prompt_path, desc_path)
        keys, _ = self.needs(ctx.task)
        return sandbox.scrubbed_env({**{k: given[k] for k in _CONTRACT_VARS if k in given},
                                     "OUROBOROS_CONFIG_DIR": str(config)}, allow=keys)

    def confined(self, ctx: Context, argv: list[str] | str, writable: list[Path], readable: list[Path],
                 home=None) -> list[str] | str:
        wrapped = super().confined(ctx, argv, writable, readable, home)
        if not self.needs(ctx.task)[1] and self.confinement == "bwrap":  # a knob agent: no network either
            if isinstance(wrapped, str) or os.path.basename(wrapped[0]) != "bwrap":
                raise AgentError(f"the version's proposer was to run in bubblewrap, not as {str(wrapped)[:80]!r}")
            wrapped = [wrapped[0], "--unshare-net", *wrapped[1:]]
        return wrapped

    def scratch(self, ctx: Context) -> list[Path]:
        return [ctx.exp_dir / "version", ctx.exp_dir / "proposal.json"]

    def propose(self, ctx: Context) -> Proposal:
        self.name = self.spec
        self.version = self.latest(ctx.history)
        try:
            self.src = versions.install(self.repo, self.version, self.cache)
        except OuroborosError as exc:
            return self._rollback(f"it could not be exported: {exc}")
        baseline = {}
        for rel in ctx.task.editable_files(ctx.worktree):
            try:
                baseline[rel] = ctx.read_baseline(rel) if ctx.read_baseline else ""
            except Exception:  # noqa: BLE001  a file the baseline did not have
                continue
        (ctx.exp_dir / "version").mkdir(exist_ok=True)
        (ctx.exp_dir / "proposal.json").write_text("{}")
        self.context = ctx.exp_dir / "version.json"
        self.context.write_text(json.dumps({
            "agent": self.spec, "seed": self.seed, "n": ctx.n, "exp_seed": ctx.seed, "best": ctx.best.n,
            "history": [asdict(e) for e in ctx.history], "baseline": baseline, "prompt": ctx.prompt(),
            "session": ctx.session, "scratch": str(ctx.exp_dir / "version"),
            "out": str(ctx.exp_dir / "proposal.json")}, default=str))
        try:
            try:
                proposal = super().propose(ctx)
            finally:
                held = self._bound_scratch(ctx)
            if held is not None:
                raise AgentError(f"agent left {held / 2**20:.1f} MB in its scratch folder, more than "
                                 f"max_artifact_mb={ctx.task.bound.max_artifact_mb:g} (removed)")
        except AgentError as exc:
            if held is not None or str(exc).startswith(f"agent exited {AGENT_FAILED}"):  # started; the proposal failed
                raise AgentError(f"version {self.version[:12]}: {exc}", Proposal("", model=self.version[:12])) \
                    from None
            return self._rollback(str(exc))
        try:  # the version's word on its parameters: recorded, never acted on (the worktree is what counts)
            raw = read_regular(ctx.exp_dir / "proposal.json", cap=64 << 10)  # the version wrote it: no FIFO, no TiB
            params = json.loads(raw or "{}").get("params") or {}
            params = {str(k)[:100]: v for k, v in params.items() if isinstance(v, int | float | str | bool)}
        except (OSError, ValueError, AttributeError, RecursionError):  # RecursionError: nested past json's depth
            params = {}
        proposal.params, proposal.model = params, self.version[:12]
        return proposal

    def _bound_scratch(self, ctx: Context) -> int | None:
        """The scratch folder (the inner agent's records, kept in the experiment's) holds at most max_artifact_mb,
        as an agent's artifacts do: past that, all of it is removed; how much it held then (None: within)."""
        scratch = ctx.exp_dir / "version"
        held = sandbox.du(scratch)  # as every other disk cap counts it: blocks, preallocation, depth
        if held <= int(ctx.task.bound.max_artifact_mb * 2**20):
            return None
        remove(scratch)  # never through a link
        (scratch / ".config").mkdir(parents=True)
        return held

    def _rollback(self, why: str) -> Proposal:
        if self.version == self.base:
            raise OuroborosError(f"the base version {self.base[:12]} cannot propose: {why}")
        self.state["bad"].append(self.version)
        self.save()
        self.name = "self"
        raise AgentError(f"version {self.version[:12]} failed to start: {' '.join(why.split())[:300]}; rolled back "
                         "to the last good version", Proposal("", model=self.version[:12]))


@contextmanager
def _version_env(value: str):
    old = os.environ.get("OUROBOROS_VERSION")
    os.environ["OUROBOROS_VERSION"] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OUROBOROS_VERSION", None)
        else:
            os.environ["OUROBOROS_VERSION"] = old


def run_self(task: Task, max_experiments: int, tag: str, agent: str = "policy", seed: int | None = 0,
             holdout: bool = True, echo: Callable[[str], None] = print) -> dict:
    from ouroboros.loop import Loop, Options

    repo = repo_root(task.root)
    records = task.root / RECORDS_DIR
    ledger = Ledger(records)
    cache = records / "versions"
    run = ledger.run(tag)
    base = run.base_commit if run else ensure_clean(repo, task.root.relative_to(repo).as_posix() or ".")
    # the bad versions and the holdout comparison live in the run's ledger row (chained: edited without the
    # key, `verify` names it); runs/<tag>/self.json is a copy for reading, never read back
    state = dict(run.config.get("self") or {}) if run else {}
    state.setdefault("bad", [])
    state.setdefault("first", base)
    state_path = ledger.run_dir(tag) / "self.json"
    loops: list = []

    def save() -> None:
        if loops:  # during the loop: through its own record of the run, which it saves again itself
            loops[0].run_rec.config["self"] = state
            loops[0].ledger.save_run(loops[0].run_rec)
        else:
            rec = ledger.run(tag)
            if rec is not None:
                rec.config["self"] = state
                ledger.save_run(rec)
        state_path.parent.mkdir(parents=True, exist_ok=True)
        state_path.write_text(json.dumps(state, indent=1))

    proposer = VersionAgent(agent, repo, cache, base, state, save)

    def line(exp: Experiment, best: Experiment) -> None:
        metric = "" if exp.metric is None else f"delta {exp.metric:.4f} "
        echo(f"  {exp.n}: {exp.status} {metric}(version {exp.model or '?'}) {' '.join(exp.reason.split())[:120]}")

    opts = Options(agent=agent, tag=tag, max_experiments=max_experiments, seed=seed, resume=run is not None)
    loop = Loop(task, opts, agent=proposer, on_experiment=line)
    loops.append(loop)
    proposer.seed = loop.run_rec.seed
    with _version_env(base[:12]):  # the baseline's version; each proposal records its own
        loop.run()
    save()
    loop.ledger.close()
    loops.clear()
    history = ledger.experiments(tag, finished_only=True)
    keeps = [e for e in history if e.status == "keep" and e.commit_sha not in state["bad"]]
    state["final"] = keeps[-1].commit_sha
    state["versions"] = sorted({e.model for e in history if e.model})
    if holdout and state.get("holdout", {}).get("final") != state["final"]:
        cfg = load_settings(task.root)
        state["holdout"] = {"first": state["first"], "final": state["final"]}
        for key in ("first", "final"):
            sha = state[key]
            if key == "final" and sha == state["first"]:
                state["holdout"]["final_result"] = state["holdout"]["first_result"]
                break
            echo(f"holdout suite: version {sha[:12]} ({key})")
            result = benchmark(versions.install(repo, sha, cache), records / "holdout" / sha[:12], cfg.seeds,
                               cfg.experiments, "holdout", None, cfg.agent, cfg.search, cfg.jobs)
            state["holdout"][f"{key}_result"] = json.loads(result.to_json())
            echo(f"  {result.line()}")
    save()
    ledger.close()
    return state
