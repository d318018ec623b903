"""``FileStorageBackend``: sessions as folders of append-only segment files.

Its directory must be a directory, or a path where one can be made: a path that is a file, or
lies under one, is a ``ConfigurationError`` naming it, at construction when it already is, else
from the first write (of the session whose folder is in the way, when that is a file).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar, cast

from orchestra.errors import (
    ConfigurationError,
    SessionCorruptedError,
    SessionError,
    SessionNotFoundError,
)

from .backends import check_session_id, stale_writer
from .descriptors import raise_soft_limit, soft_limit
from .segments import (
    SEGMENT_NAME,
    Mark,
    Segment,
    encode_append,
    first_position,
    hold_segment,
    parse,
    segment_name,
    sync_data,
)
from .wal import BEFORE_BYTES, GroupCommit, Pending, boot_id, fsync_directory, recover
from .worker import BlockingWorker

SEGMENT_BYTES = 4 * 1024 * 1024  # a segment takes no more appends once it holds this much
SHARDS = 8  # threads doing the blocking work of one backend
OPEN_SEGMENTS = 256  # segment files kept open at least (the least recently used one is closed)
MOST_OPEN_SEGMENTS = 8192  # and at most, whatever the limit on open files
MARKS = 4096  # closed segments remembered, to be taken up again without reading them whole
T = TypeVar("T")
_LOG = logging.getLogger(__name__)


class FileStorageBackend:
    """Sessions as folders of append-only segment files under ``directory`` (format: see
    ``segments``), plus a snapshot file each.

    A durable append is one ``pwrite`` into space grown ahead of it and one sync of that range,
    with no file size to update; appends of many sessions due at once share one sync of the
    backend's journal instead (group commit: see ``wal``). The blocking work runs on a small set of threads: each session
    always on the same one (its appends stay in order), and sessions on different ones do not
    wait for each other's fsyncs. At most :func:`open_segment_limit` segment files stay open;
    one closed to stay within that is taken up again where it was left, without being read
    whole."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        if not hasattr(os, "pwrite"):
            raise ConfigurationError(
                "FileStorageBackend needs positional file writes (os.pwrite), which this "
                "platform lacks; use SQLiteStorageBackend instead"
            )
        self.directory = Path(directory)
        in_the_way = _not_a_directory(self.directory)
        if in_the_way is not None:
            raise _not_a_directory_error(self.directory, in_the_way)
        self._workers = [BlockingWorker(f"orchestra-files-{n}") for n in range(SHARDS)]
        self._open: OrderedDict[str, Segment] = OrderedDict()
        _PROCESS.limit = open_segment_limit()
        self._marks: OrderedDict[str, Mark] = OrderedDict()
        self._guard = threading.Lock()  # of _open and _marks, which every worker thread uses
        boot = boot_id()
        self._group = None if boot is None else GroupCommit(self.directory, boot, self._undo)
        self._boot = boot
        self._recovered = boot is None  # journals left by backends now gone are taken up
        self._recovering = threading.Lock()

    def __repr__(self) -> str:
        return f"FileStorageBackend({str(self.directory)!r})"

    def _folder(self, session_id: str) -> Path:
        return self.directory / check_session_id(session_id)

    def _submit(self, session_id: str, work: Callable[..., T], *args: object) -> asyncio.Future[T]:
        folder = self._folder(session_id)
        worker = self._workers[hash(session_id) % SHARDS]
        if not self._recovered:
            return worker.submit(self._after_recovery, work, session_id, folder, *args)
        return worker.submit(work, session_id, folder, *args)

    def _after_recovery(self, work: Callable[..., T], *args: object) -> T:
        self._recover()
        return work(*args)

    def _recover(self) -> None:
        """Before this backend reads or writes anything: take up the journals of backends
        now gone (see ``wal``), once."""
        with self._recovering:
            if not self._recovered and self._boot is not None:
                recover(self.directory, self._boot)
            self._recovered = True

    async def _call(self, session_id: str, work: Callable[..., T], *args: object) -> T:
        return await self._submit(session_id, work, *args)

    def append(
        self, session_id: str, records: Sequence[str], durable: bool, after: int
    ) -> Awaitable[None]:
        writing = self._submit(session_id, self._append, list(records), durable, after)
        return cast("Awaitable[None]", writing)

    def _append(
        self, session_id: str, folder: Path, records: list[str], durable: bool, after: int
    ) -> Pending | None:
        """Store an append; a durable one due while another sync is under way is written
        without one and left to the journal (``Pending``: acknowledged once it holds it)."""
        if not records:
            return None
        data = encode_append(records)
        while True:
            segment = self._open_segment(session_id, folder, len(data), durable, after)
            with segment.lock:
                if segment.closed:  # by close(), or to keep the number of open files down
                    continue
                if segment.records != after:
                    self._compare(session_id, folder, records, after)
                    return None
                group = self._group if durable else None
                if group is not None and not group.claim():
                    written, redo = segment.append_unsynced(
                        f"{folder.name}/{segment.path.name}".encode(),
                        data,
                        len(records),
                        BEFORE_BYTES,
                    )
                    if written:
                        return Pending(group, session_id, segment, redo, segment.end)
                elif self._append_syncing(segment, data, len(records), durable, group):
                    return None
            break
        self._forget(session_id)
        raise _not_undone(session_id)

    @staticmethod
    def _append_syncing(
        segment: Segment, data: bytes, count: int, durable: bool, group: GroupCommit | None
    ) -> bool:
        """The append syncs its own segment (when durable): nothing else was under way."""
        try:
            return segment.append(data, count, durable)
        finally:
            if group is not None:
                group.done()

    def _undo(self, pending: Pending, error: Exception) -> BaseException:
        """(On the journal's thread.) The journal failed to hold an append: it is zeroed in
        its segment, as a failed write is, and its writer gets the error; when that cannot be
        done, the session must be read again before it takes another append."""
        segment = pending.segment
        with segment.lock:
            if not segment.closed and segment.end == pending.end and segment.undo(pending.redo):
                return error
        self._forget(pending.session_id)
        return _not_undone(pending.session_id)

    def _compare(self, session_id: str, folder: Path, records: list[str], after: int) -> None:
        """The session does not hold ``after`` records: fine for a retry of an append that
        was stored, else another writer got there first."""
        if self._read(session_id, folder)[after : after + len(records)] != records:
            raise stale_writer(session_id, after)

    def _open_segment(
        self, session_id: str, folder: Path, incoming: int, durable: bool, after: int
    ) -> Segment:
        """:meth:`_segment`; past the limit on open files, an error that names the session
        and says what to do (not the bare ``EMFILE``)."""
        try:
            return self._segment(session_id, folder, incoming, durable, after)
        except OSError as error:
            if error.errno != errno.EMFILE:
                raise
            raise OSError(
                errno.EMFILE,
                f"session {session_id!r}: no file descriptor is left to open its segment "
                "(each running session holds one): raise the process's limit on open files "
                "(ulimit -n)",
            ) from error

    def _segment(
        self, session_id: str, folder: Path, incoming: int, durable: bool, after: int
    ) -> Segment:
        """The open segment to append to: the last one, or a new one when that is full."""
        with self._guard:
            segment = self._open.get(session_id)
            if segment is not None:
                self._open.move_to_end(session_id)
        if segment is None or segment.closed:
            segment = self._last_segment(session_id, folder, durable, after)
        if segment.end > 0 and segment.end + incoming > SEGMENT_BYTES:
            with segment.lock:
                evicted = segment.closed  # meanwhile, to keep the number of open files down
                if not evicted:
                    segment.seal(durable)
            if evicted:
                return self._segment(session_id, folder, incoming, durable, after)
            segment.close()
            segment = self._new_segment(session_id, folder, segment.records + 1, durable)
        return segment

    def _last_segment(self, session_id: str, folder: Path, durable: bool, after: int) -> Segment:
        segments = _segment_paths(folder)
        if not segments:
            if after:  # nothing is created for a writer whose session is gone
                raise stale_writer(session_id, after)
            _make_folder(session_id, folder)
            return self._new_segment(session_id, folder, 1, durable)
        with self._guard:
            mark = self._marks.pop(session_id, None)
        segment = None
        if mark is not None and mark.path == segments[-1]:
            segment = Segment.resume(session_id, mark)
        if segment is None:
            segment = Segment.reopen(session_id, segments[-1])
        self._remember(session_id, segment)
        return segment

    def _new_segment(self, session_id: str, folder: Path, first: int, durable: bool) -> Segment:
        """A new, empty segment, its name durable in the folder (and, for a session's first,
        the folder's in the directory) before any record goes in. If that fails, the segment
        is removed again and the next append tries anew."""
        segment = Segment.create(session_id, folder / segment_name(first), first)
        try:
            if durable:
                fsync_directory(folder)
                if first == 1:
                    fsync_directory(self.directory)
        except BaseException:
            segment.close()
            segment.path.unlink(missing_ok=True)
            raise
        self._remember(session_id, segment)
        return segment

    def _remember(self, session_id: str, segment: Segment) -> None:
        """Closing happens under the guard: a segment is closed (its file lock released)
        before it leaves ``_open``, so its session never finds itself locked out by it."""
        with self._guard:
            replaced = self._open.get(session_id)
            self._open[session_id] = segment
            self._open.move_to_end(session_id)
            if replaced is None and _PROCESS.opened(1) and not _PROCESS.more():
                self._close_one_idle(keep=session_id)

    def _close_one_idle(self, keep: str) -> None:
        """Close the least recently used segment that is not being written (never waiting
        for another session's fsync); when all are busy, the limit is passed for a moment."""
        for name, segment in self._open.items():
            if name != keep and segment.lock.acquire(blocking=False):
                try:
                    if not segment.closed and segment.end > 0:
                        self._keep_mark(name, segment.mark())
                    segment.close_locked()
                finally:
                    segment.lock.release()
                del self._open[name]
                _PROCESS.opened(-1)
                return

    def _keep_mark(self, session_id: str, mark: Mark) -> None:
        """(Under the guard.) The newest marks are kept, up to ``MARKS``."""
        self._marks.pop(session_id, None)
        self._marks[session_id] = mark
        if len(self._marks) > MARKS:
            self._marks.popitem(last=False)

    def _forget(self, session_id: str) -> None:
        with self._guard:
            self._marks.pop(session_id, None)
            segment = self._open.get(session_id)
            if segment is not None:
                segment.close()
                del self._open[session_id]
                _PROCESS.opened(-1)

    async def write_snapshot(self, session_id: str, data: bytes) -> None:
        await self._call(session_id, _write_snapshot, data)

    async def read_snapshot(self, session_id: str) -> bytes | None:
        return await self._call(session_id, _read_snapshot)

    def close(self) -> None:
        """Close the open segment files and the journal, checkpointed and removed (a later
        append opens them again); a write in flight finishes first."""
        with self._guard:
            for segment in self._open.values():
                segment.close()
            _PROCESS.opened(-len(self._open))
            self._open.clear()
            self._marks.clear()
        if self._group is not None:
            self._group.close()

    async def release(self, session_id: str) -> None:
        """Close the session's segment, so its lock no longer keeps other writers out, and
        remember where it was left: a writer that appends and releases every time (the
        Temporal store mirror) then takes it up without reading it whole (a read that grew
        with the session: 7 ms a call at 3000 records), unless another writer was there."""
        await self._call(session_id, lambda session_id, folder: self._let_go(session_id))

    def _let_go(self, session_id: str) -> None:
        with self._guard:
            segment = self._open.pop(session_id, None)
            if segment is None:
                return
            _PROCESS.opened(-1)
            with segment.lock:
                if not segment.closed and segment.end > 0:
                    self._keep_mark(session_id, segment.mark())
                segment.close_locked()

    async def read(self, session_id: str) -> list[str]:
        return await self._call(session_id, self._read)

    def _read(self, session_id: str, folder: Path) -> list[str]:
        segments = _segment_paths(folder)
        if not segments:
            raise SessionNotFoundError(f"no session {session_id!r} in {self.directory}")
        records: list[str] = []
        for number, path in enumerate(segments):
            if first_position(path) != len(records) + 1:
                raise SessionCorruptedError(
                    f"session {session_id!r}: segment {path.name} should start at record "
                    f"{len(records) + 1}; a segment is missing or misnamed"
                )
            last = number == len(segments) - 1
            records.extend(parse(session_id, path.name, path.read_bytes(), last).records)
        return records

    async def exists(self, session_id: str) -> bool:
        folder = self._folder(session_id)

        def found() -> bool:
            self._recover()
            return bool(_segment_paths(folder))

        return await asyncio.to_thread(found)

    async def list_sessions(self) -> list[str]:
        def names() -> list[str]:
            self._recover()
            if not self.directory.is_dir():
                return []
            return sorted(p.name for p in self.directory.iterdir() if _segment_paths(p))

        return await asyncio.to_thread(names)

    async def delete(self, session_id: str) -> bool:
        return await self._call(session_id, self._delete)

    def _delete(self, session_id: str, folder: Path) -> bool:
        """Refused while another writer holds the session (its lock on the last segment):
        that writer would go on appending to files no longer there."""
        self._forget(session_id)
        if not folder.is_dir():
            return False
        if self._boot is not None:  # never replayed into a session of this name made later:
            recover(self.directory, self._boot)  # journals of backends now gone are taken up,
        if self._group is not None and self._group.names_unidentified(folder.name):
            self._group.settle()  # and this one's checkpointed where inodes can be mistaken
        segments = _segment_paths(folder)
        with hold_segment(session_id, segments[-1]) if segments else contextlib.nullcontext():
            for path in folder.iterdir():
                path.unlink()
            folder.rmdir()
        return True


class _OpenSegments:
    """The segment files open in this process, every file backend's together: the share of the
    limit on open files they may hold is the process's, however many backends it makes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.limit = OPEN_SEGMENTS  # set by each backend made (the limit may have changed)
        self._raised = False

    def opened(self, change: int) -> bool:
        """Count ``change`` more (or fewer) open; whether the count is now past the limit."""
        with self._lock:
            self.count += change
            return self.count > self.limit

    def more(self) -> bool:
        """Past the limit: before each append starts reopening its segment, the soft limit on
        open files is raised (once in the process's life, see ``descriptors``); whether that
        made room."""
        with self._lock:
            if self._raised:
                return False
            self._raised = True
            raise_soft_limit(f"{self.count} sessions' segments are open", _LOG, "its segment")
            self.limit = open_segment_limit()
            return self.count <= self.limit


def open_segment_limit() -> int:
    """How many segment files the file backends of this process keep open: a quarter of its
    soft limit on open files (sockets, tools and SQLite need the rest), within ``OPEN_SEGMENTS``
    and ``MOST_OPEN_SEGMENTS``. Each running session past it costs a reopen per append (a
    session taken up again from its mark: a handful of system calls), so the first time the
    process passes it, the soft limit is raised to the hard one."""
    soft = soft_limit()
    if soft is None:
        return MOST_OPEN_SEGMENTS
    return min(max(OPEN_SEGMENTS, soft // 4), MOST_OPEN_SEGMENTS)


_PROCESS = _OpenSegments()


def _segment_paths(folder: Path) -> list[Path]:
    """A session's segment files in order; none when it has no folder (one listing: this runs
    for every append of a session whose segment was closed)."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [folder / name for name in sorted(names) if SEGMENT_NAME.fullmatch(name)]


def _not_undone(session_id: str) -> SessionError:
    return SessionError(
        f"session {session_id!r}: an append failed and could not be undone; resume the "
        "session to go on from what its log holds"
    )


def _write_snapshot(session_id: str, folder: Path, data: bytes) -> None:
    """Atomically: a temporary file, fsync'd, renamed over the old one."""
    _make_folder(session_id, folder)
    temporary = folder / "snapshot.tmp"
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        sync_data(handle.fileno())
    os.replace(temporary, folder / "snapshot.bin")
    fsync_directory(folder)


def _make_folder(session_id: str, folder: Path) -> None:
    """Create the session's folder (and the backend's directory, if missing); a
    ConfigurationError naming the path in the way when that is a file."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (NotADirectoryError, FileExistsError) as error:
        # else what mkdir found in the way: a dangling symbolic link, say
        in_the_way = _not_a_directory(folder) or Path(error.filename or folder)
        if in_the_way == folder:
            raise ConfigurationError(
                f"cannot store session {session_id!r} in {folder}: that path exists and is "
                "not a directory (FileStorageBackend keeps each session in a folder named "
                "after it); move it away or use another directory or session id"
            ) from None
        raise _not_a_directory_error(folder.parent, in_the_way) from None


def _not_a_directory(path: Path) -> Path | None:
    """The first of ``path`` and its parents that exists and is not a directory (a symbolic
    link counts as what it points to); None when there is none, or it cannot be told (no
    permission to look): then the first write says what is wrong."""
    for candidate in (path, *path.parents):
        try:
            found = candidate.stat()
        except (FileNotFoundError, NotADirectoryError):
            continue  # missing (to be created), or under a file: that is found further up
        except OSError:
            return None
        return None if stat.S_ISDIR(found.st_mode) else candidate
    return None


def _not_a_directory_error(directory: Path, in_the_way: Path) -> ConfigurationError:
    where = "is" if in_the_way == directory else f"lies under {in_the_way}, which is"
    return ConfigurationError(
        f"FileStorageBackend cannot keep sessions in {directory}: it {where} not a directory. "
        "Give it a directory (a missing one is created); to keep sessions in one file, use "
        "SQLiteStorageBackend"
    )


def _read_snapshot(session_id: str, folder: Path) -> bytes | None:
    path = folder / "snapshot.bin"
    return path.read_bytes() if path.exists() else None
