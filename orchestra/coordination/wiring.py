"""Putting a run together: the topology checked, its agents found, the engine and its runner
built from one set of settings (a new run's, or those a session's log recorded)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestra.agents.base import BaseAgent
from orchestra.agents.lookup import find_agents
from orchestra.agents.pool import AgentPool
from orchestra.agents.registry import AgentRegistry
from orchestra.communication.channels import CommunicationManager

from .config import ErrorHandlingConfig, ExecutionConfig, StatusConfig
from .engine import events as ev
from .engine import inputs as inp
from .engine.clock import now
from .engine.convergence import check_node_policies
from .engine.core import Engine
from .engine.runner import Runner
from .monitoring.status import StatusPrinter
from .topology import Topology, TopologyAnalysis


@dataclass
class Setup:
    """Everything a run needs besides its task."""

    topology: Topology
    analysis: TopologyAnalysis
    agents: dict[str, BaseAgent | AgentPool]
    config: ExecutionConfig
    error_config: ErrorHandlingConfig
    communication: CommunicationManager
    max_steps: int


def prepare(
    topology: Topology | Mapping[str, Any],
    registry: AgentRegistry | None,
    config: ExecutionConfig,
    error_config: ErrorHandlingConfig,
    communication: CommunicationManager,
    max_steps: int,
) -> Setup:
    """Check the topology and find every agent (OrchestraError naming what is wrong)."""
    topo = Topology.coerce(topology)
    analysis = topo.analyze()
    check_node_policies(analysis)
    attached = {name: topo.node(name).agent for name in analysis.agents}
    found = find_agents(
        registry if registry is not None else AgentRegistry.default(),
        analysis.agents,
        {name: agent for name, agent in attached.items() if agent is not None},
    )
    effective = min(max_steps, analysis.max_steps or max_steps)
    return Setup(topo, analysis, found, config, error_config, communication, effective)


FINGERPRINT = "fingerprint 2"
"""The first line of a topology's fingerprint (logs of format 1 kept a shorter one)."""


def topology_fingerprint(topology: Topology) -> tuple[str, ...]:
    """What a rebuilt run checks it is run with the topology it was recorded with: everything
    that decides where work goes and when branches settle — its nodes and edges, the
    conditions and error routes of its edges (a predicate by its qualified name), its nodes'
    convergence policies, its rules, entry and exits. (Other metadata, free for users, may
    change.)"""
    lines = [f"node {node.name}" for node in topology.nodes]
    lines += [
        f"policy {node.name} {_plain(node.metadata['convergence_policy'])}"
        for node in topology.nodes
        if "convergence_policy" in node.metadata
    ]
    for edge in topology.edges:
        lines.append(f"edge {edge.arrow}")
        lines += [
            f"{key} {edge.arrow} {_plain(edge.metadata[key])}"
            for key in ("condition", "on_error")
            if key in edge.metadata
        ]
    lines += [f"rule {rule.to_text()}" for rule in topology.rules]
    if topology.entry_point is not None:
        lines.append(f"entry {topology.entry_point}")
    lines += [f"exit {name}" for name in topology.exit_points]
    return (FINGERPRINT, *sorted(lines))


def fingerprint_matches(recorded: tuple[str, ...], topology: Topology) -> bool:
    """Whether ``topology`` is the one a run was recorded with (for a log of format 1, which
    recorded only node names and edge arrows, whether those match)."""
    if recorded[:1] == (FINGERPRINT,):
        return recorded == topology_fingerprint(topology)
    old = (*sorted(node.name for node in topology.nodes), *sorted(e.arrow for e in topology.edges))
    return recorded == old


def _plain(value: Any) -> str:
    """A stable text for a setting: a function by its module and qualified name."""
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}"
    return repr(value)


def first_input(setup: Setup, task: Any, context: dict[str, Any]) -> inp.RunStart:
    """A new run's header: its task and everything it is started with."""
    return inp.RunStart(
        at=now(),
        task=task,
        context=context,
        max_steps=setup.max_steps,
        config=setup.config,
        error_config=setup.error_config,
        topology=topology_fingerprint(setup.topology),
    )


def build(setup: Setup, session_id: str, status: StatusConfig) -> tuple[Engine, Runner]:
    """A fresh engine for the run (empty until its first input) and the runner driving it;
    ``status`` says what is printed (its events, replayed ones excepted)."""
    stream = ev.EventStream()
    if status.enabled:
        stream.subscribe(StatusPrinter(status))
    tools = {
        name: (agent.instances[0] if isinstance(agent, AgentPool) else agent).tool_specs
        for name, agent in setup.agents.items()
    }
    engine = Engine(run_id=session_id, analysis=setup.analysis, tools=tools, stream=stream)
    config = setup.config
    runner = Runner(
        engine,
        setup.agents,
        setup.communication,
        step_timeout=config.step_timeout,
        branch_timeout=config.branch_timeout,
        convergence_timeout=config.convergence_timeout,
        run_timeout=setup.analysis.timeout,
        max_agents=setup.analysis.max_agents,
    )
    return engine, runner
