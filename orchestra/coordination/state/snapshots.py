"""Snapshots: the folded state of a run at a log position, so a resume replays only what came
after it. A cache, never the source of truth: the log alone can always rebuild the run.

A snapshot is ``MAGIC | format | flags | position | crc32 | payload``, the payload a pickle of
the engine's state (zstd-compressed when the state manager's ``compression`` is on). A damaged
snapshot is a SessionCorruptedError naming the session, like a damaged log.
"""

from __future__ import annotations

import pickle
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import zstandard

from orchestra.coordination.engine.core import Engine
from orchestra.errors import SessionCorruptedError

MAGIC = b"ORCS"
FORMAT = 1
_HEADER = struct.Struct(">4sBBQI")
_COMPRESSED = 1


@dataclass(frozen=True)
class Snapshot:
    position: int  # the last log record the state includes
    state: dict[str, Any]


def capture(engine: Engine, position: int, compress: bool) -> bytes | None:
    """The engine's state as snapshot bytes, or None when something in it cannot be pickled
    (a value a function agent produced, say): then there is simply no snapshot."""
    state = {
        "branches": engine.branches,
        "fan_outs": engine.fan_outs,
        "root": engine.root.id if engine.root else None,
        "steps": engine.steps,
        "invocations": dict(engine.invocations),
        "finished": engine.finished,
        "error": engine.error,
        "context": engine.context,
        "questions": engine.questions_asked,
    }
    try:
        payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return None
    flags = 0
    if compress:
        payload = zstandard.ZstdCompressor(level=3).compress(payload)
        flags |= _COMPRESSED
    return _HEADER.pack(MAGIC, FORMAT, flags, position, zlib.crc32(payload)) + payload


def read(data: bytes, session_id: str) -> Snapshot:
    if len(data) < _HEADER.size:
        raise SessionCorruptedError(f"session {session_id!r}: its snapshot is truncated")
    magic, version, flags, position, checksum = _HEADER.unpack_from(data)
    payload = data[_HEADER.size :]
    if magic != MAGIC or zlib.crc32(payload) != checksum:
        raise SessionCorruptedError(f"session {session_id!r}: its snapshot is damaged")
    if version != FORMAT:
        return Snapshot(0, {})  # another format: ignore the cache, replay the log
    if flags & _COMPRESSED:
        payload = zstandard.ZstdDecompressor().decompress(payload)
    try:
        state = pickle.loads(payload)
    except Exception as error:
        raise SessionCorruptedError(
            f"session {session_id!r}: its snapshot cannot be read ({type(error).__name__})"
        ) from None
    return Snapshot(position, state)


def restore(engine: Engine, snapshot: Snapshot) -> None:
    """Put a snapshot's state into a freshly built engine (instead of replaying up to it)."""
    state = snapshot.state
    engine.branches = state["branches"]
    engine.fan_outs = state["fan_outs"]
    engine.root = engine.branches[state["root"]] if state["root"] else None
    engine.steps = state["steps"]
    engine.invocations.update(state["invocations"])
    engine.finished = state["finished"]
    engine.error = state["error"]
    engine.context.update(state["context"])
    engine.questions_asked = state["questions"]
