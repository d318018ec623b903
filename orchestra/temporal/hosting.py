"""Provisional (the client's need of it): the version of a hosted workflow."""

from __future__ import annotations

import hashlib

from orchestra.agents.pool import AgentPool
from orchestra.coordination.wiring import Setup, topology_fingerprint


def version_of(setup: Setup) -> str:
    """The key a worker hosts a workflow under: its topology's fingerprint and, per agent, its
    tools (each one's idempotent flag) and whether it is a pool."""
    lines = list(topology_fingerprint(setup.analysis))
    for name in sorted(setup.agents):
        agent = setup.agents[name]
        one = agent.instances[0] if isinstance(agent, AgentPool) else agent
        tools = ", ".join(
            f"{spec.name}{' idempotent' if one.is_idempotent(spec.name) else ''}"
            for spec in one.tool_specs
        )
        lines.append(f"agent {name} pool={isinstance(agent, AgentPool)} tools=[{tools}]")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
