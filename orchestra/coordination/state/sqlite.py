"""``SQLiteStorageBackend``: sessions in one SQLite database file."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar

from orchestra.errors import (
    ConfigurationError,
    SessionCorruptedError,
    SessionNotFoundError,
)

from .backends import (
    check_session_id,
    frame,
    lock_session,
    session_held,
    stale_writer,
    unframe,
    valid_session_id,
)
from .descriptors import raise_soft_limit, soft_limit, soft_limit_raised
from .worker import BlockingWorker

T = TypeVar("T")

_LOG = logging.getLogger(__name__)


class _Append(NamedTuple):
    """One append, as queued for the backend's thread."""

    session: str
    after: int
    length: int  # records
    lines: str
    durable: bool


_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"
_APPEND = (  # one statement: only when the session holds exactly `after` records
    "INSERT INTO appends (session, first, count, records) SELECT ?1, ?2 + 1, ?3, ?4 WHERE "
    "COALESCE((SELECT first + count - 1 FROM appends WHERE session = ?1 "
    "ORDER BY first DESC LIMIT 1), 0) = ?2"
)
_SESSIONS = (  # by the index, else (it is damaged) by the table
    "SELECT DISTINCT session FROM appends ORDER BY session",
    "SELECT DISTINCT session FROM appends NOT INDEXED",
)
_LENGTHS = (  # each session's last append, found by the index
    "SELECT session, first + count - 1 FROM appends WHERE (session, first) IN "
    "(SELECT session, MAX(first) FROM appends GROUP BY session)"
)
_FIND = "SELECT 1 FROM appends WHERE session = ? LIMIT 1"
_SCAN = "SELECT 1 FROM appends NOT INDEXED WHERE session = ? LIMIT 1"  # the table, not the index
_DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_HEADER = b"SQLite format 3\x00"  # how every SQLite database file begins


class SQLiteStorageBackend:
    """Sessions in one SQLite database file (the embedded default of the command line).

    Each append is one row of table ``appends``: the session, the position of its first record
    in the session's log, how many records it holds, and the records, checksummed lines of text
    as in a segment file. Rows go in at the end of the table, found by a small index on (session,
    first): measured, that commits faster than a table clustered on the key, whose pages of
    large rows split often. One statement inserts the row and checks that the session holds
    the records its writer expects. WAL journal; a durable append commits with
    ``synchronous=FULL``. Calls run one at a time on the backend's own thread (see ``worker``);
    appends of many sessions found queued there together commit in one transaction, one sync
    (group commit: ``_append_group``).

    A session's writer holds a lock file (``<database>.locks/<session>``) from its first append
    until it is released, so a second process cannot take up a session that is running. A file
    that holds other tables is refused, never changed.

    A damaged database file (SQLite's own verdict: ``SQLITE_CORRUPT``, ``SQLITE_NOTADB``) is a
    ``SessionCorruptedError`` naming the file and the session, from the first call on when the
    damage is in the file's header or first page. A session the index does not find is looked
    for in the table itself before ``read`` reports it absent: a damaged index can hide its
    rows. ``exists``, asked for every new session, does that only once ``PRAGMA
    integrity_check`` (run once per connection) found the file damaged, so that a new session
    can start in a file damaged elsewhere. (``quick_check`` is faster but does not see an
    index entry that no longer matches its row.)"""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._worker = BlockingWorker(f"orchestra-sqlite-{self.path.name}")
        self._synchronous = ""
        self._writing: dict[str, int] = {}  # session -> its locked lock file, while written here
        self._damage: list[str] | None = None  # what integrity_check found on this connection

    def __repr__(self) -> str:
        return f"SQLiteStorageBackend({str(self.path)!r})"

    def _db(self) -> sqlite3.Connection:
        """The connection, never inside a transaction: one a failure left open (nothing in it
        was acknowledged) is rolled back first, so no later statement runs in it and is
        acknowledged without being committed."""
        connection = self._connection
        if connection is not None and connection.in_transaction:
            self._roll_back(connection)
            connection = self._connection
        if connection is None:
            connection = self._connection = self._open()
        return connection

    def _roll_back(self, db: sqlite3.Connection) -> None:
        """Roll back the open transaction. When even that fails (a failing disk), close the
        connection, which makes SQLite discard the transaction: the next call opens the file
        again. The caller reports the error that made it roll back, not this one."""
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            self._disconnect()

    def _disconnect(self) -> None:
        """Close the connection and forget what was known of it (writer locks are kept)."""
        if self._connection is not None:
            with contextlib.suppress(sqlite3.Error):
                self._connection.close()
            self._connection = None
            self._synchronous = ""
            self._damage = None

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as error:
            raise ConfigurationError(
                f"cannot use {self.path} as a session store: {error}"
            ) from None
        try:
            self._initialise(connection)
        except sqlite3.Error as error:
            connection.close()
            if _is_damage(error) and self._was_database():
                raise  # damage, named for the session by _locked
            raise ConfigurationError(
                f"cannot use {self.path} as a session store: {error}"
            ) from None
        except BaseException:
            connection.close()
            raise
        return connection

    def _was_database(self) -> bool:
        """Whether a file SQLite cannot read is a damaged store rather than the wrong file: it
        begins as a SQLite database does, or a session's writer once locked it (the header
        itself may be what is damaged)."""
        try:
            with self.path.open("rb") as file:
                begins = file.read(len(_HEADER))
        except OSError:
            return False
        return begins == _HEADER or self._lock_path("-").parent.is_dir()

    def _initialise(self, connection: sqlite3.Connection) -> None:
        tables = {row[0] for row in connection.execute(_TABLES)}
        if tables and "appends" not in tables:
            raise ConfigurationError(
                f"{self.path} is not a session store: it is a SQLite database with other tables "
                f"({', '.join(sorted(tables))}); choose another file"
            )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA fullfsync=ON")  # macOS: a sync reaches the drive
        connection.execute(
            "CREATE TABLE IF NOT EXISTS appends (session TEXT NOT NULL, first INTEGER NOT "
            "NULL, count INTEGER NOT NULL, records TEXT NOT NULL, PRIMARY KEY (session, first))"
        )
        connection.execute(
            "CREATE TABLE IF NOT EXISTS snapshot (session TEXT PRIMARY KEY, data BLOB NOT NULL)"
        )

    async def _run(self, work: Callable[..., T], *args: object, session: str | None = None) -> T:
        return await self._worker.call(self._locked, work, args, session)

    def _locked(self, work: Callable[..., T], args: tuple[object, ...], session: str | None) -> T:
        with self._lock:  # against close() from another thread
            try:
                return work(self._db(), *args)
            except sqlite3.Error as error:
                if not _is_damage(error):
                    raise
                raise self._damaged(session, str(error)) from None

    def _damaged(self, session: str | None, what: str) -> SessionCorruptedError:
        whose = f"session {session!r}: " if session is not None else ""
        return SessionCorruptedError(
            f"{whose}the session store {self.path} is damaged ({what}); sessions whose rows "
            "are in the damaged part cannot be read (SQLite's `.recover` salvages what it can)"
        )

    def _absent(self, db: sqlite3.Connection, session_id: str) -> None:
        """Called when the index holds no row of the session: raise unless the table itself,
        read whole past the index, holds none either (a damaged index can hide its rows).
        The session's id decides, not a verdict on the whole file: a session can start in a
        file damaged elsewhere, and damage done after a check is still seen."""
        try:
            found = db.execute(_SCAN, (session_id,)).fetchone()
        except sqlite3.DatabaseError as error:
            if not _is_damage(error):
                raise
            raise self._damaged(
                session_id, f"not found, and the table is damaged: {error}"
            ) from None
        if found is not None:
            raise self._damaged(session_id, "its rows are there, but the index does not find them")

    def _integrity_check(self, db: sqlite3.Connection) -> list[str]:
        if self._damage is None:
            try:
                rows = db.execute("PRAGMA integrity_check(10)").fetchall()
            except sqlite3.DatabaseError as error:  # too damaged to be checked
                if not _is_damage(error):
                    raise
                rows = [(str(error),)]
            self._damage = [str(row[0]) for row in rows if row[0] != "ok"]
        return self._damage

    async def damage(self) -> list[str]:
        """What ``PRAGMA integrity_check`` finds wrong with the database file (up to ten
        problems); empty when it is sound. It reads the whole file."""
        self._damage = None
        return await self._run(self._integrity_check)

    def _synchronous_mode(self, db: sqlite3.Connection, durable: bool) -> None:
        mode = "FULL" if durable else "NORMAL"
        if mode != self._synchronous:
            db.execute(f"PRAGMA synchronous={mode}")
            self._synchronous = mode

    def append(
        self, session_id: str, records: Sequence[str], durable: bool, after: int
    ) -> Awaitable[None]:
        check_session_id(session_id)
        lines = "".join(frame(record) for record in records)
        work = _Append(session_id, after, len(records), lines, durable)
        return self._worker.submit_grouped(self._append_group, work, len(lines))

    def _append_group(self, group: list[_Append]) -> list[BaseException | None]:
        """Store the appends queued together (group commit): one alone in a transaction of its
        own, as ever, so a lone session pays nothing more; several in one transaction, so one
        sync makes them all durable. Each append's row is one statement, which SQLite applies
        whole or not at all, so an append refused (a stale or another writer) leaves nothing
        and fails alone while the others commit; a failed commit fails them all alike."""
        with self._lock:  # against close() from another thread
            try:
                db = self._db()
                if len(group) == 1:
                    work = group[0]
                    self._synchronous_mode(db, work.durable)
                    self._append(db, work)
                    return [None]
                self._synchronous_mode(db, any(work.durable for work in group))
                db.execute("BEGIN IMMEDIATE")
            except BaseException as error:
                return [self._failure(work.session, error) for work in group]
            return self._commit(db, group)

    def _commit(self, db: sqlite3.Connection, group: list[_Append]) -> list[BaseException | None]:
        errors: list[BaseException | None] = []
        for work in group:
            try:
                self._append(db, work)
            except BaseException as error:
                if not db.in_transaction:  # SQLite rolled all back (a full disk, say)
                    return self._failed(db, group, errors, error)
                errors.append(self._failure(work.session, error))
            else:
                errors.append(None)
        try:
            db.execute("COMMIT")
        except BaseException as error:
            return self._failed(db, group, errors, error)
        return errors

    def _failed(
        self,
        db: sqlite3.Connection,
        group: list[_Append],
        errors: list[BaseException | None],
        error: BaseException,
    ) -> list[BaseException | None]:
        """The group's transaction failed: every append not refused on its own fails with the
        same error (none is stored; the writer sends it again, and an exact repeat of one that
        was stored after all is recognised)."""
        if db.in_transaction:
            self._roll_back(db)
        if isinstance(error, sqlite3.Error) and not _is_damage(error):
            cause = error
            error = type(error)(
                f"the session store {self.path} could not commit {len(group)} appends "
                f"together: {error}"
            )
            error.__cause__ = cause
        errors += [None] * (len(group) - len(errors))
        return [
            mine if mine is not None else self._failure(work.session, error)
            for work, mine in zip(group, errors, strict=True)
        ]

    def _failure(self, session_id: str, error: BaseException) -> BaseException:
        """An append's error as ``_locked`` would raise it: damage named for the session."""
        if isinstance(error, sqlite3.Error) and _is_damage(error):
            return self._damaged(session_id, str(error))
        return error

    def _append(self, db: sqlite3.Connection, work: _Append) -> None:
        if not work.length:
            return
        self._hold(work.session)
        if db.execute(_APPEND, (work.session, work.after, work.length, work.lines)).rowcount == 1:
            return
        stored = db.execute(
            "SELECT records FROM appends WHERE session = ? AND first = ?",
            (work.session, work.after + 1),
        ).fetchone()
        if stored is None or stored[0] != work.lines:  # else: a retry of an append that was stored
            raise stale_writer(work.session, work.after)

    def _hold(self, session_id: str) -> None:
        """Take the session's writer lock, unless this backend holds it already. The lock file
        found locked must still be the one at its path (a delete removes it)."""
        if session_id in self._writing:
            return
        path = self._lock_path(session_id)
        path.parent.mkdir(exist_ok=True)
        while True:
            descriptor = _open_lock(session_id, path)
            _make_room(descriptor)
            try:
                lock_session(session_id, descriptor)
                if _same_file(descriptor, path):
                    self._writing[session_id] = descriptor
                    return
            except BaseException:
                os.close(descriptor)
                raise
            os.close(descriptor)  # deleted meanwhile: lock the new one

    def _lock_path(self, session_id: str) -> Path:
        return self.path.with_name(self.path.name + ".locks") / session_id

    def _let_go(self, session_id: str) -> None:
        descriptor = self._writing.pop(session_id, None)
        if descriptor is not None:
            os.close(descriptor)

    async def release(self, session_id: str) -> None:
        """Let go of the session's writer lock."""
        await self._worker.call(self._let_go, session_id)

    async def held(self, session_id: str) -> bool:
        """Whether a writer holds the session now: a run in progress, here or elsewhere."""
        check_session_id(session_id)
        return await self._worker.call(self._held, session_id)

    def held_now(self, session_id: str) -> bool:
        """:meth:`held`, answered on the calling thread (it opens the session's lock file and
        asks about its lock, taking none): for a thread of the caller's own, never an event
        loop's."""
        return self._held(check_session_id(session_id))

    def _held(self, session_id: str) -> bool:
        if session_id in self._writing:
            return True
        try:
            descriptor = os.open(self._lock_path(session_id), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            return session_held(descriptor)
        finally:
            os.close(descriptor)

    async def read(self, session_id: str) -> list[str]:
        check_session_id(session_id)

        def rows(db: sqlite3.Connection) -> list[tuple[int, str]]:
            found: list[tuple[int, str]] = db.execute(
                "SELECT first, records FROM appends WHERE session = ? ORDER BY first",
                (session_id,),
            ).fetchall()
            if not found:
                self._absent(db, session_id)
            return found

        found = await self._run(rows, session=session_id)
        if not found:
            raise SessionNotFoundError(f"no session {session_id!r} in {self.path}")
        records: list[str] = []
        for first, lines in found:
            if first != len(records) + 1:
                raise SessionCorruptedError(
                    f"session {session_id!r}: the append at record {first} should start at "
                    f"record {len(records) + 1}; the log is damaged"
                )
            records.extend(_unbatch(session_id, first, lines))
        return records

    async def exists(self, session_id: str) -> bool:
        check_session_id(session_id)

        def found(db: sqlite3.Connection) -> bool:
            """Cheap for a sound file (asked for every new session): the table is read
            whole only when the file is damaged."""
            if db.execute(_FIND, (session_id,)).fetchone() is not None:
                return True
            if self._integrity_check(db):
                self._absent(db, session_id)
            return False

        return await self._run(found, session=session_id)

    async def list_sessions(self) -> list[str]:
        """The sessions whose ids can be read. In a damaged file, what the index holds and,
        when that is damaged, what the table holds: never an id no session could have (a
        damaged page's garbage); ``damage`` says whether the file is sound."""
        return await self._run(_readable_sessions)

    async def lengths(self) -> dict[str, int]:
        """How many records each session's log holds, read from the index and each session's
        last append only (no log is read): what a viewer compares to know which changed."""
        return dict(await self._run(lambda db: db.execute(_LENGTHS).fetchall()))

    async def delete(self, session_id: str) -> bool:
        check_session_id(session_id)

        def remove(db: sqlite3.Connection) -> int:
            """Under the session's writer lock: refused while another writer has it."""
            self._let_go(session_id)
            self._hold(session_id)
            try:
                return self._delete_rows(db, session_id)
            finally:
                self._lock_path(session_id).unlink()
                self._let_go(session_id)

        return bool(await self._run(remove, session=session_id))

    def _delete_rows(self, db: sqlite3.Connection, session_id: str) -> int:
        """Its snapshot and its log in one transaction: when a damaged page stops either, the
        session is left whole, as it was, and the error says nothing of it was deleted."""
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM snapshot WHERE session = ?", (session_id,))
            count: int = db.execute("DELETE FROM appends WHERE session = ?", (session_id,)).rowcount
            db.execute("COMMIT")
        except BaseException as error:
            if db.in_transaction:
                self._roll_back(db)
            if isinstance(error, sqlite3.Error) and _is_damage(error):
                raise self._damaged(session_id, f"{error}; nothing of it was deleted") from None
            raise
        return count

    async def write_snapshot(self, session_id: str, data: bytes) -> None:
        check_session_id(session_id)
        await self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO snapshot (session, data) VALUES (?, ?)", (session_id, data)
            ),
            session=session_id,
        )

    async def read_snapshot(self, session_id: str) -> bytes | None:
        check_session_id(session_id)
        row = await self._run(
            lambda db: db.execute(
                "SELECT data FROM snapshot WHERE session = ?", (session_id,)
            ).fetchone(),
            session=session_id,
        )
        return bytes(row[0]) if row else None

    def close(self) -> None:
        with self._lock:
            for session_id in list(self._writing):
                self._let_go(session_id)
            self._disconnect()


def _is_damage(error: sqlite3.Error) -> bool:
    """Whether SQLite found the file damaged (not busy, full or unreadable)."""
    return getattr(error, "sqlite_errorcode", 0) & 0xFF in _DAMAGE_CODES


def _readable_sessions(db: sqlite3.Connection) -> list[str]:
    """The valid session ids the index holds, and those the table holds when reading the
    index failed or gave an id no session can have (its page is damaged)."""
    found: set[str] = set()
    for query in _SESSIONS:
        sound = True
        try:
            for (session,) in db.execute(query):
                if valid_session_id(session):
                    found.add(session)
                else:
                    sound = False
        except sqlite3.DatabaseError as error:
            if not _is_damage(error):
                raise
            sound = False
        if sound:
            break
    return sorted(found)


def _open_lock(session_id: str, path: Path) -> int:
    """Open a session's lock file (each running session holds one open); past the limit on
    open files, the error says which session and what to do."""
    for retry in (False, True):
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            if error.errno != errno.EMFILE:
                raise
            if retry or not _more_descriptors("it ran out"):
                break
    raise OSError(
        errno.EMFILE,
        f"session {session_id!r}: no file descriptor is left for its writer lock (each running "
        "session holds one): raise the process's limit on open files (ulimit -n)",
    )


def _make_room(descriptor: int) -> None:
    """Once a writer lock's descriptor shows half the soft limit on open files in use (a new
    descriptor is the lowest free one, so all those below it are open), raise the soft limit
    to the hard one, before a model's socket, a tool's file or SQLite itself runs out: a
    process running about a thousand sessions at once under the usual soft limit of 1024
    would. Counting descriptors, not locks, sees every backend and every other user."""
    if soft_limit_raised():
        return
    soft = soft_limit()
    if soft is not None and descriptor >= soft // 2:
        _more_descriptors(f"{descriptor + 1} files are open")


def _more_descriptors(why: str) -> bool:
    return raise_soft_limit(why, _LOG, "its writer lock")


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(path))
    except FileNotFoundError:
        return False


def _unbatch(session_id: str, first: int, text: str) -> list[str]:
    """The records of one stored append: checksummed lines, as in a segment file."""
    lines = text.split("\n")
    if lines.pop():
        raise SessionCorruptedError(
            f"session {session_id!r}: the append at record {first} ends in an incomplete record"
        )
    return [
        unframe(session_id, f"record {first + number}", line) for number, line in enumerate(lines)
    ]
