"""The storage backends below the state manager: compare-and-append on all four, the segment
format of the file backend (torn appends versus damage, growth, sealing, failed writes), its
limits on threads and open files, and the SQLite rows.

Crashes are simulated by writing into the files what a crash leaves there; a failing disk by
an ``os`` write function that fails the way a disk does (after or without writing).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st
from storage_backends import (
    Storage,
    close_backend,
    close_connections,
    first_segment,
    open_backend,
    sqlite_store_damaged_at,
    tear,
)

from orchestra.coordination.config import ErrorHandlingConfig, ExecutionConfig
from orchestra.coordination.engine.inputs import (
    Checkpoint,
    PauseRequest,
    RunResume,
    RunStart,
    UserAnswer,
)
from orchestra.coordination.state import (
    FileStorageBackend,
    PostgresStorageBackend,
    RedisStorageBackend,
    SQLiteStorageBackend,
    StateManager,
    files,
    leases,
    segments,
)
from orchestra.coordination.state import manager as manager_module
from orchestra.coordination.state.backends import check_namespace, check_session_id
from orchestra.coordination.state.manager import SessionWriter
from orchestra.coordination.state.segments import SECTOR, encode_append
from orchestra.errors import (
    ConfigurationError,
    InvalidSessionIdError,
    SessionCorruptedError,
    SessionError,
    SessionNotFoundError,
    StorageUnavailableError,
    UnstorableValueError,
)


def step(number: int, pad: int = 0) -> str:
    return json.dumps({"t": "step", "s": number, "pad": "x" * pad})


# ---- every backend: one writer's records, in order, never twice ------------------------------


async def test_an_append_goes_in_only_after_the_records_its_writer_counted(
    storage: Storage,
) -> None:
    await storage.append("cas", [step(1), step(2)], durable=True, after=0)
    with pytest.raises(SessionError, match=r"'cas'.*another writer"):
        await storage.append("cas", [step(9)], durable=True, after=0)  # a stale writer
    with pytest.raises(SessionError, match="'cas'"):
        await storage.append("cas", [step(9)], durable=True, after=5)  # a gap
    await storage.append("cas", [step(3)], durable=False, after=2)
    assert await storage.read("cas") == [step(1), step(2), step(3)]


async def test_a_retried_append_that_was_stored_is_not_stored_twice(storage: Storage) -> None:
    """An append whose answer was lost (a dropped connection) is retried; finding its records
    stored already, the retry succeeds without storing them again."""
    await storage.append("retry", [step(1), step(2)], durable=True, after=0)
    await storage.append("retry", [step(1), step(2)], durable=True, after=0)
    assert await storage.read("retry") == [step(1), step(2)]


async def test_a_writer_refused_by_storage_stays_refused(storage: Storage) -> None:
    """Once storage refuses a session's writer (another writer got there first), every later
    flush raises that refusal instead of retrying, and nothing of this writer is stored."""
    manager = StateManager(storage, auto_save_interval=0)
    first = SessionWriter(manager, "two", 0)
    second = SessionWriter(manager, "two", 0)
    first.record(PauseRequest(at=1.0, reason="first"))
    await first.flush()
    second.record(PauseRequest(at=1.0, reason="second"))
    second.commit()
    for _ in range(2):
        with pytest.raises(SessionError, match="'two'"):
            await second.flush()
    first.record(PauseRequest(at=2.0, reason="first"))
    await first.flush()
    reasons = [json.loads(line)["reason"] for line in await storage.read("two")]
    assert reasons == ["first", "first"]


@pytest.mark.parametrize("backend_kind", ["file", "sqlite"])
async def test_commit_alone_sends_what_is_due_after_an_append_that_ended_unawaited(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An append is accounted for when it is next looked at, not by a callback of its own
    (a turn of the event loop less a step): one that ended while nobody awaited it (its run
    folding the step in memory) is taken into account by the next commit, which sends the
    records due since at once, in order, with nobody awaiting them (nor the timer that shows
    a step in flight, put off here). The embedded backends answer a read after the appends
    queued before it, so a read that finds an append stored finds it ended too."""
    monkeypatch.setattr(manager_module, "SHOW_AFTER", 3600.0)
    writer = SessionWriter(StateManager(storage, 0), "unawaited", 0)
    reasons = ["one", "two", "three"]
    for number, reason in enumerate(reasons, start=1):
        writer.record(PauseRequest(at=float(number), reason=reason))
        writer.commit()
        await stored(storage, "unawaited", number)
    assert not writer.unsettled
    await writer.close()
    assert [json.loads(line)["reason"] for line in await storage.read("unawaited")] == reasons


async def stored(storage: Storage, session_id: str, count: int) -> None:
    """Return once storage holds ``count`` records of the session (polled, with a deadline)."""
    deadline = time.monotonic() + 30
    while not await storage.exists(session_id) or len(await storage.read(session_id)) < count:
        assert time.monotonic() < deadline, f"{session_id}: {count} records never stored"
        await asyncio.sleep(0.001)


async def test_a_lost_answer_is_retried_alone_before_newer_records(storage: Storage) -> None:
    """The first append is stored but its answer is lost; meanwhile another record came in.
    The writer sends the lost append again as it was (storage recognises it), then the new one:
    each record is stored once, in order."""

    class LosesAnAnswer:
        lost = False

        def __getattr__(self, name: str) -> Any:
            return getattr(storage, name)

        async def append(
            self, session_id: str, records: Sequence[str], durable: bool, after: int
        ) -> None:
            await storage.append(session_id, records, durable, after)
            if not self.lost:
                self.lost = True
                raise ConnectionError("simulated: the connection dropped before the answer")

    lossy = LosesAnAnswer()
    writer = SessionWriter(StateManager(storage, 0), "lost", 0)
    writer.manager.storage = lossy  # type: ignore[assignment]
    writer.record(PauseRequest(at=1.0, reason="lost"))
    with pytest.raises(ConnectionError):
        await writer.flush()
    writer.record(RunResume(at=2.0, context={}))
    await writer.flush()
    assert [json.loads(line)["t"] for line in await storage.read("lost")] == ["pause", "resume"]


async def test_a_record_that_cannot_be_written_takes_no_position(storage: Storage) -> None:
    writer = SessionWriter(StateManager(storage, 0), "odd", 0)
    with pytest.raises(UnstorableValueError, match=r"builtins\.object"):
        writer.record(UserAnswer(at=1.0, branch_id="b0", answer=object()))
    text = "\ud800 a lone surrogate, as JSON can carry it"
    writer.record(UserAnswer(at=1.0, branch_id="b0", answer=text))
    await writer.flush()
    (line,) = await storage.read("odd")
    assert json.loads(line) == {"t": "answer", "s": 1, "at": 1.0, "branch_id": "b0", "answer": text}


async def test_an_empty_append_stores_nothing_and_a_stale_one_recreates_nothing(
    storage: Storage,
) -> None:
    await storage.append("empty", [], durable=True, after=0)
    assert not await storage.exists("empty")
    await storage.append("gone", [step(1)], durable=True, after=0)
    await storage.delete("gone")
    with pytest.raises(SessionError, match="'gone'"):
        await storage.append("gone", [step(2)], durable=True, after=1)
    assert not await storage.exists("gone")
    assert "gone" not in await storage.list_sessions()


CONTROL_CHARACTERS = [chr(code) for code in (*range(32), 127)]


async def test_a_session_id_with_a_control_character_anywhere_is_refused(
    storage: Storage,
) -> None:
    """The whole id must match: a trailing newline got through once (``re.match`` with
    ``$``), stored ``'nl\\n'``, listed as "nl" and left it impossible to delete by that name."""
    for character in CONTROL_CHARACTERS:
        for bad in (f"nl{character}", f"{character}nl", f"n{character}l"):
            with pytest.raises(InvalidSessionIdError):
                check_session_id(bad)
            with pytest.raises(InvalidSessionIdError):
                await storage.append(bad, [step(1)], durable=True, after=0)
            for call in (storage.read, storage.exists, storage.delete, storage.read_snapshot):
                with pytest.raises(InvalidSessionIdError):
                    await call(bad)
            with pytest.raises(InvalidSessionIdError):
                await storage.write_snapshot(bad, b"state")
    assert await storage.list_sessions() == []


# ---- the file backend: segment format ---------------------------------------------------------


async def test_a_torn_append_is_ignored_and_zeroed_before_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also when the next append starts a new segment: the torn one must not stay behind at
    the end of a segment that is no longer the last."""
    monkeypatch.setattr(files, "SEGMENT_BYTES", 256)
    folder = tmp_path / "state"
    storage = FileStorageBackend(folder)
    await storage.append("torn", [step(1)], durable=True, after=0)
    storage.close()
    tear(first_segment(folder / "torn"), [step(2, pad=1000)], lost=lambda n: n >= 1)
    storage = FileStorageBackend(folder)  # a new process
    try:
        assert await storage.read("torn") == [step(1)]
        await storage.append("torn", [step(2, pad=300)], durable=True, after=1)
        assert await storage.read("torn") == [step(1), step(2, pad=300)]
        assert len(list((folder / "torn").glob("log-*.seg"))) == 2
    finally:
        storage.close()


@pytest.mark.parametrize("keep", range(1, 14))
async def test_an_append_cut_inside_its_header_is_a_torn_append(tmp_path: Path, keep: int) -> None:
    """The first append ends ``keep`` bytes before a sector boundary: the next one's header
    is cut there."""
    first = next(
        step(1, pad) for pad in range(600) if len(encode_append([step(1, pad)])) == SECTOR - keep
    )
    folder = tmp_path / "state"
    storage = FileStorageBackend(folder)
    await storage.append("header", [first], durable=True, after=0)
    storage.close()
    tear(first_segment(folder / "header"), [step(2, pad=1000)], lost=lambda n: n >= 1)
    storage = FileStorageBackend(folder)
    try:
        assert await storage.read("header") == [first]
        await storage.append("header", [step(2)], durable=True, after=1)
        assert await storage.read("header") == [first, step(2)]
    finally:
        storage.close()


async def test_an_append_torn_with_a_hole_leaves_nothing_behind(tmp_path: Path) -> None:
    """A crash can persist the end of an append without its start: bytes after a stretch of
    zeros. Reopening zeroes them, so later appends never run into the leftovers."""
    folder = tmp_path / "state"
    storage = FileStorageBackend(folder)
    await storage.append("holes", [step(1)], durable=True, after=0)
    storage.close()
    tear(first_segment(folder / "holes"), [step(2, pad=1000)], lost=lambda n: n == 0)
    storage = FileStorageBackend(folder)
    try:
        assert await storage.read("holes") == [step(1)]
        for number in (2, 3):  # the first ends inside the leftovers
            await storage.append("holes", [step(number)], durable=True, after=number - 1)
        assert await storage.read("holes") == [step(1), step(2), step(3)]
    finally:
        storage.close()


async def test_an_append_torn_before_its_last_records_is_still_a_torn_append(
    tmp_path: Path,
) -> None:
    """One append with a large record and a small one; the crash persisted the later page but
    not the first. The intact small record belongs to the torn append: the whole append is
    ignored (it was never acknowledged), and the session stays usable."""
    folder = tmp_path / "state"
    storage = FileStorageBackend(folder)
    await storage.append("pages", [step(1)], durable=True, after=0)
    storage.close()
    # the first page never reached the disk
    tear(first_segment(folder / "pages"), [step(2, pad=9000), step(3)], lost=lambda n: n < 8)
    storage = FileStorageBackend(folder)
    try:
        assert await storage.read("pages") == [step(1)]
        await storage.append("pages", [step(2)], durable=True, after=1)
        assert await storage.read("pages") == [step(1), step(2)]
    finally:
        storage.close()


async def test_a_damaged_append_followed_by_another_is_damage(tmp_path: Path) -> None:
    """Zeros inside an append that another append follows cannot be a torn write (that would
    end the log): the session is reported damaged, never silently cut short."""
    folder = tmp_path / "state"
    storage = FileStorageBackend(folder)
    for number in (1, 2, 3):
        await storage.append("zeroed", [step(number)], durable=True, after=number - 1)
    storage.close()
    segment = first_segment(folder / "zeroed")
    data = bytearray(segment.read_bytes())
    second = data.index(b"@", 1) + 20  # inside the second append
    data[second : second + 3] = b"\0\0\0"
    segment.write_bytes(bytes(data))
    storage = FileStorageBackend(folder)
    try:
        with pytest.raises(SessionCorruptedError, match=r"'zeroed'.*damaged"):
            await storage.read("zeroed")
        with pytest.raises(SessionCorruptedError, match=r"'zeroed'.*damaged"):
            await storage.append("zeroed", [step(4)], durable=True, after=3)
    finally:
        storage.close()


async def test_a_changed_byte_in_the_last_append_is_damage_not_a_torn_write(
    tmp_path: Path,
) -> None:
    """Appends are written into zeros, so a crash can only leave an append short or with zero
    holes. Other wrong bytes, even in the last append, are damage."""
    folder = tmp_path / "state"
    storage = FileStorageBackend(folder)
    for number in (1, 2):
        await storage.append("flip", [step(number)], durable=True, after=number - 1)
    storage.close()
    segment = first_segment(folder / "flip")
    data = bytearray(segment.read_bytes())
    data[data.rindex(b'"pad"') + 2] ^= 0x01  # in the last append's record
    segment.write_bytes(bytes(data))
    with pytest.raises(SessionCorruptedError, match=r"'flip'.*damaged"):
        await FileStorageBackend(folder).read("flip")


async def test_a_zeroed_byte_in_the_last_acknowledged_append_is_damage(tmp_path: Path) -> None:
    """A crash loses whole sectors, never one byte of one: a finished session whose last
    record lost a byte is reported damaged (naming segment and byte), not cut back to an
    interrupted one that would run its last step again."""
    folder = tmp_path / "state"
    storage = FileStorageBackend(folder)
    for number in (1, 2):
        await storage.append("zeroed", [step(number, pad=100)], durable=True, after=number - 1)
    storage.close()
    segment = first_segment(folder / "zeroed")
    data = bytearray(segment.read_bytes())
    data[data.rindex(b'"pad"') + 10] = 0
    segment.write_bytes(bytes(data))
    storage = FileStorageBackend(folder)
    try:
        with pytest.raises(SessionCorruptedError, match=r"'zeroed'.*log-000000000001.seg.*byte"):
            await storage.read("zeroed")
        with pytest.raises(SessionCorruptedError, match="'zeroed'"):
            await storage.append("zeroed", [step(3)], durable=True, after=2)
    finally:
        storage.close()


def _segment_of(appends: list[list[str]]) -> bytes:
    """A segment holding these appends, in its zero padding."""
    data = b"".join(encode_append(records) for records in appends)
    return data + bytes(SECTOR * 4)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
    sizes=st.lists(st.integers(0, 1500), min_size=1, max_size=4),
    lost=st.sets(st.integers(0, 8), min_size=1),
)
def test_any_crash_of_the_last_append_is_a_torn_append(sizes: list[int], lost: set[int]) -> None:
    """Whichever of its sectors never reached the disk, the last append is dropped and the
    acknowledged ones are read."""
    acknowledged = [[step(n, pad)] for n, pad in enumerate(sizes[:-1], start=1)]
    before = _segment_of(acknowledged)
    end = len(before.rstrip(b"\0"))
    torn = bytearray(before[:end] + encode_append([step(99, sizes[-1])]) + bytes(SECTOR * 8))
    first = end - end % SECTOR
    for n in lost:
        sector = first + n * SECTOR
        torn[sector : sector + SECTOR] = before[sector : sector + SECTOR].ljust(SECTOR, b"\0")
    if bytes(torn).rstrip(b"\0") == before[:end] + encode_append([step(99, sizes[-1])]):
        return  # every lost sector lay past the append: it is whole
    parsed = segments.parse("s", "log-000000000001.seg", bytes(torn), last=True)
    assert parsed.records == [records[0] for records in acknowledged]


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    sizes=st.lists(st.integers(0, 1500), min_size=1, max_size=3),
    where=st.floats(0, 1, exclude_max=True),
    value=st.integers(0, 255),
)
def test_any_changed_byte_in_an_append_is_damage(
    sizes: list[int], where: float, value: int
) -> None:
    """One byte changed anywhere in any append, the last included, is named damage; the one
    exception is a zero written over the only byte an append has in a sector, which is what a
    crash that lost that sector leaves (see ``segments``)."""
    appends = [[step(n, pad)] for n, pad in enumerate(sizes, start=1)]
    data = bytearray(_segment_of(appends))
    end = len(bytes(data).rstrip(b"\0"))
    at = int(where * end)
    hypothesis.assume(data[at] != value)
    last_start = end - len(encode_append(appends[-1]))
    alone = len(range(max(at - at % SECTOR, last_start), min(at - at % SECTOR + SECTOR, end))) == 1
    hypothesis.assume(not (value == 0 and at >= last_start and alone))
    data[at] = value
    with pytest.raises(SessionCorruptedError, match=r"damaged at byte \d+"):
        segments.parse("s", "log-000000000001.seg", bytes(data), last=True)


async def test_segments_grow_ahead_are_sealed_when_full_and_named_by_position(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "SEGMENT_BYTES", 4096)
    folder = tmp_path / "state"
    storage = FileStorageBackend(folder)
    records = [step(number, pad=300) for number in range(1, 41)]
    try:
        for number, record in enumerate(records):  # durable and buffered appends alternate
            await storage.append("grow", [record], durable=number % 2 == 0, after=number)
        assert await storage.read("grow") == records
        paths = sorted((folder / "grow").glob("log-*.seg"))
        assert len(paths) > 2 and paths[0].name == "log-000000000001.seg"
        position = 1
        for sealed in paths[:-1]:
            assert segments.first_position(sealed) == position
            data = sealed.read_bytes()
            assert data.endswith(b"\n") and b"\0" not in data and len(data) <= 4096
            position += len(segments.parse("grow", sealed.name, data, last=False).records)
        assert paths[-1].stat().st_size >= segments.GROWTH_MIN  # grown ahead of its records
    finally:
        storage.close()
    reopened = FileStorageBackend(folder)
    try:
        await reopened.append("grow", [step(41)], durable=True, after=40)
        assert await reopened.read("grow") == [*records, step(41)]
    finally:
        reopened.close()


async def test_a_missing_segment_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "SEGMENT_BYTES", 512)
    folder = tmp_path / "state"
    storage = FileStorageBackend(folder)
    for number in range(6):
        await storage.append("gap", [step(number, pad=200)], durable=True, after=number)
    storage.close()
    sorted((folder / "gap").glob("log-*.seg"))[1].unlink()
    with pytest.raises(SessionCorruptedError, match=r"'gap'.*missing"):
        await FileStorageBackend(folder).read("gap")


# ---- the file backend: failing writes ---------------------------------------------------------


def failing_write(
    monkeypatch: pytest.MonkeyPatch, *, undo_fails: bool = False
) -> Callable[[], int]:
    """The next durable append writes its bytes and then fails to sync them (EIO), whichever
    way the platform syncs (``pwritev`` with ``RWF_DSYNC`` on Linux, else ``fdatasync``); with
    ``undo_fails``, zeroing them again fails too. Returns how many syncs failed."""
    failures = {"count": 0}
    write, sync = os.pwrite, os.fdatasync

    def fail_once() -> None:
        if failures["count"] == 0:
            failures["count"] += 1
            raise OSError(errno.EIO, "simulated: the sync failed")

    if hasattr(os, "pwritev"):
        write_all = os.pwritev

        def pwritev(descriptor: int, buffers: Sequence[bytes], offset: int, flags: int = 0) -> int:
            written = write_all(descriptor, buffers, offset)
            if flags:  # written, and to be made durable
                fail_once()
            return written

        monkeypatch.setattr(os, "pwritev", pwritev)

    def fdatasync(descriptor: int) -> None:
        fail_once()
        sync(descriptor)

    def pwrite(descriptor: int, data: Any, offset: int) -> int:
        if undo_fails and failures["count"] == 1 and not any(data):
            raise OSError(errno.EIO, "simulated: the undo failed too")
        return write(descriptor, data, offset)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "pwrite", pwrite)
    return lambda: failures["count"]


async def test_a_failed_write_is_undone_so_its_retry_stores_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FileStorageBackend(tmp_path / "state")
    try:
        await storage.append("eio", [step(1)], durable=True, after=0)
        failed = failing_write(monkeypatch)
        with pytest.raises(OSError, match="sync failed"):
            await storage.append("eio", [step(2)], durable=True, after=1)
        assert failed() == 1
        await storage.append("eio", [step(2)], durable=True, after=1)
        assert await storage.read("eio") == [step(1), step(2)]
    finally:
        storage.close()


async def test_a_failed_write_that_cannot_be_undone_stops_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bytes may be on disk: the writer must not write them again. A run that reads the
    session afresh (a resume) goes on from whatever the log holds."""
    storage = FileStorageBackend(tmp_path / "state")
    try:
        await storage.append("stuck", [step(1)], durable=True, after=0)
        failing_write(monkeypatch, undo_fails=True)
        with pytest.raises(SessionError, match=r"'stuck'.*could not be undone"):
            await storage.append("stuck", [step(2)], durable=True, after=1)
        monkeypatch.undo()
        held = await storage.read("stuck")
        await storage.append("stuck", [step(3)], durable=True, after=len(held))
        assert (await storage.read("stuck"))[-1] == step(3)
    finally:
        storage.close()


async def test_a_full_disk_while_growing_a_segment_is_a_passing_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Growing the file fails before any byte of the append is written: once space is back,
    the same append goes in (the writer is not stopped for good)."""
    storage = FileStorageBackend(tmp_path / "state")
    write = os.pwrite
    full = {"disk": True}

    def pwrite(descriptor: int, data: Any, offset: int) -> int:
        if full["disk"] and not any(data):
            raise OSError(errno.ENOSPC, "simulated: no space left on device")
        return write(descriptor, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    try:
        with pytest.raises(OSError, match="no space"):
            await storage.append("full", [step(1)], durable=True, after=0)
        full["disk"] = False
        await storage.append("full", [step(1)], durable=True, after=0)
        assert await storage.read("full") == [step(1)]
    finally:
        storage.close()


# ---- one writer at a time -----------------------------------------------------------------------


async def test_a_second_writer_is_refused_while_the_first_holds_the_session(
    backend_kind: str, tmp_path: Path
) -> None:
    first, second = open_backend(backend_kind, tmp_path), open_backend(backend_kind, tmp_path)
    try:  # the second: another process, or another backend object
        await first.append("held", [step(1)], durable=True, after=0)
        with pytest.raises(SessionError, match=r"'held'.*another process"):
            await second.append("held", [step(2)], durable=True, after=1)
        await first.release("held")
        await second.append("held", [step(2)], durable=True, after=1)
        assert await second.read("held") == [step(1), step(2)]
        with pytest.raises(SessionError, match=r"'held'.*another process"):
            await first.append("held", [step(3)], durable=True, after=2)
    finally:
        close_backend(first)
        close_backend(second)


async def test_a_closed_writer_lets_another_process_write_the_session(
    backend_kind: str, tmp_path: Path
) -> None:
    """The session is held while a writer writes, and let go when it closes: a run in one
    process, then a checkpoint or a resume in another, both work."""
    here = StateManager(open_backend(backend_kind, tmp_path), 0)
    there = StateManager(open_backend(backend_kind, tmp_path), 0)  # another process
    try:
        writer, _ = await here.open("handed")
        writer.record(
            RunStart(
                at=1.0,
                task="t",
                context={},
                max_steps=1,
                config=ExecutionConfig(),
                error_config=ErrorHandlingConfig(),
                topology=("A",),
            )
        )
        await writer.close()
        other, log = await there.open("handed")
        assert log is not None and log.length == 1
        other.record(Checkpoint(at=2.0, checkpoint_id="handed@x", name="x", position=1))
        await other.close()
        assert len(await there.storage.read("handed")) == 2
    finally:
        close_backend(here.storage)
        close_backend(there.storage)


async def test_a_session_is_not_deleted_under_another_writer(
    backend_kind: str, tmp_path: Path
) -> None:
    """Its writer would go on appending to a log no longer there, and lose what it wrote."""
    writing, deleting = open_backend(backend_kind, tmp_path), open_backend(backend_kind, tmp_path)
    try:  # the second: another process, or another backend object
        await writing.append("busy", [step(1)], durable=True, after=0)
        with pytest.raises(SessionError, match=r"'busy'.*another process"):
            await deleting.delete("busy")
        await writing.release("busy")
        assert await deleting.delete("busy")
        with pytest.raises(SessionError, match="'busy'"):
            await writing.append("busy", [step(2)], durable=True, after=1)
        assert not await writing.exists("busy")
    finally:
        close_backend(writing)
        close_backend(deleting)


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_a_server_lease_is_kept_renewed_and_lost_only_to_a_dead_or_silent_holder(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Leases on a server: renewing keeps one; a holder on another machine is honoured until
    its lease expires; one whose process is gone from this machine is replaced at once."""
    request.getfixturevalue(f"{kind}_server")
    holder, other = open_backend(kind, tmp_path), open_backend(kind, tmp_path)
    await holder.append("leased", [step(1)], durable=True, after=0)
    assert await holder._renew("leased") and not await other._renew("leased")
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = finished.stdout.strip()
    dead = f"x {leases._SPACE} {pid} 1"
    elsewhere = f"x another-machine {os.getpid()} 1"
    for lease, expires_in, taken in (
        (elsewhere, 60, False),
        (dead, 60, True),
        (elsewhere, -1, True),
    ):
        await plant_lease(holder, "leased", lease, expires_in)
        if taken:
            await other.append("leased", [step(2)], durable=True, after=1)
            await other.release("leased")
            await other.delete("leased")
            await holder.release("leased")
            await holder.append("leased", [step(1)], durable=True, after=0)
        else:
            with pytest.raises(SessionError, match="another process"):
                await other.append("leased", [step(2)], durable=True, after=1)
    await holder.release("leased")


def test_a_lease_holder_is_dead_only_when_this_machine_can_tell() -> None:
    def holder(pid: int, started: str, space: str = leases._SPACE, identity: str = "x") -> str:
        return f"{identity} {space} {pid} {started}"

    alive = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        started = leases._started(alive.pid)
        assert not leases.abandoned(holder(alive.pid, started))
        assert leases.abandoned(holder(alive.pid, "1"))  # its id, reused by another process
        assert not leases.abandoned(holder(alive.pid, started, space="another-machine"))
        assert not leases.abandoned("not a holder")
        assert alive.stdin is not None
        alive.stdin.close()
        os.waitid(os.P_PID, alive.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
        assert leases.abandoned(holder(alive.pid, started))
    finally:
        alive.wait()
    assert leases.abandoned(holder(alive.pid, started))  # gone

    async def renew(session_id: str) -> bool:
        return True

    mine = leases.Leases(1.0, renew)
    here = mine.token
    assert not leases.abandoned(here)  # a live backend object of this process
    del mine
    gc.collect()
    assert leases.abandoned(here)  # dropped without giving its leases up
    with pytest.raises(ConfigurationError, match=r"lease_seconds must be at least 0\.001"):
        leases.Leases(0.0001, renew)
    assert leases.Leases(0.0015, renew).milliseconds == 2


def test_a_lease_holder_with_an_odd_command_name_or_hidden_from_proc_is_still_judged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel cuts command names at 15 bytes, even inside a character; where /proc hides
    another user's processes (hidepid), a signal probe decides."""
    odd = tmp_path / ("é" * 9)
    odd.symlink_to(sys.executable)
    alive = subprocess.Popen(
        [str(odd), "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        holder = f"x {leases._SPACE} {alive.pid} {leases._started(alive.pid)}"
        assert not leases.abandoned(holder)
        monkeypatch.setattr(leases, "_stat", lambda pid: None)  # as under hidepid
        assert not leases.abandoned(holder)
    finally:
        assert alive.stdin is not None
        alive.stdin.close()
        alive.wait()
    assert leases.abandoned(holder)  # the probe finds no such process


async def test_a_dropped_backend_stops_renewing_its_leases() -> None:
    """Else its leases would never expire, for anyone, while its event loop runs."""
    renewed: list[str] = []

    async def renew(session_id: str) -> bool:
        renewed.append(session_id)
        return True

    dropped = leases.Leases(0.003, renew)
    dropped.hold("s")
    keeping = dropped._renewing["s"]
    del dropped
    gc.collect()
    await asyncio.wait_for(keeping, 5)


async def test_stopping_a_renewal_whose_call_swallows_the_cancel_still_returns() -> None:
    """A driver may answer a call it was cancelled in (redis-py did, 100 sessions on a loop):
    the renewal must end all the same, else closing the session waits for it for good."""
    renewing = asyncio.Event()
    calls = 0

    async def renew(session_id: str) -> bool:
        nonlocal calls
        calls += 1
        renewing.set()
        if calls > 1:  # renewing on after the stop: waits, so the stop times out
            await asyncio.Event().wait()
        with contextlib.suppress(asyncio.CancelledError):  # as the driver did
            await asyncio.Event().wait()
        return True

    mine = leases.Leases(0.003, renew)
    mine.hold("s")
    await asyncio.wait_for(renewing.wait(), 10)
    await asyncio.wait_for(mine.stop("s"), 10)
    assert calls == 1


async def test_stopping_a_flusher_whose_snapshot_swallows_the_cancel_still_returns(
    tmp_path: Path,
) -> None:
    """As with a lease's renewal (above): a buffered writer closing must not wait for good for
    a flusher whose snapshot write answered the cancel (redis-py, 1000 buffered sessions)."""
    storage = SQLiteStorageBackend(tmp_path / "s.db")
    writer = SessionWriter(StateManager(storage, 0.003), "s", 0)
    writer.snapshot_source = lambda length, at: b"state"
    writer.record(PauseRequest(at=1.0, reason="flushed"))
    writing = asyncio.Event()
    calls = 0

    async def write_snapshot(session_id: str, data: bytes) -> None:
        nonlocal calls
        calls += 1
        writing.set()
        if calls > 1:  # flushing on after the stop: waits, so the close times out
            await asyncio.Event().wait()
        with contextlib.suppress(asyncio.CancelledError):  # as the driver did
            await asyncio.Event().wait()

    storage.write_snapshot = write_snapshot  # type: ignore[method-assign]
    writer.start()
    await asyncio.wait_for(writing.wait(), 10)
    await asyncio.wait_for(writer.close(), 10)
    assert calls == 1


async def plant_lease(storage: Storage, session_id: str, holder: str, expires_in: float) -> None:
    """As if ``holder`` held the session's lease, for ``expires_in`` seconds (or expired)."""
    if isinstance(storage, RedisStorageBackend):
        key = storage._lease_key(session_id)
        if expires_in > 0:
            await (await storage._client()).set(key, holder, px=int(expires_in * 1000))
        else:
            await (await storage._client()).delete(key)
        return
    assert isinstance(storage, PostgresStorageBackend)
    pool = await storage._pool()
    await pool.execute(
        f"UPDATE {storage.writers} SET holder = $2, expires = now() + make_interval(secs => $3) "
        "WHERE session = $1",
        session_id,
        holder,
        float(expires_in),
    )


# ---- the file backend: bounded resources --------------------------------------------------------


async def test_closing_while_appends_are_in_flight_loses_and_misplaces_nothing(
    tmp_path: Path,
) -> None:
    """close() waits for a write in flight, and a later append opens its segment again: no
    descriptor is closed under a write (which could then land in another session's file)."""
    storage = FileStorageBackend(tmp_path / "state")
    try:
        for round_number in range(5):
            appends = [
                storage.append(name, [step(n)], durable=True, after=round_number * 10 + n - 1)
                for n in range(1, 11)
                for name in ("left", "right")
            ]
            asyncio.get_running_loop().call_soon(storage.close)
            await asyncio.gather(*appends)
        expected = [step(n) for _ in range(5) for n in range(1, 11)]
        assert await storage.read("left") == expected
        assert await storage.read("right") == expected
    finally:
        storage.close()


async def test_threads_and_open_files_stay_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "open_segment_limit", lambda: 3)
    storage = FileStorageBackend(tmp_path / "state")
    names = [f"s{number}" for number in range(12)]
    before = threading.active_count()
    try:
        for rounds in range(2):
            for name in names:
                await storage.append(name, [step(rounds + 1)], durable=True, after=rounds)
                assert len(storage._open) <= 3
        assert threading.active_count() - before <= files.SHARDS
        for name in names:
            assert await storage.read(name) == [step(1), step(2)]
    finally:
        storage.close()


async def test_a_segment_closed_to_save_files_is_taken_up_where_it_was_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With more sessions appending than segments kept open, each append used to read its
    session's last segment whole again (up to 4 MiB) to find where it ends."""
    monkeypatch.setattr(files, "open_segment_limit", lambda: 3)
    read_whole: list[str] = []
    reopen = files.Segment.reopen

    def counted(session_id: str, path: Path) -> files.Segment:
        read_whole.append(session_id)
        return reopen(session_id, path)

    monkeypatch.setattr(files.Segment, "reopen", counted)
    storage = FileStorageBackend(tmp_path / "state")
    names = [f"s{number}" for number in range(12)]
    try:
        for rounds in range(3):
            for name in names:
                await storage.append(name, [step(rounds + 1)], durable=True, after=rounds)
        assert read_whole == []
        for name in names:
            assert await storage.read(name) == [step(1), step(2), step(3)]
    finally:
        storage.close()


async def test_a_segment_another_writer_appended_to_meanwhile_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "open_segment_limit", lambda: 1)
    storage, other = FileStorageBackend(tmp_path / "state"), FileStorageBackend(tmp_path / "state")
    try:
        await storage.append("left", [step(1)], durable=True, after=0)
        await storage.append("right", [step(1)], durable=True, after=0)  # closes left's segment
        await other.append("left", [step(2)], durable=True, after=1)
        other.close()
        with pytest.raises(SessionError, match="'left'"):
            await storage.append("left", [step(3)], durable=True, after=1)
        assert await storage.read("left") == [step(1), step(2)]
        await storage.append("left", [step(3)], durable=True, after=2)
        assert await storage.read("left") == [step(1), step(2), step(3)]
    finally:
        storage.close()
        other.close()


async def test_a_session_started_anew_by_another_writer_refuses_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new segment file may get the old one's inode and size: what the closed segment's
    mark remembers of its last append tells them apart."""
    monkeypatch.setattr(files, "open_segment_limit", lambda: 1)
    storage, other = FileStorageBackend(tmp_path / "state"), FileStorageBackend(tmp_path / "state")
    try:
        await storage.append("anew", [step(1), step(2), step(3)], durable=True, after=0)
        await storage.append("aside", [step(1)], durable=True, after=0)  # closes anew's segment
        assert await other.delete("anew")
        await other.append("anew", [step(7)], durable=True, after=0)
        other.close()
        with pytest.raises(SessionError, match="'anew'"):
            await storage.append("anew", [step(4)], durable=True, after=3)
        assert await storage.read("anew") == [step(7)]
    finally:
        storage.close()
        other.close()


async def test_an_append_torn_by_another_writer_behind_a_closed_segment_is_cleared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "open_segment_limit", lambda: 1)
    storage = FileStorageBackend(tmp_path / "state")
    try:
        await storage.append("torn", [step(1), step(2)], durable=True, after=0)
        await storage.append("aside", [step(1)], durable=True, after=0)  # closes torn's segment
        never_acknowledged = [step(9, pad=200)] * 3
        tear(first_segment(tmp_path / "state" / "torn"), never_acknowledged, lambda n: n == 0)
        for number in range(3, 8):
            await storage.append("torn", [step(number)], durable=True, after=number - 1)
        assert await storage.read("torn") == [step(n) for n in range(1, 8)]
    finally:
        storage.close()


async def test_a_file_system_that_refuses_a_full_fsync_gets_an_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """macOS network and FUSE file systems refuse ``F_FULLFSYNC``; here a command Linux
    refuses stands in for it."""
    monkeypatch.setattr(segments, "_FULL_FSYNC", 0x7FFF)
    storage = FileStorageBackend(tmp_path / "state")
    try:
        await storage.append("remote", [step(1)], durable=True, after=0)
        assert await storage.read("remote") == [step(1)]
    finally:
        storage.close()


async def test_durable_files_where_there_is_no_fdatasync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """macOS has no ``os.fdatasync`` (its durable sync is ``F_FULLFSYNC``); the backend syncs
    with what the platform has instead of failing."""
    monkeypatch.delattr(os, "fdatasync")
    storage = FileStorageBackend(tmp_path / "state")
    try:
        await storage.append("mac", [step(1)], durable=True, after=0)
        await storage.write_snapshot("mac", b"state")
        assert await storage.read("mac") == [step(1)]
        assert await storage.read_snapshot("mac") == b"state"
    finally:
        storage.close()


def test_a_platform_without_positional_writes_is_told_to_use_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "pwrite")
    with pytest.raises(ConfigurationError, match="use SQLiteStorageBackend"):
        FileStorageBackend(tmp_path / "state")


# ---- SQLite rows ------------------------------------------------------------------------------


async def test_a_sqlite_file_of_something_else_is_refused_and_left_alone(tmp_path: Path) -> None:
    other = tmp_path / "inventory.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE parts (name TEXT)")
    db.close()
    storage = SQLiteStorageBackend(other)
    try:
        with pytest.raises(ConfigurationError, match=r"inventory.db is not a session store.*parts"):
            await storage.list_sessions()
    finally:
        storage.close()
    with sqlite3.connect(other) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert [row[0] for row in db.execute("SELECT name FROM sqlite_master")] == ["parts"]
    db.close()


async def test_a_path_that_cannot_be_a_database_is_named(tmp_path: Path) -> None:
    (tmp_path / "folder.db").mkdir()
    (tmp_path / "notes.db").write_text("shopping list\n" * 100)
    for name in ("folder.db", "notes.db"):
        storage = SQLiteStorageBackend(tmp_path / name)
        try:
            with pytest.raises(ConfigurationError, match=f"cannot use .*{name} as a session store"):
                await storage.append("s", [step(1)], durable=True, after=0)
        finally:
            storage.close()


async def test_a_sqlite_append_cut_short_is_reported_for_its_session(tmp_path: Path) -> None:
    """SQLite commits an append whole or not at all, so a stored append that ends mid-record
    was damaged after the fact: the session says so; another session still reads."""
    storage = SQLiteStorageBackend(tmp_path / "state.db")
    try:
        await storage.append("cut", [step(1)], durable=True, after=0)
        await storage.append("whole", [step(1)], durable=True, after=0)
        with sqlite3.connect(tmp_path / "state.db") as db:
            db.execute("UPDATE appends SET records = substr(records, 1, 12) WHERE session = 'cut'")
        db.close()
        with pytest.raises(SessionCorruptedError, match=r"'cut'.*record 1 ends in an incomplete"):
            await storage.read("cut")
        assert await storage.read("whole") == [step(1)]
    finally:
        storage.close()


async def _three_sessions(path: Path) -> None:
    storage = SQLiteStorageBackend(path)
    try:
        for session_id in ("alpha", "beta", "gamma"):
            for number in range(1, 30):
                await storage.append(session_id, [step(number, pad=300)], True, number - 1)
    finally:
        storage.close()


async def test_a_damaged_sqlite_page_is_named_and_the_rest_still_reads(tmp_path: Path) -> None:
    """Raw ``sqlite3.DatabaseError`` no more: the session whose rows are on the page is
    damaged, naming the store; the others read, and all three are listed."""
    path = tmp_path / "state.db"
    await _three_sessions(path)
    sqlite_store_damaged_at(path, "alpha", "rows")
    storage = SQLiteStorageBackend(path)
    try:
        with pytest.raises(SessionCorruptedError, match=rf"'alpha'.*store {path} is damaged"):
            await storage.read("alpha")
        assert await storage.read("gamma") == [step(n, pad=300) for n in range(1, 30)]
        assert await storage.list_sessions() == ["alpha", "beta", "gamma"]
        assert await storage.damage()
    finally:
        storage.close()


async def test_a_session_behind_a_damaged_index_entry_is_damaged_not_absent(
    tmp_path: Path,
) -> None:
    """The index no longer leads to alpha's rows (its page holds an id no session can have):
    alpha is reported damaged, not missing, and listed by its rows, without the garbage id.
    A session that is not there, in a sound file, is still simply absent."""
    path = tmp_path / "state.db"
    await _three_sessions(path)
    sound = SQLiteStorageBackend(tmp_path / "sound.db")
    try:
        await sound.append("alpha", [step(1)], durable=True, after=0)
        assert not await sound.exists("nobody")
        with pytest.raises(SessionNotFoundError):
            await sound.read("nobody")
    finally:
        sound.close()
    sqlite_store_damaged_at(path, "alpha", "index")
    storage = SQLiteStorageBackend(path)
    try:
        for call in (storage.read, storage.exists):
            with pytest.raises(SessionCorruptedError, match=rf"'alpha'.*store {path} is damaged"):
                await call("alpha")
        assert await storage.list_sessions() == ["alpha", "beta", "gamma"]
        assert await storage.read("beta") == [step(n, pad=300) for n in range(1, 30)]
    finally:
        storage.close()


# ---- the writer ---------------------------------------------------------------------------------


def test_a_wait_that_meets_a_finished_append_before_its_callback_ran_returns(
    tmp_path: Path,
) -> None:
    """An append can finish in the loop iteration in which another branch reaches its gate,
    before the append's done callback has run. The gate accounts for it there and then, instead
    of awaiting the finished future over and over without ever yielding (which hung a run)."""
    appends: list[asyncio.Future[None]] = []

    class Controlled(FileStorageBackend):
        def append(
            self, session_id: str, records: Sequence[str], durable: bool, after: int
        ) -> asyncio.Future[None]:
            appends.append(asyncio.get_running_loop().create_future())
            return appends[-1]

    async def scenario() -> int:
        writer = SessionWriter(StateManager(Controlled(tmp_path), 0), "s", 0)
        writer.record(PauseRequest(at=1.0, reason=None))
        writer.commit()
        appends[0].set_result(None)  # finished; its callback is only scheduled
        await writer.settled()
        return writer.length

    outcome: list[int] = []
    thread = threading.Thread(target=lambda: outcome.append(asyncio.run(scenario())))
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "the writer spun on a finished append"
    assert outcome == [1] and len(appends) == 1


@pytest.mark.parametrize("namespace", ["ns\n", "ns\r\n", "ns\x00", "", "Ns", "ns-x", "n" * 42])
def test_a_server_namespace_must_match_whole(namespace: str) -> None:
    """``'ns\\n'`` passed ``re.match(...$)`` and named Redis keys and PostgreSQL tables."""
    with pytest.raises(ConfigurationError, match="namespace"):
        check_namespace(namespace)


async def test_a_new_backends_first_calls_may_come_at_once(storage: Storage) -> None:
    """The first calls of a backend object, made at the same time for different sessions (a
    worker taking up several sessions at once): each succeeds. PostgreSQL handed its pool to
    the second caller before the first had made the tables ("relation ... does not exist")."""
    names = [f"s{n}" for n in range(6)]
    await asyncio.gather(
        *(storage.append(name, [step(1)], durable=True, after=0) for name in names)
    )
    for name in names:
        await storage.release(name)
        assert await storage.read(name) == [step(1)]
    await close_connections(storage)


async def test_a_released_segment_is_taken_up_where_it_was_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that releases the session after each append (the Temporal store mirror)
    read its last segment whole again at every append, a cost that grew with the session;
    unless another writer appended meanwhile, which is still seen."""
    read_whole: list[str] = []
    reopen = files.Segment.reopen

    def counted(session_id: str, path: Path) -> files.Segment:
        read_whole.append(session_id)
        return reopen(session_id, path)

    monkeypatch.setattr(files.Segment, "reopen", counted)
    storage, other = FileStorageBackend(tmp_path / "state"), FileStorageBackend(tmp_path / "state")
    try:
        for number in range(1, 6):
            await storage.append("mirrored", [step(number)], durable=True, after=number - 1)
            await storage.release("mirrored")
        assert read_whole == []
        await other.append("mirrored", [step(6)], durable=True, after=5)
        await other.release("mirrored")
        with pytest.raises(SessionError, match="'mirrored'"):
            await storage.append("mirrored", [step(60)], durable=True, after=5)
        assert read_whole == ["mirrored", "mirrored"]  # the other writer's, and this one's
        await storage.append("mirrored", [step(7)], durable=True, after=6)
        assert await storage.read("mirrored") == [step(n) for n in range(1, 8)]
    finally:
        storage.close()
        other.close()


async def test_a_redis_urls_password_never_reaches_an_error(redis_server: str) -> None:
    """The backend's repr is in its errors (a missing session's, say): a password in its URL
    is masked there."""
    storage = RedisStorageBackend(redis_server.replace("redis://", "redis://:s3cr3t-pw@"), "pw")
    assert "s3cr3t-pw" not in repr(storage)
    with pytest.raises(Exception) as raised:
        await storage.read("absent")
    assert "s3cr3t-pw" not in str(raised.value)


def closed_port() -> int:
    """A loopback port nothing listens on: bound, then closed."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return int(listener.getsockname()[1])


SERVER_CALLS: list[tuple[str, Callable[[Any], Any]]] = [
    ("look for session 'down'", lambda storage: storage.exists("down")),
    ("read session 'down'", lambda storage: storage.read("down")),
    ("list the sessions", lambda storage: storage.list_sessions()),
    ("delete session 'down'", lambda storage: storage.delete("down")),
    ("release session 'down'", lambda storage: storage.release("down")),
    ("store a snapshot of session 'down'", lambda storage: storage.write_snapshot("down", b"x")),
    ("read the snapshot of session 'down'", lambda storage: storage.read_snapshot("down")),
]


@pytest.mark.parametrize(("doing", "call"), SERVER_CALLS, ids=[d for d, _ in SERVER_CALLS])
@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_a_server_that_does_not_answer_is_a_clear_error_naming_the_call_and_server(
    kind: str, doing: str, call: Callable[[Any], Any]
) -> None:
    """Not the driver's own ``ConnectionError`` (or ``OSError``) from deep inside: a
    ``StorageUnavailableError`` (a ``SessionError``, transient) that says what was being done, on which server (its password masked)."""
    port = closed_port()
    storage: RedisStorageBackend | PostgresStorageBackend
    if kind == "redis":
        storage = RedisStorageBackend(f"redis://:s3cr3t-pw@127.0.0.1:{port}/0", "down")
    else:
        storage = PostgresStorageBackend(f"postgresql://me:s3cr3t-pw@127.0.0.1:{port}/db", "down")
    with pytest.raises(StorageUnavailableError) as raised:
        await call(storage)
    message = str(raised.value)
    assert message.startswith(f"could not {doing}: {storage!r} failed to answer")
    assert f"127.0.0.1:{port}" in message and "s3cr3t-pw" not in message
    await close_connections(storage)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd (Linux)")
def test_a_backend_used_by_one_asyncio_run_after_another_keeps_no_connection_open(
    storage: Storage,
) -> None:
    """Each event loop gets connections of its own, closed as its ``asyncio.run`` ends (before,
    each run left its Redis or PostgreSQL connections open until the process ended: a service
    calling ``asyncio.run`` per request ran out of descriptors)."""

    def open_files() -> int:
        gc.collect()
        return len(os.listdir("/proc/self/fd"))

    asyncio.run(storage.exists("s"))
    before = open_files()
    for _ in range(10):
        asyncio.run(storage.exists("s"))
    assert open_files() <= before + 2  # room for a thread of the test process; not one a run
