"""The public entry points: ``Orchestra.run`` for one call, ``OrchestraInstance`` for sessions."""

from __future__ import annotations

import asyncio
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from orchestra.agents.contract import timeout_problem
from orchestra.agents.registry import AgentRegistry
from orchestra.communication.channels import CommunicationManager, UserChannel
from orchestra.communication.terminal import user_channel
from orchestra.errors import (
    ConfigurationError,
    OrchestraError,
    SessionError,
    SessionNotFoundError,
)

from . import execution, wiring
from .config import CommunicationConfig, ErrorHandlingConfig, ExecutionConfig, StatusConfig
from .engine import inputs as inp
from .engine.clock import now
from .engine.events import Subscriber
from .engine.rounds import NO_CHANNEL
from .results import BranchResult, OrchestraResult, failed_before_start
from .sessions import LIVE, claim, let_go
from .state.backends import check_session_id
from .state.manager import (
    SessionWriter,
    StateManager,
    check_checkpoint_name,
    parse_checkpoint_id,
)
from .streaming import RunStream
from .topology import Topology

if TYPE_CHECKING:  # prometheus-client is imported only by those who collect metrics
    from orchestra.temporal import TemporalExecutor  # temporalio: only by those who use it

    from .monitoring.metrics import MetricsCollector

__all__ = ["BranchResult", "Orchestra", "OrchestraInstance", "OrchestraResult", "RunStream"]


def _require(value: object, kind: type | tuple[type, ...], name: str) -> None:
    if value is not None and not isinstance(value, kind):
        expected = (
            kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        )
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")


def _require_collector(value: object) -> None:
    """A MetricsCollector or None; its module (and prometheus-client, some 40 ms to import) is
    loaded only when one is given."""
    if value is not None:
        from .monitoring.metrics import MetricsCollector

        _require(value, MetricsCollector, "metrics_collector")


def _require_executor(value: object, state_manager: object) -> None:
    """A TemporalExecutor or None (temporalio, an optional extra, is imported only when one is
    given); with one, the session log is the workers' to keep, not the caller's."""
    if value is None:
        return
    from orchestra.temporal import TemporalExecutor

    _require(value, TemporalExecutor, "executor")
    if state_manager is not None:
        raise ConfigurationError(
            "state_manager cannot be given with an executor: on Temporal the session log is "
            "kept by the workers (`worker(..., store=)`)"
        )


def _check_run_arguments(
    task: object, context: object, max_steps: object, execution_config: object
) -> None:
    if not isinstance(task, str | dict):
        raise TypeError(f"task must be a string or a dict, got {type(task).__name__}")
    _require(context, dict, "context")
    _require(execution_config, ExecutionConfig, "execution_config")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ConfigurationError(f"max_steps must be a positive integer, got {max_steps!r}")


def _check_topology(topology: object) -> None:
    if not isinstance(topology, Topology | Mapping):
        raise TypeError(
            f"topology must be a Topology or a dict with 'nodes' and 'edges', "
            f"got {type(topology).__name__}"
        )


def new_session_id() -> str:
    return uuid.uuid4().hex


def _session_id(context: Mapping[str, Any]) -> str:
    """``context["session_id"]`` when given (it must be a valid id), else a new one."""
    if "session_id" in context:
        return check_session_id(context["session_id"])
    return new_session_id()


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
        state_manager: StateManager | None = None,
        max_steps: int = 100,
        allow_follow_ups: bool = False,
        follow_up_timeout: float = 60.0,
        metrics_collector: MetricsCollector | None = None,
        *,
        executor: TemporalExecutor | None = None,
        **kwargs: Any,
    ) -> OrchestraResult:
        """Run ``task`` through ``topology`` and return what happened.

        Never raises for a workflow problem (invalid topology, missing agent, a failed branch,
        a limit reached): the result has ``success=False`` and an ``error`` naming the cause.
        Raises TypeError / ConfigurationError for misuse of the API itself, and SessionError
        when its session cannot be kept (a run of it in progress, here or in another process;
        storage failing for good). With a ``state_manager`` the run is a durable session,
        ``context["session_id"]`` naming it.
        A ``metrics_collector`` counts what the run does (docs/observability.md). With an
        ``executor`` (``orchestra.temporal.TemporalExecutor``) the run is a session on Temporal,
        run by its workers (docs/scale-out.md); cancelling this call leaves it running there.
        """
        launch = _launcher(
            "run",
            task,
            topology,
            agent_registry,
            context,
            execution_config,
            communication_config,
            error_config,
            state_manager,
            max_steps,
            allow_follow_ups,
            follow_up_timeout,
            metrics_collector,
            executor,
            kwargs,
        )
        return await launch(None)

    @classmethod
    def stream(
        cls,
        task: str | dict[str, Any],
        topology: dict[str, Any] | Topology,
        agent_registry: AgentRegistry | None = None,
        context: dict[str, Any] | None = None,
        execution_config: ExecutionConfig | None = None,
        communication_config: CommunicationConfig | None = None,
        error_config: ErrorHandlingConfig | None = None,
        state_manager: StateManager | None = None,
        max_steps: int = 100,
        allow_follow_ups: bool = False,
        follow_up_timeout: float = 60.0,
        metrics_collector: MetricsCollector | None = None,
        *,
        executor: TemporalExecutor | None = None,
        **kwargs: Any,
    ) -> RunStream:
        """The run :meth:`run` makes, as its events: ``async with Orchestra.stream(...) as
        events: async for event in events: ...`` yields every event, each ``StepDelta`` too
        (models stream their replies), and ends after the run ended; ``events.result`` is
        then its :class:`OrchestraResult`, as :meth:`run` returns it (a failed run included).
        Leaving the block early (a ``break``) cancels the run. Same arguments and checks as
        :meth:`run` (docs/observability.md, "Streaming a run's events")."""
        return RunStream(
            _launcher(
                "stream",
                task,
                topology,
                agent_registry,
                context,
                execution_config,
                communication_config,
                error_config,
                state_manager,
                max_steps,
                allow_follow_ups,
                follow_up_timeout,
                metrics_collector,
                executor,
                kwargs,
            )
        )


def _launcher(
    method: str,
    task: Any,
    topology: Any,
    agent_registry: Any,
    context: Any,
    execution_config: Any,
    communication_config: Any,
    error_config: Any,
    state_manager: Any,
    max_steps: Any,
    allow_follow_ups: Any,
    follow_up_timeout: Any,
    metrics_collector: Any,
    executor: TemporalExecutor | None,
    kwargs: Mapping[str, Any],
) -> Callable[[Subscriber | None], Awaitable[OrchestraResult]]:
    """The arguments of ``Orchestra.run`` (or ``stream``) checked now (TypeError or
    ConfigurationError for misuse of the API), and the run they describe, to start with a
    listener of its every event (or none)."""
    if kwargs:
        raise TypeError(
            f"Orchestra.{method}() got unexpected keyword argument(s): {', '.join(kwargs)}"
        )
    _check_run_arguments(task, context, max_steps, execution_config)
    _check_topology(topology)
    _require(agent_registry, AgentRegistry, "agent_registry")
    _require(communication_config, CommunicationConfig, "communication_config")
    _require(error_config, ErrorHandlingConfig, "error_config")
    _require(state_manager, StateManager, "state_manager")
    _check_follow_ups(allow_follow_ups, follow_up_timeout)
    _require_collector(metrics_collector)
    _require_executor(executor, state_manager)
    context = dict(context or {})
    session_id = _session_id(context)
    communication = communication_config or CommunicationConfig()
    channel = communication.channel
    if channel is None and communication.terminal:
        channel = user_channel()
    _warn_if_no_follow_ups(allow_follow_ups, channel, stacklevel=3)

    async def launch(listener: Subscriber | None) -> OrchestraResult:
        started = time.perf_counter()
        try:
            setup = wiring.prepare(
                topology,
                agent_registry,
                execution_config or ExecutionConfig(),
                error_config or ErrorHandlingConfig(),
                communication.manager(channel),
                max_steps,
            )
        except OrchestraError as error:
            return failed_before_start(error, session_id, time.perf_counter() - started)
        setup.metrics = metrics_collector
        _offer_follow_ups(setup, allow_follow_ups, follow_up_timeout)
        if listener is not None:
            setup.listeners.append(listener)
        if executor is not None:
            return await executor.execute(setup, task, context, session_id)
        return await execution.execute(setup, task, context, session_id, state_manager)

    return launch


class OrchestraInstance:
    """A topology with its agents and settings, running durable sessions.

    ``execute`` starts a run (a session, with a ``state_manager``); ``pause_session`` stops a
    running one at the next step boundary; ``resume_session`` continues a paused or crashed
    one — in this process or a new one, from its log; checkpoints name positions in a session's
    log, and restoring one sends the session back there (the abandoned future is kept). A
    ``metrics_collector`` counts what every run it starts or resumes does; ``error_config``
    (as ``Orchestra.run`` takes it) how the runs it starts handle failures (a resumed run keeps
    the one its log recorded).
    """

    def __init__(
        self,
        topology: dict[str, Any] | Topology,
        agent_registry: AgentRegistry | None = None,
        initial_config: ExecutionConfig | None = None,
        communication_manager: CommunicationManager | None = None,
        state_manager: StateManager | None = None,
        metrics_collector: MetricsCollector | None = None,
        error_config: ErrorHandlingConfig | None = None,
        *,
        executor: TemporalExecutor | None = None,
    ) -> None:
        _check_topology(topology)
        _require(agent_registry, AgentRegistry, "agent_registry")
        _require(initial_config, ExecutionConfig, "initial_config")
        _require(communication_manager, CommunicationManager, "communication_manager")
        _require(state_manager, StateManager, "state_manager")
        _require_collector(metrics_collector)
        _require(error_config, ErrorHandlingConfig, "error_config")
        _require_executor(executor, state_manager)
        self.topology = Topology.coerce(topology)
        self.agent_registry = agent_registry
        self.config = initial_config or ExecutionConfig()
        self.communication = (  # one given is used as it is: without a channel, no user
            communication_manager
            if communication_manager is not None
            else CommunicationManager(user_channel())
        )
        self.state_manager = state_manager
        self.metrics_collector = metrics_collector
        self.error_config = error_config or ErrorHandlingConfig()
        self.executor = executor

    def _setup(self, config: ExecutionConfig | None, max_steps: int) -> wiring.Setup:
        setup = wiring.prepare(
            self.topology,
            self.agent_registry,
            config or self.config,
            self.error_config,
            self.communication,
            max_steps,
        )
        setup.metrics = self.metrics_collector
        return setup

    def _sessions(self) -> StateManager:
        if self.executor is not None:
            raise ConfigurationError(
                "sessions on Temporal are listed and kept by the workers' store "
                "(`worker(..., store=)`): open it with a StateManager"
            )
        if self.state_manager is None:
            raise ConfigurationError(
                "sessions need a state_manager: OrchestraInstance(..., state_manager=StateManager(...))"
            )
        return self.state_manager

    async def execute(
        self,
        task: str | dict[str, Any],
        context: dict[str, Any] | None = None,
        max_steps: int = 100,
        execution_config: ExecutionConfig | None = None,
        *,
        allow_follow_ups: bool = False,
        follow_up_timeout: float = 60.0,
    ) -> OrchestraResult:
        """Run ``task``; ``context["session_id"]`` names the session (else one is made up).
        With ``allow_follow_ups`` the run is a conversation, as with ``Orchestra.run``."""
        _check_run_arguments(task, context, max_steps, execution_config)
        _check_follow_ups(allow_follow_ups, follow_up_timeout)
        context = dict(context or {})
        session_id = _session_id(context)
        started = time.perf_counter()
        try:
            setup = self._setup(execution_config, max_steps)
        except OrchestraError as error:
            return failed_before_start(error, session_id, time.perf_counter() - started)
        _warn_if_no_follow_ups(allow_follow_ups, setup.communication.channel, stacklevel=2)
        _offer_follow_ups(setup, allow_follow_ups, follow_up_timeout)
        if self.executor is not None:
            return await self.executor.execute(setup, task, context, session_id)
        return await execution.execute(setup, task, context, session_id, self.state_manager)

    async def pause_session(self, session_id: str, reason: str | None = None) -> bool:
        """Ask a running session to stop at the next step boundary. Steps in flight finish and
        are kept; the pending ``execute`` returns with ``metadata["paused"] = True`` (and
        ``metadata["pause_reason"] = reason``). False when no run of that session is in
        progress here. Open questions to the user are withdrawn before it returns: an answer
        given after it is refused by the channel (the question is asked again on resume)."""
        _require(reason, str, "reason")
        if self.executor is not None:
            return await self.executor.pause(check_session_id(session_id), reason)
        live = LIVE.get(session_id)
        if live is None:
            return False
        here = asyncio.current_task()  # a channel may pause while it asks: not waited for
        withdrawn = [question for question in live.runner.pause(reason) if question is not here]
        if withdrawn:
            await asyncio.wait(withdrawn)
        return True

    async def resume_session(
        self,
        session_id: str,
        additional_context: dict[str, Any] | None = None,
        *,
        status: StatusConfig | None = None,
    ) -> OrchestraResult:
        """Continue a paused or interrupted session from its log (agents' conversations
        included), with the settings it was started with; ``additional_context`` is added to
        what every agent sees, ``status`` (default: the run's own) says what is printed. A
        session whose last run already finished is not run again: its result is returned as
        it was (the caller may have crashed before it saw it). A conversation resumed while it
        waits for a follow-up, by an instance with no user channel, is not offered one: it ends
        with its last response, as a run started without a channel does (a UserWarning says
        so)."""
        _require(additional_context, dict, "additional_context")
        _require(status, StatusConfig, "status")
        setup = self._setup(None, 100)
        if self.executor is not None:
            result = await self.executor.resume(
                setup, check_session_id(session_id), additional_context, status
            )
        else:
            sessions = self._sessions()
            result = await execution.resume(setup, session_id, sessions, additional_context, status)
        if setup.communication.channel is None and result.metadata.get("follow_ups") == NO_CHANNEL:
            warnings.warn(
                f"session {session_id!r}: follow-ups are {NO_CHANNEL} (pass "
                "communication_manager=CommunicationManager(channel), or resume on a terminal): "
                "the conversation ended with its last response",
                UserWarning,
                stacklevel=2,
            )
        return result

    async def get_result(self, session_id: str) -> OrchestraResult | None:
        """The result of the session's last run, as its log records it (the result that run
        returned, or would have: a paused run's included), rebuilt without running anything.
        None when the session has no run that stopped: none at all, or one still in progress
        or cut off by a crash (``resume_session`` continues it). On Temporal: as the workflow's
        records give it (None while it runs)."""
        if self.executor is not None:
            return await self.executor.result(self._setup(None, 100), check_session_id(session_id))
        manager = self._sessions()
        try:  # loaded, not asked: exists() can miss a session that a damaged store hides
            log = await manager.load(check_session_id(session_id))
        except SessionNotFoundError:
            return None
        return await execution.stored_result(self._setup(None, 100), log, manager)

    async def create_checkpoint(self, session_id: str, checkpoint_name: str | None = None) -> str:
        """Name the session's current position; returns the id ``restore_checkpoint`` takes.
        A running session gets the checkpoint from its own writer (and its result lists it);
        on Temporal, from its workflow (docs/scale-out.md)."""
        _require(checkpoint_name, str, "checkpoint_name")
        if checkpoint_name:  # None or "": a name made from the position
            check_checkpoint_name(checkpoint_name)
        if self.executor is not None:
            return await self.executor.checkpoint(
                self._setup(None, 100), check_session_id(session_id), checkpoint_name or None
            )
        live = LIVE.get(session_id)
        if live is not None and live.writer is not None:
            return await _checkpoint(
                live.writer, session_id, checkpoint_name, live.runner.checkpoint
            )
        claim(session_id)
        writer = None
        try:
            writer, log = await self._sessions().open(session_id)
            if log is None:
                raise SessionError(f"no session {session_id!r} to checkpoint")
            execution.check_kept_here(log)
            return await _checkpoint(writer, session_id, checkpoint_name, None)
        finally:
            await let_go(session_id, writer.close() if writer is not None else None)

    async def restore_checkpoint(self, checkpoint_id: str) -> bool:
        """Send the session back to the checkpoint; the next ``resume_session`` continues from
        there. What happened after it stays in the log as an abandoned branch of history.
        False for an id that names no checkpoint (unknown, malformed, or of a session that
        does not exist) or one on such an abandoned branch."""
        if not isinstance(checkpoint_id, str):
            raise TypeError(f"checkpoint_id must be str, got {type(checkpoint_id).__name__}")
        if self.executor is not None:
            return await self.executor.restore(self._setup(None, 100), checkpoint_id)
        manager = self._sessions()
        try:
            session_id, _ = parse_checkpoint_id(checkpoint_id)
        except OrchestraError:
            return False
        claim(session_id)
        writer = None
        try:
            try:  # loaded, not asked: exists() can miss a session that a damaged store hides
                log = await manager.load(session_id)
            except SessionNotFoundError:
                return False
            execution.check_kept_here(log)
            entry = log.checkpoints.get(checkpoint_id)
            if entry is None:
                return False
            checkpoint: inp.Checkpoint = entry.record  # type: ignore[assignment]
            if checkpoint.position and checkpoint.position not in log.positions:
                return False  # on a branch of history a restore abandoned
            writer = SessionWriter(manager, session_id, log.length)
            writer.record(
                inp.Restore(at=now(), position=checkpoint.position, checkpoint_id=checkpoint_id)
            )
            return True
        finally:
            await let_go(session_id, writer.close() if writer is not None else None)

    async def list_sessions(self) -> list[str]:
        return await self._sessions().list_sessions()

    async def delete_session(self, session_id: str) -> bool:
        """Remove the session's log and snapshot; False when there is none. A session being run
        (here, or by another process) is not deleted: ``SessionError``."""
        manager = self._sessions()
        claim(check_session_id(session_id))
        try:
            return await manager.delete_session(session_id)
        finally:
            await let_go(session_id, None)


async def _checkpoint(
    writer: SessionWriter,
    session_id: str,
    name: str | None,
    record: Callable[[str, str, int], None] | None,
) -> str:
    """Record a checkpoint at the writer's position: through the live run (``record``), so it
    is one of its inputs, or directly into a session at rest."""
    name = name or f"checkpoint-{writer.length + 1}"
    checkpoint_id = f"{session_id}@{name}"
    if record is not None:
        record(checkpoint_id, name, writer.length)
    else:
        writer.record(
            inp.Checkpoint(
                at=now(),
                checkpoint_id=checkpoint_id,
                name=name,
                position=writer.length,
                at_rest=True,
            )
        )
    await writer.flush()
    return checkpoint_id


def _offer_follow_ups(setup: wiring.Setup, allow: bool, timeout: float) -> None:
    """Follow-ups for the run, when asked for: offered on its user channel, or, with none (no
    channel given, and no terminal), not offered: the run ends after its first round and its
    result says why (:func:`_warn_if_no_follow_ups` has told the caller)."""
    if not allow:
        return
    if setup.communication.channel is not None:
        setup.follow_up_timeout = float(timeout)  # checked: finite
    else:
        setup.follow_ups_note = NO_CHANNEL


def _warn_if_no_follow_ups(allow: bool, channel: UserChannel | None, stacklevel: int) -> None:
    """A UserWarning, pointing at the caller's line, for follow-ups asked for with nobody to
    offer them to. Issued where the call is made (``stacklevel`` frames up), not in the run's
    task, where the caller's line is no longer on the stack."""
    if allow and channel is None:
        warnings.warn(
            "allow_follow_ups=True, but follow-ups are " + NO_CHANNEL + " (pass "
            "communication_config=CommunicationConfig(channel=...), or run on a terminal): "
            "the run ends after its first answer",
            UserWarning,
            stacklevel=stacklevel + 1,
        )


def _check_follow_ups(allow_follow_ups: object, follow_up_timeout: object) -> None:
    if not isinstance(allow_follow_ups, bool):
        raise TypeError(f"allow_follow_ups must be a bool, got {type(allow_follow_ups).__name__}")
    problem = timeout_problem(follow_up_timeout, "follow_up_timeout")
    if problem is None and follow_up_timeout is None:  # None is no limit to an agent's question
        problem = "follow_up_timeout must be a positive, finite number of seconds, got None"
    if problem is not None:
        raise ConfigurationError(problem)
