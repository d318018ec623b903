"""The store's sessions as the inspector serves them, each read again only when its log grew.

A :class:`Catalog` keeps each session's parsed log keyed by the log's length (the SQLite
backend gives every session's length from its index, without reading a log): a store of many
sessions, asked again after one of them took a step, reads that one. A summary and a folded
view are kept alongside, rebuilt when the length or the session's writer (held or not) changed.

Every read, parse and fold runs on a worker thread, with its own event loop, one at a time (a
lock keeps the cache whole): the server's event loop only awaits the result.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.coordination.state.backends import valid_session_id
from orchestra.coordination.state.manager import SessionLog
from orchestra.coordination.state.records import Entry
from orchestra.errors import InvalidSessionIdError, SessionCorruptedError, SessionNotFoundError

from .fold import Fold
from .summaries import damaged, summarised
from .views import RunHostView, SessionView, session_view, step_detail

T = TypeVar("T")


@dataclass(slots=True)
class _Read:
    """One session as last read: its log at ``length`` records, or why it cannot be read."""

    length: int | None
    log: SessionLog | None = None
    entries: list[Entry] | None = None
    error: Exception | None = None
    held: bool | None = None  # whether a writer held it when last asked (None: not asked)
    # each built for whether a writer held the session (a crash changes that, not the log)
    summary: tuple[bool, dict[str, Any]] | None = None
    fold: tuple[bool, Fold] | None = None


class Catalog:
    """The sessions of the SQLite store at ``store``, read as they change (see the module)."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self._backend = SQLiteStorageBackend(store)
        self._manager = StateManager(self._backend, auto_save_interval=0)
        self._read: dict[str, _Read] = {}
        self._lock = threading.Lock()
        self._held_last: frozenset[str] = frozenset()  # held at the last list (see writer_gone)

    async def sessions(self, host: RunHostView | None) -> list[dict[str, Any]]:
        """Every session's summary, with ``hosted`` and ``version`` (its log's length)."""
        return await self._off_loop(lambda: self._sessions(host))

    async def view(self, session_id: str, host: RunHostView | None) -> SessionView:
        """The session's page; SessionNotFoundError, or SessionCorruptedError naming the
        session and the record at fault."""
        return await self._off_loop(lambda: self._view(session_id, host))

    async def step(self, session_id: str, position: int) -> dict[str, Any]:
        """The detail of the session's step that began at ``position``."""

        async def detail() -> dict[str, Any]:
            return step_detail(await self._fold(session_id), position)

        return await self._off_loop(detail)

    def close(self) -> None:
        self._backend.close()

    async def _off_loop(self, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        def run() -> T:
            with self._lock:
                return asyncio.run(work())

        return await asyncio.to_thread(run)

    async def _sessions(self, host: RunHostView | None) -> list[dict[str, Any]]:
        lengths = await self._lengths()
        found = sorted(lengths) if lengths else await self._backend.list_sessions()
        for gone in set(self._read) - set(found):
            del self._read[gone]
        rows = []
        for session_id in found:
            read = await self._session(session_id, (lengths or {}).get(session_id))
            rows.append(await self._summary(session_id, read, host))
        self._held_last = frozenset(s for s, read in self._read.items() if read.held)
        return rows

    def writer_gone(self) -> bool:
        """Whether a session a writer held at the last list has lost it: a run that ended
        without a word (its process killed) changes nothing in the store, so the watcher asks
        this now and then (blocking: on its own thread), and the list shows the session
        interrupted within a second rather than at the next change."""
        for session_id in self._held_last:
            try:
                if not self._backend.held_now(session_id):
                    return True
            except (OSError, InvalidSessionIdError):
                return True
        return False

    async def _lengths(self) -> dict[str, int] | None:
        """Each session's length, which lists them too (one query on the index); None when the
        index is damaged or holds an id no session can have (a damaged page's garbage): then
        the sessions are listed as the backend finds them, and each is read (and named) anew."""
        try:
            lengths = await self._backend.lengths()
        except SessionCorruptedError:
            return None
        return lengths if all(map(valid_session_id, lengths)) else None

    async def _session(self, session_id: str, length: int | None) -> _Read:
        """The session as read at ``length`` records (None: unknown, read it again)."""
        read = self._read.get(session_id)
        if read is not None and length is not None and read.length == length:
            return read
        try:
            log, entries = await self._manager.load_all(session_id)
            read = _Read(log.length, log, entries)
        except SessionNotFoundError:
            raise
        except Exception as error:  # a read-only view: any failure is this session's damage
            read = _Read(length, error=error)
        self._read[session_id] = read
        return read

    async def _summary(
        self, session_id: str, read: _Read, host: RunHostView | None
    ) -> dict[str, Any]:
        held = await self._held(session_id, read)
        if read.summary is None or read.summary[0] != held:
            read.summary = (held, _summary_of(session_id, read, held))
        hosted = host.hosts(session_id) if host is not None else False
        return {**read.summary[1], "hosted": hosted, "version": read.length or 0}

    async def _held(self, session_id: str, read: _Read) -> bool:
        """Whether a writer holds the session: asked of the store only when its log grew since
        (a new ``_Read``) or a writer held it (a writer takes its lock with its first append,
        so one that came has grown the log; one that left, a crash, grows nothing)."""
        if read.held is None or read.held:
            read.held = await self._backend.held(session_id)
        return read.held

    async def _view(self, session_id: str, host: RunHostView | None) -> SessionView:
        fold = await self._fold(session_id)
        read = self._read[session_id]
        summary = await self._summary(session_id, read, host)
        return session_view(fold, summary, host)

    async def _fold(self, session_id: str) -> Fold:
        lengths = await self._lengths()  # None when the index is damaged: listed instead
        if session_id not in (lengths or await self._backend.list_sessions()):
            raise SessionNotFoundError(f"no session {session_id!r} in {self.store}")
        read = await self._session(session_id, (lengths or {}).get(session_id))
        held = await self._held(session_id, read)
        if read.error is not None:
            raise _as_damage(session_id, read.error)
        if read.fold is None or read.fold[0] != held:
            assert read.log is not None and read.entries is not None
            try:
                read.fold = (held, Fold(read.log, read.entries, held))
            except Exception as error:  # a record the fold reads is damaged
                raise _as_damage(session_id, error) from None
        return read.fold[1]


def _summary_of(session_id: str, read: _Read, held: bool) -> dict[str, Any]:
    if read.log is None:
        return dict(damaged(session_id, read.error or SessionCorruptedError("unreadable")))
    try:
        return dict(summarised(read.log, held))
    except Exception as error:  # as the summaries do: any failure is the session's damage
        return dict(damaged(session_id, error))


def _as_damage(session_id: str, error: Exception) -> SessionCorruptedError:
    """The error a view of a damaged session answers with: it names the session (and, from
    the readers, the record at fault); never a traceback."""
    return SessionCorruptedError(damaged(session_id, error)["error"] or "damaged")
