"""How a run is carried out: preparing agents, building the engine, sessions, results.

``Orchestra.run`` and ``OrchestraInstance`` are thin layers over this module. With a state
manager, every run is a session: its inputs are journaled as they happen, and a paused or
crashed run is rebuilt from its log and continued (see ``state/manager.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestra.agents.base import BaseAgent
from orchestra.agents.pool import AgentPool
from orchestra.agents.registry import AgentRegistry
from orchestra.communication.channels import CommunicationManager
from orchestra.errors import (
    AgentNotFoundError,
    ConfigurationError,
    OrchestraError,
    SessionError,
    SessionNotFoundError,
)

from .config import ErrorHandlingConfig, ExecutionConfig
from .engine import events as ev
from .engine.convergence import check_node_policies
from .engine.core import Engine
from .engine.runner import Runner
from .engine.state import Branch
from .monitoring.status import StatusPrinter
from .results import BranchResult, OrchestraResult
from .state.journal import Journal, replay
from .state.manager import SessionWriter, StateManager
from .state.records import FORMAT, decode, encode
from .state.snapshots import capture as capture_snapshot
from .state.snapshots import restore as restore_snapshot
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


@dataclass
class LiveRun:
    """A run in progress, reachable by session id (to pause it or checkpoint it)."""

    session_id: str
    runner: Runner
    writer: SessionWriter | None
    checkpoint_ids: list[str] = field(default_factory=list)
    pause_reason: str | None = None


LIVE: dict[str, LiveRun] = {}
CLAIMED: set[str] = set()
"""Sessions with a run starting or in progress in this process: one run per session at once."""


def claim(session_id: str) -> None:
    """Hold the session for one writer (a run, a checkpoint, a restore) in this process."""
    if session_id in CLAIMED:
        raise SessionError(
            f"session {session_id!r} has a run starting, running or finishing; pause it or "
            "wait for it"
        )
    CLAIMED.add(session_id)


async def let_go(session_id: str, ending: Awaitable[None] | None) -> None:
    """Free a claimed session once ``ending`` (its writer closing or abandoning) is over.

    The ending is finished even if the caller is cancelled meanwhile, and the session stays
    claimed until it is: a run started sooner would write under a writer still writing."""
    if ending is None:
        CLAIMED.discard(session_id)
        return
    finishing = asyncio.ensure_future(ending)
    finishing.add_done_callback(functools.partial(_freed, session_id))
    try:
        await asyncio.shield(finishing)
    except asyncio.CancelledError:
        if not finishing.done():  # nobody is left to hear how it ends: a failure is reported
            finishing.add_done_callback(functools.partial(_unheard, session_id))
        raise


def _freed(session_id: str, finishing: asyncio.Future[None]) -> None:
    CLAIMED.discard(session_id)
    if not finishing.cancelled():
        finishing.exception()  # retrieved here; a caller still awaiting it raises it


def _unheard(session_id: str, finishing: asyncio.Future[None]) -> None:
    error = None if finishing.cancelled() else finishing.exception()
    if error is not None:
        asyncio.get_running_loop().call_exception_handler(
            {
                "message": f"session {session_id!r}: its last records could not be written "
                "after its run was cancelled; a resume goes on from its last durable step",
                "exception": error,
            }
        )


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
    agents = _resolve_agents(
        topo, analysis, registry if registry is not None else AgentRegistry.default()
    )
    return Setup(topo, analysis, agents, config, error_config, communication, max_steps)


def topology_fingerprint(topology: Topology) -> list[str]:
    """What a resumed session checks it is run with the same graph as before."""
    return sorted(node.name for node in topology.nodes) + sorted(e.arrow for e in topology.edges)


async def execute(
    setup: Setup,
    task: Any,
    context: dict[str, Any],
    session_id: str,
    state_manager: StateManager | None,
) -> OrchestraResult:
    """A new run; with a state manager, a new run of the session ``session_id``."""
    started = time.perf_counter()
    _, runner = build(setup, session_id, context)
    writer = None
    if state_manager is None:
        return await _drive(runner, None, session_id, started, lambda: runner.run(task))
    claim(session_id)
    writer = None
    try:
        writer, _ = await state_manager.open(session_id)
        writer.record(
            {
                "t": "run",
                "format": FORMAT,
                "task": encode(task),
                "context": encode(context),
                "max_steps": setup.max_steps,
                "config": setup.config.model_dump(mode="json"),
                "error_config": setup.error_config.model_dump(mode="json"),
                "topology": topology_fingerprint(setup.topology),
            }
        )
        runner.journal = Journal(writer, None)
        await writer.flush()
    except BaseException:
        await _abandon(writer, session_id)
        raise
    return await _drive(runner, writer, session_id, started, lambda: runner.run(task))


async def resume(
    setup: Setup,
    session_id: str,
    state_manager: StateManager,
    additional_context: Mapping[str, Any] | None,
) -> OrchestraResult:
    """Rebuild the session's last run from its log and continue it."""
    started = time.perf_counter()
    claim(session_id)
    writer = None
    try:
        runner, writer = await _rebuild(setup, session_id, state_manager, additional_context)
        await writer.flush()
    except BaseException:
        await _abandon(writer, session_id)
        raise
    return await _drive(runner, writer, session_id, started, runner.resume)


async def _abandon(writer: SessionWriter | None, session_id: str) -> None:
    """A run that failed to start leaves no run in the log (it would be resumed later), and
    the session is free again."""
    with contextlib.suppress(Exception):  # the error being raised says what went wrong
        await let_go(session_id, writer.abandon() if writer is not None else None)


async def _rebuild(
    setup: Setup,
    session_id: str,
    state_manager: StateManager,
    additional_context: Mapping[str, Any] | None,
) -> tuple[Runner, SessionWriter]:
    log = await state_manager.load(session_id)
    run = log.last_run
    if run is None:
        raise SessionNotFoundError(f"session {session_id!r} has no run to resume")
    if run.finished:
        raise SessionError(
            f"session {session_id!r} already finished; start a new run in it with execute()"
        )
    header = run.header
    if header.get("topology") != topology_fingerprint(setup.topology):
        raise SessionError(
            f"session {session_id!r} was recorded with a different topology "
            f"({', '.join(header.get('topology', []))}); resume it with the same one"
        )
    setup.config = ExecutionConfig.model_validate(header["config"]).model_copy(
        update={"status": setup.config.status}
    )
    setup.error_config = ErrorHandlingConfig.model_validate(header["error_config"])
    setup.max_steps = header["max_steps"]
    context = decode(header["context"])
    engine, runner = build(setup, session_id, context)
    snapshot = await state_manager.read_snapshot(session_id)
    positions = [record["s"] for record in run.records]
    if snapshot is not None and (
        snapshot.position in positions or snapshot.position == header["s"]
    ):
        restore_snapshot(engine, snapshot)  # then replay only what came after it
        replay(engine, [r for r in run.records if r["s"] > snapshot.position], session_id)
    else:
        engine.start(decode(header["task"]))
        engine.effects.clear()
        replay(engine, run.records, session_id)
    writer = SessionWriter(state_manager, session_id, log.length)
    extra = dict(additional_context or {})
    writer.record({"t": "resume", "context": encode(extra)})
    engine.context.update(extra)
    runner.journal = Journal(writer, log)
    return runner, writer


async def _drive(
    runner: Runner, writer: SessionWriter | None, session_id: str, started: float, go: Any
) -> OrchestraResult:
    live = LiveRun(session_id, runner, writer)
    if writer is not None or session_id not in LIVE:  # a durable run's entry is never taken
        LIVE[session_id] = live
    engine = runner.engine
    if writer is not None:
        compress = writer.manager.compression

        def snapshot(position: int) -> bytes | None:
            # only between steps: a step in flight has changed state that no record explains
            if runner.steps_in_flight:
                return None
            return capture_snapshot(engine, position, compress)

        writer.snapshot_source = snapshot
        writer.start()
    try:
        try:
            await go()
        finally:
            if LIVE.get(session_id) is live:
                del LIVE[session_id]
        if runner.halted is not None:
            raise _halted(session_id, runner.halted)
        paused = runner.pausing and not engine.finished
        result = _result(engine, session_id, time.perf_counter() - started, paused)
        result.checkpoint_ids = list(live.checkpoint_ids)
        if paused:
            result.metadata["pause_reason"] = live.pause_reason
        if writer is not None:
            if paused:
                await writer.snapshot()
            writer.record(
                {"t": "end", "paused": paused, "success": result.success, "error": result.error}
            )
            closing, writer = writer, None
            await let_go(session_id, closing.close())  # durable before anyone hears of it
        _announce(engine, result)
        return result
    finally:
        if writer is not None:  # an error or a cancel: the writer is closed all the same
            await let_go(session_id, writer.close() if runner.halted is None else writer.abandon())


def _halted(session_id: str, error: Exception) -> SessionError:
    """What a run that storage failed raises: it stopped as a crash would have."""
    if isinstance(error, SessionError):
        return error
    halted = SessionError(
        f"session {session_id!r}: its storage failed ({type(error).__name__}: {error}), so the "
        "run stopped at its last durable step; resume it once the storage works again"
    )
    halted.__cause__ = error
    return halted


def build(setup: Setup, session_id: str, context: dict[str, Any]) -> tuple[Engine, Runner]:
    stream = ev.EventStream()
    config = setup.config
    if config.status.enabled:
        stream.subscribe(StatusPrinter(config.status))
    tools = {
        name: (agent.instances[0] if isinstance(agent, AgentPool) else agent).tool_specs
        for name, agent in setup.agents.items()
    }
    analysis = setup.analysis
    engine = Engine(
        run_id=session_id,
        analysis=analysis,
        tools=tools,
        context=context,
        config=config,
        error_config=setup.error_config,
        max_steps=min(setup.max_steps, analysis.max_steps or setup.max_steps),
        stream=stream,
        clock=time.perf_counter,
    )
    runner = Runner(
        engine,
        setup.agents,
        setup.communication,
        step_timeout=config.step_timeout,
        branch_timeout=config.branch_timeout,
        convergence_timeout=config.convergence_timeout,
        run_timeout=analysis.timeout,
        max_agents=analysis.max_agents,
    )
    return engine, runner


def _resolve_agents(
    topology: Topology, analysis: TopologyAnalysis, registry: AgentRegistry
) -> dict[str, BaseAgent | AgentPool]:
    agents: dict[str, BaseAgent | AgentPool] = {}
    missing = []
    for name in analysis.agents:
        found = topology.node(name).agent or registry.get(name)
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


def _branch_result(branch: Branch, now: float) -> BranchResult:
    end = branch.ended_at if branch.ended_at is not None else now
    return BranchResult(
        branch_id=branch.id,
        status=branch.status.value,
        step_count=branch.steps,
        duration=end - branch.created_at,
        error=str(branch.error) if branch.error else None,
        agents=list(branch.visited),
        result=branch.result,
        parent_branch_id=branch.parent.id if branch.parent else None,
        error_type=type(branch.error).__name__ if branch.error else None,
    )


def _announce(engine: Engine, result: OrchestraResult) -> None:
    """The run's last event, once its result is final (and, with sessions, durable)."""
    engine.stream.emit(
        ev.RunCompleted(
            run_id=result.session_id or engine.run_id,
            success=result.success,
            total_steps=result.total_steps,
            duration=result.total_duration,
            error=result.error,
        )
    )


def _result(engine: Engine, session_id: str, duration: float, paused: bool) -> OrchestraResult:
    root = engine.root
    success = (
        not paused
        and engine.error is None
        and root is not None
        and root.status.value == "completed"
    )
    error = engine.error
    now = engine.clock()
    metadata: dict[str, Any] = {
        "invocations": dict(engine.invocations),
        "entries": list(engine.analysis.entries),
    }
    if paused:
        metadata["paused"] = True
    if error is not None:
        metadata["error_type"] = type(error).__name__
    if engine.stream.observer_errors:
        metadata["observer_errors"] = list(engine.stream.observer_errors)
    return OrchestraResult(
        success=success,
        final_response=root.result if success and root is not None else None,
        branch_results=[_branch_result(b, now) for b in engine.branches.values()],
        total_steps=engine.steps,
        total_duration=duration,
        metadata=metadata,
        error=str(error) if error else None,
        session_id=session_id,
        events=engine.stream.events,
    )


def failed_before_start(error: OrchestraError, session_id: str, started: float) -> OrchestraResult:
    return OrchestraResult(
        success=False,
        final_response=None,
        branch_results=[],
        total_steps=0,
        total_duration=time.perf_counter() - started,
        metadata={"error_type": type(error).__name__, "invocations": {}},
        error=str(error),
        session_id=session_id,
    )
