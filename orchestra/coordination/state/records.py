"""The session log's records: each engine input (:mod:`orchestra.coordination.engine.inputs`)
as one line of JSON, and back.

A record is ``{"t": <KIND>, "s": <position>, "at": <time>, <fields>...}``, its fields written by
the shared codec (:mod:`.codec`). The first record of every run, ``"run"``, also carries the
log ``"format"``: records of an older format are lifted to this one by its migration before
they are read, and a format with no migration is refused with a ``SessionFormatError``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic_core import PydanticSerializationError, from_json, to_json

from orchestra.agents.contract import Action, Invocation, StepInput
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.topology import Labeled
from orchestra.errors import RecordTooLargeError, SessionFormatError
from orchestra.models.base import Message, ToolCall, Usage

from . import migrations
from .codec import Shape, shape
from .values import TAG, Unreadable, Unstorable, from_plain, register_plain, to_plain

FORMAT = 4
"""The log format this release writes. Bump it (and add a migration) when records change:
a release refuses fields it does not know as damage, so a record that gains one is read by an
older release only as a newer format, which it names (``SessionFormatError``)."""

MAX_RECORD_CHARS = 64 * 1024 * 1024
"""The longest record (characters of its JSON line) a log takes or reads: a larger one is
refused before it is written (``RecordTooLargeError``, naming the session and the largest
field), and one found in a log is damage, refused before it is parsed. A quarter of a
snapshot's limit (``snapshots.MAX_BYTES``), which holds every record's content."""

KINDS: dict[str, type[inp.Record]] = {kind.KIND: kind for kind in inp.RECORD_TYPES}
_SHAPES: dict[type[inp.Record], Shape] = {kind: shape(kind) for kind in inp.RECORD_TYPES}

_MIGRATIONS = {
    1: migrations.from_format_1,
    2: migrations.from_format_2,
    3: migrations.from_format_3,
}
"""format -> function(record) -> record, lifting a record of that format by one version."""


class Entry:
    """A record as found in a session's log, at its position (1-based), of its ``kind``.

    The records that shape a session's history (run headers, ends, resumes, checkpoints,
    restores) are read when the log is; the rest only when a rebuild applies them, so a resume
    from a snapshot, or a listing, never decodes the steps it does not need."""

    __slots__ = ("_data", "_record", "kind", "position")

    def __init__(self, position: int, kind: str, data: dict[str, Any]) -> None:
        self.position = position
        self.kind = kind
        self._data: dict[str, Any] | None = data
        self._record: inp.Record | None = None
        if kind in _SHAPING:
            self._record = decode(data)
            self._data = None

    @property
    def at(self) -> Any:
        """The record's time, as its line has it (the record itself not decoded)."""
        return self._data.get("at") if self._data is not None else self.record.at

    @property
    def record(self) -> inp.Record:
        """The typed record (``Unreadable`` when the line is not a record of its kind)."""
        if self._record is None:
            assert self._data is not None
            self._record = decode(self._data)
            self._data = None
        return self._record


_SHAPING = frozenset(
    kind.KIND for kind in (inp.RunStart, inp.RunEnd, inp.RunResume, inp.Checkpoint, inp.Restore)
)


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


def check_size(line: str, session_id: str, position: int) -> None:
    """Refuse (``RecordTooLargeError``) a record over :data:`MAX_RECORD_CHARS`, naming its
    largest field: a YAML alias bomb once made a 303 MB run header."""
    if len(line) <= MAX_RECORD_CHARS:
        return
    data = loads(line)
    field, value = max(data.items(), key=lambda item: len(dumps({"v": item[1]})))
    raise RecordTooLargeError(
        f"session {session_id!r}: record {position} ({data.get('t')}) would be {len(line)} "
        f"characters, over the limit of {MAX_RECORD_CHARS}; its largest field is {field!r} "
        f"({len(dumps({'v': value}))} characters). Nothing of it was written"
    )


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


def loads(text: str | bytes) -> Any:
    """A stored line (or snapshot) parsed: pydantic-core's parser, two to three times faster
    than ``json.loads``; ``json.loads`` for what it refuses (a lone surrogate's escape, which
    :func:`dumps` may write), and to say what is wrong with text that is no JSON."""
    try:
        return from_json(text, allow_inf_nan=True)
    except ValueError:
        return json.loads(text)


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
    if found_format > FORMAT:
        raise SessionFormatError(
            f"session {session_id!r} was written in log format {found_format} by a newer "
            f"release; this one reads formats up to {FORMAT}: upgrade orchestra to read it"
        )
    if version != FORMAT:
        raise SessionFormatError(
            f"session {session_id!r} was written in log format {found_format}; this release "
            f"reads format {FORMAT} and has no migration from it"
        )
    return record


__all__ = ["FORMAT", "KINDS", "TAG", "Entry", "decode", "dumps", "encode", "upgrade"]
