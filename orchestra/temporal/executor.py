"""``TemporalExecutor``: where ``Orchestra.run`` and ``OrchestraInstance`` run sessions when
they are given one — each session a Temporal workflow (id: the session id) that workers run.

The client starts the workflow with the run's header (its task, context and settings, as the
session log's first record) and follows it (:mod:`.follow`): the result it returns is built
from the records the workflow journaled, as an embedded run's is from its engine. Cancelling
the client's call stops the following, not the session: the workflow is durable and goes on
(``OrchestraInstance.pause_session`` pauses it; ``resume_session`` follows it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from orchestra.agents.contract import timeout_problem
from orchestra.coordination.config import StatusConfig, VerbosityLevel
from orchestra.coordination.execution import stopping
from orchestra.coordination.results import OrchestraResult, result_of
from orchestra.coordination.state.manager import fold, parse_checkpoint_id
from orchestra.coordination.state.values import Unstorable, to_plain
from orchestra.coordination.wiring import Setup, build
from orchestra.errors import (
    ConfigurationError,
    OrchestraError,
    SessionError,
    SessionNotFoundError,
    SessionRunningError,
)
from orchestra.models.secrets import redact

from . import protocol, routing
from .follow import QUERY_TIMEOUT, Follower, failed
from .hosting import version_of

_ADDRESS = re.compile(r"[^\s:/]+:[0-9]{1,5}")
_SILENT = StatusConfig.from_verbosity(VerbosityLevel.QUIET)
_RUNNING = WorkflowExecutionStatus.RUNNING
_PAST_END = 2**62  # a records query from here answers no lines: only the state
_STATE_TIMEOUT = timedelta(seconds=QUERY_TIMEOUT)


class TemporalExecutor:
    """Runs sessions on a Temporal cluster: ``client`` is a connected ``temporalio`` Client or
    the address ("host:port") of the cluster's frontend, connected to (in ``namespace``) when
    first needed, once, on the event loop that needs it; ``task_queue`` is the queue the
    workers poll; ``heartbeat_timeout`` the seconds after which a step or tool whose worker
    stopped heartbeating (killed, cut off) is run again elsewhere. ``tls`` and ``api_key`` go
    to ``Client.connect`` as they are (a cluster such as Temporal Cloud: ``tls=True`` or a
    ``TLSConfig`` with client certificates, and/or an API key; with a key and no ``tls``, TLS
    is used); the key never reaches a log, record or error."""

    def __init__(
        self,
        client: Client | str,
        task_queue: str = "orchestra",
        *,
        namespace: str = "default",
        heartbeat_timeout: float = 30.0,
        tls: bool | TLSConfig | None = None,
        api_key: str | None = None,
    ) -> None:
        if not isinstance(client, Client | str):
            raise TypeError(
                f"client must be a temporalio Client or an address 'host:port', "
                f"got {type(client).__name__}"
            )
        if isinstance(client, str) and not _ADDRESS.fullmatch(client):
            raise ConfigurationError(
                f"the Temporal address must be 'host:port', got {redact(client)[:100]!r}"
            )
        for name, value in (("task_queue", task_queue), ("namespace", namespace)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be str, got {type(value).__name__}")
            if not value.strip():
                raise ConfigurationError(f"{name} must not be empty")
        problem = timeout_problem(heartbeat_timeout, "heartbeat_timeout")
        if problem is not None:
            raise ConfigurationError(problem)
        self.address = client if isinstance(client, str) else None
        self.task_queue = task_queue
        self.namespace = client.namespace if isinstance(client, Client) else namespace
        self.heartbeat_timeout = float(heartbeat_timeout)
        self._given = client if isinstance(client, Client) else None
        self._tls, self._api_key = tls, api_key
        self._connecting: asyncio.Task[Client] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._following: dict[str, set[Follower]] = {}  # by session id: what pause holds
        self.on_temporal: set[str] = set()
        """The sessions this executor started, resumed or found running on Temporal: they go
        on there without it (what a Ctrl-C leaves behind; any other session it was asked for
        was not started, or stays paused)."""

    def __repr__(self) -> str:
        where = self.address or "a client"
        return f"TemporalExecutor({where!r}, task_queue={self.task_queue!r})"

    async def client(self) -> Client:
        """The client: the one given, or one connected to the address on this event loop (a
        failed connection is tried again by the next call). SessionError when the cluster
        cannot be reached."""
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        if self._connecting is None or self._loop is not loop:
            self._loop = loop
            self._connecting = loop.create_task(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        except SessionError:
            if self._connecting is connecting:
                self._connecting = None
            raise

    async def _connect(self) -> Client:
        assert self.address is not None
        try:
            return await Client.connect(
                self.address, namespace=self.namespace, tls=self._tls, api_key=self._api_key
            )
        except RuntimeError as error:  # what temporalio raises for a failed connection
            said = redact(str(error))
            if self._api_key:
                said = said.replace(self._api_key, "[redacted]")
            raise SessionError(
                f"cannot connect to Temporal at {self.address} (namespace "
                f"{self.namespace!r}{', TLS' if self._tls or self._api_key else ''}): "
                f"{' '.join(said.split())}"
            ) from None

    # ---- what Orchestra and OrchestraInstance call ---------------------------------------------

    async def execute(
        self, setup: Setup, task: Any, context: dict[str, Any], session_id: str
    ) -> OrchestraResult:
        """A new run of the session ``session_id`` as a workflow on its version's task queue
        (``protocol.version_queue``), followed to its end (or pause). ``WorkflowVersionError``
        when no worker polls that queue (within ``routing.POLLER_WAIT``): nothing starts. A
        session that ran before goes on counting its records where its last run left them
        (``StartInput.base``)."""
        async with stopping(setup):
            start = protocol.start_input(
                setup,
                task,
                context,
                session_id,
                self.heartbeat_timeout,
                task_queue=self.task_queue,
                namespace=self.namespace,
            )
            client = await self.client()
            start = dataclasses.replace(start, base=await self._base(setup, client, session_id))
            queue = protocol.version_queue(self.task_queue, start.version)
            engine, _ = build(setup, session_id, setup.config.status)
            engine.settings_file = setup.config.settings_file
            try:
                if not await routing.polled(client, queue, routing.POLLER_WAIT):
                    raise routing.not_started(session_id, start.version, self.task_queue)
                started = await client.start_workflow(
                    protocol.WORKFLOW_NAME, start, id=session_id, task_queue=queue
                )
            except WorkflowAlreadyStartedError:
                raise await self._in_progress(client, session_id) from None
            except RPCError as error:
                raise self._unreachable(session_id, error) from None
            handle = client.get_workflow_handle(session_id, run_id=started.result_run_id)
            await self._taken(handle, start.version)
            self.on_temporal.add(session_id)
            await self._follow(Follower(handle, engine, setup.communication, client))
            return result_of(engine, session_id)

    async def _base(self, setup: Setup, client: Client, session_id: str) -> int:
        """How many records the session's log holds before a new workflow run: its latest
        run's base and journal (0 for a new session, or a running one, which is refused)."""
        handle = client.get_workflow_handle(session_id)
        state = await self._status(handle)
        if state is None or state is _RUNNING:
            return 0
        previous = await _start_of(client, handle)
        if state is WorkflowExecutionStatus.COMPLETED:
            outcome = await handle.result()
            return previous.base + int(outcome["records"])
        follower = Follower(handle, build(setup, session_id, _SILENT)[0], None, client)
        lines, _ = await follower.journal()  # it did not complete: its journal says how far
        return previous.base + len(lines)

    async def _in_progress(self, client: Client, session_id: str) -> SessionRunningError:
        """The error for a new run of a session whose workflow is running: paused, or not."""
        if await _paused(client.get_workflow_handle(session_id)):
            return SessionRunningError(
                f"session {session_id!r} is paused on Temporal: resume it with "
                "OrchestraInstance.resume_session (or restore one of its checkpoints first)"
            )
        return SessionRunningError(
            f"session {session_id!r} has a run in progress on Temporal; pause it, or "
            "follow it with OrchestraInstance.resume_session"
        )

    async def _taken(self, handle: WorkflowHandle[Any, Any], version: str) -> None:
        """Wait for a worker to take the new workflow run's first task; none within
        ``routing.FIRST_TASK_WAIT`` (its version's last worker stopped a moment ago, and
        Temporal still lists it polling), the workflow, in which nothing ran, is terminated
        and the session refused with ``WorkflowVersionError``. Cancelled meanwhile (Ctrl-C),
        it is terminated too: no run is left that no worker may ever take."""
        try:
            if await routing.took_first_task(handle, routing.FIRST_TASK_WAIT):
                return
            await handle.terminate(reason="no worker took its first workflow task")
        except asyncio.CancelledError:
            with contextlib.suppress(RPCError):
                await asyncio.shield(handle.terminate(reason="its client was interrupted"))
            raise
        except RPCError as error:
            raise self._unreachable(handle.id, error) from None
        why = f"no worker took its first task within {routing.FIRST_TASK_WAIT:g} s"
        raise routing.not_started(handle.id, version, self.task_queue, why)

    async def pause(self, session_id: str, reason: str | None) -> bool:
        """Ask the session's workflow to pause at its next step boundary; False when it has no
        run in progress (finished, or paused already). The questions this executor relayed to
        its channel are withdrawn before it returns (an answer given to it later is refused);
        one answered through another client may still be taken until the workflow has seen
        the pause."""
        handle = (await self.client()).get_workflow_handle(session_id)
        if await self._status(handle) is not _RUNNING or await _paused(handle):
            return False
        await handle.signal(protocol.PAUSE_SIGNAL, reason)
        for follower in list(self._following.get(session_id, ())):
            await follower.hold()
        return True

    async def _follow(self, follower: Follower) -> None:
        """Follow the session's run, known to ``pause`` meanwhile."""
        following = self._following.setdefault(follower.handle.id, set())
        following.add(follower)
        try:
            await follower.follow()
        finally:
            following.discard(follower)
            if not following:
                del self._following[follower.handle.id]

    async def resume(
        self,
        setup: Setup,
        session_id: str,
        additional_context: Mapping[str, Any] | None,
        status: StatusConfig | None,
    ) -> OrchestraResult:
        """Follow the session's workflow again: a paused one is resumed (with
        ``additional_context``), a running one followed (its client went away; context for it
        is ``SessionRunningError`` unless it is pausing), a finished one's result returned as
        it was. ``WorkflowVersionError`` first when ``setup`` is not the session's version."""
        async with stopping(setup):
            try:
                extra = to_plain(dict(additional_context or {}))
            except Unstorable as error:
                raise ConfigurationError(
                    f"session {session_id!r}: additional_context holds {error.error()}, which "
                    "a session cannot store"
                ) from None
            client = await self.client()
            handle = client.get_workflow_handle(session_id)
            described = await self._described(handle, setup)
            if described is None:
                raise SessionNotFoundError(f"no session {session_id!r} on Temporal to resume")
            engine, _ = build(setup, session_id, status or setup.config.status)
            engine.settings_file = setup.config.settings_file
            follower = Follower(handle, engine, setup.communication, client)
            state = await _caught_up(follower, handle, described.status)
            if state == "finished":
                return result_of(engine, session_id)
            await self._resumed(handle, state, extra, protocol.communication_of(setup))
            self.on_temporal.add(session_id)
            await self._follow(follower)
            return result_of(engine, session_id)

    async def _resumed(
        self,
        handle: WorkflowHandle[Any, Any],
        state: str,
        extra: dict[str, Any],
        talk: protocol.Communication,
    ) -> None:
        """Send the resume (a run still pausing keeps it too). Context for a session that
        runs goes as the update that says whether it was kept: ``SessionRunningError`` when it
        was not (the run is neither paused nor pausing), rather than the context dropped."""
        if state != "running" or not extra:
            await handle.signal(protocol.RESUME_SIGNAL, args=[extra, talk])
            return
        try:
            kept = await handle.execute_update(
                protocol.RESUME_UPDATE, args=[extra, talk], result_type=bool
            )
        except WorkflowUpdateFailedError as error:
            raise failed(handle.id, error.cause or error) from None
        except RPCError as error:
            raise self._unreachable(handle.id, error) from None
        if not kept:
            raise SessionRunningError(
                f"session {handle.id!r} is running on Temporal, so its additional context was "
                "not taken: pause it first to add context, then resume it with the context"
            )

    async def result(self, setup: Setup, session_id: str) -> OrchestraResult | None:
        """The result of the session's run as its workflow's records give it (a paused run's
        included); None when there is no such session, or its run is still going (or, as
        embedded, was restored to a checkpoint taken while it went on, and not resumed)."""
        client = await self.client()
        handle = client.get_workflow_handle(session_id)
        described = await self._described(handle, setup)
        if described is None:
            return None
        engine, _ = build(setup, session_id, _SILENT)
        follower = Follower(handle, engine, None, client)
        if (
            await _caught_up(follower, handle, described.status) == "running"
            or engine.stopped_at is None
        ):
            return None  # running, or restored to a checkpoint in a run that had not stopped
        return result_of(engine, session_id)

    async def checkpoint(self, setup: Setup, session_id: str, name: str | None) -> str:
        """Name the session's current position, as embedded: a run in progress or paused
        journals the checkpoint itself (the ``checkpoint`` update); a run that is over (its
        workflow closed) gets it in a new run of its workflow that carries its journal, names
        its end and closes at once. SessionError when there is no such session, or its
        workflow did not complete (failed, terminated)."""
        client = await self.client()
        handle = client.get_workflow_handle(session_id)
        state = await self._status(handle)
        if state is None:
            raise SessionError(f"no session {session_id!r} on Temporal to checkpoint")
        if state is _RUNNING:
            try:
                taken = await handle.execute_update(
                    protocol.CHECKPOINT_UPDATE, name, rpc_timeout=_STATE_TIMEOUT
                )
                return str(taken)
            except WorkflowUpdateFailedError as error:
                if _failure_type(error) != protocol.CLOSED:
                    raise self._refused(session_id, "checkpoint", error) from None
            except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError):
                raise self._no_answer(session_id, "checkpoint") from None
            state = await self._closing(handle)  # the run ended meanwhile: named at its end
        follower = Follower(handle, build(setup, session_id, _SILENT)[0], None, client)
        lines = await self._closed_journal(follower, state)
        previous = await _start_of(client, handle)
        name = protocol.checkpoint_name(name, previous.base, len(lines))
        continued = await self._continue(handle, previous, lines, name, restore=False)
        try:
            await continued.result()
        except Exception as error:
            raise failed(session_id, error) from None
        return f"{session_id}@{name}"

    async def restore(self, setup: Setup, checkpoint_id: str) -> bool:
        """Send the session back to the checkpoint, as embedded; the next ``resume_session``
        goes on from there. A paused run is restored in its workflow (the ``restore``
        update); one that is over in a new run of its workflow that carries its journal and
        waits, paused, for the resume. A run in progress is refused (``SessionRunningError``:
        pause it first). False for an id that names no checkpoint of the session's journal
        (the latest workflow run's, which carries every run it went on from) or one on an
        abandoned branch of history."""
        try:
            session_id, _ = parse_checkpoint_id(checkpoint_id)
        except OrchestraError:
            return False
        client = await self.client()
        handle = client.get_workflow_handle(session_id)
        state = await self._status(handle)
        if state is None:
            return False
        if state is _RUNNING:
            try:
                restored = await handle.execute_update(
                    protocol.RESTORE_UPDATE, checkpoint_id, rpc_timeout=_STATE_TIMEOUT
                )
                return bool(restored)
            except WorkflowUpdateFailedError as error:
                if _failure_type(error) == protocol.NOT_PAUSED:
                    raise SessionRunningError(_failure_text(error)) from None
                raise self._refused(session_id, "restore", error) from None
            except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError):
                raise self._no_answer(session_id, "restore") from None
        follower = Follower(handle, build(setup, session_id, _SILENT)[0], None, client)
        lines = await self._closed_journal(follower, state)
        log = fold(session_id, lines)
        entry = log.checkpoints.get(checkpoint_id)
        if entry is None:
            return False
        position: int = entry.record.position  # type: ignore[attr-defined]
        if position and position not in log.positions:
            return False  # on a branch of history a restore abandoned
        previous = await _start_of(client, handle)
        continued = await self._continue(handle, previous, lines, checkpoint_id, restore=True)
        if await _run_state(continued) != "paused":
            await self._closing(continued)  # restored to where the run had finished
        return True

    async def _closing(self, handle: WorkflowHandle[Any, Any]) -> WorkflowExecutionStatus | None:
        """The workflow's status once it has closed (its run over, its store copy drained)."""
        with contextlib.suppress(Exception):  # how it closed is read from its status
            await handle.result()
        return await self._status(handle)

    async def _closed_journal(
        self, follower: Follower, state: WorkflowExecutionStatus | None
    ) -> list[str]:
        """The journal of the session's closed workflow run. SessionError when it did not
        complete (failed, terminated, timed out): its journal ends nowhere a run stopped."""
        if state is not WorkflowExecutionStatus.COMPLETED:
            session_id = follower.handle.id
            said = state.name.lower() if state is not None else "unknown"
            raise SessionError(
                f"session {session_id!r}: its Temporal workflow is {said}, not completed: its "
                "checkpoints cannot be taken or restored"
            )
        lines, _ = await follower.journal()
        return lines

    async def _continue(
        self,
        handle: WorkflowHandle[Any, Any],
        previous: protocol.StartInput,
        lines: list[str],
        checkpoint: str,
        *,
        restore: bool,
    ) -> WorkflowHandle[Any, Any]:
        """A new run of the session's closed workflow (its id may be used again:
        ``ALLOW_DUPLICATE``, said explicitly) that goes on from ``lines``, its last run's
        journal, with the version and settings that run was started with (``previous``): it
        runs where that version is hosted, as the session always has (``protocol.Continuation``
        says what it does with ``checkpoint``), once a worker took its first task (``_taken``).
        ``SessionRunningError`` when another client started one first."""
        session_id = handle.id
        client = await self.client()
        continuation = protocol.Continuation(
            protocol.pack_lines(lines, session_id), checkpoint, restore
        )
        start = dataclasses.replace(previous, continuation=continuation)
        queue = protocol.version_queue(self.task_queue, start.version)
        try:
            if not await routing.polled(client, queue, routing.POLLER_WAIT):
                raise routing.not_started(session_id, start.version, self.task_queue)
            started = await client.start_workflow(
                protocol.WORKFLOW_NAME,
                start,
                id=session_id,
                task_queue=queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            )
        except WorkflowAlreadyStartedError:
            raise SessionRunningError(
                f"session {session_id!r} has a run in progress on Temporal: another client "
                "went on with it meanwhile"
            ) from None
        except RPCError as error:
            raise self._unreachable(session_id, error) from None
        continued = client.get_workflow_handle(session_id, run_id=started.result_run_id)
        await self._taken(continued, start.version)
        return continued

    def _refused(
        self, session_id: str, what: str, error: WorkflowUpdateFailedError
    ) -> SessionError:
        return SessionError(
            f"session {session_id!r}: its Temporal workflow refused the {what} "
            f"({_failure_text(error)})"
        )

    def _no_answer(self, session_id: str, what: str) -> SessionError:
        return SessionError(
            f"session {session_id!r}: no worker answered for its Temporal workflow (the "
            f"{what} was not made); run a worker that hosts its workflow on task queue "
            f"{self.task_queue!r}"
        )

    async def _status(self, handle: WorkflowHandle[Any, Any]) -> WorkflowExecutionStatus | None:
        """The workflow's status (None when there is none by that id)."""
        described = await self._describe(handle)
        return None if described is None else described.status

    async def _describe(
        self, handle: WorkflowHandle[Any, Any]
    ) -> WorkflowExecutionDescription | None:
        """The workflow as Temporal describes it (None when there is none by that id)."""
        try:
            return await handle.describe()
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                return None
            raise self._unreachable(handle.id, error) from None

    async def _described(
        self, handle: WorkflowHandle[Any, Any], setup: Setup
    ) -> WorkflowExecutionDescription | None:
        """The session's workflow, described, once it is known to run the version of
        ``setup`` (``WorkflowVersionError`` naming both versions otherwise: nothing is sent to
        it, and no record is given to agents it does not have)."""
        described = await self._describe(handle)
        if described is not None:
            differs = routing.version_differs(handle.id, described.task_queue, version_of(setup))
            if differs is not None:
                raise differs
        return described

    def _unreachable(self, session_id: str, error: RPCError) -> SessionError:
        return SessionError(
            f"session {session_id!r}: Temporal refused the request on task queue "
            f"{self.task_queue!r} ({error.status.name}: {redact(error.message)})"
        )


async def _paused(handle: WorkflowHandle[Any, Any]) -> bool:
    """Whether the session's running workflow says it is paused (False when no worker answers:
    the pause is asked for)."""
    return await _run_state(handle) == "paused"


async def _run_state(handle: WorkflowHandle[Any, Any]) -> str | None:
    """Where the session's workflow says its run stands (None when no worker answers)."""
    try:
        page = await handle.query(protocol.RECORDS_QUERY, _PAST_END, rpc_timeout=_STATE_TIMEOUT)
    except (RPCError, WorkflowQueryFailedError):
        return None
    return str(page["state"])


async def _start_of(client: Client, handle: WorkflowHandle[Any, Any]) -> protocol.StartInput:
    """The start input of the session's latest workflow run (its first history event)."""
    async for event in handle.fetch_history_events(page_size=1):
        payloads = event.workflow_execution_started_event_attributes.input.payloads
        [start] = await client.data_converter.decode(payloads, [protocol.StartInput])
        return start  # type: ignore[no-any-return]
    raise SessionError(f"session {handle.id!r}: its Temporal workflow has no history")


def _failure_type(error: WorkflowUpdateFailedError) -> str | None:
    cause = error.cause
    return cause.type if isinstance(cause, ApplicationError) else None


def _failure_text(error: WorkflowUpdateFailedError) -> str:
    cause = error.cause
    return redact(cause.message if isinstance(cause, ApplicationError) else str(cause))


async def _caught_up(
    follower: Follower, handle: WorkflowHandle[Any, Any], state: WorkflowExecutionStatus | None
) -> str:
    """Every record the workflow holds applied to the follower's replica, marked replayed
    (its events happened before); the workflow's state then. A workflow that failed (refused
    for its version, say) raises as it failed."""
    if state is not _RUNNING and state is not WorkflowExecutionStatus.COMPLETED:
        try:
            await handle.result()
        except Exception as error:
            raise failed(handle.id, error) from None
    stream = follower.engine.stream
    stream.replaying = True
    try:
        return await follower.catch_up()
    finally:
        stream.replaying = False


__all__ = ["TemporalExecutor"]
