"""``StateManager``: durable sessions as append-only logs of the engine's inputs.

A session's log holds, per run, a ``run`` header, every input the engine consumed in the order
it consumed them (step outcomes with the messages they added, tool calls started and finished,
user answers, timeouts, pauses, checkpoints), and an ``end`` record: the typed records of
:mod:`orchestra.coordination.engine.inputs`, written by :mod:`.records`. Because the engine is
deterministic and every input carries its own time, replaying those inputs rebuilds the run
exactly: the state is a fold over the log.

Durability: with ``auto_save_interval=0`` every record is written and fsync'd before the engine
acts on it, so each completed step is durable before the next starts. With a positive interval,
records are buffered and flushed (and fsync'd) every ``auto_save_interval`` seconds, when a
run ends or pauses, before the user is asked anything and once an answer is taken in
(``engine/questions.py``): at most that many seconds of work can be lost in a crash, and never
a person's answer.

Checkpoints are named positions in the log (O(1): one record). Restoring one appends a
``restore`` record: the session's history continues from that position, and the abandoned
future stays in the log as its own branch of history.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestra.coordination.engine import inputs as inp
from orchestra.errors import (
    ConfigurationError,
    SessionCorruptedError,
    SessionError,
    SessionFormatError,
    SessionNotFoundError,
)
from orchestra.models.secrets import redact
from orchestra.text import printable

from . import records
from .backends import StorageBackend, check_session_id
from .records import FORMAT, Entry
from .snapshots import Snapshot
from .snapshots import read as read_snapshot
from .values import Unreadable
from .worker import Completion


@dataclass
class RunLog:
    """One run of a session, as found in the (effective) log: its header, then every input it
    applied after it, in order (its ``end`` records among them)."""

    header: Entry
    entries: list[Entry] = field(default_factory=list)
    end: inp.RunEnd | None = None  # how it last stopped, unless it went on after that
    restored_at: int | None = None  # the latest restore that took it back to a checkpoint

    @property
    def name(self) -> str:
        """The run's name in its session, for its questions' ids: its header's position, and
        the latest restore's once its history forked (``r1.x9``), so an abandoned question's
        id is never a later one's, while a pause or a crash leaves the name as it was."""
        name = run_name(self.header.position)
        return name if self.restored_at is None else f"{name}.x{self.restored_at}"

    @property
    def start(self) -> inp.RunStart:
        return self.header.record  # type: ignore[return-value]

    @property
    def finished(self) -> bool:
        return self.end is not None and not self.end.paused

    @property
    def ended(self) -> bool:
        """Whether it stopped (finished or paused) rather than being cut off by a crash."""
        return self.end is not None

    @property
    def steps(self) -> int:
        """The steps it took (a step begun again after a crash counts once)."""
        results = (inp.StepResult.KIND, inp.StepError.KIND)
        return sum(entry.kind in results for entry in self.entries)


@dataclass
class SessionLog:
    """A session's effective history: its runs and its checkpoints."""

    session_id: str
    length: int
    runs: list[RunLog]
    checkpoints: dict[str, Entry]
    positions: frozenset[int]  # of the records on the current history

    @property
    def last_run(self) -> RunLog | None:
        return self.runs[-1] if self.runs else None


_CHECKPOINT_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9 _.@:\-]{0,126}[A-Za-z0-9_.@:\-])?")

ON_TEMPORAL = "on Temporal"
"""The state of a session's run that Temporal workers run (its header says so) and that has
not ended: its log is theirs to write, never an interrupted run to resume here."""


def run_state(log: SessionLog) -> str:
    """Finished, failed, paused, interrupted or on Temporal: how the last run in a session's
    log stands (a run in progress here reads as interrupted: only storage knows whether a
    writer holds it). One wording for every reader of a store: ``orchestra sessions list``
    and the web inspector."""
    run = log.last_run
    if run is None:
        return "without a run"
    if run.end is None:
        return "interrupted" if run.start.executor is None else ON_TEMPORAL
    if run.end.paused:
        return "paused"
    return "finished" if run.end.success else "failed"


SHOW_AFTER = 0.05
"""Seconds a record that is not due (a step's begin, a model retry) waits, with the 'every
step' policy, before it is written anyway, without waiting for durability: readers of the
store (``orchestra sessions``, the web inspector) then see a step in flight while its model
call runs. A step that ends sooner writes its begin with its result, as one append."""


class SessionWriter:
    """Appends one session's records, durably at once or in timed batches."""

    def __init__(self, manager: StateManager, session_id: str, length: int) -> None:
        self.manager = manager
        self.session_id = session_id
        self.length = length
        self._buffer: list[str] = []
        self._written = length
        self._due = length
        self._flusher: asyncio.Task[None] | None = None
        self._writing: asyncio.Future[None] | None = None
        self._in_flight: tuple[list[str], int] = ([], length)
        self._refused: SessionError | None = None
        self._retry: list[str] | None = None  # a failed append, to be sent again as it was
        self.snapshot_source: Callable[[int, float], bytes | None] | None = None
        self._last_at: float | None = None  # the time of the last record this writer queued
        self.flush_error: BaseException | None = None
        self._shower: asyncio.TimerHandle | None = None  # writes what waited SHOW_AFTER
        self._queued_at = 0.0  # when the oldest record still queued was queued (monotonic)

    def record(self, item: inp.Record) -> int:
        """Queue a record; returns its position (1-based) in the session log. A record that
        cannot be written (``UnstorableValueError``) raises here and takes no position."""
        line = records.encode(item, self.length + 1)
        records.check_size(line, self.session_id, self.length + 1)
        if not self._buffer:
            self._queued_at = time.monotonic()
        self._buffer.append(line)
        self.length += 1
        self._last_at = item.at
        if self._shower is None and self.manager.auto_save_interval == 0:
            self._show_in(SHOW_AFTER)
        return self.length

    def _show_in(self, delay: float) -> None:
        """Look again, in ``delay`` seconds, for records queued too long (one timer for the
        writer, armed only while records are queued: a fast chain of steps pays nothing)."""
        with contextlib.suppress(RuntimeError):  # no running loop: nothing is shown early
            self._shower = asyncio.get_running_loop().call_later(delay, self._show)

    def _show(self) -> None:
        """Write what has been queued for :data:`SHOW_AFTER` (a step's begin, waiting for its
        result): durably if any of it is due, else not (a begin lost to a crash is a step begun
        again; one a later durable record follows is as durable as that record)."""
        self._shower = None
        idle = self._idle()
        if not self._buffer or self._retry is not None or self._refused is not None:
            return
        waited = time.monotonic() - self._queued_at
        if waited < SHOW_AFTER or not idle:
            self._show_in(max(SHOW_AFTER - waited, 0.005))
            return
        self._start_append(durable=self._written < self._due)

    def commit(self) -> None:
        """Mark everything queued so far as due before the next effect the run has on the
        world, and start writing it. With the 'every step' policy the gate (``settled``) then
        waits for it; meanwhile the engine goes on folding the step in memory, which needs no
        durability: only its effects do."""
        if self.manager.auto_save_interval == 0:
            self._due = self.length
            if self._written < self._due and self._idle() and self._refused is None:
                self._start_append()

    def _idle(self) -> bool:
        """Whether no append is in flight, once one that has finished is accounted for. A
        finished append is accounted for when next looked at (here, or by whoever awaits it),
        not by a callback of its own: that was one more turn of the event loop per append."""
        writing = self._writing
        if writing is not None and writing.done():
            self._appended(writing)
        return self._writing is None

    @property
    def unsettled(self) -> bool:
        """Whether records marked by ``commit`` are not yet known to be durable."""
        if self._written < self._due:
            self._idle()
        return self._written < self._due

    async def settled(self) -> None:
        """Return once every record marked by ``commit`` is durable."""
        await self._write_through(self._due)

    async def flush(self) -> None:
        """Return once every record queued before this call is durable."""
        await self._write_through(self.length)

    async def _write_through(self, target: int) -> None:
        """One append is in flight at a time, so records reach storage in order. An append
        finishes even if the caller is cancelled (it is shielded, or cannot be cancelled). A
        failed one is sent again, as it was, by the next call; but once storage has refused
        the session (``SessionError``: another writer), every later call raises that."""
        while self._written < target:
            if self._refused is not None:
                raise self._refused
            writing = self._writing
            if writing is None:
                writing = self._start_append()
            elif writing.done():
                self._appended(writing)
                continue
            try:
                await (writing if isinstance(writing, Completion) else asyncio.shield(writing))
            except BaseException:
                if writing.done():  # it failed (else this caller was cancelled)
                    self._appended(writing)
                raise

    def _start_append(self, durable: bool = True) -> asyncio.Future[None]:
        """Send the failed append again, alone and as it was (it may have been stored, with
        only the answer lost: storage recognises an exact repeat), else all that is queued."""
        lines, self._retry = self._retry, None
        if lines is None:
            lines, self._buffer = self._buffer, []
        try:
            writing = asyncio.ensure_future(  # a backend's future as it is; a coroutine, a task
                self.manager.storage.append(
                    self.session_id, lines, durable=durable, after=self._written
                )
            )
        except BaseException:
            self._retry = lines
            raise
        self._writing, self._in_flight = writing, (lines, self._written + len(lines))
        return writing

    def _appended(self, writing: asyncio.Future[None]) -> None:
        """Account for a finished append, once: by whoever meets it finished first."""
        if self._writing is not writing:
            return
        self._writing = None
        lines, upto = self._in_flight
        error = None if writing.cancelled() else writing.exception()
        if writing.cancelled() or error is not None:
            self._retry = lines
            if isinstance(error, SessionError):
                self._refused = error
        else:
            self._written = upto

    def start(self) -> None:
        interval = self.manager.auto_save_interval
        if interval > 0 and self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_every(interval))

    async def _flush_every(self, interval: float) -> None:
        """Every ``interval``: flush, then snapshot. A failure (a lost connection, say) is kept
        in ``flush_error`` and retried at the next tick; closing the writer raises it. Ends
        once stopped even if its cancel was lost (a driver may swallow it: see ``_keep`` in
        :mod:`.leases`)."""
        while self._flusher is asyncio.current_task():
            await asyncio.sleep(interval)
            try:
                await self.snapshot()
            except Exception as error:
                self.flush_error = error
            else:
                self.flush_error = None

    async def snapshot(self) -> None:
        """Store the run's folded state as of the last durable record (a cache for resume).
        Skipped when records came in after the flush: the state would include records that
        a crash could still lose, at a position a resumed run would number anew."""
        await self.flush()
        source = self.snapshot_source
        if source is not None and self._last_at is not None and self.length == self._written:
            data = source(self.length, self._last_at)
            if data is not None:
                await self.manager.storage.write_snapshot(self.session_id, data)

    async def abandon(self) -> None:
        """Drop what is queued, unwritten, and let storage release what it held: for a run
        that failed to start (it must not be found in the log and resumed later) or that
        storage failed. An append already in flight is waited for first, whatever its outcome:
        until it is over, another writer would write under it."""
        await self._stop_flusher()
        self._buffer.clear()
        self._retry = None
        writing = self._writing
        if writing is not None:
            with contextlib.suppress(Exception):
                await (writing if isinstance(writing, Completion) else asyncio.shield(writing))
        await self.manager.storage.release(self.session_id)

    async def _stop_flusher(self) -> None:
        if self._shower is not None:
            self._shower.cancel()
            self._shower = None
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)

    async def close(self) -> None:
        """Stop the periodic flusher, write everything still queued, and let storage release
        what it held for this writer (a file backend's open segment and its lock)."""
        await self._stop_flusher()
        try:
            await self.flush()
        finally:
            await self.manager.storage.release(self.session_id)


class StateManager:
    """Persists sessions in ``storage``.

    ``auto_save_interval`` (seconds) sets how often buffered records are made durable (0: every
    step, before the next starts) and how often a snapshot of the run's state is stored (0: when
    a run pauses). Snapshots are a cache that spares a resume most of its replay; the log is
    always the source of truth. ``compression`` compresses them (zstd).
    """

    def __init__(
        self,
        storage: StorageBackend,
        auto_save_interval: float = 30.0,
        compression: bool = True,
    ) -> None:
        if not isinstance(storage, StorageBackend):
            raise TypeError(f"storage must be a storage backend, got {type(storage).__name__}")
        if (
            isinstance(auto_save_interval, bool)
            or not isinstance(auto_save_interval, int | float)
            or not 0 <= auto_save_interval < math.inf
        ):
            raise ConfigurationError(
                "auto_save_interval must be a number of seconds, 0 or more (0: every step is "
                f"durable before the next), got {auto_save_interval!r}"
            )
        if not isinstance(compression, bool):
            raise ConfigurationError(
                f"compression must be True or False (zstd, or none), got {compression!r}"
            )
        self.storage = storage
        self.auto_save_interval = float(auto_save_interval)
        self.compression = compression

    def __repr__(self) -> str:
        return f"StateManager({self.storage!r}, auto_save_interval={self.auto_save_interval:g})"

    async def open(self, session_id: str) -> tuple[SessionWriter, SessionLog | None]:
        """A writer positioned after the session's existing records, and those records."""
        check_session_id(session_id)
        log = await self.load(session_id) if await self.storage.exists(session_id) else None
        return SessionWriter(self, session_id, log.length if log else 0), log

    async def load(self, session_id: str) -> SessionLog:
        """Read and check a session's log; SessionNotFoundError / SessionCorruptedError."""
        return fold(session_id, await self.storage.read(check_session_id(session_id)))

    async def load_all(self, session_id: str) -> tuple[SessionLog, list[Entry]]:
        """The session's effective history, as :meth:`load` gives it, and every record of its
        log besides, the history restores abandoned included (a viewer shows both)."""
        lines = await self.storage.read(check_session_id(session_id))
        entries = _read_records(session_id, lines)
        return _fold(session_id, entries), entries

    async def read_snapshot(self, session_id: str) -> Snapshot | None:
        """The session's snapshot (SessionCorruptedError when it is damaged), if it has one."""
        data = await self.storage.read_snapshot(check_session_id(session_id))
        return read_snapshot(data, session_id) if data is not None else None

    async def list_sessions(self) -> list[str]:
        return await self.storage.list_sessions()

    async def delete_session(self, session_id: str) -> bool:
        return await self.storage.delete(check_session_id(session_id))


def fold(session_id: str, lines: list[str]) -> SessionLog:
    """A session's effective history from its log's lines, as :meth:`StateManager.load` reads
    it from storage: how a Temporal workflow's journal (the same lines) is read, by the
    workflow restoring a checkpoint and by the client rebuilding its replica."""
    return _fold(session_id, _read_records(session_id, lines))


def _read_records(session_id: str, lines: list[str]) -> list[Entry]:
    """Every line as its typed record, older formats lifted to this one; a line that is not
    a record of its kind is damage, named by its position."""
    entries = []
    found_format = FORMAT
    for number, line in enumerate(lines, start=1):
        where = f"session {session_id!r}: record {number}"
        if len(line) > records.MAX_RECORD_CHARS:
            raise SessionCorruptedError(
                f"{where} holds {len(line)} characters, over the limit of "
                f"{records.MAX_RECORD_CHARS}: it is not read"
            )
        try:
            data = records.loads(line)
        except (ValueError, RecursionError):
            raise SessionCorruptedError(f"{where} is not valid JSON") from None
        if not isinstance(data, dict) or type(data.get("s")) is not int or data["s"] != number:
            raise SessionCorruptedError(f"{where} is out of sequence")
        kind = str(data.get("t"))[:40]
        try:
            if kind == inp.RunStart.KIND or "format" in data:
                found_format = _format_of(data, where)
            if found_format != FORMAT:
                data = records.upgrade(data, found_format, session_id)
            entries.append(Entry(number, kind, data))
        except (Unreadable, RecursionError) as error:
            raise SessionCorruptedError(f"{where} ({kind}) cannot be read: {error}") from None
        except SessionFormatError:
            raise
        except Exception as error:  # whatever a crafted record makes a reader raise
            raise SessionCorruptedError(
                f"{where} ({kind}) cannot be read: {type(error).__name__}: {error}"
            ) from None
    return entries


def _format_of(header: dict[str, Any], where: str) -> int:
    found = header.get("format", 0)
    if type(found) is not int:
        raise SessionCorruptedError(f"{where}: its log format {str(found)[:20]!r} is no number")
    return found


def _fold(session_id: str, entries: list[Entry]) -> SessionLog:
    """The effective history: restores cut the lineage back to their checkpoint."""
    effective: list[Entry] = []
    checkpoints: dict[str, Entry] = {}
    for entry in entries:
        if entry.kind == inp.Checkpoint.KIND:
            checkpoints[entry.record.checkpoint_id] = entry  # type: ignore[attr-defined]
        elif entry.kind == inp.Restore.KIND:
            cut = entry.record.position  # type: ignore[attr-defined]
            effective = [e for e in effective if e.position <= cut]
        effective.append(entry)
    runs: list[RunLog] = []
    for entry in effective:
        kind = entry.kind
        if kind == inp.RunStart.KIND:
            runs.append(RunLog(entry))
        elif not runs:
            if kind not in (inp.Checkpoint.KIND, inp.Restore.KIND):
                raise SessionCorruptedError(f"session {session_id!r}: records before its first run")
        elif kind == inp.Restore.KIND:
            runs[-1].restored_at = entry.position
        elif kind == inp.Checkpoint.KIND and (
            runs[-1].end is not None or entry.record.at_rest  # type: ignore[attr-defined]
        ):
            continue  # taken while the session was at rest: a name, not part of the run
        else:
            run = runs[-1]
            if kind == inp.RunEnd.KIND:
                run.end = entry.record  # type: ignore[assignment]
            elif run.end is not None:
                run.end = None  # the run went on after its pause
            run.entries.append(entry)
    positions = frozenset(entry.position for entry in effective)
    return SessionLog(session_id, len(entries), runs, checkpoints, positions)


def run_name(header_at: int) -> str:
    """The name of the run whose header is at ``header_at`` in its session's log."""
    return f"r{header_at}"


def check_checkpoint_name(name: str) -> None:
    """ConfigurationError for a name whose checkpoint id could not be shown and given back as
    it is (a page shows ids redacted, escaped and cut): a name is 1-128 letters, digits,
    spaces (not at either end), '_', '-', '.', '@' or ':', starting with a letter or digit,
    and nothing shaped like a secret key."""
    if _CHECKPOINT_NAME.fullmatch(name) and redact(name) == name:
        return
    raise ConfigurationError(
        f"checkpoint_name {printable(redact(name), 60, one_line=True)!r} is not allowed: use "
        "1-128 letters, digits, spaces, '_', '-', '.', '@' or ':', starting with a letter or "
        "digit, and no secret key"
    )


def parse_checkpoint_id(checkpoint_id: str) -> tuple[str, str]:
    """``session@name`` ids name their session, so a checkpoint can be restored by id alone."""
    session_id, separator, _ = checkpoint_id.partition("@")  # a session id holds no "@"
    if not separator:
        raise SessionNotFoundError(f"{checkpoint_id!r} is not a checkpoint id (session@checkpoint)")
    return check_session_id(session_id), checkpoint_id


__all__ = ["RunLog", "SessionError", "SessionLog", "SessionWriter", "StateManager", "run_state"]
