"""The session log's records: what is written, and how values survive the trip to storage.

A record is a JSON object ``{"t": <type>, ...}``. The first record of a session is a header
carrying ``FORMAT``; a log of another format is migrated when a migration exists and refused
with a clear error otherwise. Orchestra's own types (actions, messages, tool calls, usage,
errors) are written as plain JSON; any other Python value a function agent produced is written
as JSON when it is JSON, else pickled (tagged); a value that cannot even be pickled (a lock, an
open file) is kept as its ``repr`` text, which is what a resumed run then sees.
"""

from __future__ import annotations

import base64
import json
import pickle
from typing import Any

from pydantic_core import PydanticSerializationError, to_json

from orchestra import errors as error_types
from orchestra.agents.base import StepOutcome
from orchestra.coordination.engine.actions import Action, ActionKind, Invocation
from orchestra.coordination.topology import Labeled
from orchestra.errors import (
    LimitExceededError,
    OrchestraError,
    SessionFormatError,
)
from orchestra.models.base import Message, ToolCall, Usage

FORMAT = 1
"""The log format this release writes. Bump it (and add a migration) when records change."""

_MIGRATIONS: dict[int, Any] = {}
"""format -> function(record) -> record, lifting a record of that format by one version."""


def encode(value: Any) -> Any:
    """A JSON-compatible form of ``value`` (see :func:`decode`)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [encode(item) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        if "__o__" in value:
            return {"__o__": "dict", "v": {k: encode(v) for k, v in value.items()}}
        return {key: encode(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return {"__o__": "tuple", "v": [encode(item) for item in value]}
    if isinstance(value, Labeled):
        return {"__o__": "labeled", "v": encode(value.value), "l": sorted(value.labels)}
    if isinstance(value, Action):
        return {"__o__": "action", "v": encode_action(value)}
    try:
        return {"__o__": "pickle", "v": base64.b64encode(pickle.dumps(value)).decode("ascii")}
    except Exception:
        return {"__o__": "repr", "v": repr(value)}  # kept as its text: all that can be kept


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    tag = value.get("__o__")
    if tag is None:
        return {key: decode(item) for key, item in value.items()}
    if tag == "dict":
        return {key: decode(item) for key, item in value["v"].items()}
    if tag == "tuple":
        return tuple(decode(item) for item in value["v"])
    if tag == "labeled":
        return Labeled(decode(value["v"]), *value["l"])
    if tag == "action":
        return decode_action(value["v"])
    if tag == "repr":
        return value["v"]
    return pickle.loads(base64.b64decode(value["v"]))


def encode_action(action: Action) -> dict[str, Any]:
    return {
        "kind": action.kind.value,
        "invocations": [[i.agent_name, encode(i.request), i.label] for i in action.invocations],
        "response": encode(action.response),
        "question": action.question,
        "tool_calls": [encode_tool_call(call) for call in action.tool_calls],
    }


def decode_action(data: dict[str, Any]) -> Action:
    return Action(
        ActionKind(data["kind"]),
        invocations=tuple(Invocation(n, decode(r), label) for n, r, label in data["invocations"]),
        response=decode(data["response"]),
        question=data["question"],
        tool_calls=tuple(decode_tool_call(call) for call in data["tool_calls"]),
    )


def encode_tool_call(call: ToolCall) -> list[Any]:
    return [call.name, encode(dict(call.arguments)), call.call_id]


def decode_tool_call(data: list[Any]) -> ToolCall:
    return ToolCall(data[0], decode(data[1]), data[2])


def encode_message(message: Message) -> dict[str, Any]:
    data: dict[str, Any] = {"r": message.role, "c": message.content}
    if message.name is not None:
        data["n"] = message.name
    if message.tool_call_id is not None:
        data["i"] = message.tool_call_id
    if message.tool_calls:
        data["tc"] = [encode_tool_call(call) for call in message.tool_calls]
    return data


def decode_message(data: dict[str, Any]) -> Message:
    return Message(
        data["r"],
        data["c"],
        name=data.get("n"),
        tool_call_id=data.get("i"),
        tool_calls=tuple(decode_tool_call(call) for call in data.get("tc", ())),
    )


def encode_outcome(outcome: StepOutcome) -> dict[str, Any]:
    usage = outcome.usage
    return {
        "action": encode_action(outcome.action) if outcome.action is not None else None,
        "value": encode(outcome.value),
        "reply": outcome.reply,
        "problem": outcome.problem,
        "usage": [usage.prompt_tokens, usage.completion_tokens, usage.cost_usd] if usage else None,
        "by_code": outcome.by_code,
    }


def decode_outcome(data: dict[str, Any]) -> StepOutcome:
    usage = data["usage"]
    return StepOutcome(
        action=decode_action(data["action"]) if data["action"] is not None else None,
        value=decode(data["value"]),
        reply=data["reply"],
        problem=data["problem"],
        usage=Usage(*usage) if usage else None,
        by_code=data["by_code"],
    )


def encode_error(error: BaseException) -> dict[str, Any]:
    data = {"type": type(error).__name__, "message": str(error)}
    if isinstance(error, LimitExceededError):
        data["limit"] = error.limit
    return data


def decode_error(data: dict[str, Any]) -> OrchestraError:
    """The error again, as its own class when Orchestra defines it (else an OrchestraError)."""
    kind = getattr(error_types, data["type"], None)
    message = data["message"]
    if isinstance(kind, type) and issubclass(kind, LimitExceededError):
        return kind(data.get("limit", ""), message)
    if isinstance(kind, type) and issubclass(kind, OrchestraError):
        try:
            return kind(message)
        except TypeError:
            pass
    return OrchestraError(message)


def dumps(record: dict[str, Any]) -> str:
    """One record as compact JSON text. pydantic-core's serializer (already a dependency)
    writes it four times faster than ``json.dumps``, and ``json.loads`` reads it back exactly
    (NaN and the infinities included); a record holds only what :func:`encode` produced. Text
    that is not valid Unicode (a lone surrogate, which ``json.loads`` makes of model output
    such as ``"\\ud800"``) cannot be UTF-8: such a record is written with escapes instead."""
    try:
        return to_json(record).decode()
    except PydanticSerializationError:
        return json.dumps(record, separators=(",", ":"))


def upgrade(record: dict[str, Any], found_format: int, session_id: str) -> dict[str, Any]:
    """A record of ``found_format`` lifted to :data:`FORMAT`, or a SessionFormatError."""
    version = found_format
    while version < FORMAT:
        migrate = _MIGRATIONS.get(version)
        if migrate is None:
            break
        record = migrate(record)
        version += 1
    if version != FORMAT:
        raise SessionFormatError(
            f"session {session_id!r} was written in log format {found_format}; this release "
            f"reads format {FORMAT} and has no migration from it"
        )
    return record
