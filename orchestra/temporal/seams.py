"""The four seams the embedded runner is given inside a session workflow: its clock, its
agents, its journal and its user channel. The ``Runner`` itself is unchanged: it runs the
same steps, timers and questions, and the seams make them deterministic (workflow time,
activities, a journal kept in the workflow, questions answered by updates).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from orchestra.agents.base import BaseAgent
from orchestra.agents.contract import StepOutcome, StepRequest
from orchestra.communication.channels import Question
from orchestra.coordination.config import ErrorHandlingConfig
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.engine.questions import really_cancelled
from orchestra.coordination.engine.tool_calls import ToolFailed
from orchestra.coordination.state import records
from orchestra.coordination.state.codec import decode_error, shape
from orchestra.coordination.state.values import Unreadable, from_plain, to_plain
from orchestra.errors import (
    AgentStepError,
    ModelAPIError,
    ToolError,
    ToolInDoubtError,
    UserInputError,
)
from orchestra.models.base import ToolCall, ToolSpec
from orchestra.models.secrets import redact

from . import protocol
from .protocol import (
    MESSAGE,
    STEP_ACTIVITY,
    STEP_CALL,
    TOOL_ACTIVITY,
    Answer,
    OpenQuestion,
    StepCall,
    pack,
    unpack,
)

_OUTCOME = shape(StepOutcome)
_TOOL_CALL = shape(ToolCall)
NO_STEP_TIMEOUT = timedelta(days=30)
"""An activity's start-to-close timeout where the run sets no ``step_timeout``: practically
none (Temporal wants one); a lost worker is noticed by the heartbeat timeout instead."""

LOST_ATTEMPTS = 10
"""How many times a step or an idempotent tool call is started before its loss (its worker
died or stopped, its heartbeat timed out) fails it: Temporal's retries of a lost call,
independent of ``max_retries`` (the model's retries, made inside each attempt)."""

HISTORY_BYTES = 40 * 1024 * 1024
HISTORY_EVENTS = 40_000
"""Past either, no step or tool call is scheduled any more: the run ends with an error naming
the session, before Temporal terminates the workflow (at 50 MiB or 51,200 events)."""


TASK_BYTES = 2_000_000
"""The most bytes of activity inputs one workflow task schedules: one completion of the task
carries them all, with the answer of a ``records`` query asked meanwhile (up to
``protocol.PAGE_BYTES``), and gRPC refuses a message over 4 MiB (Temporal terminates the
session). A fan-out of a large document schedules its branches' steps over several tasks."""


class TaskBytes:
    """The bytes of activity inputs scheduled in the current workflow task (its history
    length tells it apart: the same on every replay), shared by a session's agents."""

    def __init__(self) -> None:
        self._task = -1
        self._bytes = 0

    async def room(self, size: int) -> None:
        """Wait until the current workflow task has room for ``size`` more bytes (a task with
        none scheduled yet always has): a short timer moves the call to a later task."""
        while True:
            task = workflow.info().get_current_history_length()
            if task != self._task:
                self._task, self._bytes = task, 0
            if self._bytes == 0 or self._bytes + size <= TASK_BYTES:
                self._bytes += size
                return
            await workflow.sleep(_NEXT_TASK)


_NEXT_TASK = timedelta(milliseconds=1)
QUESTION_CLAIMS = "question-claims"
"""The patch (``workflow.patched``) under which a question's limit applies in the workflow
unless a client that owns it claimed the question."""


class WorkflowClock:
    """Workflow time: the same on every replay of the workflow."""

    __slots__ = ()

    def now(self) -> float:
        return workflow.now().timestamp()

    def monotonic(self) -> float:
        return workflow.time()


class RecordsJournal:
    """The run's records as their log lines, kept in the workflow (Temporal's history is the
    durable journal: everything the workflow did is in it before anything else happens, so
    ``gate`` and ``flush`` return at once). The client reads the lines by query."""

    def __init__(self, session_id: str, run: str, lines: list[str]) -> None:
        self.session_id = session_id
        self.run = run
        self.lines = lines

    def record(self, item: inp.Record, due: bool) -> None:
        """The record as the next line (``UnstorableValueError`` when it cannot be stored, as a
        session log refuses it: the runner handles that as embedded)."""
        position = len(self.lines) + 1
        line = records.encode(item, position)
        records.check_size(line, self.session_id, position)
        self.lines.append(line)

    async def gate(self) -> None:
        return None

    async def flush(self) -> None:
        return None


class WorkflowChannel:
    """The run's user channel: each question waits in a table of open questions (the
    ``questions`` query lists them) until the ``answer`` update answers it. The communication
    manager around it applies the client's ``user_timeout`` with workflow timers."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[Question, asyncio.Future[Any]]] = {}
        self._claimed: set[str] = set()

    async def ask(self, question: Question) -> Any:
        waiting: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._open[question.id] = (question, waiting)
        try:
            return await waiting
        finally:
            self._open.pop(question.id, None)
            self._claimed.discard(question.id)

    def claim(self, question_id: str, claimed: bool) -> bool:
        """A client whose channel owns the time limit shows the question (``claimed``), or
        no longer does (it went away); False when the question is not open."""
        found = self._open.get(question_id)
        if found is None or found[1].done():
            return False
        if claimed:
            self._claimed.add(question_id)
        else:
            self._claimed.discard(question_id)
        return True

    def claimed(self, question_id: str) -> bool:
        return question_id in self._claimed

    def answer(self, question_id: str, answer: Any, error: str | TimeoutError | None) -> bool:
        """Answer an open question (``error``: the client's channel failed, or, a
        ``TimeoutError``, its limit passed); False when it is not open (answered, withdrawn,
        timed out)."""
        found = self._open.get(question_id)
        if found is None or found[1].done():
            return False
        question, waiting = found
        if isinstance(error, TimeoutError):
            waiting.set_exception(TimeoutError())
        elif error is not None:
            waiting.set_exception(
                UserInputError(
                    redact(
                        f"the user channel failed on the question of agent {question.agent!r} "
                        f"({question.text!r}): {error}"
                    )
                )
            )
        else:
            waiting.set_result(answer)
        return True

    def listed(self) -> list[OpenQuestion]:
        return [
            OpenQuestion(
                id=question.id,
                branch_id=question.branch_id,
                agent=question.agent,
                text=question.text,
                kind=question.kind,
                timeout=question.timeout,
                response_line=(
                    None if question.response is None else json.dumps(to_plain(question.response))
                ),
            )
            for question, waiting in self._open.values()
            if not waiting.done()
        ]


class ClientTimed:
    """The run's channel when the client's owns the time limit (``Communication.client_timed``:
    the terminal, which counts it from when its user sees the question): a
    ``TimedChannel`` to the communication manager, so the limit is not counted here from the
    ask; the client reports the timeout (``answer`` with ``timed_out``), which the manager
    turns into the embedded outcome. A backstop (``CLIENT_LIMIT_BACKSTOP`` past the limit)
    times the question out here if no client reports."""

    def __init__(self, channel: WorkflowChannel) -> None:
        self._channel = channel

    async def ask(self, question: Question) -> Any:
        return await self._channel.ask(question)

    def _changed(
        self, asking: asyncio.Future[Any], question_id: str, claimed: bool
    ) -> Callable[[], bool]:
        """Whether the question was answered, or its claim changed from ``claimed``."""
        return lambda: asking.done() or self._channel.claimed(question_id) != claimed

    async def ask_within(self, question: Question, seconds: float | None, outcome: str) -> Any:
        """The question's answer; a ``TimeoutError`` at its limit unless a client whose channel
        owns the limit holds a claim on it (the backstop applies then): the client that
        started the session may be gone (its claims released), and a plain channel follow."""
        if seconds is None:
            return await self._channel.ask(question)
        if not workflow.patched(QUESTION_CLAIMS):  # a history from before claims
            async with asyncio.timeout(seconds + protocol.CLIENT_LIMIT_BACKSTOP):
                return await self._channel.ask(question)
        limit = workflow.time() + seconds
        asking = asyncio.ensure_future(self._channel.ask(question))
        try:
            while not asking.done():
                claimed = self._channel.claimed(question.id)
                grace = protocol.CLIENT_LIMIT_BACKSTOP if claimed else protocol.CLAIM_GRACE
                left = limit + grace - workflow.time()
                if left <= 0:
                    raise TimeoutError()
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(
                        self._changed(asking, question.id, claimed), timeout=left
                    )
            return asking.result()
        finally:
            asking.cancel()


def read_answer(answer: Answer) -> tuple[str, Any, str | TimeoutError | None]:
    """The ``answer`` update's question id, answer (read back from its plain form) and error
    (a ``TimeoutError`` for ``timed_out``); an ``ApplicationError`` naming what is wrong when
    it is not one (that fails the update; any other exception would fail the workflow task, on
    every replay)."""
    try:
        question_id, error = answer["question_id"], answer.get("error")
        timed_out = answer.get("timed_out", False)
        if type(question_id) is not str or not (error is None or type(error) is str):
            raise Unreadable("question_id must be text and error text or null")
        if type(timed_out) is not bool:
            raise Unreadable("timed_out must be true or false")
        if timed_out:
            return question_id, None, TimeoutError()
        return question_id, from_plain(answer.get("answer")), error
    except (Unreadable, KeyError, TypeError, RecursionError) as problem:
        raise ApplicationError(
            f"an answer that cannot be read ({type(problem).__name__}: {problem})",
            type="UserInputError",
            non_retryable=True,
        ) from None


class ActivityAgent(BaseAgent):
    """An agent of the hosted workflow, as the workflow sees it: its steps and tool calls run
    as activities on whichever worker hosts the workflow (a pool's instance is leased there,
    for the call)."""

    def __init__(
        self,
        name: str,
        version: str,
        tools: tuple[ToolSpec, ...],
        idempotent: frozenset[str],
        step_timeout: float | None,
        heartbeat_timeout: float,
        errors: ErrorHandlingConfig,
        task_bytes: TaskBytes,
    ) -> None:
        self.name = name
        self._task_bytes = task_bytes
        self.version = version
        self._tools = tools
        self._idempotent = idempotent
        self._start_to_close = timedelta(seconds=step_timeout) if step_timeout else NO_STEP_TIMEOUT
        self._heartbeat = timedelta(seconds=heartbeat_timeout)
        initial = max(errors.retry_initial_delay, 0.1)
        self._retry = RetryPolicy(
            initial_interval=timedelta(seconds=initial),
            maximum_interval=timedelta(seconds=max(errors.retry_max_delay, initial)),
            backoff_coefficient=2.0,
            maximum_attempts=LOST_ATTEMPTS,
        )
        self._once = RetryPolicy(maximum_attempts=1)

    @property
    def tool_specs(self) -> tuple[ToolSpec, ...]:
        return self._tools

    def is_idempotent(self, tool: str) -> bool:
        return tool in self._idempotent

    async def _activity(
        self, name: str, payload: dict[str, Any], retry: RetryPolicy, what: str
    ) -> dict[str, Any]:
        """The activity's answer. When the runner cancels the call (its step_timeout, a pause,
        the run's end, the worker dropping the session from its cache: its tasks are
        cancelled, and the activity's handle ends with temporalio's own error then), the call
        raises ``CancelledError``, as an embedded step does: not the agent's failure (which
        the runner would record, and go on from, in a session being dropped). Not
        scheduled (``AgentStepError`` naming ``what``) when the history is near Temporal's
        limits or the packed payload over its payload limit: both deterministic. Scheduled
        in a later workflow task when this one has no room for it (``TaskBytes``)."""
        _check_history(what)
        data = pack(payload)
        if len(data) > protocol.PAYLOAD_LIMIT:
            raise AgentStepError(
                f"session {workflow.info().workflow_id!r}: {what}: its input is {len(data)} "
                f"bytes packed, over Temporal's payload limit of {protocol.PAYLOAD_LIMIT} bytes"
            )
        try:
            await self._task_bytes.room(len(data))
            answer: bytes = await workflow.execute_activity(
                name,
                data,
                start_to_close_timeout=self._start_to_close,
                heartbeat_timeout=self._heartbeat,
                retry_policy=retry,
                result_type=bytes,
            )
        except BaseException as error:
            if not isinstance(error, GeneratorExit) and really_cancelled():
                raise asyncio.CancelledError from None
            raise
        return unpack(answer)

    async def step(self, request: StepRequest) -> StepOutcome:
        """The step, run by the step activity; its model retries reported as they were made
        there, the messages it added appended here, its failure raised as the agent's."""
        retry = request.retry if isinstance(request.retry, ErrorHandlingConfig) else None
        call = StepCall(
            input=request.input,
            messages=list(request.messages),
            info=request.info,
            context=dict(request.context),
            retry=retry,
        )
        payload = {
            "version": self.version,
            "agent": self.name,
            "branch_id": request.info.branch_id,
            "request": STEP_CALL.encode(call),
        }
        what = f"agent {self.name!r} (branch {request.info.branch_id})"
        try:
            answer = await self._activity(STEP_ACTIVITY, payload, self._retry, what)
        except ActivityError as error:
            raise AgentStepError(
                f"agent {self.name!r}: its step could not be run on Temporal ({_why(error)})"
            ) from None
        _report_retries(request, answer.get("retries", []))
        request.messages.extend(MESSAGE.decode(item) for item in answer.get("messages", []))
        if "error" in answer:
            raise decode_error(answer["error"])
        outcome: StepOutcome = _OUTCOME.decode(answer["outcome"])
        return outcome

    async def call_tool(self, call: ToolCall) -> Any:
        """The tool's result, from the tool activity; its own failure raised as a ``ToolError``
        text (as embedded). A non-idempotent call whose attempt failed once it may have started
        (its worker died or stopped, it timed out, was cancelled, its result was too large) is
        in doubt: it is never run again."""
        idempotent = call.name in self._idempotent
        payload = {"version": self.version, "agent": self.name, "call": _TOOL_CALL.encode(call)}
        what = f"tool {call.name!r} (agent {self.name!r})"
        try:
            answer = await self._activity(
                TOOL_ACTIVITY, payload, self._retry if idempotent else self._once, what
            )
        except ActivityError as error:
            if not idempotent and not _refused(error):
                raise ToolInDoubtError(f"tool {call.name!r}: its attempt was lost") from None
            raise ToolError(f"{what} could not be run on Temporal ({_why(error)})") from None
        if "too_large" in answer:
            if not idempotent:
                raise ToolInDoubtError(f"tool {call.name!r}: its result was too large to return")
            raise ToolError(
                f"{what} ran, but its result is {answer['too_large']} bytes packed, over "
                f"Temporal's payload limit of {protocol.PAYLOAD_LIMIT} bytes: too large to return"
            )
        if not answer["ok"]:
            raise ToolFailed(answer["result"])
        return from_plain(answer["result"])


def _refused(error: ActivityError) -> bool:
    """Whether the worker refused the call before running it (it does not host the agent)."""
    cause = error.cause
    return isinstance(cause, ApplicationError) and cause.type == "WorkflowVersionError"


def _check_history(what: str) -> None:
    """Refuse to schedule ``what`` once the workflow's history is near Temporal's limits
    (``HISTORY_BYTES``, ``HISTORY_EVENTS``); the history's size at this task is the same on
    every replay."""
    info = workflow.info()
    size, events = info.get_current_history_size(), info.get_current_history_length()
    if size > HISTORY_BYTES or events > HISTORY_EVENTS:
        raise AgentStepError(
            f"session {info.workflow_id!r}: {what} is not run: the session's Temporal history "
            f"holds {size} bytes in {events} events, near Temporal's limits (this run stops at "
            f"{HISTORY_BYTES} bytes or {HISTORY_EVENTS} events); start a new session to go on"
        )


def _why(error: ActivityError) -> str:
    """What failed the activity (its last attempt's failure, a timeout), API keys redacted."""
    cause = error.cause or error
    return redact(f"{type(cause).__name__}: {cause}")


def _report_retries(request: StepRequest, retries: list[dict[str, Any]]) -> None:
    """Each model retry the step made, as the runner hears it embedded (``report_retry``)."""
    report = request.report_retry
    if report is None:
        return
    for item in retries:
        error = decode_error(item["error"])
        if isinstance(error, ModelAPIError):
            error.status = item.get("status")
            report(
                request.info.branch_id,
                request.info.agent_name,
                item["attempt"],
                item["delay"],
                error,
            )
