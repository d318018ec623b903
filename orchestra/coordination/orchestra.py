"""The public entry point: ``await Orchestra.run(task, topology, ...)``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from orchestra.agents.base import BaseAgent
from orchestra.agents.pool import AgentPool
from orchestra.agents.registry import AgentRegistry
from orchestra.communication.channels import CommunicationManager
from orchestra.errors import AgentNotFoundError, ConfigurationError, OrchestraError

from .config import CommunicationConfig, ErrorHandlingConfig, ExecutionConfig
from .engine import events as ev
from .engine.convergence import check_node_policies
from .engine.core import Engine
from .engine.runner import Runner
from .engine.state import Branch
from .monitoring.status import StatusPrinter
from .results import BranchResult, OrchestraResult
from .topology import Topology, TopologyAnalysis

__all__ = ["BranchResult", "Orchestra", "OrchestraResult"]


def _require(value: object, kind: type | tuple[type, ...], name: str) -> None:
    if value is not None and not isinstance(value, kind):
        expected = (
            kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        )
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")


class Orchestra:
    """Runs multi-agent workflows. Use the classmethod :meth:`run`."""

    @classmethod
    async def run(
        cls,
        task: str | dict[str, Any],
        topology: dict[str, Any] | Topology,
        agent_registry: AgentRegistry | None = None,
        context: dict[str, Any] | None = None,
        execution_config: ExecutionConfig | None = None,
        communication_config: CommunicationConfig | None = None,
        error_config: ErrorHandlingConfig | None = None,
        state_manager: Any = None,
        max_steps: int = 100,
        allow_follow_ups: bool = False,
        follow_up_timeout: float = 60.0,
        metrics_collector: Any = None,
        **kwargs: Any,
    ) -> OrchestraResult:
        """Run ``task`` through ``topology`` and return what happened.

        Never raises for a workflow problem (invalid topology, missing agent, a failed branch,
        a limit reached): the result has ``success=False`` and an ``error`` naming the cause.
        Raises TypeError / ConfigurationError for misuse of the API itself.
        """
        _check_arguments(task, topology, context, max_steps, kwargs)
        _require(agent_registry, AgentRegistry, "agent_registry")
        _require(execution_config, ExecutionConfig, "execution_config")
        _require(communication_config, CommunicationConfig, "communication_config")
        _require(error_config, ErrorHandlingConfig, "error_config")
        if state_manager is not None or metrics_collector is not None or allow_follow_ups:
            raise ConfigurationError(
                "state_manager, metrics_collector and allow_follow_ups are not available in "
                "this release of Orchestra yet"
            )
        context = dict(context or {})
        session_id = str(context.get("session_id") or uuid.uuid4().hex)
        config = execution_config or ExecutionConfig()
        started = time.perf_counter()
        try:
            topo = Topology.coerce(topology)
            analysis = topo.analyze()
            check_node_policies(analysis)
            registry = agent_registry if agent_registry is not None else AgentRegistry.default()
            agents = _resolve_agents(topo, analysis, registry)
        except OrchestraError as error:
            return _failed_before_start(error, session_id, started)
        communication = communication_config or CommunicationConfig()
        engine, runner = _build(
            session_id,
            analysis,
            agents,
            context,
            config,
            error_config or ErrorHandlingConfig(),
            communication,
            max_steps,
        )
        await runner.run(task)
        return _result(engine, session_id, time.perf_counter() - started)


def _check_arguments(
    task: object, topology: object, context: object, max_steps: object, extra: Mapping[str, Any]
) -> None:
    if extra:
        raise TypeError(f"Orchestra.run() got unexpected keyword argument(s): {', '.join(extra)}")
    _require(task, (str, dict), "task")
    if task is None:
        raise TypeError("task must be a string or a dict, got None")
    if not isinstance(topology, Topology | Mapping):
        raise TypeError(
            f"topology must be a Topology or a dict with 'nodes' and 'edges', "
            f"got {type(topology).__name__}"
        )
    _require(context, dict, "context")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ConfigurationError(f"max_steps must be a positive integer, got {max_steps!r}")


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


def _build(
    session_id: str,
    analysis: TopologyAnalysis,
    agents: dict[str, BaseAgent | AgentPool],
    context: dict[str, Any],
    config: ExecutionConfig,
    error_config: ErrorHandlingConfig,
    communication: CommunicationConfig,
    max_steps: int,
) -> tuple[Engine, Runner]:
    stream = ev.EventStream()
    if config.status.enabled:
        stream.subscribe(StatusPrinter(config.status))
    tools = {
        name: (agent.instances[0] if isinstance(agent, AgentPool) else agent).tool_specs
        for name, agent in agents.items()
    }
    engine = Engine(
        run_id=session_id,
        analysis=analysis,
        tools=tools,
        context=context,
        config=config,
        error_config=error_config,
        max_steps=min(max_steps, analysis.max_steps or max_steps),
        stream=stream,
        clock=time.perf_counter,
    )
    runner = Runner(
        engine,
        agents,
        CommunicationManager(communication.channel, communication.user_timeout),
        step_timeout=config.step_timeout,
        branch_timeout=config.branch_timeout,
        convergence_timeout=config.convergence_timeout,
        run_timeout=analysis.timeout,
        max_agents=analysis.max_agents,
    )
    return engine, runner


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


def _result(engine: Engine, session_id: str, duration: float) -> OrchestraResult:
    root = engine.root
    success = engine.error is None and root is not None and root.status.value == "completed"
    error = engine.error
    engine.stream.emit(
        ev.RunCompleted(
            run_id=session_id,
            success=success,
            total_steps=engine.steps,
            duration=duration,
            error=str(error) if error else None,
        )
    )
    now = engine.clock()
    metadata: dict[str, Any] = {
        "invocations": dict(engine.invocations),
        "entries": list(engine.analysis.entries),
    }
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


def _failed_before_start(error: OrchestraError, session_id: str, started: float) -> OrchestraResult:
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
