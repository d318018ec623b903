"""Group commit in the file backend (``wal``): durable appends of many sessions due at once
share one sync of the backend's journal, and what the journal acknowledged survives a killed
process and a lost page cache (an OS crash), replayed by the next backend, never into another
session.

A lost page cache is simulated by zeroing, in the segments, what a batch wrote after its
journal sync (or cutting the file back), as a machine that stopped would leave them; another
boot by the boot id the backend reads.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from orchestra.coordination.state import FileStorageBackend, files, wal
from orchestra.coordination.state.segments import SECTOR, Redo, encode_append, parse
from orchestra.errors import SessionError

pytestmark = pytest.mark.skipif(wal.boot_id() is None, reason="no boot id: no journal here")

ROOT = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.001)


class Syncs:
    """Counts the syncs made: ``fdatasync``, ``fsync`` and writes that sync (``RWF_DSYNC``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        for name in ("fdatasync", "fsync"):
            monkeypatch.setattr(os, name, self._counting(getattr(os, name)))
        pwritev = os.pwritev

        def counted_pwritev(descriptor: int, buffers: Any, offset: int, flags: int = 0) -> int:
            if flags & os.RWF_DSYNC:
                self.count += 1
            return pwritev(descriptor, buffers, offset, flags)

        monkeypatch.setattr(os, "pwritev", counted_pwritev)

    def _counting(self, function: Callable[[int], None]) -> Callable[[int], None]:
        def counted(descriptor: int) -> None:
            self.count += 1
            function(descriptor)

        return counted


def records(session: int, first: int, count: int) -> list[str]:
    return [f'{{"s":{session},"n":{n}}}' for n in range(first, first + count)]


async def batch(
    backend: FileStorageBackend, sessions: int, after: int
) -> list[BaseException | None]:
    """One durable append to each session, all due while a sync is under way (claimed here),
    so that they make one batch: committed once that sync is done."""
    group = backend._group
    assert group is not None
    await asyncio.to_thread(wait_for, group.claim, "the syncs under way to end")
    appends = [
        asyncio.ensure_future(backend.append(f"s{n}", records(n, after, 2), True, after))
        for n in range(sessions)
    ]
    try:
        await asyncio.to_thread(
            wait_for, lambda: len(group._pending) == sessions, "the batch to be queued"
        )
    finally:
        group.done()
    return await asyncio.gather(*appends, return_exceptions=True)


async def start_sessions(backend: FileStorageBackend, sessions: int) -> None:
    await asyncio.gather(
        *(backend.append(f"s{n}", records(n, 0, 1), True, 0) for n in range(sessions))
    )


async def test_appends_due_together_share_one_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = FileStorageBackend(tmp_path)
    await start_sessions(backend, 40)
    syncs = Syncs(monkeypatch)
    assert not any(await batch(backend, 40, 1))
    assert syncs.count == 1  # the journal's, for all 40
    for n in range(40):
        assert await backend.read(f"s{n}") == records(n, 0, 3)


async def test_a_batch_is_acknowledged_with_one_wake_up_of_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal's thread hands a committed batch's outcomes to the event loop at once: one
    ``call_soon_threadsafe`` (a write to the loop's self-pipe, a turn of the loop) for all of
    its appends, not one each, and so for a failed batch's errors."""
    backend = FileStorageBackend(tmp_path)
    await start_sessions(backend, 40)
    loop = asyncio.get_running_loop()
    wake_ups: list[Any] = []
    call_soon_threadsafe = loop.call_soon_threadsafe

    def counted(callback: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(callback, "__module__", None) == "orchestra.threads":
            wake_ups.append(callback)
        return call_soon_threadsafe(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counted)
    assert not any(await batch(backend, 40, 1))
    assert len(wake_ups) == 1
    monkeypatch.setattr(wal.JournalFile, "append", lambda journal, body: _fail())
    outcomes = await batch(backend, 40, 3)
    assert all(isinstance(outcome, OSError) for outcome in outcomes)
    assert len(wake_ups) == 2
    backend.close()  # its journal thread must not outlive the test (it holds files open)


def _fail() -> None:
    raise OSError(5, "Input/output error")


async def test_many_sessions_appending_at_once_need_fewer_syncs_than_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a hold: 100 sessions, each appending as soon as its last append is durable."""
    backend = FileStorageBackend(tmp_path)
    await start_sessions(backend, 100)
    syncs = Syncs(monkeypatch)

    async def run(session: int) -> None:
        for after in range(1, 11):
            await backend.append(f"s{session}", records(session, after, 1), True, after)

    await asyncio.gather(*(run(n) for n in range(100)))
    assert syncs.count <= 1000 // 2
    for n in range(100):
        assert await backend.read(f"s{n}") == records(n, 0, 11)


def orphan(backend: FileStorageBackend) -> Path:
    """Leave the backend's journal as a process that died would: its lock released."""
    group = backend._group
    assert group is not None and group._journal is not None
    os.close(group._journal.descriptor)
    group._journal = None
    (journal,) = (backend.directory / wal.JOURNALS).glob("*.wal")
    return journal


def lose_page_cache(folder: Path, ends: dict[str, int], cut: bool) -> None:
    """What an OS crash leaves of writes that were never synced to a segment: zeros (the
    space was grown ahead), or a file cut back to the size it had."""
    for session, end in ends.items():
        (segment,) = (folder / session).glob("log-*.seg")
        if cut:
            os.truncate(segment, end)
        else:
            with open(segment, "r+b") as handle:
                handle.seek(end)
                handle.write(bytes(segment.stat().st_size - end))


def ends_now(backend: FileStorageBackend, sessions: int) -> dict[str, int]:
    return {f"s{n}": backend._open[f"s{n}"].end for n in range(sessions)}


@pytest.mark.parametrize("cut", [False, True])
async def test_after_an_os_crash_the_journal_is_replayed_into_the_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: bool
) -> None:
    backend = FileStorageBackend(tmp_path)
    await start_sessions(backend, 30)
    before = ends_now(backend, 30)
    assert not any(await batch(backend, 30, 1))
    journal = orphan(backend)
    backend.close()
    lose_page_cache(tmp_path, before, cut)
    for session in before:  # the batch is gone from the segments
        assert in_segment(tmp_path, session) == records(int(session[1:]), 0, 1)
    monkeypatch.setattr(files, "boot_id", lambda: "another-boot-0000-0000-000000000000")
    reopened = FileStorageBackend(tmp_path)
    for n in range(30):
        assert await reopened.read(f"s{n}") == records(n, 0, 3)
    assert not journal.exists()
    await reopened.append("s0", records(0, 3, 1), True, 3)  # and the log goes on
    assert await reopened.read("s0") == records(0, 0, 4)


def _journaled(backend: FileStorageBackend) -> set[str]:
    group = backend._group
    assert group is not None
    return {relative.decode().partition("/")[0] for relative in group._named}


def in_segment(directory: Path, session: str) -> list[str]:
    """The session's records as its segment holds them, no journal taken up."""
    (path,) = (directory / session).glob("log-*.seg")
    return parse(session, path.name, path.read_bytes(), last=True).records


async def test_a_journal_left_in_the_same_boot_is_synced_not_replayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed process's page cache survives: the segments its journal names are synced,
    and nothing is written into them (zeroed here, they stay so: the journal's data unread)."""
    backend = FileStorageBackend(tmp_path)
    await start_sessions(backend, 10)
    before = ends_now(backend, 10)
    assert not any(await batch(backend, 10, 1))
    named = _journaled(backend)
    journal = orphan(backend)
    backend.close()
    lose_page_cache(tmp_path, {session: before[session] for session in named}, cut=False)
    syncs = Syncs(monkeypatch)
    reopened = FileStorageBackend(tmp_path)
    for session in named:
        assert await reopened.read(session) == records(int(session[1:]), 0, 1)
    assert syncs.count >= len(named) == 10
    assert not journal.exists()


@pytest.mark.parametrize("boot", ["same", "another"])
async def test_a_stale_journal_is_never_replayed_into_a_session_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, boot: str
) -> None:
    backend = FileStorageBackend(tmp_path)
    await start_sessions(backend, 5)
    assert not any(await batch(backend, 5, 1))
    group = backend._group
    assert group is not None and group._journal is not None
    (journal,) = (tmp_path / wal.JOURNALS).glob("*.wal")
    stale = journal.read_bytes()
    assert await backend.delete("s3")
    again = [f'{{"again":{n}}}' for n in range(3)]
    await backend.append("s3", again, True, 0)
    orphan(backend)
    backend.close()
    journal.unlink()
    (tmp_path / wal.JOURNALS / "stale.wal").write_bytes(stale)
    if boot == "another":
        monkeypatch.setattr(files, "boot_id", lambda: "another-boot-0000-0000-000000000000")
    reopened = FileStorageBackend(tmp_path)
    assert await reopened.read("s3") == again
    assert await reopened.read("s4") == records(4, 0, 3)


async def test_a_failed_journal_sync_undoes_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing of a batch the journal did not hold stays in the segments, and each writer
    gets the error; sent again, the appends are stored (not taken as already stored)."""
    backend = FileStorageBackend(tmp_path)
    await start_sessions(backend, 6)
    failing = True
    append = wal.JournalFile.append

    def fail(journal: wal.JournalFile, body: bytes) -> None:
        if failing:
            raise OSError(5, "Input/output error")
        append(journal, body)

    monkeypatch.setattr(wal.JournalFile, "append", fail)
    outcomes = await batch(backend, 6, 1)
    assert all(isinstance(outcome, OSError) for outcome in outcomes)
    failed = range(6)
    for n in failed:
        assert await backend.read(f"s{n}") == records(n, 0, 1)
    failing = False
    for n in failed:
        await backend.append(f"s{n}", records(n, 1, 2), True, 1)
    for n in range(6):
        assert await backend.read(f"s{n}") == records(n, 0, 3)


async def test_a_thousand_sessions_hold_at_most_the_open_segments_and_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    monkeypatch.setattr(files, "open_segment_limit", lambda: files.OPEN_SEGMENTS)  # ulimit 1024
    backend = FileStorageBackend(tmp_path)
    await backend.append("warm", ["x"], True, 0)
    baseline = open_files()

    async def run(session: int) -> None:
        for after in range(3):
            await backend.append(f"s{session}", records(session, after, 1), True, after)

    await asyncio.gather(*(run(n) for n in range(1000)))
    assert open_files() <= baseline + files.OPEN_SEGMENTS + 2  # + the journal and its spare
    assert await backend.read("s999") == records(999, 0, 3)


SEGMENTS_OPEN = """
import asyncio, logging, os, resource, sys
from orchestra.coordination.state import FileStorageBackend

logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")

async def main():
    hard = int(sys.argv[2]) if sys.argv[2] != "unchanged" else resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    storage = FileStorageBackend(sys.argv[1])

    async def session(name):
        for after in range(3):
            await storage.append(name, [f"{name}:{after}"], durable=True, after=after)

    await asyncio.gather(*(session(f"s{n}") for n in range(300)))
    print(len(storage._open), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    assert await storage.read("s299") == ["s299:0", "s299:1", "s299:2"]

asyncio.run(main())
"""


def segments_open(tmp_path: Path, hard: str) -> tuple[list[str], list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", SEGMENTS_OPEN, str(tmp_path / "state"), hard],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.split(), done.stderr.splitlines()


def test_more_sessions_than_segments_kept_open_raise_the_soft_limit_once(tmp_path: Path) -> None:
    """300 sessions under a soft limit of 1024 pass the 256 segments kept open: rather than
    reopen a segment on every append, the backend raises the soft limit to the hard one."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 4 * 300:
        pytest.skip(f"the hard limit on open files ({hard}) leaves no room to raise the soft one")
    (kept, soft), logged = segments_open(tmp_path, "unchanged")
    assert int(kept) == 300
    assert int(soft) == (65536 if hard == resource.RLIM_INFINITY else hard)
    assert len(logged) == 1
    assert logged[0].startswith(
        "orchestra.coordination.state.files INFO raised the soft limit on open files from 1024 to "
    )
    assert "(each running session holds one for its segment)" in logged[0]


def test_with_no_room_to_raise_the_limit_segments_are_closed_and_taken_up_again(
    tmp_path: Path,
) -> None:
    (kept, soft), logged = segments_open(tmp_path, "1024")
    assert (int(kept), int(soft)) == (files.OPEN_SEGMENTS, 1024)
    assert logged == []


@pytest.mark.parametrize(
    ("soft", "kept"),
    [(256, 256), (1024, 256), (4096, 1024), (20000, 5000), (1 << 20, 8192), (-1, 8192)],
)
def test_the_open_segments_are_a_quarter_of_the_limit_on_open_files(
    monkeypatch: pytest.MonkeyPatch, soft: int, kept: int
) -> None:
    soft = resource.RLIM_INFINITY if soft == -1 else soft
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (soft, resource.RLIM_INFINITY))
    assert files.open_segment_limit() == kept


CHILD = """
import asyncio, sys
from orchestra.coordination.state import FileStorageBackend

async def main(directory):
    backend = FileStorageBackend(directory)
    async def run(session):
        after = 0
        while True:
            await backend.append(f"s{session}", [f"{session}-{after}"], True, after)
            after += 1
            sys.stdout.write(f"{session} {after}\\n")
            sys.stdout.flush()
    await asyncio.gather(*(run(n) for n in range(200)))

asyncio.run(main(sys.argv[1]))
"""


def test_kill_9_loses_no_acknowledged_append_of_200_sessions(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None
    acknowledged: dict[int, int] = {}
    for lines, line in enumerate(child.stdout, 1):
        session, count = map(int, line.split())
        acknowledged[session] = count
        if lines == 3000:
            child.send_signal(signal.SIGKILL)
            break
    for line in child.stdout:  # acknowledged before the kill, still in the pipe
        session, count = map(int, line.split())
        acknowledged[session] = count
    assert child.wait() == -signal.SIGKILL
    assert list((tmp_path / wal.JOURNALS).glob("*.wal"))  # left behind, taken up below
    backend = FileStorageBackend(tmp_path)
    stored = asyncio.run(_read_all(backend, sorted(acknowledged)))
    for session, count in acknowledged.items():
        found = stored[session]
        assert len(found) >= count, f"session {session}: {count} acknowledged, {len(found)} found"
        assert found == [f"{session}-{n}" for n in range(len(found))]
    assert not list((tmp_path / wal.JOURNALS).glob("*.wal"))


async def _read_all(backend: FileStorageBackend, sessions: list[int]) -> dict[int, list[str]]:
    return {session: await backend.read(f"s{session}") for session in sessions}


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    sizes=st.lists(st.integers(1, 1500), min_size=1, max_size=8),
    lost=st.sets(st.integers(0, 40)),
    twice=st.booleans(),
)
def test_replay_restores_any_lost_sectors_and_is_idempotent(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], lost: set[int], twice: bool
) -> None:
    """Appends journaled one after another; a crash keeps any subset of the segment's
    sectors; replaying every record (once or twice) gives back the whole segment."""
    path = tmp_path_factory.mktemp("replay") / "log-000000000001.seg"
    content = b""
    redos = []
    for number, size in enumerate(sizes):
        data = encode_append([chr(ord("a") + number % 26) * size])
        before = content[-wal.BEFORE_BYTES :]
        redos.append(Redo(b"s/x", 0, 0, len(content), before, data, 0, 0, False))
        content += data
    crashed = bytearray(content + bytes(SECTOR))
    for sector in lost:
        crashed[sector * SECTOR : (sector + 1) * SECTOR] = bytes(
            len(crashed[sector * SECTOR : (sector + 1) * SECTOR])
        )
    path.write_bytes(bytes(crashed))
    descriptor = os.open(path, os.O_RDWR)
    try:
        for _ in range(2 if twice else 1):
            for redo in redos:
                wal.replay(descriptor, redo)
    finally:
        os.close(descriptor)
    assert path.read_bytes()[: len(content)] == content


class OpenLimit:
    """Opens of segments under ``directory`` fail as at the descriptor limit (``EMFILE``)
    while ``failing``; counts those open at once (``most``). Other tests' threads, still
    checkpointing, are left alone."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
        self.failing = True
        self.open: set[int] = set()
        self.most = 0
        real_open, real_close = os.open, os.close

        def opening(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            segment = str(path).startswith(str(directory)) and str(path).endswith(".seg")
            if segment and self.failing:
                raise OSError(errno.EMFILE, "Too many open files", str(path))
            descriptor = real_open(path, flags, *args, **kwargs)
            if segment:
                self.open.add(descriptor)
                self.most = max(self.most, len(self.open))
            return descriptor

        def closing(descriptor: int) -> None:
            self.open.discard(descriptor)
            real_close(descriptor)

        monkeypatch.setattr(os, "open", opening)
        monkeypatch.setattr(os, "close", closing)


async def test_a_checkpoint_that_cannot_open_a_segment_keeps_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = FileStorageBackend(tmp_path)
    await start_sessions(backend, 5)
    assert not any(await batch(backend, 5, 1))
    group = backend._group
    assert group is not None and group._journal is not None
    generation = group._journal.generation
    limit = OpenLimit(monkeypatch, tmp_path)
    with pytest.raises(OSError, match="Too many open files"):
        group.checkpoint()
    ((kept, named),) = group._retired  # not started afresh: its records still count
    assert len(named) == 5 and kept.generation == generation
    limit.failing = False
    group.checkpoint()
    assert not group._named and not group._retired and kept.generation > generation


async def test_recovery_that_cannot_open_a_segment_fails_and_keeps_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an OS crash, a segment that cannot be opened (no descriptor left) is not taken
    for one deleted: the recovery fails naming the journal and the segment, the journal
    stays, and the next try replays every record, one segment open at a time."""
    backend = FileStorageBackend(tmp_path)
    await start_sessions(backend, 30)
    before = ends_now(backend, 30)
    assert not any(await batch(backend, 30, 1))
    journal = orphan(backend)
    backend.close()
    lose_page_cache(tmp_path, before, cut=False)
    monkeypatch.setattr(files, "boot_id", lambda: "another-boot-0000-0000-000000000000")
    limit = OpenLimit(monkeypatch, tmp_path)
    reopened = FileStorageBackend(tmp_path)
    with pytest.raises(SessionError, match=f"{journal}.*segment s[0-9]+/log-"):
        await reopened.read("s0")
    assert journal.exists()
    limit.failing = False
    for n in range(30):
        assert await reopened.read(f"s{n}") == records(n, 0, 3)
    assert not journal.exists()
    assert limit.most == 1


async def queued_first_append(backend: FileStorageBackend, session: str, record: str) -> None:
    """A session's first append, made durable by the backend's journal (a batch of one)."""
    group = backend._group
    assert group is not None
    await asyncio.to_thread(wait_for, group.claim, "the syncs under way to end")
    append = asyncio.ensure_future(backend.append(session, [record], True, 0))
    try:
        await asyncio.to_thread(wait_for, lambda: len(group._pending) == 1, "the append queued")
    finally:
        group.done()
    await append


async def test_a_dead_backends_journal_is_never_replayed_into_a_session_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed backend's journal names X; a live backend deletes X and makes it again (the
    file system may reuse the segment's inode); after an OS crash X holds its new record."""
    live = FileStorageBackend(tmp_path)
    await live.append("other", ["o"], True, 0)  # its recovery done
    dead = FileStorageBackend(tmp_path)
    await queued_first_append(dead, "X", '{"old":1}')
    dead_journal = orphan(dead)
    dead.close()
    assert await live.delete("X")
    assert not dead_journal.exists()  # taken up before the folder went
    await queued_first_append(live, "X", '{"new":1}')
    orphan(live)
    live.close()
    os.truncate(tmp_path / "X" / "log-000000000001.seg", 0)  # the unsynced bytes lost
    monkeypatch.setattr(files, "boot_id", lambda: "another-boot-0000-0000-000000000000")
    assert await FileStorageBackend(tmp_path).read("X") == ['{"new":1}']


async def test_close_checkpoints_and_removes_the_journal(tmp_path: Path) -> None:
    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    baseline = open_files()
    for number in range(5):
        backend = FileStorageBackend(tmp_path / str(number))
        await start_sessions(backend, 5)
        assert not any(await batch(backend, 5, 1))
        backend.close()
        assert not list((tmp_path / str(number) / wal.JOURNALS).glob("*.wal"))
    assert open_files() <= baseline
    await batch(backend, 5, 3)  # and a closed backend goes on, with a journal again
    assert await backend.read("s0") == records(0, 0, 5)


async def test_a_live_backends_journal_is_never_replayed_into_a_session_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another live backend's journal names X when X is deleted and made again (its segment
    likely on the same inode); an OS crash before that journal's checkpoint: replayed first,
    its record is still not written into the new X (the inode's generation differs)."""
    probe = os.open(tmp_path / "probe", os.O_RDWR | os.O_CREAT)
    generation = wal.inode_generation(probe)
    os.close(probe)
    if generation == 0:
        pytest.skip("no inode generations on this file system")
    other = FileStorageBackend(tmp_path)
    await queued_first_append(other, "X", '{"old":1}')
    await other.release("X")
    live = FileStorageBackend(tmp_path)
    assert await live.delete("X")
    await queued_first_append(live, "X", '{"new":1}')
    for backend, name in ((other, "0-first.wal"), (live, "1-then.wal")):  # both killed
        group = backend._group
        assert group is not None and group._journal is not None
        journal = tmp_path / wal.JOURNALS / group._journal.name
        journal.rename(journal.with_name(name))  # the other's taken up first
        os.close(group._journal.descriptor)
        group._journal = None
        backend.close()
    os.truncate(tmp_path / "X" / "log-000000000001.seg", 0)  # the unsynced bytes lost
    monkeypatch.setattr(files, "boot_id", lambda: "another-boot-0000-0000-000000000000")
    assert await FileStorageBackend(tmp_path).read("X") == ['{"new":1}']


def test_a_segment_made_again_on_the_same_inode_is_not_the_one_journaled(tmp_path: Path) -> None:
    """The inode number alone is not the file: one made where a deleted one was may reuse
    it (ext4 does at once), with another generation."""
    (tmp_path / "X").mkdir()
    path = tmp_path / "X" / "log-000000000001.seg"
    path.write_bytes(b"")
    descriptor = os.open(path, os.O_RDONLY)
    inode, generation = os.fstat(descriptor).st_ino, wal.inode_generation(descriptor)
    os.close(descriptor)
    if generation == 0:
        pytest.skip("no inode generations on this file system")
    assert wal._open_segment(tmp_path, b"X/log-000000000001.seg", (inode, generation ^ 1)) is None
    found = wal._open_segment(tmp_path, b"X/log-000000000001.seg", (inode, generation))
    assert found is not None
    os.close(found)


async def test_batches_are_committed_while_a_checkpoint_syncs_the_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint syncing its segments (held here) holds up no commit: batches go to
    another journal meanwhile; once it is done, that journal alone names segments."""
    backend = FileStorageBackend(tmp_path)
    await start_sessions(backend, 5)
    assert not any(await batch(backend, 5, 1))
    group = backend._group
    assert group is not None
    syncing, go_on = threading.Event(), threading.Event()
    sync_segment = wal._sync_segment

    def held(*args: Any) -> None:
        syncing.set()
        go_on.wait()
        sync_segment(*args)

    monkeypatch.setattr(wal, "_sync_segment", held)
    checkpoint = threading.Thread(target=group.checkpoint)
    checkpoint.start()
    try:
        await asyncio.to_thread(wait_for, syncing.is_set, "the checkpoint to sync")
        committing = asyncio.ensure_future(batch(backend, 5, 3))
        await asyncio.to_thread(wait_for, committing.done, "the batch to be committed")
        assert not any(committing.result())
    finally:
        go_on.set()
        checkpoint.join()
    assert not group._retired and _journaled(backend) == {f"s{n}" for n in range(5)}
    assert len(list((tmp_path / wal.JOURNALS).glob("*.wal"))) == 2  # the other, spare
    for n in range(5):
        assert await backend.read(f"s{n}") == records(n, 0, 5)


async def test_a_retired_journal_is_replayed_before_the_one_that_followed_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OS crash while a checkpoint syncs a retired journal's segments: the batch committed
    to the next journal meanwhile stands on bytes only the retired one restores."""
    backend = FileStorageBackend(tmp_path)
    await start_sessions(backend, 5)
    before = ends_now(backend, 5)
    assert not any(await batch(backend, 5, 1))
    group = backend._group
    assert group is not None
    with group._retiring:
        group._switch()  # and the process dies before the segments are synced
    assert not any(await batch(backend, 5, 3))
    ((retired, _),) = group._retired
    assert group._journal is not None
    for journal, name in ((group._journal, "0-later.wal"), (retired, "1-earlier.wal")):
        path = tmp_path / wal.JOURNALS / journal.name
        path.rename(path.with_name(name))  # the later one first by name
        os.close(journal.descriptor)
    group._journal, group._retired, group._named = None, [], {}
    backend.close()
    lose_page_cache(tmp_path, before, cut=False)
    monkeypatch.setattr(files, "boot_id", lambda: "another-boot-0000-0000-000000000000")
    reopened = FileStorageBackend(tmp_path)
    for n in range(5):
        assert await reopened.read(f"s{n}") == records(n, 0, 5)


async def test_the_open_segments_are_a_share_of_the_process_not_of_each_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four backends in one process hold the process's share (8 here), not four of them: a
    backend past it closes its own least recently used segment, so each keeps at least the one
    it appends to (at most one more per backend; before, 8 each: 32)."""
    monkeypatch.setattr(files, "open_segment_limit", lambda: 8)
    backends = [FileStorageBackend(tmp_path / f"tenant{n}") for n in range(4)]
    try:
        for backend in backends:
            for session in range(10):
                await backend.append(f"s{session}", records(session, 0, 1), True, 0)
        assert sum(len(backend._open) for backend in backends) <= 8 + 3
        for backend in backends:
            assert await backend.read("s0") == records(0, 0, 1)
    finally:
        for backend in backends:
            backend.close()


EXHAUSTED = """
import asyncio, resource, sys
from orchestra.coordination.state import FileStorageBackend

async def main():
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    storage = FileStorageBackend(sys.argv[1])
    outcomes = await asyncio.gather(
        *(storage.append(f"s{n}", ["r"], durable=True, after=0) for n in range(100)),
        return_exceptions=True,
    )
    failed = [str(outcome) for outcome in outcomes if outcome is not None]
    print(len(failed) > 0, failed[0] if failed else "-")

asyncio.run(main())
"""


def test_past_the_limit_on_open_files_an_append_names_its_session_and_what_to_do(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", EXHAUSTED, str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    failed, error = done.stdout.strip().split(" ", 1)
    assert failed == "True"
    assert error.startswith("[Errno 24] session 's")
    assert error.endswith(
        "no file descriptor is left to open its segment (each running session holds one): "
        "raise the process's limit on open files (ulimit -n)"
    )


async def test_a_stray_file_named_like_a_segment_is_not_taken_for_one(tmp_path: Path) -> None:
    """``log-old.seg`` is no segment: reading ignores it, and a delete still sees the lock of
    the session's real last segment (before, it checked the stray one and deleted a session
    another writer was appending to, whose next append was then acknowledged and lost)."""
    writer, other = FileStorageBackend(tmp_path), FileStorageBackend(tmp_path)
    try:
        await writer.append("s1", records(1, 0, 1), True, 0)
        (tmp_path / "s1" / "log-old.seg").write_bytes(b"")
        assert await other.read("s1") == records(1, 0, 1)
        assert await other.exists("s1")
        assert await other.list_sessions() == ["s1"]
        with pytest.raises(SessionError, match="s1"):
            await other.delete("s1")
        await writer.append("s1", records(1, 1, 1), True, 1)
        assert await other.read("s1") == records(1, 0, 2)
    finally:
        writer.close()
        other.close()
