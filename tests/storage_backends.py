"""The four storage backends as the session tests open them: one namespace per test."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from orchestra.coordination.state import (
    FileStorageBackend,
    PostgresStorageBackend,
    RedisStorageBackend,
    SQLiteStorageBackend,
)
from orchestra.coordination.state.segments import encode_append

Storage = FileStorageBackend | SQLiteStorageBackend | RedisStorageBackend | PostgresStorageBackend
BACKENDS = ["file", "sqlite", "redis", "postgres"]


def namespace(root: Path) -> str:
    """One namespace per test (stable across the test's subprocesses and reopenings)."""
    return "t" + hashlib.sha1(str(root).encode()).hexdigest()[:16]


def open_backend(kind: str, root: Path) -> Storage:
    if kind == "file":
        return FileStorageBackend(root / "state")
    if kind == "redis":
        return RedisStorageBackend(os.environ["ORCHESTRA_TEST_REDIS_URL"], namespace(root))
    if kind == "postgres":
        return PostgresStorageBackend(os.environ["ORCHESTRA_TEST_POSTGRES_DSN"], namespace(root))
    return SQLiteStorageBackend(root / "state.db")


def close_backend(storage: Storage) -> None:
    if isinstance(storage, SQLiteStorageBackend | FileStorageBackend):
        storage.close()


def first_segment(folder: Path) -> Path:
    return sorted(folder.glob("log-*.seg"))[0]


def tear(segment: Path, data: bytes, gap: int = 0) -> None:
    """What a crash in the middle of an append leaves in a segment: part of it, written where
    the next append goes (``gap`` bytes further when its start never reached the disk), into
    the zero padding the file backend keeps after its appends."""
    end = len(segment.read_bytes().rstrip(b"\0"))
    with open(segment, "r+b") as handle:
        handle.seek(end + gap)
        handle.write(data)


def torn_append(records: list[str], keep: int) -> bytes:
    """The first ``keep`` bytes of the append the file backend would write for ``records``."""
    return encode_append(records)[:keep]
