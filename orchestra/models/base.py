"""The one interface every model speaks, and the types that cross it.

A model receives the agent's conversation (``messages``) and a :class:`StepInfo` describing
what the agent may do right now, and returns a :class:`ModelReply`: text, or a structured action
in the JSON action protocol. Provider adapters, the offline model and the test models all
implement this; provider quirks stay inside the adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """What a model is told about a tool: name, description and JSON schema of its arguments."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(slots=True, frozen=True)
class ToolCall:
    """A model's request to call a tool (its own, or a coordination tool such as invoke_agent)."""

    name: str
    arguments: Mapping[str, Any]
    call_id: str = ""


def with_unique_ids(calls: Sequence[ToolCall]) -> tuple[ToolCall, ...]:
    """The calls, each with an id no other one has: a tool's result is matched to its call by
    id, and some OpenAI-compatible servers send none (or the same one twice), as does an agent
    that builds its calls by hand. A missing or repeated id becomes ``call_<position>``."""
    seen: set[str] = set()
    unique = []
    for index, call in enumerate(calls):
        call_id = call.call_id
        if not call_id or call_id in seen:
            call_id = f"call_{index}"
            while call_id in seen:
                call_id += "_"
            call = ToolCall(call.name, call.arguments, call_id)
        seen.add(call_id)
        unique.append(call)
    return tuple(unique)


@dataclass(slots=True)
class Message:
    """One entry of an agent's conversation. ``name`` is the sender (agent, tool or user).

    An assistant message made of native tool calls lists them in ``tool_calls``; a tool
    result answers one of them through ``tool_call_id``.
    """

    role: Role
    content: str
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(slots=True, frozen=True)
class Usage:
    """Tokens (and cost, where known) spent by one model call, and why the model stopped
    (``finish_reason`` as the provider says it: OpenAI's ``finish_reason``, Anthropic's
    ``stop_reason``; traces report it)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    finish_reason: str | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class ModelReply:
    """What a model returned.

    ``content`` is text; ``action`` a structured action in the JSON action protocol;
    ``tool_calls`` the agent's own tools to run first; ``native_calls`` every native tool call
    of the reply as the provider made it (kept in the conversation); ``problem`` says why an
    adapter already knows the reply is unusable.
    """

    content: str | None = None
    action: Mapping[str, Any] | None = None
    usage: Usage | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    native_calls: tuple[ToolCall, ...] = ()
    problem: str | None = None

    def __post_init__(self) -> None:
        """Native calls with no id, or a repeated one, get one of their own (see
        :func:`with_unique_ids`), and so do the same calls in ``tool_calls``: the conversation
        then names each tool result by the id its call has there."""
        if not self.native_calls:
            return
        unique = with_unique_ids(self.native_calls)
        if unique == self.native_calls:
            return
        renamed = list(zip(self.native_calls, unique, strict=True))
        own = []
        for call in self.tool_calls:
            found = next((pair for pair in renamed if pair[0] == call), None)
            if found is not None:
                renamed.remove(found)
            own.append(call if found is None else found[1])
        self.native_calls, self.tool_calls = unique, tuple(own)


@dataclass(slots=True, frozen=True)
class PeerInfo:
    """A peer the agent may invoke now; ``label`` is the label the edge's condition needs."""

    name: str
    is_call: bool
    label: str | None = None


@dataclass(slots=True, frozen=True)
class StepInfo:
    """What the agent is and may do at this step (the ``info`` a FunctionModel receives).

    ``actions`` lists the ``next_action`` values allowed now; ``peers`` the agents it may
    invoke; ``parallel_groups`` the sets of peers it may invoke together in one action.
    """

    agent_name: str
    branch_id: str
    step: int
    actions: tuple[str, ...]
    peers: tuple[PeerInfo, ...]
    parallel_groups: tuple[tuple[str, ...], ...]
    can_finish: bool
    can_ask_user: bool
    tools: tuple[ToolSpec, ...] = ()
    context: Mapping[str, Any] = field(default_factory=dict)

    @property
    def peer_names(self) -> tuple[str, ...]:
        return tuple(peer.name for peer in self.peers)

    @property
    def tool_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.tools)


@runtime_checkable
class Model(Protocol):
    """Anything that can take a conversation and produce a reply."""

    async def complete(self, messages: Sequence[Message], info: StepInfo) -> ModelReply: ...


DeltaSink = Callable[[str], None]
"""Told each new piece of a reply's text, in order, as the model writes it."""


@runtime_checkable
class StreamingModel(Model, Protocol):
    """A model that can also hand its reply's text over as it is written: ``stream`` returns
    the very reply ``complete`` would, and tells ``on_delta`` each new piece of its text on the
    way (the JSON of an action too). Orchestra calls it only while someone listens for the
    pieces (docs/models.md, "Streaming"); a model without it is called with ``complete``."""

    async def stream(
        self, messages: Sequence[Message], info: StepInfo, on_delta: DeltaSink
    ) -> ModelReply: ...
