"""Where session logs live: one small async protocol, and the file and SQLite backends.

A backend stores, per session, an append-only sequence of text records. Appends may be made
durable (fsync'd) before they return. Each stored line carries a CRC, so a damaged log is
reported as such; a torn last line (a crash in the middle of an append) is ignored, since the
record it held was never acknowledged as durable.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from orchestra.errors import InvalidSessionIdError, SessionCorruptedError, SessionNotFoundError

_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
SEGMENT_BYTES = 4 * 1024 * 1024


def check_session_id(session_id: object) -> str:
    """The id, if it is safe as a file or key name; InvalidSessionIdError otherwise."""
    if not isinstance(session_id, str) or not _SESSION_ID.match(session_id) or ".." in session_id:
        raise InvalidSessionIdError(
            f"session id {session_id!r} is not allowed: use 1-128 letters, digits, '_', '-' or "
            "'.', starting with a letter or digit, without '..'"
        )
    return session_id


def frame(record: str) -> str:
    return f"{zlib.crc32(record.encode()):08x} {record}\n"


def unframe(session_id: str, where: str, line: str) -> str:
    checksum, _, record = line.partition(" ")
    if len(checksum) != 8 or f"{zlib.crc32(record.encode()):08x}" != checksum:
        raise SessionCorruptedError(
            f"session {session_id!r}: the log is damaged at {where} (checksum mismatch)"
        )
    return record


@runtime_checkable
class StorageBackend(Protocol):
    async def append(self, session_id: str, records: Sequence[str], durable: bool) -> None: ...

    async def read(self, session_id: str) -> list[str]: ...

    async def exists(self, session_id: str) -> bool: ...

    async def list_sessions(self) -> list[str]: ...

    async def delete(self, session_id: str) -> bool: ...

    async def write_snapshot(self, session_id: str, data: bytes) -> None: ...

    async def read_snapshot(self, session_id: str) -> bytes | None: ...


class FileStorageBackend:
    """Sessions as folders of append-only segment files (``log-000001.seg``, ...) under
    ``directory``. Appends go through a worker thread into a segment file kept open per
    session; durable appends are fsync'd (the file and, for a new segment, its folder)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._open: dict[str, tuple[Path, BinaryIO, int]] = {}

    def __repr__(self) -> str:
        return f"FileStorageBackend({str(self.directory)!r})"

    def _folder(self, session_id: str) -> Path:
        return self.directory / check_session_id(session_id)

    def _lock(self, session_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(session_id, threading.Lock())

    async def append(self, session_id: str, records: Sequence[str], durable: bool) -> None:
        folder = self._folder(session_id)
        await asyncio.to_thread(self._append, session_id, folder, records, durable)

    def _append(self, session_id: str, folder: Path, records: Sequence[str], durable: bool) -> None:
        data = "".join(frame(record) for record in records).encode()
        with self._lock(session_id):
            segment, handle, size = self._segment(session_id, folder, len(data), durable)
            try:
                handle.write(data)
                handle.flush()
                if durable:
                    os.fsync(handle.fileno())
            except OSError:
                self._close(session_id)  # a partial write: the next append trims it first
                raise
            self._open[session_id] = (segment, handle, size + len(data))

    def _segment(
        self, session_id: str, folder: Path, incoming: int, durable: bool
    ) -> tuple[Path, BinaryIO, int]:
        """The open segment to append to: the last one, or a new one when it is full."""
        current = self._open.get(session_id)
        if current is not None and current[2] + incoming <= SEGMENT_BYTES:
            return current
        self._close(session_id)
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        segments = sorted(folder.glob("log-*.seg"))
        if segments and (
            current is not None or segments[-1].stat().st_size + incoming > SEGMENT_BYTES
        ):
            _cut_torn_tail(segments[-1])  # only the last segment may end mid-record
            segment = folder / f"log-{len(segments) + 1:06d}.seg"
        else:
            segment = segments[-1] if segments else folder / "log-000001.seg"
        new_file = not segment.exists()
        if not new_file:
            _cut_torn_tail(segment)
        handle = open(segment, "ab")  # noqa: SIM115 - kept open across appends, closed in _close
        if durable and new_file:
            _fsync_directory(folder)
            if created:
                _fsync_directory(self.directory)
        return segment, handle, handle.tell()

    async def write_snapshot(self, session_id: str, data: bytes) -> None:
        folder = self._folder(session_id)

        def write() -> None:  # atomic: a temporary file, fsync'd, renamed over the old one
            folder.mkdir(parents=True, exist_ok=True)
            temporary = folder / "snapshot.tmp"
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, folder / "snapshot.bin")
            _fsync_directory(folder)

        await asyncio.to_thread(write)

    async def read_snapshot(self, session_id: str) -> bytes | None:
        path = self._folder(session_id) / "snapshot.bin"
        return await asyncio.to_thread(lambda: path.read_bytes() if path.exists() else None)

    def _close(self, session_id: str) -> None:
        current = self._open.pop(session_id, None)
        if current is not None:
            current[1].close()

    def close(self) -> None:
        """Close the open segment files (appending reopens them)."""
        for session_id in list(self._open):
            self._close(session_id)

    async def read(self, session_id: str) -> list[str]:
        folder = self._folder(session_id)
        return await asyncio.to_thread(self._read, session_id, folder)

    def _read(self, session_id: str, folder: Path) -> list[str]:
        segments = sorted(folder.glob("log-*.seg")) if folder.is_dir() else []
        if not segments:
            raise SessionNotFoundError(f"no session {session_id!r} in {self.directory}")
        records: list[str] = []
        for number, segment in enumerate(segments):
            text = segment.read_bytes().decode("utf-8", errors="replace")
            lines = text.split("\n")
            last = lines.pop()  # "" when the segment ends with a newline; else a torn write
            if last and number != len(segments) - 1:
                raise SessionCorruptedError(
                    f"session {session_id!r}: segment {segment.name} ends in an incomplete record"
                )
            for index, line in enumerate(lines):
                records.append(unframe(session_id, f"{segment.name} line {index + 1}", line))
        return records

    async def exists(self, session_id: str) -> bool:
        folder = self._folder(session_id)
        return await asyncio.to_thread(lambda: any(folder.glob("log-*.seg")))

    async def list_sessions(self) -> list[str]:
        def names() -> list[str]:
            if not self.directory.is_dir():
                return []
            return sorted(p.name for p in self.directory.iterdir() if any(p.glob("log-*.seg")))

        return await asyncio.to_thread(names)

    async def delete(self, session_id: str) -> bool:
        folder = self._folder(session_id)

        def remove() -> bool:
            if not folder.is_dir():
                return False
            with self._lock(session_id):
                self._close(session_id)
                for path in folder.iterdir():
                    path.unlink()
                folder.rmdir()
            return True

        return await asyncio.to_thread(remove)


def _cut_torn_tail(segment: Path) -> None:
    """Drop an incomplete last line (a crash mid-append) before appending after it."""
    with open(segment, "r+b") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)
            handle.flush()
            os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class SQLiteStorageBackend:
    """Sessions in one SQLite database file (the embedded default of the command line).

    WAL journal; a durable append commits with ``synchronous=FULL``. Calls run in a worker
    thread, one at a time per backend."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._next: dict[str, int] = {}
        self._synchronous = ""

    def __repr__(self) -> str:
        return f"SQLiteStorageBackend({str(self.path)!r})"

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS log (session TEXT NOT NULL, seq INTEGER NOT NULL, "
                "line TEXT NOT NULL, PRIMARY KEY (session, seq))"
            )
            connection.execute(
                "CREATE TABLE IF NOT EXISTS snapshot (session TEXT PRIMARY KEY, data BLOB NOT NULL)"
            )
            self._connection = connection
        return self._connection

    async def _run(self, work: object, *args: object) -> object:
        def locked() -> object:
            with self._lock:
                return work(self._db(), *args)  # type: ignore[operator]

        return await asyncio.to_thread(locked)

    async def append(self, session_id: str, records: Sequence[str], durable: bool) -> None:
        check_session_id(session_id)

        def write(db: sqlite3.Connection) -> None:
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM log WHERE session = ?", (session_id,)
            )
            start = row.fetchone()[0]
            db.executemany(
                "INSERT INTO log (session, seq, line) VALUES (?, ?, ?)",
                [(session_id, start + n + 1, frame(r)[:-1]) for n, r in enumerate(records)],
            )
            db.execute("COMMIT")

        await self._run(write)

    async def read(self, session_id: str) -> list[str]:
        check_session_id(session_id)

        def rows(db: sqlite3.Connection) -> list[str]:
            found = db.execute(
                "SELECT seq, line FROM log WHERE session = ? ORDER BY seq", (session_id,)
            ).fetchall()
            if not found:
                raise SessionNotFoundError(f"no session {session_id!r} in {self.path}")
            return [unframe(session_id, f"record {seq}", line) for seq, line in found]

        return await self._run(rows)  # type: ignore[return-value]

    async def exists(self, session_id: str) -> bool:
        check_session_id(session_id)
        found = await self._run(
            lambda db: db.execute(
                "SELECT 1 FROM log WHERE session = ? LIMIT 1", (session_id,)
            ).fetchone()
        )
        return found is not None

    async def list_sessions(self) -> list[str]:
        rows = await self._run(
            lambda db: db.execute("SELECT DISTINCT session FROM log ORDER BY session").fetchall()
        )
        return [row[0] for row in rows]  # type: ignore[attr-defined]

    async def delete(self, session_id: str) -> bool:
        check_session_id(session_id)
        self._next.pop(session_id, None)

        def remove(db: sqlite3.Connection) -> int:
            db.execute("DELETE FROM snapshot WHERE session = ?", (session_id,))
            return db.execute("DELETE FROM log WHERE session = ?", (session_id,)).rowcount

        return bool(await self._run(remove))

    async def write_snapshot(self, session_id: str, data: bytes) -> None:
        check_session_id(session_id)
        await self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO snapshot (session, data) VALUES (?, ?)", (session_id, data)
            )
        )

    async def read_snapshot(self, session_id: str) -> bytes | None:
        check_session_id(session_id)
        row = await self._run(
            lambda db: db.execute(
                "SELECT data FROM snapshot WHERE session = ?", (session_id,)
            ).fetchone()
        )
        return bytes(row[0]) if row else None  # type: ignore[index]

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
