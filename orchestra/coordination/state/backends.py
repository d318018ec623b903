"""Where session logs live: one small async protocol, and what every backend shares.

A backend stores, per session, an append-only sequence of text records. Appends may be made
durable (fsync'd) before they return. Each stored record carries a CRC, so a damaged log is
reported as such; a torn last append (a crash in the middle of it) is ignored, since the
records it held were never acknowledged as durable. The backends: ``files`` and ``sqlite``
(embedded), ``servers`` (Redis, PostgreSQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import struct
import weakref
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

try:
    import fcntl
except ImportError:  # not POSIX: no guard against a second writer process
    fcntl = None  # type: ignore[assignment]

from orchestra.errors import (
    ConfigurationError,
    InvalidSessionIdError,
    SessionCorruptedError,
    SessionError,
    StorageUnavailableError,
)
from orchestra.models.secrets import redact

_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def check_session_id(session_id: object) -> str:
    """The id, if it is safe as a file or key name; InvalidSessionIdError otherwise. The whole
    id must match (``$`` would let a trailing newline through: a session stored as ``"nl\\n"``
    is listed as "nl" and cannot be deleted by that name)."""
    if (
        not isinstance(session_id, str)
        or not _SESSION_ID.fullmatch(session_id)
        or ".." in session_id
    ):
        raise InvalidSessionIdError(
            f"session id {session_id!r} is not allowed: use 1-128 letters, digits, '_', '-' or "
            "'.', starting with a letter or digit, without '..'"
        )
    return session_id


def valid_session_id(session_id: object) -> bool:
    """Whether ``session_id`` is one a session can have (:func:`check_session_id`, as a test):
    an id read from a store's index may be a damaged page's garbage."""
    try:
        check_session_id(session_id)
    except InvalidSessionIdError:
        return False
    return True


def frame(record: str) -> str:
    return f"{zlib.crc32(record.encode()):08x} {record}\n"


def unframe(session_id: str, where: str, line: str) -> str:
    if not intact(line):
        raise SessionCorruptedError(
            f"session {session_id!r}: the log is damaged at {where} (checksum mismatch)"
        )
    return line.partition(" ")[2]


def stale_writer(session_id: str, after: int) -> SessionError:
    """The refusal of a compare-and-append (see ``StorageBackend.append``)."""
    return SessionError(
        f"session {session_id!r} does not hold the {after} records its writer expected: another "
        "writer appended to it, or it was deleted"
    )


def unreachable(doing: str, server: str, error: BaseException) -> StorageUnavailableError:
    """A server backend's call that failed for its connection (refused, lost, timed out, or
    its credentials refused): what was being done and the server (its repr: no password; nor
    in the driver's words, masked as every error text is)."""
    return StorageUnavailableError(
        f"could not {doing}: {server} failed to answer ({redact(str(error))})"
    )


def lock_writer(session_id: str, descriptor: int) -> None:
    """Take the session's writer lock on an open file (``flock``, released when the file is
    closed or its process dies): a second process, or a second backend object, appending to
    the same session would run its steps again and be refused at its next append."""
    if fcntl is None:
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise another_writer(session_id) from None


def another_writer(session_id: str) -> SessionError:
    """The refusal of a writer while another holds the session."""
    return SessionError(
        f"session {session_id!r} is being written by another process (or another backend "
        "object); a session takes one writer at a time"
    )


def lock_session(session_id: str, descriptor: int) -> None:
    """Take a session's writer locks on its lock file, opened for reading and writing: the
    ``flock`` :func:`lock_writer` takes, as the release before took it alone (so a writer of
    either release refuses the other), and, where there is one (Linux), an open-file-description
    lock (``F_OFD_SETLK``) that :func:`session_held` can ask about without taking a lock itself.
    A probe that took a shared ``flock`` for a moment made a writer trying its exclusive lock at
    that instant fail as if another writer held the session (a race test: 343 in 2000); a
    test lock (``F_OFD_GETLK``) contends with nothing, and needs no retry or wait to be right.
    (A probe of the release before still takes that shared ``flock``: while both releases work
    on one store, its probes can refuse a writer of this one as before.) Both locks belong to
    the open file, not the process: a second backend object in the same process is refused
    too, and closing another descriptor of the file (a probe's) releases nothing."""
    lock_writer(session_id, descriptor)
    if _OFD_SETLK is None:
        return
    try:
        fcntl.fcntl(descriptor, _OFD_SETLK, _flock(fcntl.F_WRLCK))
    except OSError as error:
        if error.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        raise another_writer(session_id) from None


def session_held(descriptor: int) -> bool:
    """Whether a writer holds the locks :func:`lock_session` takes, asked without locking: its
    OFD lock, or a ``flock`` alone (a writer of the release before), which the kernel lists in
    ``/proc/locks`` (only the locks of this PID namespace: a writer of the release before in
    another container is not seen). Where there are no OFD locks, a shared ``flock`` taken (and
    kept until the file is closed) shows a writer, at the cost of the race the function above
    avoids; no locks at all: False."""
    if _OFD_GETLK is None:
        if fcntl is None:
            return False
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False
    found = fcntl.fcntl(descriptor, _OFD_GETLK, _flock(fcntl.F_RDLCK))
    kind: int = struct.unpack(_FLOCK, found)[0]
    return kind != fcntl.F_UNLCK or _flocked(descriptor)


def _flocked(descriptor: int) -> bool:
    """Whether ``/proc/locks`` lists a ``flock`` held on the open file's inode (lines such as
    ``3: FLOCK  ADVISORY  WRITE 4242 fe:00:2852690 0 EOF``; a waiter's has ``->`` first)."""
    info = os.fstat(descriptor)
    inode = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as listing:
            return any(_flock_on(line.split(), inode) for line in listing)
    except OSError:
        return False


def _flock_on(fields: list[str], inode: str) -> bool:
    return len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode


_OFD_SETLK: int | None = getattr(fcntl, "F_OFD_SETLK", None) if fcntl else None
_OFD_GETLK: int | None = getattr(fcntl, "F_OFD_GETLK", None) if fcntl else None
_FLOCK = "hhqqi4x"  # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks)


def _flock(kind: int) -> bytes:
    """A ``struct flock`` for the whole file (start 0, length 0: to its end, however long)."""
    return struct.pack(_FLOCK, kind, 0, 0, 0, 0)


def intact(line: str) -> bool:
    """Whether a stored line (without its newline) is a record with a matching checksum."""
    checksum, _, record = line.partition(" ")
    return len(checksum) == 8 and f"{zlib.crc32(record.encode()):08x}" == checksum


@runtime_checkable
class StorageBackend(Protocol):
    """What ``StateManager`` needs of a store.

    ``append`` stores ``records`` as the session's records number ``after + 1`` onwards. It is
    a compare-and-append: when the session does not hold exactly ``after`` records, it raises
    ``SessionError`` (another writer got there first) and stores nothing; an append whose
    records are all already stored at those positions (a retry after an answer was lost)
    succeeds without storing them twice. It may be a coroutine function, or return any
    awaitable: a backend that writes on a thread of its own starts the write before returning,
    so the run goes on with its in-memory work while the write is under way."""

    def append(
        self, session_id: str, records: Sequence[str], durable: bool, after: int
    ) -> Awaitable[None]: ...

    async def release(self, session_id: str) -> None:
        """The session's writer is done for now: let go of what was held for it (an open
        file, a lock on it), so another process may write the session next."""

    async def read(self, session_id: str) -> list[str]: ...

    async def exists(self, session_id: str) -> bool: ...

    async def list_sessions(self) -> list[str]: ...

    async def delete(self, session_id: str) -> bool: ...

    async def write_snapshot(self, session_id: str, data: bytes) -> None: ...

    async def read_snapshot(self, session_id: str) -> bytes | None: ...


# ---- shared by the server backends (Redis, PostgreSQL) ----------------------------------------

_NAMESPACE = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


def check_namespace(namespace: str) -> str:
    if not _NAMESPACE.fullmatch(namespace):
        raise ConfigurationError(
            f"namespace {namespace!r} must be lower-case letters, digits and '_' (max 41)"
        )
    return namespace


class PerLoop:
    """One client per running event loop (drivers bind their connections to a loop). The
    loops are held weakly: one that is gone takes its entry with it."""

    def __init__(self) -> None:
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> Any:
        return self._clients.get(asyncio.get_running_loop())

    def put(self, client: Any) -> Any:
        self._clients[asyncio.get_running_loop()] = client
        return client

    async def put_closed_at_end(self, client: Any, close: Callable[[Any], Awaitable[None]]) -> Any:
        """:meth:`put`, and ``close(client)`` once the loop ends: ``asyncio.run`` closes a
        loop's async generators before it closes the loop, so one started here runs
        ``close`` then, while the loop still runs. Without it, each ``asyncio.run`` that used
        the backend left its connections open until the process ended."""
        loop = asyncio.get_running_loop()
        self._clients[loop] = client
        closer = _closed_at_end(self._clients, loop, client, close)
        self._closers[loop] = closer
        await anext(closer)
        return client


async def _closed_at_end(
    clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any],
    loop: asyncio.AbstractEventLoop,
    client: Any,
    close: Callable[[Any], Awaitable[None]],
) -> AsyncIterator[None]:
    try:
        yield
    finally:
        if clients.get(loop) is client:
            del clients[loop]
        with contextlib.suppress(Exception):  # a connection already lost: nothing to close
            await close(client)
