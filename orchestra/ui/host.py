"""Runs hosted by the web inspector: started, answered, paused, resumed, checkpointed, restored
and deleted from the page, in the inspector's own process and event loop.

The host keeps sessions in the inspector's store through a StateManager of its own over its
own SQLite connection, every step durable at once (``auto_save_interval=0``): the page, the
command line and any other process see each step as soon as it is taken, and a run the
inspector hosted is never lost with it. Closing the host (the server stopping) pauses every
hosted run: its log lets the inspector, or ``orchestra resume``, go on with it. Questions go
to a web channel, where the page finds them per session and answers them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestra.agents.contract import render
from orchestra.communication import CommunicationManager, ProgrammaticChannel, Question
from orchestra.coordination.config import StatusConfig, VerbosityLevel
from orchestra.coordination.engine.events import StepStarted
from orchestra.coordination.execution import check_here, closed_on_temporal
from orchestra.coordination.orchestra import Orchestra, OrchestraInstance, new_session_id
from orchestra.coordination.results import OrchestraResult
from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.coordination.state.backends import check_session_id
from orchestra.coordination.state.manager import (
    ON_TEMPORAL,
    SessionLog,
    parse_checkpoint_id,
    run_state,
)
from orchestra.coordination.streaming import RunStream
from orchestra.coordination.topology import Topology
from orchestra.coordination.wiring import fingerprint_matches
from orchestra.errors import (
    ConfigurationError,
    SessionError,
    SessionNotFoundError,
    UserInputError,
)
from orchestra.workflow import Workflow

from .shown import shown

LOG = logging.getLogger(__name__)
STOPPED = "the inspector stopped"  # the pause reason of a run hosted when it stops
TEXT_LIMIT = 2_000  # a question's text, as the page is sent it
RESPONSE_LIMIT = 20_000  # a follow-up offer's response, as a step's detail keeps a message
QUIET = StatusConfig.from_verbosity(VerbosityLevel.QUIET)  # the page shows hosted runs


ANSWERED_KEPT = 1000
"""Answered questions a web channel remembers, to tell a second answer it came too late."""


class WebChannel(ProgrammaticChannel):
    """The page's user channel: a ProgrammaticChannel that also keeps each waiting question,
    so the page can find those of one session (a question's ``run_id`` is its session id), and
    says when one is asked or stops waiting. An answered question stops waiting at once (not
    when its branch next runs), and is remembered as answered until asked again (after a resume
    it has the id it had), so a second answer is told so."""

    def __init__(self, changed: Any) -> None:
        super().__init__()
        self._asked: dict[str, Question] = {}
        self._answered: dict[str, str] = {}  # each answered question's session
        self._changed = changed

    async def ask(self, question: Question) -> Any:
        self._asked[question.id] = question
        self._answered.pop(question.id, None)
        self._changed()
        try:
            return await super().ask(question)
        finally:
            if self._asked.get(question.id) is question:
                del self._asked[question.id]
            self._changed()

    def answer(self, question_id: str, answer: Any) -> None:
        super().answer(question_id, answer)
        asked = self._asked.pop(question_id, None)
        if asked is not None:
            self._answered[question_id] = asked.run_id
            if len(self._answered) > ANSWERED_KEPT:  # the oldest goes: a long-lived inspector
                del self._answered[next(iter(self._answered))]
        self._changed()

    def answered(self, session_id: str, question_id: str) -> bool:
        """Whether the session's question was answered (and not asked again since)."""
        return self._answered.get(question_id) == session_id

    def waiting(self, session_id: str) -> list[Question]:
        """The questions of ``session_id`` waiting for an answer, in the order asked."""
        return [question for question in self._asked.values() if question.run_id == session_id]


class RunHost:
    """Hosts runs of ``workflows`` (by name) over the store at ``store``. ``version`` grows on
    every change the store does not show (a question asked or no longer waiting, a hosted run
    started or stopped); :meth:`changed` waits for the next."""

    def __init__(self, store: Path, workflows: dict[str, Workflow]) -> None:
        self.store = store
        self.workflows = dict(workflows)
        self.version = 0
        self._bumped = asyncio.Event()
        self._backend = SQLiteStorageBackend(store)
        self.manager = StateManager(self._backend, auto_save_interval=0)
        self.channel = WebChannel(self._bump)
        self._runs: dict[str, asyncio.Task[OrchestraResult]] = {}
        self._starting: set[str] = set()  # sessions a start or resume has claimed (see _claimed)
        self._instances = {name: self._instance(flow) for name, flow in workflows.items()}
        # checkpoint, restore, delete and pause read no topology: this one is never run
        self._keeper = self._instance(None)

    def _instance(self, workflow: Workflow | None) -> OrchestraInstance:
        """An instance running ``workflow``'s sessions with its settings, its questions on
        the web channel; for None, one that only acts on sessions at rest (never run)."""
        if workflow is None:
            return OrchestraInstance(
                Topology(nodes=["Inspector"], edges=[]),
                communication_manager=CommunicationManager(self.channel),
                state_manager=self.manager,
            )
        asking = workflow.communication_config(self.channel)
        return OrchestraInstance(
            workflow.topology,
            agent_registry=workflow.registry,
            initial_config=workflow.execution,  # its file names the limits (the log keeps none)
            communication_manager=asking.manager(),
            state_manager=self.manager,
        )

    def _bump(self) -> None:
        self.version += 1
        bumped, self._bumped = self._bumped, asyncio.Event()
        bumped.set()

    async def changed(self, seen: int) -> int:
        """The version, once it is not ``seen`` (at once when it is not already)."""
        while self.version == seen:
            await self._bumped.wait()
        return self.version

    # ---- what the GET side reads ------------------------------------------------------------

    def hosts(self, session_id: str) -> bool:
        """Whether a run of this inspector is running the session now."""
        return session_id in self._runs

    def questions(self, session_id: str) -> list[dict[str, Any]]:
        """The session's questions waiting on the page, as the page is sent them."""
        return [
            {
                "id": question.id,
                "branch": question.branch_id,
                "agent": question.agent,
                "text": shown(question.text, TEXT_LIMIT, one_line=False),
                "kind": question.kind,
                "response": _response_text(question),
            }
            for question in self.channel.waiting(session_id)
        ]

    def workflow_list(self) -> list[dict[str, str | None]]:
        """The workflows runs can be started from, each with its default task."""
        return [
            {"name": name, "task": _task_text(flow.task)} for name, flow in self.workflows.items()
        ]

    # ---- acting on sessions -----------------------------------------------------------------

    async def start_run(
        self,
        workflow: str,
        task: str | None,
        session: str | None,
        follow_ups: bool = False,
        follow_up_timeout: float | None = None,
    ) -> str:
        """Start a run of ``workflow`` (its file's task when ``task`` is None) in a new
        session, or ``session`` when given (one with no run on the way); returns its id. With
        ``follow_ups`` the run is a conversation: each round's final response is offered on
        the page for a follow-up, waiting ``follow_up_timeout`` seconds (None: the library's
        default) for one."""
        flow = self._workflow(workflow)
        chosen = task if task is not None else flow.task
        if chosen is None:
            raise ConfigurationError(f"workflow {workflow!r} has no task: give one")
        session_id = check_session_id(session) if session is not None else new_session_id()
        talk: dict[str, Any] = {"allow_follow_ups": follow_ups}
        if follow_up_timeout is not None:  # else the library's default, set in one place
            talk["follow_up_timeout"] = follow_up_timeout
        with self._claimed(session_id):
            return await self._start(session_id, flow, chosen, talk)

    async def _start(
        self, session_id: str, flow: Workflow, task: str | dict[str, Any], talk: dict[str, Any]
    ) -> str:
        """Start the run (``talk``: its follow-up arguments); returns once its first record is
        durable."""
        await self._check_startable(session_id)
        context = {**flow.context, "session_id": session_id}
        stream = Orchestra.stream(
            task,
            flow.topology,
            agent_registry=flow.registry,
            context=context,
            execution_config=flow.execution.model_copy(update={"status": QUIET}),
            communication_config=flow.communication_config(self.channel),
            error_config=flow.error_handling,
            max_steps=flow.max_steps,
            state_manager=self.manager,
            **talk,
        )
        recorded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        running = self._host(session_id, _streamed(stream, recorded))
        either: list[asyncio.Future[Any]] = [recorded, running]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        failed = running.exception() if running.done() and not running.cancelled() else None
        if failed is not None:  # it did not start (another writer took the session): say why
            raise failed
        return session_id

    async def answer(self, session_id: str, question_id: str, answer: str) -> None:
        """Answer one of the session's waiting questions."""
        waiting = [question.id for question in self.channel.waiting(session_id)]
        still = f"waiting: {', '.join(waiting)}" if waiting else "none of its questions is waiting"
        if question_id in waiting:
            self.channel.answer(question_id, answer)
        elif self.channel.answered(session_id, question_id):
            raise SessionError(
                f"session {session_id!r}: question {question_id!r} was answered already ({still})"
            )
        else:
            raise UserInputError(
                f"session {session_id!r} has no question {question_id!r} waiting for an answer "
                f"here (withdrawn, or of a run this inspector does not host; {still})"
            )

    async def pause(self, session_id: str, reason: str | None) -> None:
        """Pause a hosted run; returns once it stopped (steps in flight finish first)."""
        running = self._runs.get(session_id)
        if running is None:
            state = await self._state(session_id)
            raise SessionError(
                f"session {session_id!r} is not run by this inspector ({state}); a run of "
                "another process is paused there"
            )
        if not await self._keeper.pause_session(session_id, reason):
            raise SessionError(
                f"session {session_id!r}: its run is starting or ending; ask again in a moment"
            )
        await asyncio.wait([running])

    async def resume(self, session_id: str, workflow: str | None) -> str:
        """Go on with a paused or interrupted session, with ``workflow`` or (None) the one
        whose topology the session's last run was recorded with; returns the workflow's name."""
        with self._claimed(session_id):
            log = await self._load(session_id)
            await self._check_unheld(session_id)
            check_here(log)
            state = run_state(log)
            if state not in ("paused", "interrupted"):
                raise SessionError(f"session {session_id!r} is {state}: there is nothing to resume")
            name = self._matching(log, workflow)
            self._host(session_id, self._instances[name].resume_session(session_id, status=QUIET))
            return name

    async def checkpoint(self, session_id: str, name: str | None) -> str:
        """Name the session's current position, through its run's writer when it runs here."""
        await self._load(session_id)
        if session_id not in self._runs:
            await self._check_free(session_id)
        return await self._keeper.create_checkpoint(session_id, name)

    async def restore(self, session_id: str, checkpoint_id: str) -> None:
        """Send the session back to the checkpoint: a resume goes on from there."""
        await self._load(session_id)
        try:
            owner, _ = parse_checkpoint_id(checkpoint_id)
        except SessionError:
            owner = None
        if owner != session_id:
            raise ConfigurationError(
                f"{checkpoint_id!r} is not a checkpoint of session {session_id!r} "
                f"(its ids are {session_id}@NAME)"
            )
        await self._check_free(session_id)
        if not await self._keeper.restore_checkpoint(checkpoint_id):
            raise SessionNotFoundError(
                f"session {session_id!r} has no checkpoint {checkpoint_id!r} on its history"
            )
        self._bump()

    async def delete(self, session_id: str) -> None:
        """Delete the session's log and snapshot; a session being run is not deleted."""
        await self._load(session_id)
        await self._check_free(session_id)
        if not await self._keeper.delete_session(session_id):
            raise SessionNotFoundError(f"no session {session_id!r} in {self.store}")
        self._bump()

    async def close(self) -> None:
        """Pause every hosted run (its log lets a resume go on with it; one caught starting or
        ending is cancelled, which loses no durable step), then let go of the store."""
        runs = dict(self._runs)
        for session_id, run in runs.items():
            if not await self._keeper.pause_session(session_id, STOPPED):
                run.cancel()  # starting or ending: its log keeps every durable step
        await asyncio.gather(*runs.values(), return_exceptions=True)
        await asyncio.to_thread(self._backend.close)

    # ---- helpers ----------------------------------------------------------------------------

    def _workflow(self, name: str) -> Workflow:
        found = self.workflows.get(name)
        if found is None:
            given = ", ".join(sorted(self.workflows)) or "none: start it with --workflow FILE"
            raise ConfigurationError(f"no workflow {name!r} in this inspector (it has {given})")
        return found

    def _matching(self, log: SessionLog, named: str | None) -> str:
        """The workflow to resume ``log`` with: ``named``, checked, or the first whose
        topology the last run was recorded with."""
        run = log.last_run
        assert run is not None  # run_state said paused or interrupted
        recorded = run.start.topology
        if named is not None:
            if not fingerprint_matches(recorded, self._workflow(named).topology.analyze()):
                raise ConfigurationError(
                    f"workflow {named!r} is not the one session {log.session_id!r} was run "
                    "with: its topology differs from the one the session recorded"
                )
            return named
        for name, flow in sorted(self.workflows.items()):
            if fingerprint_matches(recorded, flow.topology.analyze()):
                return name
        raise ConfigurationError(
            f"no workflow of this inspector has the topology session {log.session_id!r} was "
            "run with; start the inspector with --workflow FILE naming the file it was run from"
        )

    @contextmanager
    def _claimed(self, session_id: str) -> Iterator[None]:
        """The session claimed for a start or resume until the block ends: checked and taken
        before their first await, so of two at once (a double click) exactly one goes on, and
        the other is refused naming the session."""
        self._check_idle(session_id)
        self._starting.add(session_id)
        try:
            yield
        finally:
            self._starting.discard(session_id)

    def _host(
        self, session_id: str, run: Coroutine[Any, Any, OrchestraResult]
    ) -> asyncio.Task[OrchestraResult]:
        """``run`` as the session's hosted run; never in place of one still going."""
        going = self._runs.get(session_id)
        if going is not None and not going.done():
            run.close()
            raise SessionError(f"session {session_id!r} is running here already")
        task = asyncio.ensure_future(run)
        self._runs[session_id] = task
        task.add_done_callback(lambda done: self._ended(session_id, done))
        self._bump()
        return task

    def _ended(self, session_id: str, task: asyncio.Task[OrchestraResult]) -> None:
        if self._runs.get(session_id) is task:
            del self._runs[session_id]
        if not task.cancelled() and task.exception() is not None:
            # its type only: its text may quote the session's data
            LOG.error(
                "orchestra ui: the run of session %r failed: %s",
                session_id,
                type(task.exception()).__name__,
            )
        self._bump()

    async def _load(self, session_id: str) -> SessionLog:
        """The session's log; SessionNotFoundError naming it when there is none."""
        try:
            return await self.manager.load(check_session_id(session_id))
        except SessionNotFoundError:
            raise SessionNotFoundError(f"no session {session_id!r} in {self.store}") from None

    async def _state(self, session_id: str) -> str:
        return run_state(await self._load(session_id))

    async def _check_free(self, session_id: str) -> None:
        """SessionError when a run holds the session: here, or in another process."""
        self._check_idle(session_id)
        await self._check_unheld(session_id)

    def _check_idle(self, session_id: str) -> None:
        """SessionError when a run of this inspector holds the session, or is starting in it."""
        if session_id in self._runs:
            raise SessionError(f"session {session_id!r} is running here; pause it first")
        if session_id in self._starting:
            raise SessionError(
                f"session {session_id!r} is being started or resumed here; wait for it"
            )

    async def _check_unheld(self, session_id: str) -> None:
        """SessionError when a run of another process holds the session."""
        if await self._backend.held(session_id):
            raise SessionError(
                f"session {session_id!r} is being run by another process; stop or pause it there"
            )

    async def _check_startable(self, session_id: str) -> None:
        """A new run may go into a session free of writers with no run on the way (a paused
        or interrupted one is resumed instead)."""
        await self._check_unheld(session_id)
        try:
            state = await self._state(session_id)
        except SessionNotFoundError:
            return
        if state == ON_TEMPORAL:
            raise SessionError(
                f"session {session_id!r} has a run on Temporal on the way: its workers run it. "
                f"{closed_on_temporal(session_id)}"
            )
        if state in ("paused", "interrupted"):
            raise SessionError(
                f"session {session_id!r} has a run {state} on the way: resume it (or delete "
                "the session to start afresh)"
            )


async def _streamed(stream: RunStream, recorded: asyncio.Future[None]) -> OrchestraResult:
    """The run's result; ``recorded`` is set at its first step, which begins only once the
    run's first record is durable: from then on the store shows the session."""
    async with stream as events:
        async for event in events:
            if not recorded.done() and isinstance(event, StepStarted):
                recorded.set_result(None)
    assert stream.result is not None  # a block left at its end: the run ended
    return stream.result


def _response_text(question: Question) -> str | None:
    """A follow-up offer's response (the round's final response) as the page is sent it;
    None for any other question."""
    if not question.follow_up or question.response is None:
        return None
    return shown(render(question.response), RESPONSE_LIMIT, one_line=False)


def _task_text(task: str | dict[str, Any] | None) -> str | None:
    """A workflow's default task as the page shows it (a structured one as its JSON)."""
    if task is None:
        return None
    return shown(render(task), TEXT_LIMIT, one_line=False)
