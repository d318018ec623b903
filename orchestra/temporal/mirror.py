"""The store mirror: a Temporal workflow run's journal written into a session store as an
ordinary session log, so ``orchestra sessions``, ``orchestra ui --store``, ``get_result`` and
the metrics readers see a session run on Temporal exactly as one run embedded.

On Temporal the workflow's history is the durable journal; the store is a copy of it, made by
the local activity ``orchestra.mirror``, which the workflow calls with the lines it has not
mirrored yet. Each call is one batch: ``(session, key, start, lines)``, ``key`` the workflow
run's id and ``start`` the index of ``lines[0]`` in its journal (0: the run's ``run`` header).
A call can be made again (a worker killed in the middle of one, a workflow task retried), so
each record must be written once whatever is repeated.

How a workflow run's records are found in the store: by its header. The header line is the
same on every attempt and every replay (the client made it; it holds the client's time of the
start), and two runs of one session have different ones, so the run's records begin at the
stored ``run`` record whose line, its position left aside, is the header. (Two runs started
from the very same start input, as a workflow retry policy or a reset would start them, would
share a header: the second is refused where its records differ from the first's. Neither is
used for sessions.) A batch that starts later than the header (``start > 0``) belongs to
the session's latest run in the store: a session runs as one workflow at a time (its id is
the session's), and this batch's header was mirrored by an earlier call, whose completion the
workflow's history holds. What the batch repeats of the store must be the same records, and
a batch that would only follow a finished run is a gap (that run is another's: this run's
header is missing). Keeping the key in the store instead would need a field the log format
does not have (older releases would read the log as damaged); the header marks the run as
well, at no cost.

Failures: ``orchestra.mirror`` is retried when the store refused the writer (that passes);
a gap or a log holding other records is not (see :meth:`StoreMirror.activity`).

Positions: the journal numbers its lines from 1 as if the run were alone in the session; the
mirror writes each at its place in the session's log (after the runs before it, as an embedded
run is written), changing only the ``"s"`` field at the start of the line.

Locks: each call appends with the store's compare-and-append (a second writer is refused with
the store's usual ``SessionError``: an embedded run in progress, another worker) and releases
the session's writer lock or lease before it returns, so no worker holds a session between
calls and another one can take the workflow over at once. What a mirror knows of a run (where
its header is, how long the log was after its last append) is kept to spare the next call a
read of the log; when the store turns out to hold something else, the log is read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import msgspec
from temporalio import activity
from temporalio.exceptions import ApplicationError

from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.state import StateManager
from orchestra.coordination.state.backends import check_session_id
from orchestra.coordination.state.records import decode, encode, loads
from orchestra.errors import (
    ConfigurationError,
    OrchestraError,
    SessionCorruptedError,
    SessionError,
    SessionNotFoundError,
    StorageUnavailableError,
)

MIRROR_ACTIVITY = "orchestra.mirror"
ATTEMPTS = 3  # appends a call makes while other writers append to its run at the same time
RUNS_KEPT = 4096  # workflow runs whose place in the store a mirror remembers (least recent go)

_PREFIX = re.compile(r'\{"t":"([a-z_]{1,40})","s":([0-9]{1,18}),')
"""How every record line begins (``records.encode`` writes ``t`` then ``s``, compactly)."""

_POSITIONED = frozenset((inp.Checkpoint.KIND, inp.Restore.KIND))
"""Records that name a position in the log: a journal's position is written at its place in
the session's log (``_shifted``)."""


@dataclass(frozen=True)
class MirrorBatch:
    """The payload of ``orchestra.mirror`` (JSON): lines ``start..`` of a workflow run's
    journal, ``key`` the run's id."""

    session_id: str
    key: str
    start: int
    lines: list[str]


@dataclass
class _Place:
    """Where a workflow run's records are in a session's log: ``base`` records before its
    header; ``length`` records in the log after this mirror's last look or append."""

    base: int
    length: int


class StoreMirror:
    """Writes workflow runs' journals into ``state_manager``'s store (see the module)."""

    def __init__(self, state_manager: StateManager) -> None:
        if not isinstance(state_manager, StateManager):
            raise TypeError(
                f"state_manager must be a StateManager, got {type(state_manager).__name__}"
            )
        self.state_manager = state_manager
        self._places: OrderedDict[tuple[str, str], _Place] = OrderedDict()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def append(self, session_id: str, key: str, start: int, lines: list[str]) -> None:
        """Write lines ``start..`` of workflow run ``key``'s journal into session
        ``session_id``'s log, skipping the ones it holds already. Refused, naming the
        session: a gap, or a log that holds other records where these go
        (``SessionCorruptedError``); the store refusing the writer while another writes the
        session (its usual ``SessionError``)."""
        check_session_id(session_id)
        split = _checked(session_id, key, start, lines)
        if not split:
            return
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        async with lock:
            storage = self.state_manager.storage
            try:
                await self._append(session_id, key, start, split)
            except BaseException:
                with contextlib.suppress(Exception):  # the first failure is the one to report
                    await storage.release(session_id)
                raise
            await storage.release(session_id)

    async def _append(
        self, session_id: str, key: str, start: int, split: list[tuple[str, str]]
    ) -> None:
        """Append where this mirror last left the run, if it knows that place and the batch
        does not start beyond it, else where the log says. When the store holds something
        else there (another worker appended to the run meanwhile: one that took it over, or
        one still finishing a call the workflow gave up on), the log is read again and the
        rest appended; a refusal that persists (another writer holds the session) is raised."""
        place = self._places.pop((session_id, key), None)
        if place is not None and place.length < place.base + start:
            place = None  # the batch starts beyond what this mirror knows of the log
        for attempt in range(ATTEMPTS):
            if place is None:
                place = await self._find(session_id, key, start, split)
            try:
                await self._write(session_id, place, start, split)
            except SessionError:
                if attempt == ATTEMPTS - 1:
                    raise
                place = None
            else:
                self._remember(session_id, key, place)
                return

    async def _write(
        self, session_id: str, place: _Place, start: int, split: list[tuple[str, str]]
    ) -> None:
        """Append the lines of the batch the log does not hold yet, at their positions."""
        held = place.length - place.base - start
        first = place.length + 1
        records = [
            f'{{"t":"{kind}","s":{first + n},{body}'
            for n, (kind, body) in enumerate(_shifted(split[held:], place.base))
        ]
        if records:
            await self.state_manager.storage.append(
                session_id, records, durable=True, after=place.length
            )
            place.length += len(records)

    async def _find(
        self, session_id: str, key: str, start: int, split: list[tuple[str, str]]
    ) -> _Place:
        """Read the log: where run ``key``'s records are, checked against the batch."""
        try:
            stored = await self.state_manager.storage.read(session_id)
        except SessionNotFoundError:
            stored = []
        headers = [n for n, line in enumerate(stored) if _kind(line) == inp.RunStart.KIND]
        where = f"session {session_id!r}: workflow run {key!r}"
        if start == 0:
            mine = [n for n in headers if _body(stored[n]) == split[0]]
            if not mine:
                return _Place(len(stored), len(stored))  # a new run, after the ones before
            base = mine[-1]
            if base != headers[-1]:
                raise SessionCorruptedError(
                    f"{where}: the store holds a later run (record {headers[-1] + 1}) after "
                    "this one's: another writer took the session over"
                )
        elif not headers:
            raise _gap(where, start, 0)
        else:
            base = headers[-1]
        held = len(stored) - base
        if start > held:
            raise _gap(where, start, held)
        if start == held and start > 0 and _finished(stored[-1]):
            raise SessionCorruptedError(
                f"{where}: the session's latest run in the store finished (record "
                f"{len(stored)}) and the batch starts at line {start} of a journal: this "
                "run's header was never mirrored (a gap)"
            )
        for n, expected in enumerate(_shifted(split[: held - start], base)):
            if _body(stored[base + start + n]) != expected:
                raise SessionCorruptedError(
                    f"{where}: record {base + start + n + 1} of the log is not line "
                    f"{start + n} of the run's journal: the log holds another run's records "
                    "there"
                )
        return _Place(base, len(stored))

    def _remember(self, session_id: str, key: str, place: _Place) -> None:
        self._places[(session_id, key)] = place
        if len(self._places) > RUNS_KEPT:
            self._places.popitem(last=False)

    @activity.defn(name=MIRROR_ACTIVITY)
    async def activity(self, batch: MirrorBatch) -> None:
        """``orchestra.mirror``, the local activity the workflow runs (bound to this mirror).
        Its failures name the session. The store refusing the writer (a plain
        ``SessionError``: another writer holds the session, an embedded run or a worker whose
        lease has not expired yet) passes, so it is retried, as does its server not answering
        (a ``StorageUnavailableError``); the rest do not (a
        ``SessionCorruptedError``: a gap, a log holding other records where these go, a
        batch that is no journal; bad arguments): they fail it without a retry, and the
        workflow goes on without its mirror, or sends the lines again later (each is
        written once however often it is sent)."""
        try:
            await self.append(batch.session_id, batch.key, batch.start, list(batch.lines))
        except OrchestraError as error:
            raise ApplicationError(
                str(error),
                type=type(error).__name__,
                non_retryable=type(error) not in (SessionError, StorageUnavailableError),
            ) from None


def _checked(session_id: str, key: str, start: int, lines: list[str]) -> list[tuple[str, str]]:
    """The lines as (kind, the line after its position); refused naming the session: bad
    arguments (``ConfigurationError``), a line that does not belong where it is in a run's
    journal (``SessionCorruptedError``)."""
    where = f"session {session_id!r}: workflow run {key!r}"
    if not isinstance(key, str) or not key:
        raise ConfigurationError(f"session {session_id!r}: the workflow run's key {key!r} is no id")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ConfigurationError(f"{where}: the batch's start {start!r} is no index")
    if not isinstance(lines, list):
        raise ConfigurationError(
            f"{where}: the batch's lines are a {type(lines).__name__}, no list"
        )
    split = []
    for index, line in enumerate(lines, start=start):
        found = _body(line) if isinstance(line, str) else None
        if found is None:
            raise SessionCorruptedError(f"{where}: line {index} of its journal is not a record")
        kind = found[0]
        if (kind == inp.RunStart.KIND) != (index == 0):
            what = "is not its run header" if index == 0 else "is a second run header"
            raise SessionCorruptedError(f"{where}: line {index} of its journal {what}")
        split.append(found)
    return split


def _shifted(split: list[tuple[str, str]], base: int) -> list[tuple[str, str]]:
    """The lines as they read at their place in the session's log, ``base`` records after
    its start: a checkpoint's or a restore's position, which its journal counts from the
    run's header, counted from the log's start (as an embedded run of the session, after the
    ones before it, would have written it)."""
    if base == 0:
        return split
    return [
        (kind, _shift(kind, body, base)) if kind in _POSITIONED else (kind, body)
        for kind, body in split
    ]


def _shift(kind: str, body: str, base: int) -> str:
    try:
        record = decode(loads(f'{{"t":"{kind}","s":1,{body}'))
    except ValueError as error:  # Unreadable is one
        raise SessionCorruptedError(f"a {kind} record that cannot be read: {error}") from None
    position: int = record.position  # type: ignore[attr-defined]
    moved = encode(msgspec.structs.replace(record, position=position + base), 1)
    found = _body(moved)
    assert found is not None  # encode writes the prefix _body reads
    return found[1]


def _kind(line: str) -> str | None:
    found = _PREFIX.match(line)
    return found[1] if found is not None else None


def _body(line: str) -> tuple[str, str] | None:
    """A stored line as the journal's lines are compared: its kind and what follows its
    position."""
    found = _PREFIX.match(line)
    return (found[1], line[found.end() :]) if found is not None else None


def _finished(line: str) -> bool:
    """Whether the log's last record ends its run for good (nothing of that run follows)."""
    if _kind(line) != inp.RunEnd.KIND:
        return False
    data = loads(line)
    return isinstance(data, dict) and data.get("paused") is False


def _gap(where: str, start: int, held: int) -> SessionCorruptedError:
    return SessionCorruptedError(
        f"{where}: the batch starts at line {start} of the run's journal, but the store holds "
        f"its lines up to {held} only (a gap: lines {held}..{start - 1} were never mirrored)"
    )


__all__ = ["MIRROR_ACTIVITY", "MirrorBatch", "StoreMirror"]


@activity.defn(name=MIRROR_ACTIVITY)
async def no_store(batch: MirrorBatch) -> None:
    """``orchestra.mirror`` on a worker given no store: a session started on a worker that
    had one goes on calling it wherever it runs, and here there is nowhere to copy to (said
    in the worker's log)."""
    activity.logger.warning(
        "session %r: records %d.. of its log are not copied: this worker has no store",
        batch.session_id,
        batch.start + 1,
    )
