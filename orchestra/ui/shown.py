"""What every view of a stored session shares: a record read safely, and text made fit to show.

A session's log is data from a store anyone with the file may have written: a record that does
not decode is the session's damage, named by its position and kind, never a traceback; and
every text it holds (tasks, messages, errors, answers, tool results) is redacted, made
printable and cut before it reaches a page, which shows it with ``textContent`` only.
"""

from __future__ import annotations

from typing import Any

from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.state.records import Entry
from orchestra.coordination.state.values import Unreadable
from orchestra.errors import SessionCorruptedError
from orchestra.models.secrets import redact
from orchestra.text import printable


def record_of(entry: Entry, session_id: str) -> inp.Record:
    """The entry's record (read on first use), or damage that names where it lies."""
    try:
        return entry.record
    except (Unreadable, RecursionError) as error:
        raise SessionCorruptedError(
            f"session {session_id!r}: record {entry.position} ({entry.kind[:40]}) cannot be "
            f"read: {error}"
        ) from None


def shown(value: Any, limit: int, *, one_line: bool = True) -> str:
    """Text for the page: a string as it is, anything else as its ``str``, key-shaped strings
    redacted (before the cut, so no half of a key is left), cut to ``limit`` characters,
    control characters escaped."""
    text = value if isinstance(value, str) else str(value)
    return printable(redact(text), limit, one_line=one_line)
