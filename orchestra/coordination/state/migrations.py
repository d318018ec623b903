"""Lifting records of older log formats to the current one.

Format 1 (releases before the typed inputs) stored no times, numbered each step in its
records, kept the agent's system prompt in its conversation, wrote actions, messages and usage
in short forms of their own, and fell back to Python's own object serialisation for values
JSON has no type for. Its records are lifted field by field; their time becomes 0 (unknown),
so durations in a run's format-1 part read as 0. A value stored in that serialised form is
never loaded (loading it could run code): a record holding one is refused, and the session is
reported damaged. A value format 1 kept as its text stays that text.

Format 2 differs from format 3 only in fields format 3 added, which a format-2 record lacks and
reads as absent: ``StepBegin``'s ``agent``, ``parent``, ``fan_out`` and ``returns_to``. Its
records are read as they are; the version was bumped so that a release that reads format 2
says a log written now is of a newer format, not damaged (it refuses fields it does not know).
Format 3 differs from format 4 in the same way: format 4 added ``RunStart``'s ``executor`` (where
a session on Temporal runs), which a format-3 header lacks and reads as absent (run here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestra import errors as error_types

from .values import TAG, Unreadable


def from_format_1(record: dict[str, Any]) -> dict[str, Any]:
    kind = record.get("t")
    lift = _FORMAT_1.get(kind) if type(kind) is str else None
    if lift is None:
        raise Unreadable(f"unknown record type {str(kind)[:40]!r}")
    try:
        fields = lift(record)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise Unreadable(f"a format 1 {kind} record that cannot be read ({error!r})") from None
    lifted = {"t": kind, "s": record.get("s"), "at": 0.0, **fields}
    if kind == "run":
        lifted["format"] = record.get("format")
    return lifted


def from_format_2(record: dict[str, Any]) -> dict[str, Any]:
    """A format-2 record is a format-3 record without the fields format 3 added."""
    return record


def from_format_3(record: dict[str, Any]) -> dict[str, Any]:
    """A format-3 record is a format-4 record without the field format 4 added."""
    return record


def _value(data: Any) -> Any:
    """A format 1 value in the current value encoding."""
    if isinstance(data, list):
        return [_value(item) for item in data]
    if not isinstance(data, dict):
        return data
    tag = data.get(TAG)
    if tag is None:
        return {key: _value(item) for key, item in data.items()}
    if tag == "dict":  # a dict that held the tag as a key
        return {TAG: "map", "v": [[key, _value(item)] for key, item in data["v"].items()]}
    if tag == "tuple":
        return {TAG: "tuple", "v": [_value(item) for item in data["v"]]}
    if tag == "labeled":
        return {TAG: "labeled", "v": {"value": _value(data["v"]), "labels": data["l"]}}
    if tag == "action":
        return {TAG: "action", "v": _action(data["v"])}
    if tag == "repr":
        return data["v"]  # format 1 kept only the text, and gave the text back
    raise Unreadable(
        f"a value tagged {str(tag)[:40]!r}: an object serialised by an older release, which "
        "this one never loads (loading it could run code)"
    )


def _action(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": data["kind"],
        "invocations": [
            {"agent_name": name, "request": _value(request), "label": label}
            for name, request, label in data["invocations"]
        ],
        "response": _value(data["response"]),
        "question": data["question"],
        "tool_calls": [_tool_call(call) for call in data["tool_calls"]],
    }


def _tool_call(data: list[Any]) -> dict[str, Any]:
    name, arguments, call_id = data
    return {"name": name, "arguments": _mapping(arguments), "call_id": call_id}


def _mapping(data: Any) -> Any:
    """A format 1 value where a mapping with text keys belongs (a context, tool arguments):
    one that held the tag key was tagged; a typed mapping needs no tag."""
    if isinstance(data, dict) and data.get(TAG) == "dict":
        return {key: _value(item) for key, item in data["v"].items()}
    return _value(data)


def _step_error(data: dict[str, Any]) -> dict[str, Any]:
    """Format 1 stored what a step raised as it was; the engine then reported anything but
    Orchestra's own errors as an AgentStepError (the agent's name it did not keep)."""
    if getattr(error_types, str(data["type"]), None) is None:
        return {"type": "AgentStepError", "message": f"raised {data['type']}: {data['message']}"}
    return data


def _messages(data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages a step added, less the system prompt (no longer kept in conversations)."""
    lifted = []
    for message in data:
        if message["r"] == "system":
            continue
        item: dict[str, Any] = {"role": message["r"], "content": message["c"]}
        if "n" in message:
            item["name"] = message["n"]
        if "i" in message:
            item["tool_call_id"] = message["i"]
        if message.get("tc"):
            item["tool_calls"] = [_tool_call(call) for call in message["tc"]]
        lifted.append(item)
    return lifted


def _outcome(data: dict[str, Any]) -> dict[str, Any]:
    usage = data["usage"]
    return {
        "action": _action(data["action"]) if data["action"] is not None else None,
        "value": _value(data["value"]),
        "reply": data["reply"],
        "problem": data["problem"],
        "usage": (
            {"prompt_tokens": usage[0], "completion_tokens": usage[1], "cost_usd": usage[2]}
            if usage
            else None
        ),
        "by_code": data["by_code"],
    }


def _tool_done(record: dict[str, Any]) -> dict[str, Any]:
    item = record["item"]
    return {
        "branch_id": record["branch"],
        "call_id": record["call"],
        "name": item["name"],
        "ok": item["ok"],
        "result": _value(item["result"]),
        "duration": item.get("duration", 0.0),
    }


_FORMAT_1: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "run": lambda r: {
        "task": _value(r["task"]),
        "context": _mapping(r["context"]),
        "max_steps": r["max_steps"],
        "config": r["config"],
        "error_config": r["error_config"],
        "topology": r["topology"],
    },
    "begin": lambda r: {"branch_id": r["branch"]},
    "step": lambda r: {
        "branch_id": r["branch"],
        "outcome": _outcome(r["outcome"]),
        "messages": _messages(r["messages"]),
        "duration": r["duration"],
    },
    "step_failed": lambda r: {
        "branch_id": r["branch"],
        "error": _step_error(r["error"]),
        "messages": _messages(r["messages"]),
        "duration": 0.0,
    },
    "tool_started": lambda r: {"branch_id": r["branch"], "call_id": r["call"], "name": r["name"]},
    "tool_done": _tool_done,
    "tools": lambda r: {"branch_id": r["branch"]},
    "answer": lambda r: {"branch_id": r["branch"], "answer": _value(r["answer"])},
    "branch_failed": lambda r: {"branch_id": r["branch"], "error": r["error"]},
    "convergence_timeout": lambda r: {"fan_out_id": r["fan_out"]},
    "abort": lambda r: {"error": r["error"], "branch_id": r["branch"]},
    "pause": lambda r: {"reason": r["reason"]},
    "end": lambda r: {"paused": r["paused"], "success": r["success"], "error": r["error"]},
    "resume": lambda r: {"context": _mapping(r.get("context") or {})},
    "checkpoint": lambda r: {"checkpoint_id": r["id"], "name": r["name"], "position": r["at"]},
    "restore": lambda r: {"position": r["to"], "checkpoint_id": r["checkpoint"]},
}
