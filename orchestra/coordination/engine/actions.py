"""The one internal action type, and the single place replies are turned into actions.

Models speak the JSON action protocol::

    {"next_action": "invoke_agent", "action_input": [{"agent_name": "W1", "request": "..."}]}
    {"next_action": "final_response", "action_input": {"response": <any JSON>}}
    {"next_action": "ask_user", "action_input": {"question": "..."}}
    {"next_action": "call_tool", "action_input": [{"name": "...", "arguments": {...}}]}

as a dict or as JSON text (optionally in a ```json fence). A little leniency that small models
need is accepted: a single invocation or tool call not wrapped in a list, a bare string as the
final response or question. Function agents build :class:`Action` objects directly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from orchestra.models.base import ToolCall


class ActionKind(StrEnum):
    INVOKE = "invoke_agent"
    FINAL = "final_response"
    ASK_USER = "ask_user"
    CALL_TOOL = "call_tool"


@dataclass(slots=True, frozen=True)
class Invocation:
    """Hand ``request`` to ``agent_name``; ``label`` satisfies a label condition on the edge."""

    agent_name: str
    request: Any = None
    label: str | None = None

    def payload(self) -> dict[str, Any]:
        """What edge conditions see: the invocation item as the protocol writes it."""
        item: dict[str, Any] = {"agent_name": self.agent_name, "request": self.request}
        if self.label is not None:
            item["label"] = self.label
        return item


@dataclass(slots=True, frozen=True)
class Action:
    """What an agent decided: invoke peers, answer, ask the user, or call tools."""

    kind: ActionKind
    invocations: tuple[Invocation, ...] = ()
    response: Any = None
    question: str = ""
    tool_calls: tuple[ToolCall, ...] = ()

    @classmethod
    def invoke(cls, agent_name: str, request: Any = None, *, label: str | None = None) -> Action:
        """Hand the work to one agent (a call if it has an edge back, else a hand-off)."""
        return cls(ActionKind.INVOKE, invocations=(Invocation(agent_name, request, label),))

    @classmethod
    def invoke_parallel(cls, invocations: Iterable[Invocation | tuple[str, Any]]) -> Action:
        """Run several invocations as parallel branches."""
        items = tuple(
            item if isinstance(item, Invocation) else Invocation(item[0], item[1])
            for item in invocations
        )
        return cls(ActionKind.INVOKE, invocations=items)

    @classmethod
    def final(cls, response: Any) -> Action:
        return cls(ActionKind.FINAL, response=response)

    @classmethod
    def ask_user(cls, question: str) -> Action:
        return cls(ActionKind.ASK_USER, question=question)

    @classmethod
    def call_tools(cls, calls: Iterable[ToolCall]) -> Action:
        return cls(ActionKind.CALL_TOOL, tool_calls=tuple(calls))

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(item.agent_name for item in self.invocations)

    def to_protocol(self) -> dict[str, Any]:
        """The JSON action protocol form (what an LLM would have written)."""
        if self.kind is ActionKind.INVOKE:
            body: Any = [item.payload() for item in self.invocations]
        elif self.kind is ActionKind.FINAL:
            body = {"response": self.response}
        elif self.kind is ActionKind.ASK_USER:
            body = {"question": self.question}
        else:
            body = [
                {
                    "name": c.name,
                    "arguments": dict(c.arguments),
                    **({"id": c.call_id} if c.call_id else {}),
                }
                for c in self.tool_calls
            ]
        return {"next_action": self.kind.value, "action_input": body}

    def describe(self) -> str:
        if self.kind is ActionKind.INVOKE:
            return f"invoke_agent({', '.join(self.targets)})"
        if self.kind is ActionKind.CALL_TOOL:
            return f"call_tool({', '.join(c.name for c in self.tool_calls)})"
        return self.kind.value


class ActionParseError(ValueError):
    """A reply looked like an action but is not a valid one; the message says what is wrong."""


_FENCE = re.compile(r"```(?:json)?\s*(\{.*\})\s*```", re.DOTALL)
PROTOCOL_HINT = (
    'reply with one JSON object {"next_action": ..., "action_input": ...} where next_action is '
    "invoke_agent, final_response, ask_user or call_tool"
)


def parse_reply(content: str | None, structured: Mapping[str, Any] | None) -> Action | None:
    """The action a model reply carries, or None for plain text with no action.

    Raises :class:`ActionParseError` for a reply that is meant as an action but malformed.
    """
    if structured is not None:
        return parse_action(structured)
    text = (content or "").strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ActionParseError(
            f"the reply is not valid JSON ({error.msg}); {PROTOCOL_HINT}"
        ) from None
    if not isinstance(data, dict) or "next_action" not in data:
        return None
    return parse_action(data)


def parse_action(data: Mapping[str, Any]) -> Action:
    """Validate one protocol mapping into an :class:`Action`."""
    kind_text = data.get("next_action")
    try:
        kind = ActionKind(str(kind_text))
    except ValueError:
        raise ActionParseError(f"unknown next_action {kind_text!r}; {PROTOCOL_HINT}") from None
    extra = set(data) - {"next_action", "action_input"}
    if extra:
        raise ActionParseError(f"unexpected key(s) {', '.join(sorted(extra))}; {PROTOCOL_HINT}")
    body = data.get("action_input")
    if kind is ActionKind.INVOKE:
        return Action(kind, invocations=tuple(_invocation(item) for item in _items(body, kind)))
    if kind is ActionKind.FINAL:
        if isinstance(body, Mapping) and set(body) == {"response"}:
            return Action(kind, response=body["response"])
        return Action(kind, response=body)
    if kind is ActionKind.ASK_USER:
        question = body.get("question") if isinstance(body, Mapping) else body
        if not isinstance(question, str) or not question.strip():
            raise ActionParseError('ask_user needs action_input {"question": "<non-empty text>"}')
        return Action(kind, question=question)
    calls = tuple(_tool_call(item, index) for index, item in enumerate(_items(body, kind)))
    return Action(kind, tool_calls=calls)


def _items(body: Any, kind: ActionKind) -> list[Any]:
    items = [body] if isinstance(body, Mapping) else body
    if not isinstance(items, list) or not items:
        raise ActionParseError(f"{kind.value} needs action_input: a non-empty list of items")
    return items


def _invocation(item: Any) -> Invocation:
    if not isinstance(item, Mapping) or not isinstance(item.get("agent_name"), str):
        raise ActionParseError(
            'each invoke_agent item is {"agent_name": "<peer>", "request": ...}, got ' + repr(item)
        )
    extra = set(item) - {"agent_name", "request", "label"}
    if extra:
        raise ActionParseError(f"unexpected key(s) {', '.join(sorted(extra))} in {item!r}")
    label = item.get("label")
    if label is not None and not isinstance(label, str):
        raise ActionParseError(f"'label' must be a string, got {label!r}")
    return Invocation(item["agent_name"], item.get("request"), label)


def _tool_call(item: Any, index: int) -> ToolCall:
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
        raise ActionParseError(
            'each call_tool item is {"name": "<tool>", "arguments": {...}}, got ' + repr(item)
        )
    arguments = item.get("arguments", {})
    if not isinstance(arguments, Mapping):
        raise ActionParseError(f"tool {item['name']!r}: 'arguments' must be an object")
    return ToolCall(item["name"], dict(arguments), str(item.get("id", f"call_{index}")))
