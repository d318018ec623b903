"""The file backend's write-ahead journal: one sync for the durable appends of many sessions.

Separate files cannot share a sync, and a session is a folder of segment files, so without
help a hundred sessions due at once pay a hundred syncs. Group commit: a durable append due
while a sync is already under way is written into its segment without one (the page cache,
which outlives a killed process but not a crashed machine), and queued. When the sync under
way ends, one record describing every append queued meanwhile (its segment, that file's inode
number and generation, the offset, the bytes just before it and its own bytes: physical redo,
which may be applied any number of times) is appended to the backend's journal file with one
write-and-sync; only then is any of them acknowledged. A batch is whatever was queued when the committer got to it:
no timer, and an append due when nothing is under way (a lone session) skips the journal and
syncs its own segment, as before, so a lone session's steps pay nothing for it.

Checkpoint: when the journal passes ``JOURNAL_BYTES``, or the committer has had nothing to do
for ``IDLE_CHECKPOINT`` seconds, it syncs every segment the journal names and starts the
journal afresh (a new generation in its header: older records no longer count); batches go to
a second journal meanwhile (see :meth:`GroupCommit.checkpoint`). Only a segment that is gone
counts as needing no sync: any other failure to open one (no descriptor left) keeps the journal
as it was, for the next checkpoint.

Recovery: each backend object writes a journal of its own, ``<directory>/.journal/*.wal``,
and holds an ``flock`` on it while it lives. The first call of a backend takes up every
journal whose owner is gone, before it reads or writes anything (one recovery at a time, under
``.journal/recovery.lock``). The journal's header holds the kernel's boot id: written since the
machine last started, the page cache still holds every write it names, and those segments are
only synced; written before, each record is written into its segment again, where the file
is the one written to (inode number and generation: see ``inode_generation``), the bytes just
before it are as recorded and its own range holds only its bytes or zeros (a segment since
deleted, or replaced, is left alone). One segment at a time; one that cannot be opened for
another reason than being gone fails the recovery, and the journal is kept. Then the journal
is deleted. Deleting a session takes up dead journals too. Where there is no boot id (not
Linux), there is no journal: each durable append syncs its own segment.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestra.errors import SessionError

from .backends import valid_session_id
from .segments import (
    SECTOR,
    SEGMENT_NAME,
    Redo,
    Segment,
    check_written,
    fill_zeros,
    inode_generation,
    sync_data,
)
from .worker import Completion, Deferred

try:
    import fcntl
except ImportError:  # not POSIX: no boot id either, so no journal
    fcntl = None  # type: ignore[assignment]

from orchestra.threads import settle_all_soon

JOURNALS = (
    ".journal"  # the folder of journals in a backend's directory (no session id starts with '.')
)
JOURNAL_BYTES = 4 * 1024 * 1024  # a journal is checkpointed once it holds this much
IDLE_CHECKPOINT = 1.0  # seconds without a batch after which the journal is checkpointed
BEFORE_BYTES = 64  # of the segment before a record's bytes, checked before it is replayed
GROWTH = 1024 * 1024  # a journal grows by this much of zeros at a time (no size to sync)
_MAGIC = b"orchestra journal 2\n"
_HEADER = struct.Struct("<36sQI")  # boot id, generation, checksum of both
_FRAME = struct.Struct("<IIQ")  # body length, checksum of generation and body, generation
# path length, before length, inode, inode generation, offset, data length
_ENTRY = struct.Struct("<HHQIQI")
_START = len(_MAGIC) + _HEADER.size  # where the first frame begins
_WRITE_DSYNC = getattr(os, "RWF_DSYNC", 0)
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_GENERATIONS = itertools.count(1)  # of the journals of this process (see JournalFile.restart)
Named = dict[bytes, tuple[int, int]]  # the segments a journal names: path -> inode, generation


def boot_id() -> str | None:
    """The kernel's id of the running boot (Linux); None where there is none."""
    try:
        found = _BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        return None
    return found if len(found) == 36 and fcntl is not None else None


@dataclass(eq=False)
class Pending(Deferred):
    """A durable append in its segment, acknowledged once the journal holds it."""

    group: GroupCommit
    session_id: str
    segment: Segment
    redo: Redo
    end: int  # the segment's end after it
    loop: Any = None
    future: Completion[Any] | None = field(default=None, repr=False)

    def hand(self, loop: Any, future: Completion[Any]) -> None:
        self.loop, self.future = loop, future
        self.group.queue(self)


class GroupCommit:
    """The journal of one backend object and the thread that commits batches to it."""

    def __init__(
        self, directory: Path, boot: str, undo: Callable[[Pending, Exception], BaseException]
    ) -> None:
        self.directory = directory
        self._boot = boot
        self._undo = undo
        self._changed = threading.Condition(threading.Lock())
        self._pending: list[Pending] = []
        self._syncing = 0  # syncs under way: an append due now joins the next batch
        self._running = False  # the committer thread
        self._settling = 0  # threads waiting in settle()
        self._io = threading.Lock()  # of the journals and what they name
        self._journal: JournalFile | None = None  # the one batches are committed to
        self._named: Named = {}  # the segments it names
        self._retired: list[tuple[JournalFile, Named]] = []  # their segments not yet synced
        self._spare: JournalFile | None = None  # a retired one started afresh, for the next
        self._retiring = threading.Lock()  # held while retired journals are checkpointed

    def claim(self) -> bool:
        """Whether an append due now may sync its own segment: no sync under way, nothing
        queued. If so, :meth:`done` must follow its sync."""
        with self._changed:
            if self._syncing or self._pending:
                return False
            self._syncing += 1
            return True

    def done(self) -> None:
        """A sync is over: the committer may go on (woken only when it has work, or someone
        waits in :meth:`settle`: a lone session's steps wake no thread)."""
        with self._changed:
            self._syncing -= 1
            if self._pending or self._settling:
                self._changed.notify_all()

    def queue(self, pending: Pending) -> None:
        with self._changed:
            self._pending.append(pending)
            if not self._running:
                self._running = True
                threading.Thread(
                    target=self._commit_batches, name="orchestra-journal", daemon=True
                ).start()
            self._changed.notify_all()

    def _commit_batches(self) -> None:
        """Commit what is queued once no sync is under way; checkpoint when idle."""
        while True:
            with self._changed:
                if not self._wait_for_batch():
                    if not self._named and not self._retired:
                        self._running = False
                        return
                    batch = None
                else:
                    batch, self._pending = self._pending, []
                    self._syncing += 1
            if batch is None:
                self._checkpoint_or_keep()
                continue
            try:
                full = self._commit(batch)
            finally:
                self.done()
            if full:
                self._checkpoint_or_keep()

    def _checkpoint_or_keep(self) -> None:
        """Checkpoint on a thread of its own, so batches go on being committed meanwhile
        (unless one is under way already). One that fails (a segment's sync) keeps the
        retired journal as it was: what it holds stays durable there, and the next
        checkpoint tries again."""
        if self._retiring.acquire(blocking=False):
            threading.Thread(
                target=self._checkpoint_aside, name="orchestra-checkpoint", daemon=True
            ).start()

    def _checkpoint_aside(self) -> None:
        try:
            with contextlib.suppress(OSError):
                self._switch()
                self._retire()
        finally:
            self._retiring.release()

    def _wait_for_batch(self) -> bool:
        """(Under ``_changed``.) Whether a batch is ready; False after ``IDLE_CHECKPOINT``
        seconds of nothing queued."""
        while not self._pending or self._syncing:
            if not self._changed.wait(IDLE_CHECKPOINT) and not self._pending:
                return False
        return True

    def _commit(self, batch: list[Pending]) -> bool:
        """Make a batch durable in the journal and acknowledge it (or undo it and pass the
        error on); whether the journal is full."""
        body = b"".join(_encode(pending.redo) for pending in batch)
        try:
            with self._io:
                self._file().append(body)
                for pending in batch:
                    self._named[pending.redo.relative] = (
                        pending.redo.inode,
                        pending.redo.generation,
                    )
                full = self._file().end > JOURNAL_BYTES
        except Exception as error:  # a write or sync that failed, a journal not created
            _settle(batch, [self._undo(pending, error) for pending in batch])
            return False
        _settle(batch, [None] * len(batch))
        return full

    def _file(self) -> JournalFile:
        """(Under ``_io``.)"""
        if self._journal is None:
            self._journal, self._spare = self._spare, None
        if self._journal is None:
            self._journal = JournalFile.create(self.directory / JOURNALS, self._boot)
        return self._journal

    def checkpoint(self) -> None:
        """Sync every segment the journal names (after any checkpoint under way), then start
        it afresh; batches are committed to another journal meanwhile."""
        with self._retiring:
            self._switch()
            self._retire()

    def _switch(self) -> None:
        """(Under ``_retiring``.) Retire the journal: batches go to the spare (or a new one)."""
        with self._io:
            if self._journal is not None and self._named:
                self._retired.append((self._journal, self._named))
                self._journal, self._named = None, {}

    def _retire(self) -> None:
        """(Under ``_retiring``.) Sync the segments each retired journal names, one at a
        time, then start it afresh: the spare, or removed when there is one."""
        while self._retired:
            journal, named = self._retired[0]
            for relative, identity in named.items():
                _sync_segment(self.directory, relative, identity)
            journal.restart()
            with self._io:
                self._retired.pop(0)
                spare = self._spare is None
                if spare:
                    self._spare = journal
            if not spare:
                self._remove(journal)

    def _remove(self, journal: JournalFile) -> None:
        """A journal that names nothing: gone, its descriptor and lock released."""
        try:
            (self.directory / JOURNALS / journal.name).unlink(missing_ok=True)
        finally:
            os.close(journal.descriptor)

    def close(self) -> None:
        """Checkpoint and remove the journal, releasing its descriptor and lock; a journal
        whose checkpoint fails is closed but left for the next backend to take up. A later
        append starts a new one."""
        self.settle_quietly()
        with self._retiring, self._io:
            kept = [journal for journal, _ in self._retired]
            if self._journal is not None and self._named:
                kept.append(self._journal)
            for journal in kept:
                os.close(journal.descriptor)
            for unused in (self._journal, self._spare):
                if unused is not None and unused not in kept:
                    self._remove(unused)
            self._journal = self._spare = None
            self._named, self._retired = {}, []

    def names_unidentified(self, folder: str) -> bool:
        """Whether the journal names a segment of the session in ``folder`` whose inode has
        no generation: a file made in its place could then be taken for it."""
        prefix = folder.encode() + b"/"
        with self._io:
            return any(
                relative.startswith(prefix) and not generation
                for named in (self._named, *(named for _, named in self._retired))
                for relative, (_, generation) in named.items()
            )

    def settle_quietly(self) -> None:
        """:meth:`settle`, a failed checkpoint leaving the journal as it was."""
        with contextlib.suppress(OSError):
            self.settle()

    def settle(self) -> None:
        """Wait until nothing is queued or being committed, then checkpoint."""
        with self._changed:
            self._settling += 1
            try:
                while self._pending or self._syncing:
                    self._changed.wait()
            finally:
                self._settling -= 1
        self.checkpoint()


def _encode(redo: Redo) -> bytes:
    sizes = (len(redo.relative), len(redo.before), redo.inode, redo.generation, redo.offset)
    return _ENTRY.pack(*sizes, len(redo.data)) + redo.relative + redo.before + redo.data


def _settle(batch: list[Pending], errors: list[BaseException | None]) -> None:
    """Acknowledge a batch: one wake-up of each event loop for all of its appends, not one
    each (a system call and a turn of the loop per append: with 100 sessions, one a step)."""
    settle_all_soon(
        (pending.loop, pending.future, None, error)
        for pending, error in zip(batch, errors, strict=True)
        if pending.future is not None
    )


class JournalFile:
    """A journal: a header (magic, boot id, generation), then frames of redo records, then
    zeros. A frame is whole (its checksum matches) and of the header's generation, or it and
    everything after it never counted."""

    def __init__(self, descriptor: int, boot: str, name: str) -> None:
        self.descriptor = descriptor
        self.name = name  # in the folder of journals
        self.boot = boot
        self.generation = 0
        self.end = _START
        self.allocated = 0

    @classmethod
    def create(cls, folder: Path, boot: str) -> JournalFile:
        """A new journal, locked as this backend's, its header and name durable before use."""
        with recovery_lock(folder):
            name = f"{os.getpid()}-{secrets.token_hex(8)}"
            temporary = folder / f"{name}.new"
            descriptor = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                journal = cls(descriptor, boot, f"{name}.wal")
                journal.restart()
                os.rename(temporary, folder / f"{name}.wal")
                fsync_directory(folder)
            except BaseException:
                os.close(descriptor)
                temporary.unlink(missing_ok=True)
                raise
        return journal

    def restart(self) -> None:
        """A new generation: what the journal held no longer counts. Generations grow across
        the process's journals, so a backend's are taken up in the order it used them."""
        self.generation = next(_GENERATIONS)
        self.end = _START
        self._grow(_START)
        checked = self.boot.encode() + struct.pack("<Q", self.generation)
        header = _MAGIC + _HEADER.pack(self.boot.encode(), self.generation, zlib.crc32(checked))
        self._write(header, 0, grew=True)

    def append(self, body: bytes) -> None:
        generation = struct.pack("<Q", self.generation)
        frame = _FRAME.pack(len(body), zlib.crc32(generation + body), self.generation) + body
        grew = self._grow(self.end + len(frame))
        self._write(frame, self.end, grew)
        self.end += len(frame)

    def _grow(self, needed: int) -> bool:
        if needed <= self.allocated:
            return False
        grown = needed + GROWTH
        fill_zeros(self.descriptor, self.allocated, grown - self.allocated)
        self.allocated = grown
        return True

    def _write(self, data: bytes, offset: int, grew: bool) -> None:
        if _WRITE_DSYNC and not grew:
            check_written(os.pwritev(self.descriptor, [data], offset, _WRITE_DSYNC), data)
        else:
            check_written(os.pwrite(self.descriptor, data, offset), data)
            sync_data(self.descriptor)


@contextlib.contextmanager
def recovery_lock(folder: Path) -> Iterator[None]:
    """Held while journals are created or taken up: one recovery at a time, and none while a
    new journal is not yet locked by its owner."""
    created = not folder.is_dir()
    folder.mkdir(parents=True, exist_ok=True)
    if created:
        fsync_directory(folder.parent)
    descriptor = os.open(folder / "recovery.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def recover(directory: Path, boot: str) -> None:
    """Take up every journal in ``directory`` whose owner is gone (see the module's docstring)."""
    folder = directory / JOURNALS
    if not _journals(folder) or not os.access(folder, os.W_OK):
        return  # none left; or a reader that may not write, which reads what is there
    with recovery_lock(folder):
        for path in sorted(_journals(folder), key=_generation):
            with _orphan(path) as descriptor:
                if descriptor is None:
                    continue
                if path.suffix == ".wal":
                    _take_up(directory, path, descriptor, boot)
                path.unlink()
        fsync_directory(folder)


def _generation(path: Path) -> int:
    """A journal's generation: a backend retires a journal and commits to another while it
    syncs the segments the first one names, so a record of the second may stand on bytes a
    record of the first restores: replayed after it."""
    try:
        with open(path, "rb") as handle:
            found = _read_header(handle.read(_START))
    except OSError:
        return 0
    return 0 if found is None else found[1]


def _journals(folder: Path) -> list[Path]:
    """The journals in ``folder``, and new ones not yet named as such."""
    return sorted([*folder.glob("*.wal"), *folder.glob("*.new")]) if folder.is_dir() else []


@contextlib.contextmanager
def _orphan(path: Path) -> Iterator[int | None]:
    """The journal open and locked, or None while its owner lives (holds its lock)."""
    try:
        descriptor = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
        else:
            yield descriptor
    finally:
        os.close(descriptor)


def _take_up(directory: Path, journal: Path, descriptor: int, boot: str) -> None:
    """Sync the segments a journal names, replaying its records first when it was written
    before the machine last started: one segment at a time (a journal of thousands of
    sessions needs no more than one descriptor). A segment that cannot be opened for another
    reason than being gone fails the recovery, naming both, and the journal is kept."""
    size = os.fstat(descriptor).st_size
    data = os.pread(descriptor, size, 0)
    written_in = _read_header(data)
    if written_in is None:
        return
    journal_boot, generation = written_in
    by_segment: dict[tuple[bytes, tuple[int, int]], list[Redo]] = {}
    for redo in read_records(data, generation):
        identity = (redo.inode, redo.generation)
        by_segment.setdefault((redo.relative, identity), []).append(redo)
    for (relative, identity), redos in by_segment.items():
        try:
            _redo_segment(directory, relative, identity, redos, journal_boot != boot)
        except OSError as error:
            raise SessionError(
                f"cannot take up the journal {journal} left by a backend now gone: its "
                f"segment {relative.decode(errors='replace')} could not be synced ({error}); "
                "the journal is kept and taken up again by the next backend to start"
            ) from error


def _redo_segment(
    directory: Path,
    relative: bytes,
    identity: tuple[int, int],
    redos: list[Redo],
    replaying: bool,
) -> None:
    """Replay (when ``replaying``) a segment's records in order, then sync it."""
    segment = _open_segment(directory, relative, identity)
    if segment is None:
        return
    try:
        if replaying:
            for redo in redos:
                replay(segment, redo)
        sync_data(segment)
    finally:
        os.close(segment)


def _read_header(data: bytes) -> tuple[str, int] | None:
    """(boot id, generation) of a journal; None when its header was never written whole (a
    journal created and never used)."""
    if not data.startswith(_MAGIC) or len(data) < _START:
        return None
    boot, generation, checksum = _HEADER.unpack_from(data, len(_MAGIC))
    if zlib.crc32(boot + struct.pack("<Q", generation)) != checksum:
        return None
    return boot.decode("ascii", errors="replace"), generation


def read_records(data: bytes, generation: int) -> Iterator[Redo]:
    """The redo records of a journal's whole frames of ``generation``, in order."""
    offset = _START
    while offset + _FRAME.size <= len(data):
        length, checksum, found = _FRAME.unpack_from(data, offset)
        body = data[offset + _FRAME.size : offset + _FRAME.size + length]
        if found != generation or len(body) != length or length == 0:
            return
        if zlib.crc32(struct.pack("<Q", generation) + body) != checksum:
            return
        yield from _entries(body)
        offset += _FRAME.size + length


def _entries(body: bytes) -> Iterator[Redo]:
    offset = 0
    while offset < len(body):
        named, kept, inode, generation, at, length = _ENTRY.unpack_from(body, offset)
        offset += _ENTRY.size
        relative = body[offset : offset + named]
        before = body[offset + named : offset + named + kept]
        data = body[offset + named + kept : offset + named + kept + length]
        offset += named + kept + length
        yield Redo(relative, inode, generation, at, before, data, 0, 0, False)


def _segment_path(directory: Path, relative: bytes) -> Path | None:
    """The segment a record names, if the name is one (never a path out of the directory)."""
    session, _, name = relative.decode("utf-8", errors="replace").partition("/")
    if not valid_session_id(session) or not SEGMENT_NAME.fullmatch(name):
        return None
    return directory / session / name


def _open_segment(directory: Path, relative: bytes, identity: tuple[int, int]) -> int | None:
    """The segment open for writing, if it is still the file the journal wrote to; None when
    it is gone. Any other failure to open it (no descriptor left, no permission) is raised:
    the journal must then be kept, since it may hold the only durable copy of the bytes."""
    path = _segment_path(directory, relative)
    if path is None:
        return None
    try:
        descriptor = os.open(path, os.O_RDWR)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if (os.fstat(descriptor).st_ino, inode_generation(descriptor)) != identity:
        os.close(descriptor)
        return None
    return descriptor


def replay(descriptor: int, redo: Redo) -> bool:
    """Write a record's bytes into its segment again where they belong and were lost; whether
    it was written. Where the bytes before it differ, or its range holds other bytes than its
    own or zeros (sector by sector: a disk writes a sector whole or not at all), the segment
    is not the one the record was written to, and is left alone."""
    start = redo.offset - len(redo.before)
    if redo.before and os.pread(descriptor, len(redo.before), start) != redo.before:
        return False
    found = os.pread(descriptor, len(redo.data), redo.offset)
    if found == redo.data:
        return False
    found += bytes(len(redo.data) - len(found))
    for sector in range(redo.offset - redo.offset % SECTOR, redo.offset + len(found), SECTOR):
        first, last = max(sector - redo.offset, 0), sector + SECTOR - redo.offset
        share = found[first:last]
        if share != redo.data[first:last] and share.count(0) != len(share):
            return False
    check_written(os.pwrite(descriptor, redo.data, redo.offset), redo.data)
    return True


def _sync_segment(directory: Path, relative: bytes, identity: tuple[int, int]) -> None:
    """Sync a segment the journal names (through a descriptor of its own: the backend may
    have closed its own), unless it is gone or another file now."""
    descriptor = _open_segment(directory, relative, identity)
    if descriptor is not None:
        try:
            sync_data(descriptor)
        finally:
            os.close(descriptor)


def fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
