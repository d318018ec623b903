"""The SQLite backend's ``held()`` probe never gets in a writer's way.

The probe used to take a shared ``flock`` for a moment; a writer trying its exclusive lock at
that instant was refused as if another writer held the session. Now the probe only asks.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
from pathlib import Path

import pytest

from orchestra.coordination.state import SQLiteStorageBackend
from orchestra.errors import SessionError

ROUNDS = 400


def _probe_until(store: Path, stop: threading.Event, probes: list[bool]) -> None:
    """Ask ``held`` over and over, from a backend of its own, until told to stop."""
    backend = SQLiteStorageBackend(store)

    async def loop() -> None:
        while not stop.is_set():
            probes.append(await backend.held("s"))

    try:
        asyncio.run(loop())
    finally:
        backend.close()


async def test_a_probe_in_a_loop_never_refuses_a_writer(tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    writer = SQLiteStorageBackend(store)
    await writer.append("s", ["r0"], durable=False, after=0)
    await writer.release("s")
    stop, probes = threading.Event(), list[bool]()
    prober = threading.Thread(target=_probe_until, args=(store, stop, probes))
    prober.start()
    stored, refused = 1, 0
    try:
        for _ in range(ROUNDS):
            try:
                await writer.append("s", [f"r{stored}"], durable=False, after=stored)
                stored += 1
            except SessionError:
                refused += 1
            finally:
                await writer.release("s")
    finally:
        stop.set()
        prober.join()
        writer.close()
    assert refused == 0
    assert probes  # the probe ran alongside


async def test_held_sees_a_writer_of_another_backend_and_not_after_its_release(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store.db"
    writer, prober = SQLiteStorageBackend(store), SQLiteStorageBackend(store)
    try:
        assert not await prober.held("s")
        await writer.append("s", ["r0"], durable=False, after=0)
        assert await prober.held("s")
        for _ in range(3):  # probing leaves the writer's lock as it was
            assert await prober.held("s")
        try:
            await prober.append("s", ["r1"], durable=False, after=1)
        except SessionError as error:
            assert "another process" in str(error)
        else:
            raise AssertionError("a second writer was let in")
        await writer.release("s")
        assert not await prober.held("s")
    finally:
        writer.close()
        prober.close()


async def test_a_writer_of_the_release_before_is_seen_and_excludes_this_ones(
    tmp_path: Path,
) -> None:
    """That release's writer took a ``flock`` only (which OFD locks do not see): ``held`` still
    says so, a writer of this release is refused, and this release's writer refuses it."""
    store = tmp_path / "store.db"
    writer, prober = SQLiteStorageBackend(store), SQLiteStorageBackend(store)
    locks = store.with_name("store.db.locks")
    locks.mkdir()
    old = os.open(locks / "s", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(old, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the release before held it
        assert await prober.held("s")
        with pytest.raises(SessionError, match="another process"):
            await writer.append("s", ["r0"], durable=False, after=0)
        os.close(old)
        assert not await prober.held("s")
        await writer.append("s", ["r0"], durable=False, after=0)
        old = os.open(locks / "s", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(old, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(old)
        writer.close()
        prober.close()
