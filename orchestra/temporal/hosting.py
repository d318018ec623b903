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
from dataclasses import dataclass, replace
from pathlib import Path
from types import CellType, CodeType
from typing import Any

from orchestra.agents.base import BaseAgent
from orchestra.agents.pool import AgentPool
from orchestra.agents.registry import AgentRegistry
from orchestra.communication.channels import CommunicationManager
from orchestra.coordination.config import ErrorHandlingConfig, ExecutionConfig
from orchestra.coordination.topology import Topology
from orchestra.coordination.wiring import Setup, prepare, topology_fingerprint
from orchestra.errors import ConfigurationError
from orchestra.models.base import ToolSpec
from orchestra.workflow import WORKFLOW_KEY, load_workflow


def version_of(setup: Setup) -> str:
    """The first 16 hex digits of a sha256 over the workflow's name (``WORKFLOW_KEY``, when it
    has one), the topology's fingerprint and, per agent, whether it is a pool and its tools
    with their idempotent flags: what a session's replay depends on (a changed prompt or model
    does not change it; a changed edge or tool does)."""
    name = setup.topology.metadata.get(WORKFLOW_KEY)
    lines = [f"workflow {name}"] if isinstance(name, str) and name else []
    lines += topology_fingerprint(setup.analysis)
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


def _identity(setup: Setup) -> str:
    """What the agents of a hosted workflow are, beyond its version: each agent's kind, its
    function's or model's code and settings, its prompts and its tools' functions. Compared
    within one process only (two workflows hosted by one worker), so code digests do."""
    lines = []
    for name in sorted(setup.agents):
        agent = _sample(setup.agents[name])
        parts = [name, _qualified(type(agent))]
        parts += [_described(getattr(agent, field, None)) for field in _AGENT_FIELDS]
        model = getattr(agent, "model", None)
        if model is not None:
            parts += [_qualified(type(model)), repr(getattr(model, "config", None))]
            parts.append(_described(getattr(model, "fn", None)))
        tools: dict[str, Any] = getattr(agent, "tools", {})
        parts += [f"{tool} {_described(getattr(each, 'fn', None))}" for tool, each in tools.items()]
        lines.append(" | ".join(parts))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


_AGENT_FIELDS = ("fn", "instruction", "description")


def _described(value: Any, depth: int = 0) -> str:
    """A function as its qualified name, its code's digest and what its closure holds (a
    wrapper's wrapped function too); text as itself; other values as their type."""
    code = getattr(value, "__code__", None)
    if not isinstance(code, CodeType):
        return (
            repr(value) if isinstance(value, str | int | float | None) else _qualified(type(value))
        )
    parts = [_qualified(value), _code_digest(code)]
    if depth < _DEPTH:
        cells = getattr(value, "__closure__", None) or ()
        parts += [_described(_contents(cell), depth + 1) for cell in cells]
    return " ".join(parts)


_DEPTH = 3  # how deep closures are followed


def _contents(cell: CellType) -> Any:
    """A closure cell's value (None while the variable is not bound yet)."""
    try:
        return cell.cell_contents
    except ValueError:
        return None


def _qualified(value: Any) -> str:
    return f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', '?')}"


def _code_digest(code: CodeType) -> str:
    """A digest of a function's bytecode and constants (its nested functions' included): two
    lambdas written alike in one place differ by what they say."""
    digest = hashlib.sha256(code.co_code)
    for const in code.co_consts:
        digest.update(
            (_code_digest(const) if isinstance(const, CodeType) else repr(const)).encode()
        )
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Hosted:
    """One hosted workflow: its setup (analysis and agents), tools and fingerprint; where it
    came from (a file, a module) and what its agents are (``_identity``), to refuse another
    workflow of its version."""

    version: str
    setup: Setup
    tools: dict[str, tuple[ToolSpec, ...]]
    idempotent: dict[str, frozenset[str]]
    fingerprint: tuple[str, ...]
    source: str
    identity: str


class Hosting:
    """The workflows a worker hosts, by version: add any number (each session runs the one it
    started with)."""

    def __init__(self) -> None:
        self._hosted: dict[str, Hosted] = {}

    def add(
        self,
        topology: Topology | dict[str, Any],
        agent_registry: AgentRegistry | None = None,
        *,
        source: str | None = None,
    ) -> str:
        """Host ``topology`` with its agents from ``agent_registry`` (None: the default
        registry); its version. A topology or agent that is wrong is an OrchestraError naming
        it; a workflow whose version is hosted already with other agents is a
        ``ConfigurationError`` naming both ``source``s (where each came from: a file, a
        module) and the version (``_check``)."""
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
        hosted = Hosted(
            version=version,
            setup=setup,
            tools={name: agent.tool_specs for name, agent in agents.items()},
            idempotent={
                name: frozenset(s.name for s in agent.tool_specs if agent.is_idempotent(s.name))
                for name, agent in agents.items()
            },
            fingerprint=topology_fingerprint(setup.analysis),
            source=source or "a topology added in code",
            identity=_identity(setup),
        )
        self._check(hosted)
        self._hosted.setdefault(version, hosted)
        return version

    def add_file(self, path: str | Path, allow_modules: Collection[str] = ()) -> str:
        """Host a workflow file, loaded as ``orchestra run`` loads it (``allow_modules``: its
        ``--allow-module``s; none allows every module); its version."""
        loaded = load_workflow(Path(path), allowed_modules=list(allow_modules) or None)
        return self.add(loaded.topology, loaded.registry, source=str(path))

    def include(self, other: Hosting, source: str | None = None) -> list[str]:
        """Host every workflow ``other`` hosts too (a worker hosting several files and
        modules); their versions. One whose version is hosted here with other agents is a
        ``ConfigurationError`` (nothing of ``other`` is taken then); ``source`` names where
        ``other`` came from, for that error."""
        taken = [
            replace(hosted, source=f"{hosted.source} (from {source})") if source else hosted
            for hosted in other._hosted.values()
        ]
        for hosted in taken:
            self._check(hosted)
        for hosted in taken:
            self._hosted.setdefault(hosted.version, hosted)
        return other.versions

    def _check(self, hosted: Hosted) -> None:
        """Refuse a second workflow of a version already hosted, unless it is the same one
        (the same agents): its sessions would run whichever of the two this worker found
        first, silently."""
        found = self._hosted.get(hosted.version)
        if found is None or found.identity == hosted.identity:
            return
        raise ConfigurationError(
            f"{hosted.source} and {found.source} are both workflow version {hosted.version} "
            "(the same name, nodes and tools) but their agents differ: one worker cannot host "
            f"both. Give one another name (its topology's metadata {WORKFLOW_KEY!r}, or its "
            "file another name), or host them on different task queues"
        )

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
