"""Agents: what proposes changes. `make_agent` turns an --agent spec into one.

Spec grammar:

    random | tpe                     classical search over the task's knobs
    mutate[:K] | random:K            change 1 to K knobs (default 3) of the best so far: near their
                                     values (mutate) or anywhere in range (random:K)
    policy                           knob mutation steered by ouroboros/policy.py
    cmd:<shell command>              any program that edits files in the worktree
    codex | claude | aider | opencode | gemini [:<model>]
                                     a coding-agent CLI (presets.py)
    api:<model>                      a model behind an OpenAI-compatible endpoint
    replay:<tag or run folder>       re-apply a recorded run's proposals
    <spec>=<weight>,<spec>=<weight>  an ensemble: one member drawn per experiment

`options` (stored in the run record as config["agent_options"], so `--resume` rebuilds the same
agent): model, timeout, base_url, api_key_env, price [in, out] $/1M tokens, spend_cap, retries, temperature,
compact (the short prompt for small local models; on by default for api:local).
"""

from __future__ import annotations

from typing import Any

from ouroboros.agents.api import ApiAgent
from ouroboros.agents.base import Agent, AgentError, Context, Proposal, StopRun
from ouroboros.agents.command import CommandAgent
from ouroboros.agents.ensemble import EnsembleAgent
from ouroboros.agents.mutate import MutateAgent
from ouroboros.agents.policy import PolicyAgent
from ouroboros.agents.presets import PRESETS, PresetAgent
from ouroboros.agents.replay import ReplayAgent
from ouroboros.agents.search import SearchAgent
from ouroboros.errors import OuroborosError

__all__ = ["Agent", "AgentError", "Context", "Proposal", "StopRun", "CommandAgent", "SearchAgent", "MutateAgent", "PolicyAgent", "PresetAgent",
           "ApiAgent", "EnsembleAgent", "ReplayAgent", "PRESETS", "make_agent"]

KINDS = "random, tpe, mutate[:K], random:K, policy, cmd:<shell command>, " + ", ".join(PRESETS) + ", api:<model>, replay:<run>, " \
        "or an ensemble like 'api:a=0.7,api:b=0.3'"


def make_agent(spec: str, seed: int = 0, options: dict[str, Any] | None = None) -> Agent:
    """An agent from its spec (see the module docstring)."""
    opts = dict(options or {})
    spec = spec.strip()
    if not spec.startswith("cmd:") and "," in spec:
        return EnsembleAgent([_member(part, seed, opts) for part in spec.split(",") if part.strip()])
    if spec in ("random", "tpe"):
        return SearchAgent(spec, seed)
    if spec == "policy":
        return PolicyAgent(seed)
    kind, _, arg = spec.partition(":")
    if kind == "mutate" or (kind == "random" and arg):
        if arg and not arg.isdigit() or arg == "0":
            raise OuroborosError(f"agent {spec!r}: after {kind}: give how many knobs at most one proposal changes, "
                                 f"e.g. {kind}:3")
        return MutateAgent(spec, seed, fresh=kind == "random", max_changes=int(arg or 3))
    if kind == "cmd":
        try:
            return CommandAgent(arg, opts.get("timeout"))
        except AgentError as exc:
            raise OuroborosError(str(exc)) from exc
    if kind in PRESETS:
        return PRESETS[kind](arg or opts.get("model"), opts.get("timeout"))
    if kind == "api":
        return ApiAgent(arg or opts.get("model") or "", opts.get("base_url"), opts.get("api_key_env"),
                        opts.get("price"), opts.get("spend_cap"), int(opts.get("retries", 2)), opts.get("timeout"),
                        temperature=opts.get("temperature"), compact=opts.get("compact"))
    if kind == "replay":
        return ReplayAgent(arg)
    raise OuroborosError(f"unknown agent {spec!r}; known: {KINDS}")


def _member(part: str, seed: int, opts: dict[str, Any]) -> tuple[Agent, float]:
    spec, _, weight = part.strip().rpartition("=")
    if not spec:
        spec, weight = part.strip(), "1"
    try:
        w = float(weight)
    except ValueError:
        spec, w = part.strip(), 1.0
    if w <= 0:
        raise OuroborosError(f"ensemble member {part!r}: the weight must be positive")
    return make_agent(spec, seed, {k: v for k, v in opts.items() if k != "model"}), w
