"""The session log's records: each engine input (:mod:`orchestra.coordination.engine.inputs`)
as one line of JSON, and back.

A record is ``{"t": <KIND>, "s": <position>, "at": <time>, <fields>...}``, its fields written by
the shared codec (:mod:`.codec`). The first record of every run, ``"run"``, also carries the
log ``"format"``: records of an older format are lifted to this one by its migration before
they are read, and a format with no migration is refused with a ``SessionFormatError``.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from pydantic_core import PydanticSerializationError, to_json

from orchestra.agents.contract import Action, Invocation, StepInput
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.topology import Labeled
from orchestra.errors import SessionFormatError
from orchestra.models.base import Message, ToolCall, Usage

from . import migrations
from .codec import (
    TAG,
    Shape,
    Unreadable,
    Unstorable,
    from_plain,
    register_plain,
    shape,
    to_plain,
)

FORMAT = 2
"""The log format this release writes. Bump it (and add a migration) when records change."""

KINDS: dict[str, type[inp.Record]] = {kind.KIND: kind for kind in inp.RECORD_TYPES}
_SHAPES: dict[type[inp.Record], Shape] = {kind: shape(kind) for kind in inp.RECORD_TYPES}

_MIGRATIONS = {1: migrations.from_format_1}
"""format -> function(record) -> record, lifting a record of that format by one version."""


class Entry(NamedTuple):
    """A record as found in a session's log, at its position (1-based)."""

    position: int
    record: inp.Record


def _labeled(data: Any) -> Labeled:
    if type(data) is not dict or data.keys() != {"value", "labels"}:
        raise Unreadable("a labeled value that is not {value, labels}")
    return Labeled(from_plain(data["value"]), *data["labels"])


def _register_orchestra_values() -> None:
    """Orchestra's own types, wherever user values hold them (an Action a function returns,
    a Labeled value, the tool calls of a step's input)."""
    register_plain(
        Labeled,
        "labeled",
        lambda v: {"value": to_plain(v.value), "labels": sorted(v.labels)},
        _labeled,
    )
    for kind, name in (
        (Action, "action"),
        (Invocation, "invocation"),
        (ToolCall, "tool_call"),
        (Message, "message"),
        (Usage, "usage"),
        (StepInput, "step_input"),
    ):
        typed = shape(kind)
        register_plain(kind, name, typed.encode, typed.decode)


_register_orchestra_values()


_OPENING = (inp.RunStart, inp.RunResume, inp.Checkpoint, inp.Restore)
"""The kinds a writer may append first to an existing log: they carry the format, so records
this release appends after an older release's are read as its own."""


def encode(item: inp.Record, position: int) -> str:
    """One record as its line of JSON (``UnstorableValueError`` when a value has no stored
    form: nothing is written then)."""
    try:
        fields = _SHAPES[type(item)].encode(item)
        if type(item) in _OPENING:
            return _line({"t": item.KIND, "s": position, "format": FORMAT, **fields})
        return _line({"t": item.KIND, "s": position, **fields})
    except Unstorable as error:
        raise error.error() from None
    except RecursionError:
        raise Unstorable("a value that holds itself, or nests too deep").error() from None


def _line(data: dict[str, Any]) -> str:
    try:
        return dumps(data)
    except (TypeError, ValueError) as error:  # a value no JSON writer takes
        raise Unstorable(f"a value JSON cannot hold ({error})") from None


def decode(data: dict[str, Any]) -> inp.Record:
    """A parsed line back as its record (``Unreadable``, saying where, when it is not one)."""
    tag = data.get("t")
    kind = KINDS.get(tag) if type(tag) is str else None
    if kind is None:
        raise Unreadable(f"unknown record type {str(data.get('t'))[:40]!r}")
    fields = {key: value for key, value in data.items() if key not in ("t", "s", "format")}
    return _SHAPES[kind].decode(fields)  # type: ignore[no-any-return]


def dumps(data: dict[str, Any]) -> str:
    """Compact JSON text. pydantic-core's serializer writes it four times faster than
    ``json.dumps``, and ``json.loads`` reads it back exactly (NaN and the infinities
    included). Text that is not valid Unicode (a lone surrogate, which ``json.loads`` makes of
    model output such as ``"\\ud800"``) cannot be UTF-8: such a record is written with
    escapes instead."""
    try:
        return to_json(data).decode()
    except PydanticSerializationError:
        return json.dumps(data, separators=(",", ":"))


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


__all__ = ["FORMAT", "KINDS", "TAG", "Entry", "decode", "dumps", "encode", "upgrade"]
