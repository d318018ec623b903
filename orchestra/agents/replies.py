"""Turning a model's reply into an :class:`~orchestra.agents.contract.Action`.

Models speak the JSON action protocol::

    {"next_action": "invoke_agent", "action_input": [{"agent_name": "W1", "request": "..."}]}
    {"next_action": "final_response", "action_input": {"response": <any JSON>}}
    {"next_action": "ask_user", "action_input": {"question": "..."}}
    {"next_action": "call_tool", "action_input": [{"name": "...", "arguments": {...}}]}

as a dict or as JSON text (optionally in a ```json fence). A little leniency that small models
need is accepted: a single invocation or tool call not wrapped in a list, a bare string as the
final response or question. Function agents build :class:`Action` objects directly.

Whatever the text holds, reading it fails only with :class:`ActionParseError`: a reply nested
too deep, holding a number too long to convert, or otherwise unreadable is steered like any
other unusable reply.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from orchestra.models.base import ToolCall
from orchestra.models.protocol import UnreadableJSON, check_nesting, read_json

from .contract import PROTOCOL_HINT, Action, ActionKind, Invocation


class ActionParseError(ValueError):
    """A reply looked like an action but is not a valid one; the message says what is wrong."""


_OPENING_FENCE = re.compile(r"```(?:json)?\s*(?=\{)")
_FENCE = "```"


def _fenced(text: str) -> str | None:
    """The JSON object in a ```json fence: from the first opening fence to the last closing
    fence that follows a ``}``, found in time linear in the reply (one regex ``(\\{.*\\})``
    backtracked from every fence: 320 KB of fences took 5 s, on the event loop)."""
    opening = _OPENING_FENCE.search(text)
    if opening is None:
        return None
    start = opening.end()
    end = len(text)
    while (end := text.rfind(_FENCE, start, end)) > start:
        last = end - 1
        while last > start and text[last].isspace():
            last -= 1
        if text[last] == "}":
            return text[start : last + 1]
    return None


def parse_reply(content: str | None, structured: Mapping[str, Any] | None) -> Action | None:
    """The action a model reply carries, or None for plain text with no action.

    Raises :class:`ActionParseError` for a reply that is meant as an action but malformed or
    unreadable.
    """
    if structured is not None:
        return parse_action(structured)
    text = (content or "").strip()
    fenced = _fenced(text)
    if fenced is not None:
        text = fenced
    if not text.startswith("{"):
        return None
    try:
        data = read_json(text)
    except UnreadableJSON as error:
        raise ActionParseError(f"the reply {error}; {PROTOCOL_HINT}") from None
    if not isinstance(data, dict) or "next_action" not in data:
        return None
    return _action(data)


def parse_action(data: Mapping[str, Any]) -> Action:
    """Validate one protocol mapping into an :class:`Action` (one nested too deep for the
    session log to store is refused)."""
    _check_nesting(data, "the action")
    return _action(data)


def checked_tool_calls(calls: Iterable[ToolCall]) -> tuple[ToolCall, ...]:
    """A reply's own tool calls, refused (:class:`ActionParseError`) when the arguments of one
    nest too deep for the session log to store."""
    calls = tuple(calls)
    for call in calls:
        _check_nesting(call.arguments, f"the arguments of tool call {call.name!r}")
    return calls


def _check_nesting(value: Any, what: str) -> None:
    try:
        check_nesting(value)
    except UnreadableJSON as error:
        raise ActionParseError(f"{what} {error}") from None


def _action(data: Mapping[str, Any]) -> Action:
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
