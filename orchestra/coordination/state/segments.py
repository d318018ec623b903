"""The segment files of ``FileStorageBackend``: their format, and a segment open for appending.

A segment holds appends, each a header line ``@<length of its body in hex> <checksum of that
length>`` followed by the body: its records, one checksummed line each (see ``backends.frame``).
After the last append comes zero padding, grown ahead of the records so that writing one does
not change the file's size (a durable write then has no metadata to commit). A segment is named
after the position of its first record in the session's log: ``log-000000000001.seg``,
``log-000000004711.seg``.

Reading tells a torn append from damage. An append is written into zeros, and a disk stores
a sector (512 bytes, at file offsets that are multiples of 512) whole or not at all; the kernel
writes whole pages of them. So a crash in the middle of an append (never acknowledged as
durable) leaves it with some of its sectors written and the others still zero, and nothing
after it: such an append is not part of the log. Anything else that is wrong means that
acknowledged records were damaged, and is a ``SessionCorruptedError`` naming the segment and
byte, never a silent cut: a checksum that does not match bytes that are not zero, a bad append
that another append follows, or a sector that holds part of the append and zeros where the rest
of it belongs (one zeroed byte, say). The limit: damage that zeroes whole sectors of the last
append looks exactly like a crash, and that append is dropped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import re
import struct
import sys
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestra.errors import SessionCorruptedError

from .backends import frame, intact, lock_writer

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None  # type: ignore[assignment]

GROWTH_MIN = 64 * 1024  # a segment grows by its size, within these bounds
GROWTH_MAX = 1024 * 1024
MARK_BYTES = 64  # of a segment's last append, kept to recognise the segment when taking it up
CHECKED_AHEAD = 64 * 1024  # zeros after the mark checked to be zeros still, when taking it up
SECTOR = 512  # the smallest unit a disk writes whole (see the module's docstring)
_WRITE_DSYNC = getattr(os, "RWF_DSYNC", 0)  # Linux: a write that is durable when it returns
_FULL_FSYNC = getattr(fcntl, "F_FULLFSYNC", None)
# _IOR('v', 1, long) as Linux encodes it on these machines (others encode it differently)
_GET_VERSION = (
    (2 << 30) | (struct.calcsize("l") << 16) | (ord("v") << 8) | 1
    if sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64", "i686", "riscv64")
    else None
)  # macOS: fsync leaves data in the drive's cache
_HEADER = re.compile(rb"\n@([0-9a-f]+) ([0-9a-f]{8})\n")
SEGMENT_NAME = re.compile(r"log-[0-9]{12}\.seg")


def encode_append(records: Sequence[str]) -> bytes:
    body = "".join(frame(record) for record in records).encode()
    return _header(len(body)) + body


def _header(length: int) -> bytes:
    size = b"%x" % length
    return b"@%s %08x\n" % (size, zlib.crc32(size))


def segment_name(first: int) -> str:
    return f"log-{first:012d}.seg"


def first_position(path: Path) -> int:
    return int(path.name[4:16])


@dataclass
class Parsed:
    records: list[str]
    end: int  # where the last intact append ends
    content_end: int  # where the bytes before the zero padding end


def parse(session_id: str, name: str, data: bytes, last: bool) -> Parsed:
    """The records of a segment's intact appends. In the last segment, an append that is torn
    (see the module's docstring) ends the log; any other bad append is damage."""
    content = data.rstrip(b"\0")  # an append never ends in a zero byte
    records: list[str] = []
    offset = 0
    while offset < len(content):
        problem, end, lines = _one_append(content, offset)
        if problem is None and end is not None:
            records.extend(lines)
            offset = end
        elif last and _torn(content, offset, end):
            break
        else:
            raise SessionCorruptedError(
                f"session {session_id!r}: segment {name} is damaged at byte {offset} ({problem})"
            )
    return Parsed(records, offset, len(content))


def _one_append(content: bytes, offset: int) -> tuple[str | None, int | None, list[str]]:
    """(problem, where the append ends if its header says so, its records)."""
    newline = content.find(b"\n", offset)
    found = _HEADER.fullmatch(b"\n" + content[offset : newline + 1]) if newline >= 0 else None
    if found is None or b"%08x" % zlib.crc32(found[1]) != found[2]:
        return "no intact append header", None, []
    end = newline + 1 + int(found[1], 16)
    if end > len(content):
        return "an incomplete append", end, []
    lines = content[newline + 1 : end].decode("utf-8", errors="replace").split("\n")
    if lines.pop() or not all(intact(line) for line in lines):
        return "a record that does not match its checksum", end, []
    return None, end, [line.partition(" ")[2] for line in lines]


def _torn(content: bytes, offset: int, end: int | None) -> bool:
    """Whether the bad append at ``offset`` can be one a crash cut short: written into zeros,
    whole sectors of it may be missing (zero), and nothing may follow it."""
    if end is None:  # its header is not intact: the append runs to the end of the content
        if any(
            b"%08x" % zlib.crc32(later[1]) == later[2]
            for later in _HEADER.finditer(content, offset)
        ):
            return False
        if content.endswith(b"\n"):  # every append ends in one
            return _sectors_whole(content, offset, len(content), lost=False)
        # cut short: only at a sector boundary, the sectors after it lost
        return len(content) % SECTOR == 0 and _sectors_whole(content, offset, len(content), True)
    if content[end:].strip(b"\0"):
        return False
    return _sectors_whole(content, offset, end, lost=False)


def _sectors_whole(content: bytes, start: int, stop: int, lost: bool) -> bool:
    """Whether each sector's share of ``content[start:stop]`` (zeros past the content) is all
    zero or holds no zero at all, and at least one is zero (or ``lost`` says one is)."""
    for sector in range(start - start % SECTOR, stop, SECTOR):
        share = content[max(sector, start) : min(sector + SECTOR, stop)]
        share += bytes(min(sector + SECTOR, stop) - max(sector, start) - len(share))
        zeros = share.count(0)
        if zeros == len(share):
            lost = True
        elif zeros:
            return False
    return lost


@dataclass(frozen=True)
class Redo:
    """What the journal holds of a durable append written without a sync: ``data`` at
    ``offset`` of the segment (this append, and any not made durable before it there), the
    bytes ``before`` it; and how to undo the write (where it began, the records before it)."""

    relative: bytes  # the segment's path in the backend's directory
    inode: int
    generation: int  # the inode's (see ``inode_generation``)
    offset: int
    before: bytes
    data: bytes
    undo_end: int
    undo_records: int
    undo_unsynced: bool


@dataclass(frozen=True)
class Mark:
    """Where a segment closed only to keep the number of open files down left off: enough to
    take it up again without reading it whole, unless another writer has been there since."""

    path: Path
    identity: tuple[int, int, int, int, int]  # inode, size, mtime, ctime (ns), device
    end: int
    records: int
    last_bytes: bytes  # the end of its last append


class Segment:
    """The segment a session appends to: appends up to ``end``, zeros up to ``allocated``;
    ``records`` counts the session's records up to ``end``. ``lock`` is held while it is
    written or closed, so any thread may close it."""

    def __init__(self, path: Path, descriptor: int, end: int, allocated: int, records: int) -> None:
        self.path = path
        self.descriptor = descriptor
        self.end = end
        self.allocated = allocated
        self.records = records
        self.lock = threading.Lock()
        self.closed = False
        # a write not made durable is in it: the next durable one syncs the whole file, not
        # its own range, and so does sealing or closing it (a later durable append, in the next
        # segment, must never stand behind records a crash could lose)
        self.unsynced = False
        self.durable_end = end  # what lies before is durable, or in the backend's journal
        self.inode = os.fstat(descriptor).st_ino
        self.generation = inode_generation(descriptor)

    @classmethod
    def create(cls, session_id: str, path: Path, first: int) -> Segment:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        return cls._locked(session_id, path, descriptor, 0, 0, first - 1)

    @classmethod
    def reopen(cls, session_id: str, path: Path) -> Segment:
        """Open the last segment of a session. A torn append at its end is zeroed, so the
        next append cannot leave pieces of it behind its own records."""
        descriptor = os.open(path, os.O_RDWR)
        try:
            lock_writer(session_id, descriptor)
            data = path.read_bytes()
            parsed = parse(session_id, path.name, data, last=True)
            if parsed.end < parsed.content_end:
                fill_zeros(descriptor, parsed.end, parsed.content_end - parsed.end)
            # what another writer left may be durable only in its journal: this writer's
            # appends must not stand on it (nor its journal be needed once this one's is)
            sync_data(descriptor)
        except BaseException:
            os.close(descriptor)
            raise
        records = first_position(path) - 1 + len(parsed.records)
        return cls(path, descriptor, parsed.end, len(data), records)

    @classmethod
    def resume(cls, session_id: str, mark: Mark) -> Segment | None:
        """Open the segment where ``mark`` left off; None when it is not as it was left (another
        writer appended to it, tore an append into it, cut it, or replaced it with a new file):
        it must then be read whole. Any write changes the file's times; the bytes around the
        mark are checked as well, for file systems whose clock ticks slower than writes come."""
        descriptor = os.open(mark.path, os.O_RDWR)
        try:
            lock_writer(session_id, descriptor)
            identity = _identity(descriptor)
            start = mark.end - len(mark.last_bytes)
            around = len(mark.last_bytes) + CHECKED_AHEAD
            found = os.pread(descriptor, around, start) if identity == mark.identity else b""
        except BaseException:
            os.close(descriptor)
            raise
        ahead = found[len(mark.last_bytes) :]
        if not found.startswith(mark.last_bytes) or ahead.count(0) != len(ahead):
            os.close(descriptor)
            return None
        return cls(mark.path, descriptor, mark.end, identity[1], mark.records)

    @classmethod
    def _locked(
        cls, session_id: str, path: Path, descriptor: int, end: int, size: int, records: int
    ) -> Segment:
        try:
            lock_writer(session_id, descriptor)
        except BaseException:
            os.close(descriptor)
            raise
        return cls(path, descriptor, end, size, records)

    def append(self, data: bytes, count: int, durable: bool) -> bool:
        """Write one encoded append of ``count`` records. When the write fails, it is undone
        (zeroed again) so that nothing of it can be read or written twice; False when even
        that failed, and the segment must be read again before anything more is appended.
        A failure to grow the file first (a full disk) has written nothing of the append."""
        grew = self._grow(self.end + len(data))
        try:
            self._write(data, durable, grew)
        except OSError:
            try:
                fill_zeros(self.descriptor, self.end, len(data))
                sync_data(self.descriptor)
            except OSError:
                return False
            raise
        self.end += len(data)
        self.records += count
        return True

    def append_unsynced(
        self, relative: bytes, data: bytes, count: int, before: int
    ) -> tuple[bool, Redo]:
        """Write a durable append without syncing it, for the backend's journal to make
        durable: (whether it was written or undone, as :meth:`append`), and what the journal
        must hold: this append, any not made durable before it in this segment, and up to
        ``before`` bytes ahead of them."""
        kept = min(before, self.durable_end)
        earlier = os.pread(
            self.descriptor, self.end - self.durable_end + kept, self.durable_end - kept
        )
        redo = Redo(
            relative,
            self.inode,
            self.generation,
            self.durable_end,
            earlier[:kept],
            earlier[kept:] + data,
            self.end,
            self.records,
            self.unsynced,
        )
        if not self.append(data, count, durable=False):
            return False, redo
        self.unsynced, self.durable_end = False, self.end
        return True, redo

    def undo(self, redo: Redo) -> bool:
        """Zero an append the journal failed to hold again, as :meth:`append` does a failed
        write; False when even that failed."""
        try:
            fill_zeros(self.descriptor, redo.undo_end, self.end - redo.undo_end)
            sync_data(self.descriptor)
        except OSError:
            return False
        self.end, self.records, self.unsynced = redo.undo_end, redo.undo_records, redo.undo_unsynced
        self.durable_end = redo.offset
        return True

    def _grow(self, needed: int) -> bool:
        if needed <= self.allocated:
            return False
        chunk = min(max(self.allocated, GROWTH_MIN), GROWTH_MAX)
        grown = max(needed, self.allocated + chunk)
        fill_zeros(self.descriptor, self.allocated, grown - self.allocated)
        self.allocated = grown
        return True

    def _write(self, data: bytes, durable: bool, grew: bool) -> None:
        if durable and not grew and not self.unsynced and _WRITE_DSYNC:  # write, sync the range
            check_written(os.pwritev(self.descriptor, [data], self.end, _WRITE_DSYNC), data)
        else:  # the new zeros, the file size, earlier writes: durable along with the records
            check_written(os.pwrite(self.descriptor, data, self.end), data)
            if durable:
                sync_data(self.descriptor)
        self.unsynced = not durable
        if durable:
            self.durable_end = self.end + len(data)

    def seal(self, durable: bool) -> None:
        """A full segment loses its padding before the next one starts."""
        os.ftruncate(self.descriptor, self.end)
        self.allocated = self.end
        if durable or self.unsynced:
            sync_data(self.descriptor)
            self.unsynced = False
            self.durable_end = self.end

    def mark(self) -> Mark:
        start = max(0, self.end - MARK_BYTES)
        last_bytes = os.pread(self.descriptor, self.end - start, start)
        return Mark(self.path, _identity(self.descriptor), self.end, self.records, last_bytes)

    def close(self) -> None:
        with self.lock:
            self.close_locked()

    def close_locked(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                if self.unsynced:
                    sync_data(self.descriptor)
            finally:
                os.close(self.descriptor)  # releases the file lock too


@contextlib.contextmanager
def hold_segment(session_id: str, path: Path) -> Iterator[None]:
    """Hold a segment's writer lock (SessionError when a writer has it) for a moment."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        lock_writer(session_id, descriptor)
        yield
    finally:
        os.close(descriptor)


def sync_data(descriptor: int) -> None:
    """Make what was written to a file durable: ``fdatasync`` where there is one; on macOS
    ``F_FULLFSYNC``, since its ``fsync`` returns before the drive has stored the data (a file
    system that refuses it, a network one say, gets the best it offers: ``fsync``)."""
    if _FULL_FSYNC is not None:
        try:
            fcntl.fcntl(descriptor, _FULL_FSYNC)
            return
        except OSError:
            pass
    getattr(os, "fdatasync", os.fsync)(descriptor)


def inode_generation(descriptor: int) -> int:
    """The inode's generation number (``FS_IOC_GETVERSION``): ext4, XFS and Btrfs give a file
    made where a deleted one was, reusing its inode number, another one, so the journal never
    takes the one for the other. 0 where there is none: another system, or a file system
    without it (tmpfs, whose files no crash leaves behind anyway)."""
    if _GET_VERSION is None:
        return 0
    try:
        found = fcntl.ioctl(descriptor, _GET_VERSION, bytes(8))
    except OSError:
        return 0
    return int.from_bytes(found[:4], sys.byteorder)


def _identity(descriptor: int) -> tuple[int, int, int, int, int]:
    found = os.fstat(descriptor)
    return (found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns, found.st_dev)


def fill_zeros(descriptor: int, offset: int, length: int) -> None:
    zeros = bytes(length)
    check_written(os.pwrite(descriptor, zeros, offset), zeros)


def check_written(written: int, data: bytes) -> None:
    if written != len(data):
        raise OSError(errno.ENOSPC, f"short write: {written} of {len(data)} bytes")
