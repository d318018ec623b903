"""The test kit's models: drive agents offline, deterministically, with no API key.

``ScriptedModel`` replays a list of replies; ``FunctionModel`` computes each reply with your
function. Both accept the same reply forms an LLM produces: plain text, or an action in the
JSON action protocol (a dict, or its JSON text). Both stream when a run listens for replies as
they are written (docs/models.md, "Streaming"): the reply's text (an action as its JSON) is
handed over in pieces of ``chunk_size`` characters, so streaming can be tested offline.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestra.errors import ScriptExhaustedError

from .base import DeltaSink, Message, ModelReply, StepInfo

Reply = str | Mapping[str, Any] | ModelReply
ReplyFunction = Callable[[Sequence[Message], StepInfo], Reply | Awaitable[Reply]]


def as_reply(value: object, source: str) -> ModelReply:
    if isinstance(value, ModelReply):
        return value
    if isinstance(value, str):
        return ModelReply(content=value)
    if isinstance(value, Mapping):
        return ModelReply(action=value)
    raise TypeError(
        f"{source} must produce a str, an action dict or a ModelReply, got {type(value).__name__}"
    )


CHUNK_SIZE = 32
"""Characters of a test model's reply in each streamed piece, unless ``chunk_size`` says."""


def check_chunk_size(chunk_size: object) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise TypeError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return chunk_size


def stream_text(reply: ModelReply, chunk_size: int, on_delta: DeltaSink) -> ModelReply:
    """Hand ``reply``'s text (its action as JSON when it has no text) to ``on_delta`` in
    pieces of ``chunk_size`` characters, as a model writing it would; returns the reply."""
    text = reply.content
    if text is None:  # an action (a reply of only tool calls has no text to write)
        text = "" if reply.action is None else json.dumps(reply.action, default=str)
    for start in range(0, len(text), chunk_size):
        on_delta(text[start : start + chunk_size])
    return reply


@dataclass(slots=True, frozen=True)
class RecordedCall:
    """One call a test model received: a copy of the conversation and the step info."""

    messages: tuple[Message, ...]
    info: StepInfo


class ScriptedModel:
    """Replies consumed in order, one per model call.

    A reply may be text, an action dict, a ModelReply, or an exception instance, which the call
    raises (to script failures). Running out of replies is a :class:`ScriptExhaustedError`
    naming the agent. ``calls`` records what the model was asked, for assertions.
    """

    def __init__(
        self,
        replies: Iterable[Reply | BaseException],
        *,
        record: bool = True,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self.chunk_size = check_chunk_size(chunk_size)
        self._replies = list(replies)
        self._next = 0
        self._record = record
        self.calls: list[RecordedCall] = []

    @property
    def remaining(self) -> int:
        return len(self._replies) - self._next

    async def complete(self, messages: Sequence[Message], info: StepInfo) -> ModelReply:
        if self._record:
            self.calls.append(RecordedCall(tuple(messages), info))
        if self._next >= len(self._replies):
            raise ScriptExhaustedError(
                f"the ScriptedModel of agent {info.agent_name!r} ran out of replies after "
                f"{len(self._replies)}; add replies to its script"
            )
        reply = self._replies[self._next]
        self._next += 1
        if isinstance(reply, BaseException):
            raise reply
        return as_reply(reply, "a ScriptedModel reply")

    async def stream(
        self, messages: Sequence[Message], info: StepInfo, on_delta: DeltaSink
    ) -> ModelReply:
        """The next reply, its text handed to ``on_delta`` in pieces first."""
        return stream_text(await self.complete(messages, info), self.chunk_size, on_delta)


class FunctionModel:
    """Each reply computed by ``fn(messages, info)``, sync or async.

    ``info`` (a :class:`StepInfo`) tells the agent's name, the actions and peers allowed now,
    so one function can play a whole team's models in a test.
    """

    def __init__(self, fn: ReplyFunction, *, chunk_size: int = CHUNK_SIZE) -> None:
        if not callable(fn):
            raise TypeError(f"FunctionModel needs a callable, got {fn!r}")
        self.chunk_size = check_chunk_size(chunk_size)
        self.fn = fn
        self.call_count = 0

    async def complete(self, messages: Sequence[Message], info: StepInfo) -> ModelReply:
        self.call_count += 1
        value = self.fn(messages, info)
        if inspect.isawaitable(value):
            value = await value
        return as_reply(value, "a FunctionModel function")

    async def stream(
        self, messages: Sequence[Message], info: StepInfo, on_delta: DeltaSink
    ) -> ModelReply:
        """The function's reply, its text handed to ``on_delta`` in pieces first."""
        return stream_text(await self.complete(messages, info), self.chunk_size, on_delta)
