"""Agents: what proposes changes. `make_agent` turns an --agent spec into one."""

from __future__ import annotations

from ouroboros.agents.base import Agent, AgentError, Context, Proposal
from ouroboros.agents.command import CommandAgent
from ouroboros.agents.search import SearchAgent
from ouroboros.errors import OuroborosError

__all__ = ["Agent", "AgentError", "Context", "Proposal", "CommandAgent", "SearchAgent", "make_agent"]

KINDS = "random, tpe, cmd:<shell command>"


def make_agent(spec: str, seed: int = 0) -> Agent:
    """An agent from its spec: `random`, `tpe`, `cmd:<shell command>`."""
    if spec in ("random", "tpe"):
        return SearchAgent(spec, seed)
    if spec.startswith("cmd:"):
        try:
            return CommandAgent(spec[4:])
        except AgentError as exc:
            raise OuroborosError(str(exc)) from exc
    raise OuroborosError(f"unknown agent {spec!r}; known: {KINDS}")
