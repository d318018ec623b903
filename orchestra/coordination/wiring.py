"""Putting a run together: the topology checked, its agents found, the engine and its runner
built from one set of settings (a new run's, or those a session's log recorded)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from orchestra.agents.base import BaseAgent
from orchestra.agents.lookup import find_agents
from orchestra.agents.pool import AgentPool
from orchestra.agents.registry import AgentRegistry
from orchestra.communication.channels import CommunicationManager, Question
from orchestra.communication.terminal import TerminalChannel

from .config import ConvergencePolicy, ErrorHandlingConfig, ExecutionConfig, StatusConfig
from .engine import events as ev
from .engine import inputs as inp
from .engine.budget_limits import configured
from .engine.clock import now
from .engine.convergence import check_node_policies
from .engine.core import Engine
from .engine.runner import Runner
from .monitoring.live import LiveWatch, status_watch
from .monitoring.tracing_switch import tracing_on
from .topology import Topology, TopologyAnalysis
from .topology.analysis import PLAIN_CACHE_SIZE, PlainKey, plain_analysis
from .topology.shared import shared_topology

if TYPE_CHECKING:  # prometheus-client is imported only by those who collect metrics
    from .monitoring.metrics import MetricsCollector


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
    metrics: MetricsCollector | None = None
    # follow-ups: the offer's timeout (None: not offered), and why, when asked for, they are not
    follow_up_timeout: float | None = None
    follow_ups_note: str | None = None
    # told when the run stops here for a reason no event reports (cancelled, halted): an
    # observer that holds the run as active (a metrics watch, a tracer, a live status block)
    # lets go of it
    on_stop: list[Callable[[str], None]] = field(default_factory=list)
    # called, off the event loop, once the run stopped and before it returns: a blocking wait
    # (bounded) for what it shows to be out (the live status display's final block)
    on_settle: list[Callable[[], None]] = field(default_factory=list)
    # told every event of the run, each StepDelta too (``Orchestra.stream``'s queue)
    listeners: list[ev.Subscriber] = field(default_factory=list)

    def stopped(self, outcome: str) -> None:
        """The run stopped here (``outcome``: cancelled or halted, counted only by an observer
        that has not seen it end or pause)."""
        for stop in self.on_stop:
            stop(outcome)

    async def settled(self) -> None:
        """Wait, off the event loop, until every observer has shown the run's end (nothing to
        wait for, and no thread used, when none registered: plain lines, quiet)."""
        for settle in self.on_settle:
            await asyncio.to_thread(settle)


def prepare(
    topology: Topology | Mapping[str, Any],
    registry: AgentRegistry | None,
    config: ExecutionConfig,
    error_config: ErrorHandlingConfig,
    communication: CommunicationManager,
    max_steps: int,
) -> Setup:
    """Check the topology and find every agent (OrchestraError naming what is wrong). A
    topology dict becomes a topology shared by the runs of equal plain dicts: the run only
    reads it."""
    topo = topology if isinstance(topology, Topology) else shared_topology(topology)
    analysis = topo.analyze()
    check_node_policies(analysis)
    attached = {name: topo.node(name).agent for name in analysis.agents}
    found = find_agents(
        registry if registry is not None else AgentRegistry.default(),
        analysis.agents,
        {name: agent for name, agent in attached.items() if agent is not None},
    )
    effective = min(max_steps, analysis.max_steps or max_steps)
    config = configured(config, topo.rules, analysis.agents)
    return Setup(topo, analysis, found, config, error_config, communication, effective)


FINGERPRINT = "fingerprint 2"
"""The first line of a topology's fingerprint (logs of format 1 kept a shorter one)."""


def topology_fingerprint(analysis: TopologyAnalysis) -> tuple[str, ...]:
    """What a rebuilt run checks it is run with the topology it was recorded with: everything
    that decides where work goes and when branches settle, in the form the engine reads it —
    its nodes, each node's edges out in the order routing tries them, their conditions and
    error routes (a predicate by its qualified name: a script run as ``__main__`` and the
    worker that imports it name it alike), convergence policies as the policy they mean, rules,
    the entries in order and the exits. Two topologies written differently that the engine
    reads alike (a policy as ``"any"`` or ``{"k": 1}``, ``parallel`` agents in another order,
    an entry point given or inferred) have one fingerprint. (Other metadata, free for users,
    may change.) A plain topology's (no metadata) is kept with its analysis's shape."""
    shape = analysis.plain_shape
    return _fingerprint(analysis) if shape is None else _plain_fingerprint(shape)


@lru_cache(maxsize=PLAIN_CACHE_SIZE)
def _plain_fingerprint(shape: PlainKey) -> tuple[str, ...]:
    return _fingerprint(plain_analysis(shape))


def _fingerprint(analysis: TopologyAnalysis) -> tuple[str, ...]:
    lines = [f"node {name}" for name in analysis.node_names]
    for name in analysis.node_names:
        node = analysis.node(name)
        if "convergence_policy" in node.metadata:
            lines.append(f"policy {name} {_policy(node.metadata['convergence_policy'])}")
        edges = analysis.out_edges(name)
        if edges:
            lines.append(f"edges {name} -> {', '.join(edge.target for edge in edges)}")
        for edge in edges:
            if edge.condition is not None:
                lines.append(f"condition {edge.arrow} {_plain(edge.condition)}")
            if edge.metadata.get("on_error"):
                lines.append(f"on_error {edge.arrow}")
    lines += [f"parallel {', '.join(sorted(group))}" for group in analysis.parallel_groups]
    limits = {
        "max_steps": analysis.max_steps,
        "timeout": None if analysis.timeout is None else float(analysis.timeout),
        "max_agents": analysis.max_agents,
        "ping_pong": analysis.ping_pong_rounds,
    }
    lines += [f"{name} {value!r}" for name, value in limits.items() if value is not None]
    lines.append(f"entries {', '.join(analysis.entries)}")
    lines += [f"exit {name}" for name in analysis.exits]
    return (FINGERPRINT, *sorted(set(lines)))


def fingerprint_matches(recorded: tuple[str, ...], analysis: TopologyAnalysis) -> bool:
    """Whether ``analysis`` is of the topology a run was recorded with (for a log of format 1,
    which recorded only node names and edge arrows, whether those match)."""
    if recorded[:1] == (FINGERPRINT,):
        return recorded == topology_fingerprint(analysis)
    names = analysis.node_names
    arrows = [edge.arrow for name in names for edge in analysis.out_edges(name)]
    return recorded == (*sorted(names), *sorted(arrows))


def _policy(value: Any) -> str:
    try:
        policy = ConvergencePolicy.coerce(value)
    except (ValueError, TypeError):
        return repr(value)
    return repr(sorted(policy.model_dump().items()))


def _plain(value: Any) -> str:
    """A stable text for a condition: a function by its qualified name."""
    if callable(value):
        return f"function {getattr(value, '__qualname__', '?')}"
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
        topology=topology_fingerprint(setup.analysis),
        follow_up_timeout=setup.follow_up_timeout,
        follow_ups_note=setup.follow_ups_note,
        shared_budget_questions=True,
    )


def build(setup: Setup, session_id: str, status: StatusConfig) -> tuple[Engine, Runner]:
    """A fresh engine for the run (empty until its first input) and the runner driving it;
    ``status`` says what is shown (plain lines, or the live view on a terminal); the setup's
    metrics collector, if enabled, watches the stream too, and so does a tracer when the run is
    traced (``tracing_on``). The setup's ``listeners`` hear every event, deltas included, and so
    does the live view: with either, models stream their replies. Each watcher that holds the run open (the live status block, the
    metrics, the tracer) is told, through ``setup.stopped``, when the run stops without an
    event saying so; the live block is waited for (``setup.settled``) before the run returns. A tracer provider that cannot give a tracer is a ConfigurationError."""
    stream = ev.EventStream()
    status_subscriber = status_watch(status, session_id, setup.agents)
    for listener in setup.listeners:
        stream.subscribe(listener, deltas=True)
    if status_subscriber is not None:
        # the live view shows replies as they are written; plain lines never do
        stream.subscribe(status_subscriber, deltas=isinstance(status_subscriber, LiveWatch))
        if isinstance(status_subscriber, LiveWatch):
            setup.on_stop.append(status_subscriber.stop)
            setup.on_settle.append(status_subscriber.settle)
    if setup.metrics is not None and setup.metrics.enabled:
        watch = setup.metrics.watch(setup.agents)
        stream.subscribe(watch)
        setup.on_stop.append(watch.stop)
    if tracing_on(setup.config.tracing):
        from .monitoring.tracing import run_tracer  # OpenTelemetry is imported only now

        tracer = run_tracer(setup.config.tracing, setup.agents)
        stream.subscribe(tracer)
        setup.on_stop.append(tracer.stop)
    communication = setup.communication
    if isinstance(status_subscriber, LiveWatch) and isinstance(
        communication.channel, TerminalChannel
    ):
        communication = _AskWhenCleared(communication, status_subscriber)
    tools = {
        name: (agent.instances[0] if isinstance(agent, AgentPool) else agent).tool_specs
        for name, agent in setup.agents.items()
    }
    engine = Engine(run_id=session_id, analysis=setup.analysis, tools=tools, stream=stream)
    config = setup.config
    runner = Runner(
        engine,
        setup.agents,
        communication,
        step_timeout=config.step_timeout,
        branch_timeout=config.branch_timeout,
        convergence_timeout=config.convergence_timeout,
        run_timeout=setup.analysis.timeout,
        max_agents=setup.analysis.max_agents,
    )
    return engine, runner


class _Screen(Protocol):
    """What a question on the terminal needs of the live status display (a run's
    :class:`~.monitoring.live.LiveWatch`)."""

    def prompting(self, reshow: Callable[[], None]) -> AbstractContextManager[None]: ...

    def cleared(self) -> bool: ...


class _AskWhenCleared(CommunicationManager):
    """A run's communication manager when its channel is the terminal the live status display
    draws on: each question is asked once the display has taken its area down for it
    (``screen.cleared``, a wait run off the event loop that ends once that frame is out, or at
    once when nothing draws), and the area stays down until it is answered or given up
    (``screen.prompting``): no frame erases the prompt or what the user types. The manager the
    run was given answers (a subclass's own ``ask`` included). A question held up here already
    counts among those a terminal's prompt says are waiting. Questions on another channel
    never take the area down: they are not wrapped."""

    def __init__(self, manager: CommunicationManager, screen: _Screen) -> None:
        super().__init__(manager.channel, manager.user_timeout)
        self.manager = manager
        self.screen = screen

    async def ask(self, question: Question) -> Any:
        channel = self.manager.channel
        assert isinstance(channel, TerminalChannel)  # only such a manager is wrapped
        with self.screen.prompting(channel.prompt_again):
            with channel.coming():  # counted until the channel counts it itself
                await asyncio.to_thread(self.screen.cleared)
            return await self.manager.ask(question)
