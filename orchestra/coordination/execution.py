"""Carrying out runs: a new one, a resumed one, and a stored one's result.

``Orchestra.run`` and ``OrchestraInstance`` are thin layers over this module. With a state
manager every run is a session: its inputs are journaled as they happen (``Runner.feed``), and
a paused or crashed run is rebuilt from its log (``state/replay.py``) and continued.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from orchestra.errors import (
    ConfigurationError,
    OrchestraError,
    RecordTooLargeError,
    SessionError,
    SessionNotFoundError,
    UnstorableValueError,
)

from .config import StatusConfig, VerbosityLevel
from .engine import inputs as inp
from .engine.clock import now
from .engine.core import Engine
from .engine.runner import Runner
from .results import OrchestraResult, result_of
from .sessions import LIVE, LiveRun, claim, let_go
from .state.journal import Journal
from .state.manager import RunLog, SessionLog, SessionWriter, StateManager, run_name
from .state.replay import rebuild
from .state.snapshots import capture as capture_snapshot
from .wiring import FINGERPRINT, Setup, build, fingerprint_matches, first_input

_SILENT = StatusConfig.from_verbosity(VerbosityLevel.QUIET)


async def execute(
    setup: Setup,
    task: Any,
    context: dict[str, Any],
    session_id: str,
    state_manager: StateManager | None,
) -> OrchestraResult:
    """A new run; with a state manager, a new run of the session ``session_id``."""
    async with stopping(setup):
        return await _execute(setup, task, context, session_id, state_manager)


async def resume(
    setup: Setup,
    session_id: str,
    state_manager: StateManager,
    additional_context: Mapping[str, Any] | None,
    status: StatusConfig | None = None,
) -> OrchestraResult:
    """Rebuild the session's last run from its log and continue it (printing as the run was
    started to, unless ``status`` says otherwise); a run that already finished is not run
    again: its result is returned as it was."""
    async with stopping(setup):
        return await _resume(setup, session_id, state_manager, additional_context, status)


@contextlib.asynccontextmanager
async def stopping(setup: Setup) -> AsyncIterator[None]:
    """However the run stops here (it ends or pauses, its task is cancelled, storage halts it,
    it fails to start), its observers hear of it: a run cancelled or halted emits no event.
    It returns (or raises) once they have shown its end: what the caller prints next comes
    after the live display's final block, never under a frame that erases it."""
    outcome = "halted"
    try:
        yield
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        setup.stopped(outcome)  # nothing for an observer that saw it end or pause
        await setup.settled()


async def _execute(
    setup: Setup,
    task: Any,
    context: dict[str, Any],
    session_id: str,
    state_manager: StateManager | None,
) -> OrchestraResult:
    _, runner = build(setup, session_id, setup.config.status)
    runner.engine.settings_file = setup.config.settings_file
    first = first_input(setup, task, context)
    if state_manager is None:
        runner.start(first)
        return await _drive(runner, None, session_id)
    claim(session_id)
    writer = None
    try:
        writer, log = await state_manager.open(session_id)
        runner.journal = Journal(writer, run=run_name(writer.length + 1))  # the header is next
        with storable_start(session_id):
            runner.start(first)  # nothing runs until the header is durable
        await _started(runner, writer)
    except BaseException:
        await _abandon(writer, session_id)
        raise
    return _noted(await _drive(runner, writer, session_id), log, started=False)


@contextlib.contextmanager
def storable_start(session_id: str) -> Iterator[None]:
    """A run's header that its session cannot store (too large, or holding a value the log
    cannot write) is the caller's ``ConfigurationError``, naming the session: the run is not
    started, here or on Temporal."""
    try:
        yield
    except RecordTooLargeError as error:
        raise ConfigurationError(f"the task or context is too large to store: {error}") from None
    except UnstorableValueError as error:
        raise ConfigurationError(
            f"session {session_id!r}: the task or context holds {error}, which a session "
            "cannot store; pass JSON-compatible data or register the type "
            "(orchestra.coordination.state.register_type)"
        ) from None


def _superseded(log: SessionLog | None, started: bool) -> dict[str, Any] | None:
    """The run a session's latest run superseded (``started``: the latest is in ``log``; else
    it is about to be): the one before it, had that one not finished (paused, cancelled, cut
    off by a crash, or restored to a checkpoint taken in it). It stays in the log, with its
    checkpoints, but is no longer resumed: the result names it (its number among the
    session's runs, from 1), so it is not left behind unsaid."""
    runs = [] if log is None else log.runs[:-1] if started else log.runs
    if not runs or runs[-1].finished:
        return None
    earlier = runs[-1]
    return {"run": len(runs), "steps": earlier.steps, "paused": earlier.ended}


def _noted(result: OrchestraResult, log: SessionLog | None, started: bool) -> OrchestraResult:
    """The result, with the run it superseded in ``metadata["superseded_run"]``, if any."""
    earlier = _superseded(log, started)
    if earlier is not None:
        result.metadata["superseded_run"] = earlier
    return result


async def _resume(
    setup: Setup,
    session_id: str,
    state_manager: StateManager,
    additional_context: Mapping[str, Any] | None,
    status: StatusConfig | None,
) -> OrchestraResult:
    claim(session_id)
    writer = None
    try:
        log = await state_manager.load(session_id)
        check_here(log)
        engine, runner = await _rebuilt(setup, log, state_manager, status)
        run = log.last_run
        assert run is not None  # _rebuilt refuses a session with no run
        if run.finished:
            await let_go(session_id, None)
            return _noted(result_of(engine, session_id), log, started=True)
        writer = SessionWriter(state_manager, session_id, log.length)
        runner.journal = Journal(writer, run=run.name)
        extra = dict(additional_context or {})
        try:
            runner.resume(inp.RunResume(at=now(), context=extra))
        except UnstorableValueError as error:
            raise ConfigurationError(
                f"session {session_id!r}: additional_context holds {error}, which a session "
                "cannot store"
            ) from None
        await _started(runner, writer)
    except BaseException:
        await _abandon(writer, session_id)
        raise
    return _noted(await _drive(runner, writer, session_id), log, started=True)


def check_here(log: SessionLog) -> None:
    """SessionError when the session's last run is on Temporal and not finished: its workers
    run it (and write this log), so taking it up here would run its steps twice. The error
    says how to follow it (or resume it, paused) there instead."""
    run = log.last_run
    where = run.start.executor if run is not None and not run.finished else None
    if where is None:
        return
    queue, namespace = where.get("task_queue", "?"), where.get("namespace", "default")
    session_id = log.session_id
    raise SessionError(
        f"session {session_id!r} runs on Temporal (task queue {queue!r}, namespace "
        f"{namespace!r}): its workers run it, so it is not resumed here; follow it, or resume "
        f"it when paused, with `orchestra resume FILE {session_id} --temporal HOST:PORT "
        f"--task-queue {queue} --namespace {namespace}`, or with "
        f"OrchestraInstance(..., executor=TemporalExecutor('HOST:PORT', {queue!r}, "
        f"namespace={namespace!r})).resume_session({session_id!r}). {closed_on_temporal(session_id)}"
    )


def closed_on_temporal(session_id: str) -> str:
    """What a store reader says of a run on Temporal with no end in its log: Temporal may have
    closed its workflow without ending the run (terminated, cancelled, timed out), which
    nobody could write here."""
    return (
        "If Temporal closed its workflow without ending the run (terminated, cancelled or "
        "timed out: `temporal workflow describe -w "
        f"{session_id}` says), nothing runs it, and this store cannot tell: start it again "
        f"with `orchestra run --temporal`, or delete it (`orchestra sessions delete {session_id}`)"
    )


def check_kept_here(log: SessionLog) -> None:
    """SessionError when the session's last run ran on Temporal: its workflow's journal is its
    log, and this store holds the copy its workers write. A checkpoint or a restore written
    here would be in no journal (and would stop the copy where the two differ): the error
    says how to take or restore it through the workflow."""
    run = log.last_run
    where = run.start.executor if run is not None else None
    if where is None:
        return
    queue, namespace = where.get("task_queue", "?"), where.get("namespace", "default")
    raise SessionError(
        f"session {log.session_id!r} runs on Temporal (task queue {queue!r}, namespace "
        f"{namespace!r}): its workflow takes and restores its checkpoints, and this store "
        "holds a copy; use OrchestraInstance(..., executor=TemporalExecutor('HOST:PORT', "
        f"{queue!r}, namespace={namespace!r})).create_checkpoint or restore_checkpoint"
    )


async def stored_result(
    setup: Setup, log: SessionLog, state_manager: StateManager
) -> OrchestraResult | None:
    """The result of the session's last run, rebuilt from its log: None when the session has
    no run that stopped (one in progress or cut off by a crash)."""
    if log.last_run is None or not log.last_run.ended:
        return None
    engine, _ = await _rebuilt(setup, log, state_manager, _SILENT)
    return _noted(result_of(engine, log.session_id), log, started=True)


async def _rebuilt(
    setup: Setup, log: SessionLog, state_manager: StateManager, status: StatusConfig | None
) -> tuple[Engine, Runner]:
    """The session's last run, rebuilt with the settings it was started with (its printed
    status too, unless ``status`` is given); its budget errors name the keys of the workflow
    file this resume was given, if any (the log keeps no file name: it may have moved)."""
    session_id = log.session_id
    run = log.last_run
    if run is None:
        raise SessionNotFoundError(f"session {session_id!r} has no run to resume")
    _check_topology(setup, run, session_id)
    start = run.start
    provider = setup.config.tracing.tracer_provider  # an object the log does not keep
    settings_file = setup.config.settings_file  # nor this: the file this resume was given
    setup.config, setup.error_config, setup.max_steps = (
        start.config,
        start.error_config,
        start.max_steps,
    )
    if provider is not None:
        tracing = start.config.tracing.model_copy(update={"tracer_provider": provider})
        setup.config = start.config.model_copy(update={"tracing": tracing})
    engine, runner = build(setup, session_id, status or start.config.status)
    engine.settings_file = settings_file
    rebuild(engine, run, await state_manager.read_snapshot(session_id), session_id)
    return engine, runner


def _check_topology(setup: Setup, run: RunLog, session_id: str) -> None:
    recorded = run.start.topology
    if not fingerprint_matches(recorded, setup.analysis):
        raise SessionError(
            f"session {session_id!r} was recorded with a different topology "
            f"({'; '.join(line for line in recorded if line != FINGERPRINT)}); rebuild it (to "
            "resume it or read its result) with the topology it was run with"
        )


async def _abandon(writer: SessionWriter | None, session_id: str) -> None:
    """A run that failed to start leaves no run in the log (it would be resumed later), and
    the session is free again."""
    with contextlib.suppress(Exception):  # the error being raised says what went wrong
        await let_go(session_id, writer.abandon() if writer is not None else None)


async def _drive(runner: Runner, writer: SessionWriter | None, session_id: str) -> OrchestraResult:
    live = LiveRun(session_id, runner, writer)
    if writer is not None or session_id not in LIVE:  # a durable run's entry is never taken
        LIVE[session_id] = live
    engine = runner.engine
    snapshotted = writer  # kept: ``writer`` is set to None once its closing is under way
    if writer is not None:
        compress = writer.manager.compression

        def snapshot(position: int, at: float) -> bytes | None:
            # only between steps: a step in flight has changed state that no record explains
            if runner.steps_in_flight:
                return None
            return capture_snapshot(engine, position, at, compress)

        writer.snapshot_source = snapshot
        writer.start()
    try:
        try:
            await runner.drive()
        finally:
            if LIVE.get(session_id) is live:
                del LIVE[session_id]
        paused = runner.pausing and not engine.finished
        if writer is not None and paused and runner.halted is None:
            await _snapshot(runner, writer)
        if runner.halted is None and writer is None:
            await runner.end(paused, None)
        elif runner.halted is None and writer is not None:
            closing: SessionWriter = writer
            writer = None
            # the end is durable (its write retried as any other) before anyone hears of it
            await runner.end(paused, lambda: let_go(session_id, _closed(runner, closing)))
        if runner.halted is not None:
            raise _halted(session_id, runner.halted)
        return result_of(engine, session_id)
    finally:
        if snapshotted is not None:  # the run holds the writer: no cycle left to the collector
            snapshotted.snapshot_source = None
        if writer is not None:  # an error or a cancel: the writer is closed all the same
            await let_go(session_id, writer.close() if runner.halted is None else writer.abandon())


async def _started(runner: Runner, writer: SessionWriter) -> None:
    """The run's first record made durable before any branch works (a failing write retried
    as any other); SessionError when storage fails for good."""
    if not await runner.durable(writer.flush):
        assert runner.halted is not None
        raise _halted(writer.session_id, runner.halted)


async def _closed(runner: Runner, writer: SessionWriter) -> None:
    """The writer's last records made durable (a failing write retried as any other), then
    what storage held for it let go. If storage fails for good, the run halts, as a crash
    would have: SessionError (reported to the event loop when nobody is left to hear it)."""
    if await runner.durable(writer.flush):
        try:
            await writer.close()
        except Exception as error:  # all is durable: the run's outcome stands
            asyncio.get_running_loop().call_exception_handler(
                {
                    "message": f"session {writer.session_id!r}: its run ended and its log is "
                    "complete, but storage failed to let go of what it held for it",
                    "exception": error,
                }
            )
        return
    await writer.abandon()
    assert runner.halted is not None
    raise _halted(writer.session_id, runner.halted)


async def _snapshot(runner: Runner, writer: SessionWriter) -> None:
    """A paused run's snapshot, once its records are durable. Only a cache: storing it may
    fail without failing the pause (a resume then replays the log)."""
    if await runner.durable(writer.flush):
        with contextlib.suppress(Exception):
            await writer.snapshot()


def _halted(session_id: str, error: Exception) -> OrchestraError:
    """What a run that storage failed raises: it stopped as a crash would have. Storage's own
    errors (a session taken by another writer, a path that cannot hold it) as they are."""
    if isinstance(error, OrchestraError):
        return error
    halted = SessionError(
        f"session {session_id!r}: its storage failed ({type(error).__name__}: {error}), so the "
        "run stopped at its last durable step; resume it once the storage works again"
    )
    halted.__cause__ = error
    return halted


__all__ = ["execute", "resume", "stopping", "stored_result"]
