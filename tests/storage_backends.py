"""The four storage backends as the session tests open them: one namespace per test."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from orchestra.coordination.state import (
    FileStorageBackend,
    PostgresStorageBackend,
    RedisStorageBackend,
    SQLiteStorageBackend,
)
from orchestra.coordination.state.segments import SECTOR, encode_append

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


async def close_connections(storage: Storage) -> None:
    """Close the server backends' connections of the running event loop: a test that makes
    several at once (concurrent calls) leaves them to be collected, warning as unclosed, in
    whichever test runs the garbage collector next."""
    if isinstance(storage, RedisStorageBackend) and storage._clients.get() is not None:
        await storage._clients.get().aclose()
    if isinstance(storage, PostgresStorageBackend) and storage._pools.get() is not None:
        await storage._pools.get().close()


def first_segment(folder: Path) -> Path:
    return sorted(folder.glob("log-*.seg"))[0]


def tear(segment: Path, records: list[str], lost: Callable[[int], bool]) -> None:
    """What a crash in the middle of an append of ``records`` leaves in a segment: the append
    written into the zero padding after the last one, but the file's 512-byte sectors ``n``
    (counted from the one the append starts in) for which ``lost(n)`` holds never reached the
    disk: they hold what they held before."""
    before = segment.read_bytes()
    end = len(before.rstrip(b"\0"))
    data = encode_append(records)
    after = before[:end] + data + before[end + len(data) :]
    first = end - end % SECTOR
    image = bytearray(after)
    for n, sector in enumerate(range(first, end + len(data), SECTOR)):
        if lost(n):
            image[sector : sector + SECTOR] = before[sector : sector + SECTOR].ljust(
                len(image[sector : sector + SECTOR]), b"\0"
            )
    segment.write_bytes(bytes(image))


def sqlite_store_damaged_at(path: Path, session_id: str, where: str) -> None:
    """Damage a page of a SQLite store's file (WAL checkpointed into it first): zero the table
    page that holds ``session_id``'s first rows (``where="rows"``), change that id in the
    index page to one no session can have (``"index"``), zero the snapshot table's first page
    (``"snapshot"``: every snapshot, in a small store), overwrite the file's first 16 bytes,
    where SQLite writes its name (``"header"``), or zero the rest of page 1, which holds the
    schema (``"schema"``)."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = db.execute("PRAGMA page_size").fetchone()[0]
    roots = dict(db.execute("SELECT name, rootpage FROM sqlite_master"))
    db.close()
    index = roots["sqlite_autoindex_appends_1"]
    data = bytearray(path.read_bytes())
    pages = [data[n * size : (n + 1) * size] for n in range(len(data) // size)]
    if where == "index":
        page = pages[index - 1]
        page[:] = page.replace(session_id.encode(), session_id[:-1].encode() + b"\x01")
    elif where == "snapshot":
        pages[roots["snapshot"] - 1][:] = bytes(size)
    elif where == "header":
        pages[0][:16] = b"not SQLite, now!"
    elif where == "schema":
        pages[0][100:] = bytes(size - 100)
    else:
        number = next(
            n for n, page in enumerate(pages) if n != index - 1 and session_id.encode() in page
        )
        pages[number][:] = bytes(size)
    path.write_bytes(b"".join(pages))
