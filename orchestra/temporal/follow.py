"""The client's side of a session on Temporal: following its workflow.

The workflow journals every engine input as a record line (the session log's own lines); the
client reads them with the ``records`` query and applies them, in order, to a replica engine
built as an embedded run builds its own (``wiring.build``): the status display, metrics,
tracing and ``Orchestra.stream`` listeners hear the events an embedded run emits, and the
result is ``result_of(replica)``, equal to an embedded run's by construction. Questions the
workflow asks are relayed to the client's own user channel, and the answers sent back as
``answer`` updates.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError, CancelledError, TerminatedError
from temporalio.exceptions import TimeoutError as WorkflowTimeoutError
from temporalio.service import RPCError, RPCStatusCode

from orchestra.communication.channels import CommunicationManager, Question, TimedChannel
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.engine.core import Engine
from orchestra.coordination.state import records
from orchestra.coordination.state.manager import fold
from orchestra.coordination.state.replay import apply_line, rebuild
from orchestra.coordination.state.values import Unreadable, Unstorable, from_plain, to_plain
from orchestra.errors import (
    OrchestraError,
    SessionError,
    SessionNotFoundError,
    WorkflowVersionError,
)
from orchestra.models.secrets import redact

from . import protocol, routing
from .protocol import Answer

FAST = 0.02
"""Seconds between two ``records`` queries while lines keep coming."""

SLOW = 1.0
"""The longest wait between two queries of a session that is quiet (a long step, a question):
one ``records`` query a second per followed session while nothing happens."""

QUERY_TIMEOUT = 10.0
"""Seconds one query may take: a workflow no worker serves yet answers none (tried again)."""

CATCH_UP_TRIES = 3
"""Queries with no answer before a catch-up (reading a session's state) gives up."""

_QUERY_TIMEOUT = timedelta(seconds=QUERY_TIMEOUT)
_RESTORE = f'{{"t":"{inp.Restore.KIND}",'
_CHECKPOINT = f'{{"t":"{inp.Checkpoint.KIND}",'

CLOSED = {
    TerminatedError: "terminated",
    CancelledError: "cancelled",
    WorkflowTimeoutError: "timed out",
}
"""How Temporal closed a session's workflow that did not end its run, by the failure it gives."""

NO_POLLER = "no poller seen"
"""What Temporal answers a query with when no worker polls the workflow's task queue."""


class Follower:
    """Follows one run of a session's workflow into ``engine`` (the replica), relaying its
    questions to the channel of ``communication`` (None, or no channel: the workflow knows
    there is none and never asks)."""

    def __init__(
        self,
        handle: WorkflowHandle[Any, Any],
        engine: Engine,
        communication: CommunicationManager | None,
        client: Client,
    ) -> None:
        self.handle = handle
        self.client = client
        self.engine = engine
        self.communication = communication
        self.channel = None if communication is None else communication.channel
        self.next = 0  # the index of the next journal line to apply
        self.offset = 0  # where the next part of a line read in parts starts
        self._parts: list[str] = []  # the parts of that line read so far
        self._relayed: dict[str, asyncio.Task[None]] = {}  # by question id
        self._answered: set[str] = set()  # taken by the workflow: never asked again
        self._open: set[str] = set()  # the workflow's open questions, as last heard
        self._sending: set[str] = set()  # answered by the channel, being sent
        self._held = False  # a pause was asked for: no question is relayed any more
        self._woken = asyncio.Event()  # an answer was taken: poll again at once

    async def catch_up(self) -> str:
        """Bring the replica to where the workflow's journal leaves the session: its effective
        history rebuilt (``state.manager.fold``: a restore cuts it back to its checkpoint, a
        checkpoint taken at rest is no input of the run), as an embedded resume rebuilds it
        from the log; the workflow's state (running, paused or finished) as of the last
        answer. SessionError when no worker answers."""
        lines, state = await self.journal()
        if lines:
            run = fold(self.handle.id, lines).last_run
            if run is not None:
                rebuild(self.engine, run, None, self.handle.id)
        return state

    async def journal(self) -> tuple[list[str], str]:
        """Every line the workflow's journal holds now, from ``next`` on (``next`` moved past
        them, nothing applied), and the workflow's state as of the last answer."""
        lines: list[str] = []
        unanswered = 0
        while True:
            answer = await self._records()
            if answer is None:
                unanswered += 1
                if unanswered == CATCH_UP_TRIES:
                    raise self._no_worker(finished=False)
                continue
            whole = self._whole_lines(answer)
            if whole is None:
                return lines, str(answer["state"])
            lines.extend(whole)
            self.next = int(answer["next"])

    async def follow(self) -> str:
        """Apply the workflow's lines as they come until it has paused or finished (every
        line applied, one at least: a workflow just signalled to resume may still say it is
        paused); its state then. The workflow failing is raised (:func:`failed`), a version it
        is not hosted with as ``WorkflowVersionError``."""
        ended = asyncio.ensure_future(self.handle.result())
        since = self.next
        delay = FAST
        unanswered = 0  # queries with no answer since the workflow's result came
        try:
            while True:
                failure = ended.exception() if ended.done() else None
                if failure is not None:
                    raise failed(self.handle.id, failure)
                answer = await self._records(ended)
                if answer is None and ended.done():
                    unanswered += 1
                    if unanswered == CATCH_UP_TRIES:
                        raise self._no_worker(finished=True)
                fresh = answer is not None and self._applied(answer)
                state = None if answer is None else str(answer["state"])
                if state is not None and state != "running" and not fresh and self.next > since:
                    return state
                if self.channel is not None and answer is not None:
                    self._relay_questions(answer["questions"])
                delay = FAST if fresh or self._woken.is_set() else min(delay * 2, SLOW)
                self._woken.clear()
                await self._wait(ended, delay)
        finally:
            ended.cancel()
            await self._withdraw_all()

    async def hold(self) -> None:
        """A pause was asked for: withdraw the questions relayed to the channel (an answer
        given from now on is refused by it; one already given is still sent) and relay no
        more."""
        self._held = True
        here = asyncio.current_task()  # a channel may pause while it asks: not waited for
        tasks = [
            task
            for key, task in self._relayed.items()
            if key not in self._sending and task is not here
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _wait(self, ended: asyncio.Future[Any], delay: float) -> None:
        """Wait ``delay`` seconds, less when the workflow ends or the channel answers."""
        woken = asyncio.ensure_future(self._woken.wait())
        try:
            await asyncio.wait([ended, woken], timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()

    async def _records(self, ended: asyncio.Future[Any] | None = None) -> dict[str, Any] | None:
        """The journal's lines from ``next`` on (None when the query got no answer: no worker
        serves the workflow yet, or one is being replaced; waited for and tried again). A
        worker that refuses the session (it does not host its version) is raised as
        ``WorkflowVersionError``, and so is a running session whose version no worker polls any
        more: the session waits on Temporal for a worker that hosts it, and this call stops
        following it. A query the workflow failed to answer, and a workflow Temporal no longer
        has, raise; the workflow's own failure first when it fails (``ended``: its result), as
        a workflow refused mid-run fails its queries too."""
        try:
            answer = await self.handle.query(
                protocol.RECORDS_QUERY, args=[self.next, self.offset], rpc_timeout=_QUERY_TIMEOUT
            )
        except WorkflowQueryFailedError as error:
            refused(self.handle.id, error)
            if ended is not None:
                await asyncio.wait([ended], timeout=QUERY_TIMEOUT)
                failure = ended.exception() if ended.done() else None
                if failure is not None:
                    raise failed(self.handle.id, failure) from None
            raise SessionError(
                f"session {self.handle.id!r}: its Temporal workflow failed to answer for its "
                f"records from record {self.next + 1} on ({redact(str(error))})"
            ) from None
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                raise SessionNotFoundError(
                    f"session {self.handle.id!r}: Temporal no longer has its workflow (a "
                    "closed workflow is kept for its namespace's retention period)"
                ) from None
            await self._still_hosted(error)
            await asyncio.sleep(SLOW)
            return None
        return dict(answer)

    async def _still_hosted(self, unanswered: RPCError) -> None:
        """Raise ``WorkflowVersionError`` when the running session's version queue has no
        worker any more: Temporal answered the query so ("no poller seen"), or lists none that
        polled lately. The session stays running on Temporal, nothing lost; a worker hosting
        its version goes on with it. Temporal not answering this either: asked next round."""
        try:
            described = await self.handle.describe()
            if described.status is not WorkflowExecutionStatus.RUNNING:
                return
            queue = described.task_queue
            if NO_POLLER in unanswered.message or not await routing.polled(self.client, queue):
                raise routing.not_hosted_now(self.handle.id, queue)
        except RPCError:
            return

    def _no_worker(self, finished: bool) -> SessionError:
        said = " finished, but" if finished else ":"
        return SessionError(
            f"session {self.handle.id!r}{said} no worker answered for its Temporal workflow; "
            "run a worker that hosts its workflow on its task queue"
        )

    def _applied(self, answer: dict[str, Any]) -> bool:
        """Apply the answer's lines to the replica (a line read in parts once its last part
        came: ``protocol.RecordsPage``); whether it had any, or a part. A checkpoint taken at
        rest is no input of the run (a rebuild skips it too); a restore while the run is
        followed is refused: the replica would have to be rebuilt (``resume_session`` follows
        the restored run)."""
        lines = self._whole_lines(answer)
        if lines is None:
            return False
        for line in lines:
            self.next += 1  # a record's position in the log: 1-based
            if line.startswith(_RESTORE):
                raise SessionError(
                    f"session {self.handle.id!r} was restored to a checkpoint while it was "
                    f"followed (record {self.next}): resume_session follows it from there"
                )
            if line.startswith(_CHECKPOINT) and records.loads(line).get("at_rest") is True:
                continue
            apply_line(self.engine, self.next, line, self.handle.id)
        self.next = int(answer["next"])
        return True

    def _whole_lines(self, answer: dict[str, Any]) -> list[str] | None:
        """The whole lines an answer completes: its lines, or the line read in parts once its
        last part came (``protocol.RecordsPage``; none before that); None when it brought
        nothing, neither a line nor a part."""
        part = answer.get("part")
        if part is None:
            lines: list[str] = answer["lines"]
            return lines or None
        self._parts.append(part)
        self.offset = int(answer["offset"])
        if int(answer["next"]) == self.next:
            return []
        joined, self._parts = "".join(self._parts), []
        return [joined]

    def _relay_questions(self, found: list[dict[str, Any]]) -> None:
        """Ask the channel the workflow's open questions (``found``, from the records page)
        not asked yet; withdraw the ones it no longer has (answered elsewhere, timed out,
        withdrawn by a pause). None is asked once a pause was asked for (:meth:`hold`)."""
        open_now = {item["id"]: item for item in found}
        self._open = set(open_now)
        for question_id, task in list(self._relayed.items()):
            if question_id not in open_now or task.done():
                task.cancel()
                del self._relayed[question_id]
        if self._held:
            return
        for question_id, item in open_now.items():
            if question_id not in self._relayed and question_id not in self._answered:
                self._relayed[question_id] = asyncio.ensure_future(self._relay(item))

    async def _relay(self, item: dict[str, Any]) -> None:
        """Ask the channel one question and send its answer (or the channel's failure) to
        the workflow. The workflow applies the time limit, unless the channel is a
        :class:`TimedChannel` (the terminal): that one owns it, as embedded (it counts it
        from when its user sees the question, and says what happens at its end), and its
        timeout is sent as such (``timed_out``): the workflow decides the outcome. Such a
        channel claims the question while it shows it (``claim``), so the workflow leaves
        the limit to it; the claim is released if this client stops asking (Ctrl-C, pause),
        and the workflow applies the limit itself again."""
        assert self.channel is not None and self.communication is not None
        if item.get("parted"):
            whole = await _question_text(self.handle, item["id"])
            if whole is None:
                return  # answered, withdrawn or timed out while its text was read
            item = whole
        question = _question(self.handle.id, item)
        seconds = self.communication.limit(question)
        timed = isinstance(self.channel, TimedChannel) and seconds is not None
        if not timed:
            await self._asked(question, seconds, timed=False)
            return
        if not await self._claim(question.id, True):
            return  # answered, withdrawn or timed out meanwhile
        try:
            await self._asked(question, seconds, timed=True)
        except asyncio.CancelledError:
            await asyncio.shield(self._claim(question.id, False))
            raise

    async def _asked(self, question: Question, seconds: float | None, *, timed: bool) -> None:
        """Ask the channel ``question`` (within ``seconds`` when it owns the limit: ``timed``)
        and send the workflow its answer, its failure or its timeout."""
        channel = self.channel
        assert self.communication is not None and channel is not None
        answer: Any = None
        error: str | None = None
        timed_out = False
        try:
            if isinstance(channel, TimedChannel) and timed:
                outcome = self.communication.outcome(question)
                answer = to_plain(await channel.ask_within(question, seconds, outcome))
            else:
                answer = to_plain(await channel.ask(question))
        except TimeoutError as problem:
            timed_out = timed
            if not timed:
                error = redact(f"{type(problem).__name__}: {problem}")
        except Unstorable as problem:
            error = (
                f"the answer to the question of agent {question.agent!r} ({question.text!r}) "
                f"is {problem}, which the session log cannot store"
            )
        except OrchestraError as problem:
            error = str(problem)
        except Exception as problem:
            error = redact(f"{type(problem).__name__}: {problem}")
        self._sending.add(question.id)
        try:
            payload: Answer = {"question_id": question.id, "answer": answer, "error": error}
            if timed_out:
                payload["timed_out"] = True
            await self._send(payload)
        finally:
            self._sending.discard(question.id)

    async def _claim(self, question_id: str, claimed: bool) -> bool:
        """Claim the question for this client's channel, which owns its time limit, or
        release the claim (the ``claim`` update): False when the workflow no longer has it
        open. A claim that gets no answer is not made: the workflow then applies the limit
        itself, from the ask, and this channel's timer applies it too."""
        try:
            return bool(
                await self.handle.execute_update(
                    protocol.CLAIM_UPDATE, args=[question_id, claimed], rpc_timeout=_QUERY_TIMEOUT
                )
            )
        except WorkflowUpdateFailedError:
            return True  # a workflow from before claims: it keeps the backstop anyway
        except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError):
            return True

    async def _send(self, payload: Answer) -> None:
        """Send an answer with the ``answer`` update, tried again (with the same update id:
        taken once) while the update gets no answer and the question is open; an answer the
        workflow refuses (unreadable) is dropped: the question is asked again."""
        question_id = payload["question_id"]
        update_id = f"{question_id}/{uuid.uuid4().hex}"  # asked again after a resume: new id
        delay = FAST
        while True:
            try:
                taken = await self.handle.execute_update(
                    protocol.ANSWER_UPDATE, payload, id=update_id, rpc_timeout=_QUERY_TIMEOUT
                )
            except WorkflowUpdateFailedError:
                return
            except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError):
                if question_id not in self._open:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, SLOW)
                continue
            if taken:
                self._answered.add(question_id)
                self._woken.set()
            return

    async def _withdraw_all(self) -> None:
        tasks = list(self._relayed.values())
        self._relayed.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def _question_text(handle: Any, question_id: str) -> dict[str, Any] | None:
    """An open question listed without its text (``OpenQuestion.parted``: too large for a
    records page), read whole in parts (the ``question`` query); None once it is no longer
    open. A query with no answer (a worker being replaced) is asked again."""
    text, offset = "", 0
    while True:
        try:
            answer = await handle.query(
                protocol.QUESTION_QUERY, args=[question_id, offset], rpc_timeout=_QUERY_TIMEOUT
            )
        except WorkflowQueryFailedError:
            return None  # the workflow failed: following it says so
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                return None
            await asyncio.sleep(FAST)  # no worker answered this time: asked again
            continue
        if not answer["open"] or (offset and not answer["part"]):
            return None
        text += str(answer["part"])
        offset = int(answer["offset"])
        if offset == 0:
            whole: dict[str, Any] = records.loads(text)
            return whole


def _question(session_id: str, item: dict[str, Any]) -> Question:
    """An open question (as the records page and the ``questions`` query list it) as the
    channel gets it."""
    response_line = item.get("response_line")
    try:
        response = None if response_line is None else from_plain(records.loads(response_line))
    except (ValueError, Unreadable):
        response = None
    return Question(
        id=item["id"],
        run_id=session_id,
        branch_id=item["branch_id"],
        agent=item["agent"],
        text=item["text"],
        kind=item["kind"],
        timeout=item.get("timeout"),
        response=response,
    )


def refused(session_id: str, error: WorkflowQueryFailedError) -> None:
    """Raise ``WorkflowVersionError`` when the worker that answered the query refuses the
    session for its version (its text, as the worker's log says it)."""
    marker = f"{WorkflowVersionError.__name__}: "
    if marker in error.message:
        refusal = error.message[error.message.index(marker) + len(marker) :]
        raise WorkflowVersionError(redact(refusal)) from None


def failed(session_id: str, failure: BaseException) -> OrchestraError:
    """What the caller gets for a workflow that failed: ``WorkflowVersionError`` when no worker
    hosts the workflow it was started with, a ``SessionError`` naming the cause otherwise."""
    cause = failure.cause if isinstance(failure, WorkflowFailureError) else failure
    if isinstance(cause, ApplicationError) and cause.type == WorkflowVersionError.__name__:
        return WorkflowVersionError(cause.message)
    closed = CLOSED.get(type(cause))
    if closed is not None:
        error = SessionError(
            f"session {session_id!r} was {closed} on Temporal before its run ended "
            f"({redact(str(cause)) or 'no reason given'}): nothing runs it any more; start it "
            "again with `orchestra run --temporal` (a new session), or delete it"
        )
        error.__cause__ = failure
        return error
    error = SessionError(
        f"session {session_id!r}: its Temporal workflow failed ({type(cause).__name__}: "
        f"{redact(str(cause))})"
    )
    error.__cause__ = failure
    return error


__all__ = ["FAST", "SLOW", "Follower", "failed"]
