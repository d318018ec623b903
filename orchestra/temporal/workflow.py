"""A session as a Temporal workflow: the embedded ``Runner`` drives the engine inside it,
given workflow time, agents that run as activities, a journal kept in the workflow and a
channel answered by updates (``seams.py``). The client follows the run by querying its
records, and applies them to an engine of its own.

The workflow is not sandboxed: it is made deterministic explicitly (nothing in it reads the
process's clock, does I/O or draws random numbers; the engine's stream has no subscribers
here). Every run and replay first looks up the version the session was started with among
what this worker hosts, and refuses it (``WorkflowVersionError``, failing the workflow) rather
than replaying it against another workflow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, FailureError

from orchestra.communication.channels import CommunicationManager
from orchestra.coordination.engine import events as ev
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.engine.core import Engine
from orchestra.coordination.engine.runner import Runner
from orchestra.coordination.state import records
from orchestra.coordination.state.manager import check_checkpoint_name, fold, run_name
from orchestra.coordination.state.replay import rebuild
from orchestra.coordination.state.values import Unreadable
from orchestra.errors import ConfigurationError, OrchestraError, SessionCorruptedError

from .hosting import Hosted, Hosting
from .mirror import MIRROR_ACTIVITY, MirrorBatch
from .protocol import (
    ANSWER_UPDATE,
    CHECKPOINT_UPDATE,
    CLAIM_UPDATE,
    CLOSED,
    NOT_PAUSED,
    PAUSE_SIGNAL,
    QUESTION_QUERY,
    QUESTIONS_QUERY,
    RECORDS_QUERY,
    RESTORE_UPDATE,
    RESUME_SIGNAL,
    RESUME_UPDATE,
    WORKFLOW_NAME,
    Answer,
    Communication,
    Continuation,
    OpenQuestion,
    Outcome,
    QuestionPart,
    RecordsPage,
    StartInput,
    State,
    bounded,
    checkpoint_name,
    question_part,
    records_page,
    unpack_lines,
)
from .seams import (
    ActivityAgent,
    ClientTimed,
    RecordsJournal,
    TaskBytes,
    WorkflowChannel,
    WorkflowClock,
    read_answer,
)

HOSTING = "orchestra.hosting"
"""The extern function (``workflow.extern_functions()``) a worker gives its workflows: it
returns the worker's ``Hosting``."""

MIRRORING = "orchestra.mirroring"
"""The extern function that says whether the worker mirrors session logs into a store."""

MIRROR_PATCH = "orchestra-mirror"
"""The marker a session's history holds when the worker that started it had a store: the
session's log is copied for as long as it runs, whichever worker runs it next (one with no
store answers the copy calls without copying), and one started without a store is never
copied. So workers with and without a store may share a task queue: no replay differs."""

MIRROR_GIVE_UP = timedelta(minutes=10)
"""How long one mirror call is retried (the store down, another writer holding the session)
before this run stops mirroring: the session goes on, its store copy stops there."""

_MIRROR_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=5))

VERSION_ERROR = "WorkflowVersionError"
"""The type of the ``ApplicationError`` a session whose version is not hosted fails with."""

_LOG = logging.getLogger(__name__)
_CLOCK = WorkflowClock()
_NOT_ASKED = object()


@workflow.defn(name=WORKFLOW_NAME, sandboxed=False)
class SessionWorkflow:
    """One session's run (and its resumes after pauses), until it finishes."""

    @workflow.init
    def __init__(self, start: StartInput) -> None:
        self._lines: list[str] = []
        self._base = start.base
        going_on = start.continuation
        # a run that restores a checkpoint waits for its resume from the first: a resume sent
        # at once (in the same workflow task as the start) is kept, not dropped
        self._state: State = "paused" if going_on is not None and going_on.restore else "running"
        self._channel = WorkflowChannel()
        self._runner: Runner | None = None
        self._pause: object = _NOT_ASKED  # a pause asked for before the run was driven
        self._resume: dict[str, Any] | None = None
        self._talk: Communication | None = None  # the last resume's channel settings
        self._finished = False  # restored to where the run had finished: nothing to resume
        self._ready = False  # the run has set up its engine and journal: updates may use them
        self._task_bytes = TaskBytes()

    @workflow.run
    async def run(self, start: StartInput) -> Outcome:
        session_id = workflow.info().workflow_id
        self._hosted = hosted = _hosted(start, session_id)
        header = _header(start.header, session_id)
        self._engine = self._fresh_engine()
        self._journal = journal = RecordsJournal(session_id, run_name(1), self._lines)
        runner, paused = None, False
        if start.continuation is None:
            runner = self._runner_for(self._engine, hosted, header, start, journal)
            runner.start(header)
        else:
            paused = self._continue(start.continuation)
        self._ready = True
        mirror = asyncio.create_task(self._mirror(session_id)) if _mirrored() else None
        if runner is not None:
            paused = await self._drive(runner)
        while paused:
            self._state = "paused"
            await workflow.wait_condition(lambda: self._resume is not None)
            context, self._resume = self._resume or {}, None
            if self._finished:
                break
            self._state = "running"
            runner = self._runner_for(self._engine, hosted, header, start, journal)
            runner.resume(inp.RunResume(at=_CLOCK.now(), context=context))
            paused = await self._drive(runner)
        self._state = "finished"
        if mirror is not None:
            await mirror
        return Outcome(records=len(self._lines), state="finished")

    def _fresh_engine(self) -> Engine:
        return Engine(
            run_id=workflow.info().workflow_id,
            analysis=self._hosted.setup.analysis,
            tools=self._hosted.tools,
            stream=ev.EventStream(),
        )

    def _continue(self, going_on: Continuation) -> bool:
        """A new run of a session whose workflow closed: its journal is the closed run's,
        then a checkpoint named at its end (the run is over at once: False) or a restore
        (whether the restored run waits for a resume: False when it had finished there)."""
        session_id = workflow.info().workflow_id
        try:
            self._lines.extend(unpack_lines(going_on.journal))
        except ValueError as error:
            raise _refused(
                session_id, f"the journal it goes on from cannot be read: {error}"
            ) from None
        if not going_on.restore:
            self._journal.record(self._at_rest(going_on.checkpoint), due=True)
            return False
        if not self._restore(going_on.checkpoint):
            raise _refused(session_id, f"no checkpoint {going_on.checkpoint!r} to restore")
        return not self._finished

    def _at_rest(self, name: str) -> inp.Checkpoint:
        """A checkpoint at the journal's end, taken while no run is in progress (paused, or
        over): a name for a position, no input of the run (as embedded, ``at_rest``)."""
        return inp.Checkpoint(
            at=_CLOCK.now(),
            checkpoint_id=f"{workflow.info().workflow_id}@{name}",
            name=name,
            position=len(self._lines),
            at_rest=True,
        )

    def _restore(self, checkpoint_id: str) -> bool:
        """Send the run back to the checkpoint, as embedded ``restore_checkpoint`` does: a
        ``restore`` record in the journal (what followed the checkpoint stays there, an
        abandoned branch of history), and the engine rebuilt from the history as it now
        reads (``state.manager.fold``); False, and nothing done, for an id that names no
        checkpoint of this journal or one on an abandoned branch."""
        session_id = workflow.info().workflow_id
        try:
            log = fold(session_id, self._lines)
            entry = log.checkpoints.get(checkpoint_id)
            if entry is None:
                return False
            position: int = entry.record.position  # type: ignore[attr-defined]
            if position and position not in log.positions:
                return False
            at = _CLOCK.now()
            self._journal.record(
                inp.Restore(at=at, position=position, checkpoint_id=checkpoint_id), due=True
            )
            run = fold(session_id, self._lines).last_run
            if run is None:
                raise SessionCorruptedError(f"checkpoint {checkpoint_id!r} is before its run")
            engine = self._fresh_engine()
            rebuild(engine, run, None, session_id)
        except OrchestraError as error:
            raise _refused(session_id, str(error)) from None
        self._engine, self._journal.run, self._finished = engine, run.name, run.finished
        return True

    async def _mirror(self, session_id: str) -> None:
        """Copy the journal into the worker's session store as it grows (``mirror.py``): one
        local activity at a time, each with every line not sent yet, until the run finished
        and all is sent. A call that keeps failing (past ``MIRROR_GIVE_UP``, or refused for
        good: the store holds other records there) ends the copying, said in the worker's
        log; the session itself goes on (its history is the durable journal)."""
        key = workflow.info().run_id
        sent = 0
        while True:
            await workflow.wait_condition(self._unsent(sent))
            if len(self._lines) == sent:
                return
            batch = MirrorBatch(session_id, key, sent, self._lines[sent:])
            try:
                await workflow.execute_local_activity(
                    MIRROR_ACTIVITY,
                    batch,
                    start_to_close_timeout=timedelta(seconds=30),
                    schedule_to_close_timeout=MIRROR_GIVE_UP,
                    retry_policy=_MIRROR_RETRY,
                )
            except FailureError as error:  # a local activity's failure may come as its own
                workflow.logger.warning(
                    "session %r: its log is no longer copied into the store, from record %d on: %s",
                    session_id,
                    sent + 1,
                    error.cause or error,
                )
                return
            sent += len(batch.lines)

    def _unsent(self, sent: int) -> Callable[[], bool]:
        """Whether the journal has lines past ``sent``, or the run finished."""
        return lambda: len(self._lines) > sent or self._state == "finished"

    def _runner_for(
        self,
        engine: Engine,
        hosted: Hosted,
        header: inp.RunStart,
        start: StartInput,
        journal: RecordsJournal,
    ) -> Runner:
        """A runner over ``engine`` with the settings the run was started with, its agents
        running as activities."""
        config = header.config
        agents = {
            name: ActivityAgent(
                name,
                hosted.version,
                hosted.tools[name],
                hosted.idempotent[name],
                config.step_timeout,
                start.heartbeat_timeout,
                header.error_config,
                self._task_bytes,
            )
            for name in hosted.setup.agents
        }
        talk = self._talk or start.communication
        channel = ClientTimed(self._channel) if talk.client_timed else self._channel
        communication = CommunicationManager(
            channel if talk.has_channel else None,
            talk.user_timeout,
            on_user_timeout=talk.on_user_timeout,
            default_answer=talk.default_answer,
            user_timeout_source=talk.user_timeout_source,
        )
        return Runner(
            engine,
            agents,
            communication,
            step_timeout=config.step_timeout,
            branch_timeout=config.branch_timeout,
            convergence_timeout=config.convergence_timeout,
            run_timeout=hosted.setup.analysis.timeout,
            max_agents=hosted.setup.analysis.max_agents,
            journal=journal,
            clock=_CLOCK,
        )

    async def _drive(self, runner: Runner) -> bool:
        """Drive the run until it stops; whether it paused (a pause asked for before it was
        driven takes effect first)."""
        self._runner = runner
        if self._pause is not _NOT_ASKED:
            reason, self._pause = self._pause, _NOT_ASKED
            runner.pause(reason if isinstance(reason, str) else None)
        try:
            await runner.drive()
        finally:
            self._runner = None
        paused = runner.pausing and not runner.engine.finished
        await runner.end(paused, None)
        return paused

    @workflow.query(name=RECORDS_QUERY)
    def records(self, since: int, offset: int = 0) -> RecordsPage:
        return records_page(self._lines, since, offset, self._state, self._channel.listed())

    @workflow.query(name=QUESTIONS_QUERY)
    def questions(self) -> list[OpenQuestion]:
        return bounded(self._channel.listed())

    @workflow.query(name=QUESTION_QUERY)
    def question(self, question_id: str, offset: int = 0) -> QuestionPart:
        return question_part(self._channel.listed(), question_id, offset)

    @workflow.update(name=CLAIM_UPDATE)
    def claim(self, question_id: str, claimed: bool = True) -> bool:
        """A following client whose channel owns the time limit shows the question (the
        workflow keeps only its backstop for it), or went away (``claimed`` False: the limit
        applies here again); False when the question is no longer open."""
        if not isinstance(question_id, str) or not isinstance(claimed, bool):
            raise ApplicationError(f"a claim that cannot be read: {question_id!r}, {claimed!r}")
        return self._channel.claim(question_id, claimed)

    @workflow.update(name=ANSWER_UPDATE)
    def answer(self, answer: Answer) -> bool:
        question_id, value, error = read_answer(answer)
        return self._channel.answer(question_id, value, error)

    @answer.validator
    def _readable(self, answer: Answer) -> None:
        """An answer that cannot be read is refused before it reaches the history."""
        read_answer(answer)

    @workflow.update(name=CHECKPOINT_UPDATE)
    async def checkpoint(self, name: str | None) -> str:
        """Name the run's current position (``name`` None: one made from it); the checkpoint's
        id. Journaled as embedded: through the runner while the run goes on (an input of the
        run), at rest while it is paused. Refused (``CLOSED``) once the run is over: the
        client names the closed run's end in a new run of the workflow instead."""
        await workflow.wait_condition(self._steady)
        if self._state == "finished":
            raise ApplicationError(
                f"session {workflow.info().workflow_id!r}: its run is over", type=CLOSED
            )
        name = checkpoint_name(name, self._base, len(self._lines))
        checkpoint_id = f"{workflow.info().workflow_id}@{name}"
        if self._runner is not None:
            self._runner.checkpoint(checkpoint_id, name, len(self._lines))
        else:
            self._journal.record(self._at_rest(name), due=True)
        return checkpoint_id

    @checkpoint.validator
    def _named(self, name: str | None) -> None:
        """A name the client would refuse is refused before it reaches the history."""
        if name is not None and not isinstance(name, str):
            raise ApplicationError(f"checkpoint_name {name!r} is no string")
        if name:
            try:
                check_checkpoint_name(name)
            except ConfigurationError as error:
                raise ApplicationError(str(error)) from None

    def _steady(self) -> bool:
        """Whether the run is set up and either driven or not running (paused, over)."""
        return self._ready and (self._runner is not None or self._state != "running")

    @workflow.update(name=RESTORE_UPDATE)
    async def restore(self, checkpoint_id: str) -> bool:
        """Send the paused run back to the checkpoint (``_restore``); the next ``resume``
        goes on from there. Refused (``NOT_PAUSED``) unless the run is paused, with no resume
        on the way: a run in progress is paused first."""
        if not isinstance(checkpoint_id, str):
            raise ApplicationError(f"checkpoint_id {checkpoint_id!r} is no string")
        await workflow.wait_condition(lambda: self._ready)
        if self._state != "paused" or self._resume is not None:
            raise ApplicationError(
                f"session {workflow.info().workflow_id!r} is running on Temporal: pause it "
                "(OrchestraInstance.pause_session) before restoring a checkpoint",
                type=NOT_PAUSED,
            )
        return self._restore(checkpoint_id)

    @workflow.signal(name=PAUSE_SIGNAL)
    def pause(self, reason: str | None) -> None:
        """Pause at the next step boundary (nothing when paused or pausing already); asked
        while a resume waits to be applied, it is for the resumed run."""
        runner = self._runner
        if self._resume is not None or (runner is None and self._state == "running"):
            self._pause = reason  # for the run driven next
        elif runner is not None and not runner.pausing:
            runner.pause(reason)

    @workflow.signal(name=RESUME_SIGNAL)
    def resume(self, context: dict[str, Any], talk: Communication | None = None) -> None:
        """Go on with a paused run, with ``context`` added, answering its questions as the
        resuming client's ``talk`` says (None: as before); nothing unless it is paused or
        pausing (kept then, applied once it has paused)."""
        self._kept(context, talk)

    @workflow.update(name=RESUME_UPDATE)
    def resume_kept(self, context: dict[str, Any], talk: Communication | None = None) -> bool:
        """The ``resume`` signal, answering whether it was kept: a client resuming a running
        session with context learns that its context was not taken."""
        return self._kept(context, talk)

    def _kept(self, context: dict[str, Any], talk: Communication | None) -> bool:
        runner = self._runner
        pausing = self._pause is not _NOT_ASKED or (runner is not None and runner.pausing)
        if self._state == "paused" or pausing:
            self._resume = dict(context)
            self._talk = talk or self._talk
            return True
        return False


class VersionRefused(Exception):
    """A worker refusing a session already running that it does not host the version of: its
    workflow task fails (Temporal tries it again, on whichever worker polls next), so the
    session waits, with nothing taken from it, for a worker that hosts its version. Not an
    ``ApplicationError``: that would fail the session, and its history holds commands such a
    failure does not match (Temporal would call the replay non-deterministic)."""


def _hosted(start: StartInput, session_id: str) -> Hosted:
    """The hosted workflow the session was started with. One this worker does not host is
    refused with ``WorkflowVersionError``'s text, said in the worker's log too: a new session
    fails at once (a client started it with a workflow no worker hosts); one already running
    is left as it is for a worker that hosts it (``VersionRefused``), and its follower reads
    the refusal from its failing queries."""
    hosting: Hosting = _extern(HOSTING)()
    hosted = hosting.get(start.version)
    if hosted is None:
        running = workflow.unsafe.is_replaying()
        refusal = hosting.refusal(session_id, start.version, start.fingerprint, running)
        _LOG.error("%s: %s", VERSION_ERROR, refusal)
        if running:
            raise VersionRefused(f"{VERSION_ERROR}: {refusal}")
        raise ApplicationError(refusal, type=VERSION_ERROR, non_retryable=True)
    return hosted


def _refused(session_id: str, why: str) -> ApplicationError:
    """The failure of a run, or of an update, that cannot go on from what it was given."""
    return ApplicationError(
        f"session {session_id!r}: {why}", type="SessionCorruptedError", non_retryable=True
    )


def _mirrored() -> bool:
    """Whether this session's log is copied into a store (see ``MIRROR_PATCH``): decided by
    the worker that starts it and kept in its history (``workflow.patched``, asked only where
    its answer is the history's: a worker with no store starting a session records nothing)."""
    if _extern(MIRRORING)() or workflow.unsafe.is_replaying():
        return workflow.patched(MIRROR_PATCH)
    return False


def _extern(name: str) -> Callable[[], Any]:
    return workflow.extern_functions()[name]


def _header(line: str, session_id: str) -> inp.RunStart:
    """The run's header, as the client recorded it."""
    try:
        header = records.decode(records.loads(line))
    except (Unreadable, ValueError) as error:
        raise ApplicationError(
            f"session {session_id!r}: its start input's header cannot be read: {error}",
            type="SessionCorruptedError",
            non_retryable=True,
        ) from None
    if not isinstance(header, inp.RunStart):
        raise ApplicationError(
            f"session {session_id!r}: its start input's header is a {header.KIND!r} record, "
            "not a run's start",
            type="SessionCorruptedError",
            non_retryable=True,
        )
    return header
