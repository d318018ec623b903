"""What a worker hosts: workflows (a topology and its agents), each under its version.

A session runs on whichever worker picks up its next task, so every worker on a task queue
must run it with the topology and tools it started with. The version is the key: the client
computes it from its own setup, the workflow looks it up first thing on every run and replay,
and a session whose version no worker hosts is refused with a ``WorkflowVersionError``, not
replayed against a changed workflow.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestra.agents.base import BaseAgent
from orchestra.agents.pool import AgentPool
from orchestra.agents.registry import AgentRegistry
from orchestra.communication.channels import CommunicationManager
from orchestra.coordination.config import ErrorHandlingConfig, ExecutionConfig
from orchestra.coordination.topology import Topology
from orchestra.coordination.wiring import Setup, prepare, topology_fingerprint
from orchestra.models.base import ToolSpec
from orchestra.workflow import load_workflow


def version_of(setup: Setup) -> str:
    """The first 16 hex digits of a sha256 over the topology's fingerprint and, per agent,
    whether it is a pool and its tools with their idempotent flags: what a session's replay
    depends on (a changed prompt or model does not change it; a changed edge or tool does)."""
    lines = list(topology_fingerprint(setup.analysis))
    for name in sorted(setup.agents):
        found = setup.agents[name]
        agent = _sample(found)
        tools = ", ".join(
            f"{spec.name}{' idempotent' if agent.is_idempotent(spec.name) else ''}"
            for spec in sorted(agent.tool_specs, key=lambda spec: spec.name)
        )
        lines.append(f"agent {name}{' pool' if isinstance(found, AgentPool) else ''}: {tools}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _sample(agent: BaseAgent | AgentPool) -> BaseAgent:
    return agent.instances[0] if isinstance(agent, AgentPool) else agent


@dataclass(frozen=True)
class Hosted:
    """One hosted workflow: its setup (analysis and agents), tools and fingerprint."""

    version: str
    setup: Setup
    tools: dict[str, tuple[ToolSpec, ...]]
    idempotent: dict[str, frozenset[str]]
    fingerprint: tuple[str, ...]


class Hosting:
    """The workflows a worker hosts, by version: add any number (each session runs the one it
    started with)."""

    def __init__(self) -> None:
        self._hosted: dict[str, Hosted] = {}

    def add(
        self, topology: Topology | dict[str, Any], agent_registry: AgentRegistry | None = None
    ) -> str:
        """Host ``topology`` with its agents from ``agent_registry`` (None: the default
        registry); its version. A topology or agent that is wrong is an OrchestraError naming
        it."""
        setup = prepare(
            topology,
            agent_registry,
            ExecutionConfig(),
            ErrorHandlingConfig(),
            CommunicationManager(),
            1,
        )
        version = version_of(setup)
        agents = {name: _sample(agent) for name, agent in setup.agents.items()}
        self._hosted[version] = Hosted(
            version=version,
            setup=setup,
            tools={name: agent.tool_specs for name, agent in agents.items()},
            idempotent={
                name: frozenset(s.name for s in agent.tool_specs if agent.is_idempotent(s.name))
                for name, agent in agents.items()
            },
            fingerprint=topology_fingerprint(setup.analysis),
        )
        return version

    def add_file(self, path: str | Path, allow_modules: Collection[str] = ()) -> str:
        """Host a workflow file, loaded as ``orchestra run`` loads it (``allow_modules``: its
        ``--allow-module``s; none allows every module); its version."""
        loaded = load_workflow(Path(path), allowed_modules=list(allow_modules) or None)
        return self.add(loaded.topology, loaded.registry)

    def include(self, other: Hosting) -> list[str]:
        """Host every workflow ``other`` hosts too (a worker hosting several files and
        modules); their versions."""
        self._hosted.update(other._hosted)
        return other.versions

    def get(self, version: str) -> Hosted | None:
        return self._hosted.get(version)

    @property
    def versions(self) -> list[str]:
        return sorted(self._hosted)

    def refusal(self, session_id: str, version: str, fingerprint: list[str], running: bool) -> str:
        """Why session ``session_id`` (started with ``version``, of topology ``fingerprint``)
        cannot run here, and what to do: for a session ``running`` already, it waits for a
        worker that hosts its version; a new one failed."""
        hosted = ", ".join(self.versions) or "none"
        message = (
            f"session {session_id!r} was started with workflow version {version}, which this "
            f"worker does not host (it hosts: {hosted})"
        )
        differences = self._differences(fingerprint)
        if differences:
            message += f"; the workflow with the same nodes differs in: {differences}"
        if running:
            return (
                f"{message}. The session waits, with every step it took kept: run a worker "
                "that hosts the workflow file it started with on this task queue to finish it "
                "(sessions started from now on use the new file)"
            )
        return (
            f"{message}. Run a worker that hosts this workflow file on this task queue, then "
            "start the session again"
        )

    def _differences(self, fingerprint: list[str]) -> str:
        """The fingerprint lines that differ from the one hosted workflow with the same node
        set, if there is exactly one (its tools, when the topology is the same)."""
        nodes = {line for line in fingerprint if line.startswith("node ")}
        alike = [
            hosted
            for hosted in self._hosted.values()
            if {line for line in hosted.fingerprint if line.startswith("node ")} == nodes
        ]
        if len(alike) != 1:
            return ""
        started, now = set(fingerprint), set(alike[0].fingerprint)
        changed = [f"-{line}" for line in sorted(started - now)]
        changed += [f"+{line}" for line in sorted(now - started)]
        return "; ".join(changed) or "the agents' tools (names, idempotent flags) or pools"
