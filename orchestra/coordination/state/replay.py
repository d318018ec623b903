"""Rebuilding a run from its session log: ``engine.apply(record)`` for each record, in order.

The live run applied exactly these inputs (the runner journals each one before applying it),
and every input carries its own time, so the rebuilt engine is the live one: the same
branches, conversations, counters and events, the events marked as replayed. A snapshot only
shortens the way: restoring it and applying the records after it gives the same engine.
"""

from __future__ import annotations

from typing import Any

from orchestra.coordination.engine.core import Engine
from orchestra.coordination.engine.inputs import Record
from orchestra.errors import SessionCorruptedError

from .manager import RunLog
from .records import Entry, decode, loads
from .snapshots import Snapshot, restore
from .values import Unreadable


def rebuild(engine: Engine, run: RunLog, snapshot: Snapshot | None, session_id: str) -> None:
    """Bring a freshly built engine to where the run's log leaves it."""
    entries = [run.header, *run.entries]
    engine.stream.replaying = True
    try:
        if snapshot is not None and _stands_for(snapshot, entries):
            restore(engine, snapshot, session_id)
            entries = [entry for entry in entries if entry.position > snapshot.position]
        for entry in entries:
            _apply(engine, entry, session_id)
    finally:
        engine.stream.replaying = False


def _stands_for(snapshot: Snapshot, entries: list[Entry]) -> bool:
    """Whether the snapshot was taken of this run of this log: at a position in the run's
    history (a restore may have cut it off), where the record has the time the snapshot says."""
    taken_at = next((entry for entry in entries if entry.position == snapshot.position), None)
    return taken_at is not None and taken_at.at == snapshot.at


def apply_line(engine: Engine, position: int, line: str, session_id: str) -> None:
    """One record line, as a run's journal wrote it (``records.encode``), applied to
    ``engine``: how a client follows a run that a Temporal worker drives."""
    data: Any = None
    try:
        data = loads(line)
        if type(data) is not dict:
            raise Unreadable("a line that is no JSON object")
        record = decode(data)
    except (ValueError, RecursionError) as error:  # Unreadable is a ValueError
        kind = str(data.get("t")) if type(data) is dict else "?"
        raise _unreadable(session_id, position, kind, error) from None
    _applied(engine, record, position, record.KIND, session_id)


def _apply(engine: Engine, entry: Entry, session_id: str) -> None:
    try:
        record = entry.record
    except (Unreadable, RecursionError) as error:
        raise _unreadable(session_id, entry.position, entry.kind, error) from None
    _applied(engine, record, entry.position, entry.kind, session_id)


def _unreadable(
    session_id: str, position: int, kind: str, error: Exception
) -> SessionCorruptedError:
    return SessionCorruptedError(
        f"session {session_id!r}: record {position} ({kind[:40]}) cannot be read: {error}"
    )


def _applied(engine: Engine, record: Record, position: int, kind: str, session_id: str) -> None:
    try:
        engine.apply(record)  # type: ignore[arg-type]
    except Exception as error:  # a record the live run could not have applied: the log's fault
        raise SessionCorruptedError(
            f"session {session_id!r}: record {position} ({kind}) does not "
            f"fit the run being rebuilt ({type(error).__name__}: {error}); was the topology "
            "or the agents' code changed?"
        ) from None
