"""Finding the agent of every node of a topology when a run starts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from orchestra.errors import AgentNotFoundError, ConfigurationError

from .base import BaseAgent
from .pool import AgentPool
from .registry import AgentRegistry


def find_agents(
    registry: AgentRegistry, names: Iterable[str], attached: Mapping[str, Any]
) -> dict[str, BaseAgent | AgentPool]:
    """The agent of every node named: the one ``attached`` to the node (a topology may carry
    its agents), else the one ``registry`` holds. Raises AgentNotFoundError listing every node
    with none, ConfigurationError for a pool already cleaned up."""
    agents: dict[str, BaseAgent | AgentPool] = {}
    missing = []
    for name in names:
        found = attached.get(name) or registry.get(name)
        if isinstance(found, AgentPool) and found.closed:
            raise ConfigurationError(
                f"the AgentPool for node {name!r} was cleaned up; build a new pool for this run"
            )
        if isinstance(found, BaseAgent | AgentPool):
            agents[name] = found
        else:
            missing.append(name)
    if missing:
        raise AgentNotFoundError(
            f"no agent is registered for node(s) {', '.join(map(repr, missing))}; create the "
            "agents (Agent, FunctionAgent, AgentPool) before the run or pass "
            "agent_registry=AgentRegistry([...])"
        )
    return agents
