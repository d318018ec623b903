"""The coordination protocol as a model sees it: JSON schemas, native tools, and the way back.

Two ways to let a model decide, both mapped onto the one internal action:

* **native tool calls** — the coordination actions are offered as tools (``invoke_agent`` with
  an enum of the peers allowed now, ``final_response``, ``ask_user`` when allowed) next to the
  agent's own tools; :func:`reply_from_tool_calls` maps the calls back;
* **the JSON action protocol** — the reply is one JSON object, and :func:`action_schema` is its
  JSON schema under the current permissions, for servers that constrain decoding to a schema.

Both shrink to what the agent may do now: a peer it may not invoke is not in the enum, and a
parallel invocation is offered only when a parallel rule allows one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from .base import ModelReply, StepInfo, ToolCall, ToolSpec, Usage

INVOKE, FINAL, ASK, CALL = "invoke_agent", "final_response", "ask_user", "call_tool"
COORDINATION_TOOLS = frozenset({INVOKE, FINAL, ASK})


MAX_NESTING = 100
"""How deep a reply's JSON may nest. An action needs a handful of levels; the session log stores
a few hundred and Python's JSON reader gives up near a thousand, so a model's reply nested
deeper is refused as unusable (the agent is steered) before anything tries to store it."""
_TOO_DEEP = f"nests deeper than {MAX_NESTING} levels"


class UnreadableJSON(ValueError):
    """A model's JSON text cannot be used; the message completes "the reply ..." (or "the
    arguments of tool call 'x' ...") in words the model is steered with."""


def read_json(text: str) -> Any:
    """``text`` parsed as JSON, or :class:`UnreadableJSON`. Model output is untrusted: besides
    malformed text, Python's reader raises RecursionError on deep nesting and ValueError on a
    number of more digits than it converts, and a value that parses may still nest deeper
    than the log stores. All of these are a reply that cannot be used, never a crash."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UnreadableJSON(f"is not valid JSON ({error.msg})") from None
    except (RecursionError, ValueError) as error:  # json.loads raises no other ValueError
        raise beyond_reader(error) from None
    check_nesting(value)
    return value


def beyond_reader(error: RecursionError | ValueError) -> UnreadableJSON:
    """What Python's JSON reader raising ``error`` on well-formed JSON means: it nests too
    deep (RecursionError), or holds a number of more digits than ``int`` converts."""
    if isinstance(error, RecursionError):
        return UnreadableJSON(_TOO_DEEP)
    return UnreadableJSON(f"holds a number of more than {sys.get_int_max_str_digits()} digits")


def check_nesting(value: Any) -> None:
    """:class:`UnreadableJSON` when ``value`` nests deeper than :data:`MAX_NESTING`. It runs on
    every reply, so the usual shallow one costs a few type checks; the recursion stops at
    :data:`MAX_NESTING` levels, however deep the value goes."""
    if _deeper_than(value, MAX_NESTING):
        raise UnreadableJSON(_TOO_DEEP)


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _deeper_than(value: Any, levels: int) -> bool:
    kind = type(value)
    if kind is dict:
        children: Iterable[Any] = value.values()
    elif kind is list or kind is tuple:
        children = value
    elif kind in _SCALARS:
        return False
    elif isinstance(value, Mapping):
        children = value.values()
    elif isinstance(value, list | tuple):
        children = value
    else:
        return False
    if levels == 0:
        return True
    for child in children:
        if type(child) not in _SCALARS and _deeper_than(child, levels - 1):
            return True
    return False


def answer_only(info: StepInfo) -> bool:
    """Whether the only thing the agent may do now is answer.

    Then a plain-text reply *is* the final response, so adapters send no tools and no schema:
    the model writes in its natural mode (which matters most for small models).
    """
    return info.actions == (FINAL,)


def _invocation_item(info: StepInfo) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "agent_name": {"type": "string", "enum": list(info.peer_names)},
        "request": {"type": "string", "description": "what this agent should do"},
    }
    labels = sorted({peer.label for peer in info.peers if peer.label})
    if labels:
        properties["label"] = {"type": "string", "enum": labels}
    return {"type": "object", "properties": properties, "required": ["agent_name", "request"]}


def _invocation_list(info: StepInfo) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "array", "items": _invocation_item(info), "minItems": 1}
    if not info.parallel_groups:
        schema["maxItems"] = 1
    return schema


def _object(properties: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": dict(properties), "required": list(properties)}


def action_schema(info: StepInfo) -> dict[str, Any]:
    """The JSON schema of one reply in the action protocol, allowing only what is allowed now."""
    variants = []
    if info.peers:
        variants.append(_variant(INVOKE, _invocation_list(info)))
    if info.can_finish:
        variants.append(_variant(FINAL, _object({"response": {"type": "string"}})))
    if info.can_ask_user:
        variants.append(_variant(ASK, _object({"question": {"type": "string"}})))
    if info.tools:
        call = _object(
            {
                "name": {"type": "string", "enum": list(info.tool_names)},
                "arguments": {"type": "object"},
            }
        )
        variants.append(_variant(CALL, {"type": "array", "items": call, "minItems": 1}))
    if len(variants) == 1:
        return variants[0]
    return {"anyOf": variants}


def _variant(action: str, action_input: Mapping[str, Any]) -> dict[str, Any]:
    return _object(
        {"next_action": {"type": "string", "enum": [action]}, "action_input": action_input}
    )


def describe_peers(info: StepInfo, separator: str = ", ") -> str:
    """The peers an agent may invoke now, each with what the model must know about it."""
    return separator.join(
        peer.name
        + (" (answers back to you)" if peer.is_call else "")
        + (f' (needs "label": "{peer.label}")' if peer.label else "")
        for peer in info.peers
    )


def coordination_tools(info: StepInfo) -> list[ToolSpec]:
    """The coordination actions allowed now, as tools a tool-calling model can call."""
    tools = []
    if info.peers:
        peers = describe_peers(info, "; ")
        parallel = (
            " Several invocations run in parallel; allowed together: "
            + "; ".join(", ".join(group) for group in info.parallel_groups)
            if info.parallel_groups
            else " One invocation at a time."
        )
        tools.append(
            ToolSpec(
                INVOKE,
                f"Hand work to other agents. Peers: {peers}.{parallel}",
                _object({"invocations": _invocation_list(info)}),
            )
        )
    if info.can_finish:
        tools.append(
            ToolSpec(FINAL, "Give your final answer.", _object({"response": {"type": "string"}}))
        )
    if info.can_ask_user:
        tools.append(
            ToolSpec(ASK, "Ask the user a question.", _object({"question": {"type": "string"}}))
        )
    return tools


def reply_from_tool_calls(
    content: str | None, calls: Iterable[ToolCall], usage: Usage | None
) -> ModelReply:
    """Map a tool-calling reply onto the action protocol.

    Coordination calls become the reply's ``action``; the agent's own tools stay in
    ``tool_calls`` (they run first). More than one coordination call makes the reply a
    ``problem`` the engine steers the model about.
    """
    native = tuple(calls)
    coordination = [call for call in native if call.name in COORDINATION_TOOLS]
    own = tuple(call for call in native if call.name not in COORDINATION_TOOLS)
    action: dict[str, Any] | None = None
    if len(coordination) > 1:
        names = ", ".join(call.name for call in coordination)
        return ModelReply(
            content=content,
            usage=usage,
            native_calls=native,
            problem=f"the reply called {names}: call at most one coordination tool per reply",
        )
    if coordination:
        call = coordination[0]
        arguments = dict(call.arguments)
        if call.name == INVOKE:
            action = {"next_action": INVOKE, "action_input": arguments.get("invocations")}
        elif call.name == FINAL:
            action = {"next_action": FINAL, "action_input": {"response": arguments.get("response")}}
        else:
            action = {"next_action": ASK, "action_input": {"question": arguments.get("question")}}
    return ModelReply(
        content=content, action=action, usage=usage, tool_calls=own, native_calls=native
    )
