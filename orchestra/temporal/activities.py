"""The step and tool activities: where a session's agents really run, on a worker that hosts
its workflow. What they return crosses as the session log stores it; an agent's or a tool's
own failure is an answer (recorded by the workflow as embedded), never an activity failure:
only what Temporal should retry (a lost worker, a timeout) fails the activity.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from orchestra.agents.base import BaseAgent
from orchestra.agents.contract import SharedContext, StepOutcome, StepRequest, as_taken
from orchestra.agents.pool import AgentPool
from orchestra.coordination.engine.questions import really_cancelled
from orchestra.coordination.engine.step_errors import as_step_error, unstorable_step
from orchestra.coordination.engine.tool_calls import failure_text
from orchestra.coordination.state.codec import encode_error, shape
from orchestra.coordination.state.values import Unstorable, to_plain
from orchestra.errors import AgentStepError, ModelAPIError, OrchestraError, ToolError
from orchestra.models.base import Message, ToolCall

from . import protocol
from .hosting import Hosted, Hosting
from .protocol import MESSAGE, STEP_ACTIVITY, STEP_CALL, TOOL_ACTIVITY, StepCall, pack, unpack

_OUTCOME = shape(StepOutcome)
_TOOL_CALL = shape(ToolCall)


class Activities:
    """The activities of a worker, bound to what it hosts."""

    def __init__(self, hosting: Hosting) -> None:
        self.hosting = hosting

    def _agent(self, version: str, name: str) -> BaseAgent | AgentPool:
        hosted: Hosted | None = self.hosting.get(version)
        if hosted is None or name not in hosted.setup.agents:
            raise ApplicationError(
                f"this worker does not host agent {name!r} of workflow version {version} (it "
                f"hosts: {', '.join(self.hosting.versions) or 'none'})",
                type="WorkflowVersionError",
                non_retryable=True,
            )
        return hosted.setup.agents[name]

    @activity.defn(name=STEP_ACTIVITY)
    async def step(self, data: bytes) -> bytes:
        """One agent step: ``{outcome, messages, retries}``, or ``{error, messages, retries}``
        when the agent failed (the error the runner records for it embedded), packed; an
        answer over the payload limit is the step's failure, naming its size."""
        payload = _read(data)
        name, branch_id = payload["agent"], payload["branch_id"]
        found = self._agent(payload["version"], name)
        call: StepCall = STEP_CALL.decode(payload["request"])
        retries: list[dict[str, Any]] = []
        request = StepRequest(
            input=call.input,
            messages=call.messages,
            info=call.info,
            context=SharedContext(call.context),
            retry=call.retry,
            report_retry=lambda _branch, _agent, attempt, delay, error: retries.append(
                _retry(attempt, delay, error)
            ),
        )
        before = len(request.messages)
        failure: OrchestraError | None = None
        async with _heartbeating(), _leased(found) as agent:
            try:
                outcome = await agent.step(request)
            except asyncio.CancelledError:
                if really_cancelled():
                    raise  # the workflow cancelled it (its step_timeout, a pause, the run's end)
                failure = AgentStepError(f"agent {name!r} raised CancelledError")
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as error:
                failure = as_step_error(name, error)
        answer: dict[str, Any] = {
            "messages": _messages(request.messages[before:]),
            "retries": retries,
        }
        if failure is None:
            try:
                answer["outcome"] = _OUTCOME.encode(as_taken(outcome))
            except Unstorable as unstorable:
                failure = unstorable_step(name, branch_id, unstorable.error())
        if failure is not None:
            answer["error"] = encode_error(failure)

        def too_large(size: int) -> dict[str, Any]:
            error = AgentStepError(
                f"session {activity.info().workflow_id!r}: agent {name!r} (branch {branch_id}): "
                f"its step's answer is {size} bytes packed, over Temporal's payload limit of "
                f"{protocol.PAYLOAD_LIMIT} bytes"
            )
            return {"messages": [], "retries": retries, "error": encode_error(error)}

        return _fitting(answer, too_large)

    @activity.defn(name=TOOL_ACTIVITY)
    async def tool(self, data: bytes) -> bytes:
        """One tool call: ``{ok, result}``, packed; the tool's own failure (a CancelledError
        it raised itself included) is ``ok=False`` with its text as embedded, cut to fit the
        payload limit; a result the log cannot store is refused as embedded; a result over the
        payload limit is ``{ok: False, too_large: size}`` (the tool ran: the workflow decides
        what that means for it). Only a cancel of the call itself fails the activity."""
        payload = _read(data)
        name = payload["agent"]
        found = self._agent(payload["version"], name)
        call: ToolCall = _TOOL_CALL.decode(payload["call"])
        async with _heartbeating(), _leased(found) as agent:
            try:
                result = await agent.call_tool(call)
            except asyncio.CancelledError:
                if really_cancelled():
                    raise  # the workflow cancelled it (its step_timeout, a pause, the run's end)
                cancelled = ToolError(f"tool {call.name!r} (agent {name!r}) raised CancelledError")
                return _failed(failure_text(cancelled))
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as error:
                return _failed(failure_text(error))
        try:
            plain = to_plain(result)
        except Unstorable as unstorable:
            return _failed(
                f"the tool returned {unstorable.error()}, which the session log cannot store"
            )
        return _fitting(
            {"ok": True, "result": plain}, lambda size: {"ok": False, "too_large": size}
        )


def _failed(text: str) -> bytes:
    """A tool's failure as its answer: its text, cut to fit the payload limit when it is over
    (the head kept, the bytes cut said): the call ran and failed, which the model is told, as
    embedded, never an activity failure (run again, or in doubt)."""
    encoded = text.encode()
    room = protocol.PAYLOAD_LIMIT // 2  # text that does not compress packs to about its size
    if len(encoded) > room:
        head = encoded[:room].decode(errors="ignore")
        text = (
            f"{head} [... {len(encoded) - room} more bytes cut: the failure's text is "
            f"{len(encoded)} bytes, over Temporal's payload limit]"
        )
    return pack({"ok": False, "result": text})


def _fitting(answer: dict[str, Any], instead: Callable[[int], dict[str, Any]]) -> bytes:
    """``answer`` packed when it is within Temporal's payload limit, else what ``instead``
    makes of its packed size (small): every answer of an activity is checked here, so none
    fails its activity for its size (Temporal would run it again, or call it in doubt)."""
    packed = pack(answer)
    if len(packed) <= protocol.PAYLOAD_LIMIT:
        return packed
    return pack(instead(len(packed)))


def _read(data: bytes) -> dict[str, Any]:
    """A packed payload; one that cannot be read fails the activity for good (retrying it
    would read the same bytes)."""
    try:
        return unpack(data)
    except ValueError as error:
        raise ApplicationError(
            str(error), type="SessionCorruptedError", non_retryable=True
        ) from None


def _retry(attempt: int, delay: float, error: ModelAPIError) -> dict[str, Any]:
    return {
        "attempt": attempt,
        "delay": delay,
        "error": encode_error(error),
        "status": error.status,
    }


def _messages(added: list[Message]) -> list[dict[str, Any]]:
    """The messages a step added, as the log stores them (none when one cannot be stored: the
    step is recorded without them, as embedded)."""
    try:
        return [MESSAGE.encode(message) for message in added]
    except Unstorable:
        return []


@contextlib.asynccontextmanager
async def _heartbeating() -> AsyncIterator[None]:
    """Heartbeat every quarter of the heartbeat timeout while the call runs, so a worker that
    dies is noticed within it (and the workflow's cancel reaches the call); the worker sends
    them on at least every ``HEARTBEAT_THROTTLE`` (``worker.py``), so a live worker's beats
    reach the server with half the timeout to spare."""
    timeout = activity.info().heartbeat_timeout
    if timeout is None:
        yield
        return
    interval = timeout.total_seconds() / 4

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(interval)

    beating = asyncio.create_task(beat())
    try:
        yield
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


@contextlib.asynccontextmanager
async def _leased(found: BaseAgent | AgentPool) -> AsyncIterator[BaseAgent]:
    """The agent; a pool's instance leased for the call."""
    if not isinstance(found, AgentPool):
        yield found
        return
    instance = await found.acquire()
    try:
        yield instance
    finally:
        found.release(instance)
