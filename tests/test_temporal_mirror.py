"""The store mirror: a Temporal workflow run's journal, written into a session store batch by
batch, is the session log an embedded run writes (record for record), reads back as that run
(``get_result``), and takes each record once however its batches are repeated.

No Temporal server is needed: the journals are an embedded run's log, cut into its runs and
numbered from 1 as a workflow run numbers its journal. Every test runs on all four backends.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import msgspec
import pytest
from helpers import run_cli
from storage_backends import Storage, close_backend, close_connections, open_backend
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from test_replay import exactly, fan_out_instance
from test_sessions import wait
from test_storage import closed_port

from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.state import (
    FileStorageBackend,
    PostgresStorageBackend,
    SQLiteStorageBackend,
    StateManager,
)
from orchestra.coordination.state.manager import SessionWriter, run_state
from orchestra.coordination.state.records import decode, encode, loads
from orchestra.errors import SessionError, StorageUnavailableError
from orchestra.temporal.mirror import MirrorBatch, StoreMirror

_POSITION = re.compile(r'^(\{"t":"[a-z_]+","s":)[0-9]+,')


def journals(log: list[str]) -> list[list[str]]:
    """A session log's runs, each as a workflow run's journal: numbered from 1."""
    starts = [n for n, line in enumerate(log) if line.startswith('{"t":"run",')]
    runs = [log[a:b] for a, b in zip(starts, [*starts[1:], len(log)], strict=True)]
    return [
        [
            _POSITION.sub(lambda m, n=n: f"{m[1]}{n},", line, count=1)
            for n, line in enumerate(run, 1)
        ]
        for run in runs
    ]


async def embedded_log(tmp_path: Path, session_id: str, runs: int = 1) -> list[str]:
    """The log of ``runs`` embedded runs of the fan-out workflow in one session."""
    source = FileStorageBackend(tmp_path / "source")
    try:
        for _ in range(runs):
            result = await wait(
                fan_out_instance(source).execute("research", context={"session_id": session_id})
            )
            assert result.success, result.error
        return await source.read(session_id)
    finally:
        source.close()


async def mirror_in_batches(
    mirror: StoreMirror, session_id: str, key: str, journal: list[str], sizes: tuple[int, ...]
) -> None:
    start, turn = 0, 0
    while start < len(journal):
        size = sizes[turn % len(sizes)]
        await mirror.append(session_id, key, start, journal[start : start + size])
        start, turn = start + size, turn + 1


async def read_back(storage: Storage, session_id: str) -> object:
    result = await wait(fan_out_instance(storage).get_result(session_id))
    assert result is not None
    return exactly(result)


async def test_a_mirrored_run_is_the_embedded_runs_log(storage: Storage, tmp_path: Path) -> None:
    """Batch by batch, the journal becomes the very log the embedded run wrote, and reads back
    as that run: result, metrics and events; listed as a finished session."""
    log = await embedded_log(tmp_path, "s")
    [journal] = journals(log)
    await mirror_in_batches(StoreMirror(StateManager(storage)), "s", "run-1", journal, (1, 3, 2))
    assert await storage.read("s") == log
    source = FileStorageBackend(tmp_path / "source")
    try:
        assert await read_back(storage, "s") == await read_back(source, "s")
    finally:
        source.close()
    assert "s" in await storage.list_sessions()
    assert run_state(await StateManager(storage).load("s")) == "finished"


async def test_the_command_line_lists_a_mirrored_session(tmp_path: Path) -> None:
    """``orchestra sessions list`` over the store sees the session's two runs, finished."""
    log = await embedded_log(tmp_path, "s", runs=2)
    storage = SQLiteStorageBackend(tmp_path / "mirror.db")
    try:
        mirror = StoreMirror(StateManager(storage))
        for number, journal in enumerate(journals(log), start=1):
            await mirror_in_batches(mirror, "s", f"run-{number}", journal, (3,))
    finally:
        storage.close()
    listed = await asyncio.to_thread(
        run_cli, "sessions", "list", "--store", str(tmp_path / "mirror.db")
    )
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if " s " in line)
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert (cells[:3], cells[-1]) == (["s", "finished", "2"], "research")


async def test_repeated_batches_are_written_once(storage: Storage, tmp_path: Path) -> None:
    """Each batch sent twice, batches that overlap what is stored, and a new mirror (a worker
    that took the workflow over after one was killed in the middle of a call, whose append
    was stored) going on from a batch already stored: every record is in the log once."""
    log = await embedded_log(tmp_path, "s")
    [journal] = journals(log)
    manager = StateManager(storage)
    first = StoreMirror(manager)
    await first.append("s", "run-1", 0, journal[:4])
    await first.append("s", "run-1", 0, journal[:4])
    await first.append("s", "run-1", 2, journal[2:7])
    await first.append("s", "run-1", 7, journal[7:8])
    taken_over = StoreMirror(manager)
    await taken_over.append("s", "run-1", 7, journal[7:8])
    await taken_over.append("s", "run-1", 5, journal[5:10])
    await first.append("s", "run-1", 8, journal[8:11])  # its place is stale: it reads again
    await taken_over.append("s", "run-1", 0, journal[:1])
    await taken_over.append("s", "run-1", 11, journal[11:])
    await first.append("s", "run-1", 11, journal[11:])
    assert len(journal) == 12
    assert await storage.read("s") == log


async def test_a_gap_is_refused(storage: Storage, tmp_path: Path) -> None:
    """A batch that starts beyond what the store holds of its run, or whose run's header was
    never mirrored, is refused naming the session, and writes nothing; so is a batch that
    does not match the records stored where it goes."""
    log = await embedded_log(tmp_path, "s")
    [journal] = journals(log)
    manager = StateManager(storage)
    mirror = StoreMirror(manager)
    with pytest.raises(SessionError, match=r"session 's'.*gap"):
        await mirror.append("s", "run-1", 3, journal[3:5])  # nothing stored yet
    assert not await storage.exists("s")
    await mirror.append("s", "run-1", 0, journal[:3])
    for fresh in (mirror, StoreMirror(manager)):
        with pytest.raises(SessionError, match=r"session 's'.*lines up to 3 only \(a gap"):
            await fresh.append("s", "run-1", 4, journal[4:6])
        with pytest.raises(SessionError, match=r"session 's'.*another run's records"):
            await StoreMirror(manager).append("s", "run-1", 1, [journal[2], journal[3]])
    assert await storage.read("s") == log[:3]
    await mirror.append("s", "run-1", 3, journal[3:])
    with pytest.raises(SessionError, match=r"session 's'.*header was never mirrored"):
        await StoreMirror(manager).append("s", "run-2", len(journal), journal[-1:])
    assert await storage.read("s") == log


async def test_a_paused_run_goes_on_where_it_paused(storage: Storage, tmp_path: Path) -> None:
    """A workflow run that paused and was resumed goes on in the log after its pause, even
    for a mirror that never saw the run (a run that finished cannot: that would be a gap)."""
    log = await embedded_log(tmp_path, "s")
    [journal] = journals(log)
    paused = inp.RunEnd(at=2.0, paused=True, success=False, error=None)
    resumed = inp.RunResume(at=3.0, context={"more": 1})
    more = [encode(paused, 2), encode(resumed, 3), *journal[1:]]
    manager = StateManager(storage)
    await StoreMirror(manager).append("s", "run-1", 0, [journal[0], more[0]])
    await StoreMirror(manager).append("s", "run-1", 2, more[1:])
    loaded = await manager.load("s")
    assert [entry.kind for entry in loaded.runs[0].entries][:3] == ["end", "resume", "begin"]
    assert len(await storage.read("s")) == 1 + len(more)


async def test_a_second_workflow_run_appends_a_new_run(storage: Storage, tmp_path: Path) -> None:
    """A session's next workflow run (started after the first finished) is mirrored after the
    first, as an embedded second run is written: the same log, read back as the latest run."""
    log = await embedded_log(tmp_path, "s", runs=2)
    first, second = journals(log)
    assert len(first) == 12
    mirror = StoreMirror(StateManager(storage))
    await mirror_in_batches(mirror, "s", "run-1", first, (4,))
    await mirror_in_batches(StoreMirror(StateManager(storage)), "s", "run-2", second, (2, 5))
    await mirror.append("s", "run-2", 0, second[:3])  # a repeat, by a mirror new to that run
    with pytest.raises(SessionError, match=r"session 's'.*holds a later run \(record 13\)"):
        await StoreMirror(StateManager(storage)).append("s", "run-1", 0, first[:2])
    assert await storage.read("s") == log
    loaded = await StateManager(storage).load("s")
    assert [run.header.position for run in loaded.runs] == [1, len(first) + 1]
    source = FileStorageBackend(tmp_path / "source")
    try:
        assert await read_back(storage, "s") == await read_back(source, "s")
    finally:
        source.close()


async def test_sessions_are_mirrored_concurrently(storage: Storage, tmp_path: Path) -> None:
    """Batches of several sessions, interleaved on one mirror, each land in their own log."""
    names = ["a", "b", "c", "d"]
    logs = {name: await embedded_log(tmp_path, name) for name in names}
    mirror = StoreMirror(StateManager(storage))
    await asyncio.gather(
        *(
            mirror_in_batches(mirror, name, f"run-{name}", journals(logs[name])[0], (1, 2))
            for name in names
        )
    )
    for name in names:
        assert await storage.read(name) == logs[name]
    await close_connections(storage)


async def test_overlapping_calls_for_one_run_write_each_record_once(
    storage: Storage, tmp_path: Path
) -> None:
    """Calls for one run that overlap in time (an attempt timed out while its append was
    under way, and its retry) are taken one after the other: each record once."""
    log = await embedded_log(tmp_path, "s")
    [journal] = journals(log)
    mirror = StoreMirror(StateManager(storage))
    await asyncio.gather(
        mirror.append("s", "run-1", 0, journal[:6]),
        mirror.append("s", "run-1", 0, journal[:6]),
        StoreMirror(StateManager(storage)).append("s", "run-1", 0, journal[:2]),
    )
    await asyncio.gather(
        mirror.append("s", "run-1", 6, journal[6:]), mirror.append("s", "run-1", 3, journal[3:])
    )
    assert await storage.read("s") == log


async def test_a_session_an_embedded_writer_holds_is_refused(
    storage: Storage, backend_kind: str, tmp_path: Path
) -> None:
    """While an embedded run writes the session (another backend object: another process),
    the store refuses the mirror with its usual SessionError; once that writer let go, the
    workflow run goes in as a new run after its records. The mirror holds no lock or lease
    between calls: a writer may take the session up right after."""
    log = await embedded_log(tmp_path, "s")
    [journal] = journals(log)
    other = open_backend(backend_kind, tmp_path)
    try:
        writer = SessionWriter(StateManager(other, auto_save_interval=0), "s", 0)
        writer.record(msgspec.structs.replace(first_of(log), at=0.5))  # another run's
        await writer.flush()
        mirror = StoreMirror(StateManager(storage))
        with pytest.raises(SessionError, match="session 's' is being written by another"):
            await mirror.append("s", "run-1", 0, journal[:2])
        await writer.close()
        await mirror.append("s", "run-1", 0, journal[:2])
        await mirror.append("s", "run-1", 2, journal[2:])
        stored = await storage.read("s")
        assert journals(stored)[1] == journal
        loaded = await StateManager(storage).load("s")
        assert [run.header.position for run in loaded.runs] == [1, 2]
        assert run_state(loaded) == "finished"
        after = SessionWriter(StateManager(other, auto_save_interval=0), "s", len(stored))
        after.record(inp.PauseRequest(at=1.0, reason="taken up"))
        await after.close()
        assert len(await storage.read("s")) == len(stored) + 1
    finally:
        close_backend(other)


def first_of(log: list[str]) -> inp.RunStart:
    header = decode(loads(log[0]))
    assert isinstance(header, inp.RunStart)
    return header


async def test_the_local_activity_retries_only_a_refusal_that_passes(tmp_path: Path) -> None:
    """``orchestra.mirror`` as the workflow runs it: a batch goes in; a gap fails it for good
    (no retry can fill it); a session another writer holds fails it for a retry (the writer
    lets go, its lease expires); each names the session."""
    log = await embedded_log(tmp_path, "s")
    [journal] = journals(log)
    storage, other = FileStorageBackend(tmp_path / "store"), FileStorageBackend(tmp_path / "store")
    try:
        mirror = StoreMirror(StateManager(storage))
        environment = ActivityEnvironment()
        await environment.run(mirror.activity, MirrorBatch("s", "run-1", 0, journal[:5]))
        with pytest.raises(ApplicationError, match=r"session 's'.*gap") as refused:
            await environment.run(mirror.activity, MirrorBatch("s", "run-1", 7, journal[7:]))
        assert refused.value.non_retryable and refused.value.type == "SessionCorruptedError"
        await other.append("s", [log[5]], durable=True, after=5)  # and holds it
        with pytest.raises(ApplicationError, match=r"session 's' is being written") as held:
            await environment.run(mirror.activity, MirrorBatch("s", "run-1", 6, journal[6:]))
        assert not held.value.non_retryable and held.value.type == "SessionError"
        await other.release("s")
        await environment.run(mirror.activity, MirrorBatch("s", "run-1", 5, journal[5:]))
        assert await storage.read("s") == log
    finally:
        storage.close()
        other.close()


async def test_the_local_activity_retries_a_store_whose_server_does_not_answer(
    tmp_path: Path,
) -> None:
    """An outage (a ``StorageUnavailableError``, a ``SessionError`` of its own kind) passes:
    the server may answer the retry."""
    [journal] = journals(await embedded_log(tmp_path, "s"))
    storage = PostgresStorageBackend(f"postgresql://127.0.0.1:{closed_port()}/db", "down")
    mirror = StoreMirror(StateManager(storage))
    with pytest.raises(ApplicationError, match=r"session 's'.*failed to answer") as down:
        await ActivityEnvironment().run(mirror.activity, MirrorBatch("s", "run-1", 0, journal))
    assert not down.value.non_retryable and down.value.type == StorageUnavailableError.__name__
    assert "could not release" not in str(down.value)  # what failed first, not the clean-up


async def test_checkpoints_of_a_later_run_are_placed_in_the_sessions_log(
    storage: Storage, tmp_path: Path
) -> None:
    """A checkpoint and a restore journaled by a session's second workflow run name positions
    of that run's journal (counted from its header); in the store they name the same records
    at their place in the session's log, as the embedded session's log does."""
    source = FileStorageBackend(tmp_path / "source")
    try:
        for _ in range(2):
            result = await wait(
                fan_out_instance(source).execute("research", context={"session_id": "s"})
            )
            assert result.success, result.error
        instance = fan_out_instance(source)
        taken = await instance.create_checkpoint("s", "done")
        assert await instance.restore_checkpoint(taken)
        log = await source.read("s")
    finally:
        source.close()
    first, second = journals(log)
    base = len(first)
    second = [_journal_position(line, -base) for line in second]
    assert [loads(line)["position"] for line in second[-2:]] == [len(second) - 2] * 2
    mirror = StoreMirror(StateManager(storage))
    await mirror_in_batches(mirror, "s", "run-1", first, (5,))
    await mirror_in_batches(mirror, "s", "run-2", second, (3,))
    await StoreMirror(StateManager(storage)).append("s", "run-2", 0, second)  # a repeat
    assert await storage.read("s") == log
    assert "s@done" in (await StateManager(storage).load("s")).checkpoints


def _journal_position(line: str, by: int) -> str:
    """A checkpoint's or restore's line with its position moved ``by`` (others as they are)."""
    data = loads(line)
    if data["t"] not in (inp.Checkpoint.KIND, inp.Restore.KIND):
        return line
    record = decode(data)
    return encode(msgspec.structs.replace(record, position=record.position + by), data["s"])
