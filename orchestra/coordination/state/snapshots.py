"""Snapshots: the folded state of a run at a log position, so a resume replays only what came
after it. A cache, never the source of truth: the log alone can always rebuild the run, and
restoring a snapshot then replaying the rest gives exactly what replaying the whole log gives —
the same state, the same events.

A snapshot is ``MAGIC | format | flags | position | at | crc32 | payload``: ``at`` is the time
of the log record at ``position``, which binds the snapshot to the log it was taken from (one
left behind by a log that is gone, say evicted from Redis, never stands for a new log under
the same session id); the payload is the run's state as JSON written by the shared codec
(zstd-compressed when the state manager's ``compression`` is on): its counters and context,
every branch and fan-out (which refer to each other by id), and every event the run emitted.
A damaged snapshot is a SessionCorruptedError naming the session, like a damaged log, and so is
one whose parts do not hold together (a branch running with nothing to do would wait forever);
one of another format, or of another log, is ignored (the log is replayed instead), so no older
snapshot is ever decoded by rules it was not written with.
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, TypeVar

import zstandard

from orchestra.agents.contract import Action, StepInput
from orchestra.coordination.config import ConvergencePolicy, ErrorHandlingConfig, ExecutionConfig
from orchestra.coordination.engine import events as ev
from orchestra.coordination.engine.branches import Branch, BranchStatus, FanOut, Frame
from orchestra.coordination.engine.core import Engine
from orchestra.coordination.engine.rounds import Conversation
from orchestra.coordination.topology import USER
from orchestra.errors import OrchestraError, SessionCorruptedError
from orchestra.models.base import Message, ToolCall

from .codec import shape
from .records import dumps, loads
from .values import Unreadable, Unstorable

MAX_BYTES = 256 * 1024 * 1024
"""The most a snapshot may hold once expanded: a run whose state is larger has no snapshot
(resume replays its log), and a larger one is refused as damaged."""
MAX_RATIO = 1000
"""How many times its stored size a compressed snapshot may expand (beyond its first MiB):
real ones expand 10 to 20 times; a few KiB that expand to hundreds of MiB are a bomb."""
MAGIC = b"ORCS"
FORMAT = 4
HEADER = struct.Struct(">4sBBQdI")
"""magic, format, flags, position, at, crc32 of the payload that follows."""
_MIB = 1024 * 1024
_COMPRESSED = 1
_EVENTS: dict[Any, type[ev.Event]] = {kind.__name__: kind for kind in ev.EVENT_TYPES}
_EVENT_SHAPES = {kind: shape(kind) for kind in ev.EVENT_TYPES}
T = TypeVar("T")


@dataclass(frozen=True)
class Snapshot:
    position: int  # the last log record the state includes
    at: float  # that record's time
    state: dict[str, Any]


def capture(engine: Engine, position: int, at: float, compress: bool) -> bytes | None:
    """The engine's state as snapshot bytes, as of the record at ``position`` (whose time is
    ``at``). None when there is to be no snapshot: some value has no stored form (which a value
    the log stored cannot lack), or the state is over :data:`MAX_BYTES`."""
    try:
        state = _state_of(engine)
    except (Unstorable, RecursionError):
        return None
    payload = dumps(state).encode()
    if len(payload) > MAX_BYTES:
        return None
    flags = 0
    if compress:
        packed = zstandard.ZstdCompressor(level=3).compress(payload)
        if len(payload) <= _expansion_limit(len(packed)):  # else stored as it is
            payload = packed
            flags |= _COMPRESSED
    return HEADER.pack(MAGIC, FORMAT, flags, position, at, zlib.crc32(payload)) + payload


def _expansion_limit(stored: int) -> int:
    return min(MAX_BYTES, max(_MIB, stored * MAX_RATIO))


def read(data: bytes, session_id: str) -> Snapshot | None:
    """The snapshot in ``data``; None when it is of another format (replay the log instead)."""
    if data[:4] != MAGIC or len(data) < 5:
        raise SessionCorruptedError(f"session {session_id!r}: its snapshot is damaged")
    if data[4] != FORMAT:
        return None
    if len(data) < HEADER.size:
        raise SessionCorruptedError(f"session {session_id!r}: its snapshot is truncated")
    _, _, flags, position, at, checksum = HEADER.unpack_from(data)
    payload = data[HEADER.size :]
    if zlib.crc32(payload) != checksum:
        raise SessionCorruptedError(f"session {session_id!r}: its snapshot is damaged")
    try:
        if flags & _COMPRESSED:
            limit = _expansion_limit(len(payload))
            size = zstandard.frame_content_size(payload)
            if size > limit:
                raise ValueError(f"it would expand to {size} bytes")
            payload = zstandard.ZstdDecompressor().decompress(payload, max_output_size=limit)
        elif len(payload) > MAX_BYTES:
            raise ValueError(f"it holds {len(payload)} bytes")
        state = loads(payload)
    except (zstandard.ZstdError, ValueError, RecursionError, MemoryError) as error:
        raise SessionCorruptedError(
            f"session {session_id!r}: its snapshot cannot be read ({type(error).__name__})"
        ) from None
    if not isinstance(state, dict):
        raise SessionCorruptedError(f"session {session_id!r}: its snapshot holds no state")
    return Snapshot(position, at, state)


def restore(engine: Engine, snapshot: Snapshot, session_id: str) -> None:
    """Put a snapshot's state into a freshly built engine (instead of replaying up to it); the
    run's events so far are emitted again, marked as replayed, as a replay would emit them.
    Every field is checked as a log record's are: a snapshot that does not hold a run's state
    is damage (SessionCorruptedError naming the session)."""
    try:
        _restore(engine, snapshot.state)
    except (Unreadable, RecursionError) as error:
        raise SessionCorruptedError(
            f"session {session_id!r}: its snapshot does not hold a run's state ({error})"
        ) from None
    except Exception as error:  # whatever crafted data makes a constructor raise
        raise SessionCorruptedError(
            f"session {session_id!r}: its snapshot does not hold a run's state "
            f"({type(error).__name__}: {error})"
        ) from None


# ---- what is stored: typed, so a snapshot is read back checked field by field -------------------


@dataclass(frozen=True)
class _Run:
    steps: int
    questions_asked: int
    spawned: int
    finished: bool
    max_steps: int
    pause_reason: str | None
    paused: bool
    now: float
    last_at: float
    started_at: float
    stopped_at: float | None
    gaps: tuple[tuple[float, ...], ...]
    context: dict[str, Any]
    invocations: dict[str, int]
    error: OrchestraError | None
    checkpoint_ids: tuple[str, ...]
    config: ExecutionConfig
    error_config: ErrorHandlingConfig
    root: str | None
    follow_ups: Conversation | None = None
    follow_ups_note: str | None = None
    shared_budget_questions: bool = False  # (a snapshot taken before the rule reads as False)


@dataclass(frozen=True)
class _Branch:
    id: str
    agent: str
    input: StepInput | None
    created_at: float
    fan_out: str | None
    parent: str | None
    call_stack: tuple[Frame, ...]
    status: BranchStatus
    steps: int
    step_number: int
    step_open: bool
    step_base: int
    ready: int
    retries: int
    visited: tuple[str, ...]
    result: Any
    error: OrchestraError | None
    ended_at: float | None
    waiting_on: str | None
    conversations: dict[str, tuple[Message, ...]]
    outcome: str
    arrivals: dict[str, Any]
    forwards_results: bool
    pending_tools: tuple[ToolCall, ...]
    tool_results: dict[str, Any]
    after_tools: Action | None
    question: tuple[str, ...] | None
    transfers: tuple[tuple[str, ...], ...] | None
    transfers_kept: int | None
    question_timeout: float | None = None


@dataclass(frozen=True)
class _FanOut:
    id: str
    parent: str
    source: str
    sources: frozenset[str]
    children: tuple[str, ...]
    policy: ConvergencePolicy
    required: int
    pending: int
    created_at: float
    calls: bool
    succeeded: int
    failed: int
    settled: bool


@dataclass(frozen=True)
class _State:
    """The state (the events beside it, each with its type's name, read by its own shape)."""

    run: _Run
    branches: tuple[_Branch, ...]
    fan_outs: tuple[_FanOut, ...]


_STATE = shape(_State)


def _state_of(engine: Engine) -> dict[str, Any]:
    run = _Run(
        steps=engine.steps,
        questions_asked=engine.questions_asked,
        spawned=engine.spawned,
        finished=engine.finished,
        max_steps=engine.max_steps,
        pause_reason=engine.pause_reason,
        paused=engine.paused,
        now=engine.now,
        last_at=engine.last_at,
        started_at=engine.started_at,
        stopped_at=engine.stopped_at,
        gaps=tuple(engine.gaps),
        context=engine.context,
        invocations=dict(engine.invocations),
        error=engine.error,
        checkpoint_ids=tuple(engine.checkpoint_ids),
        config=engine.config,
        error_config=engine.error_config,
        root=engine.root.id if engine.root else None,
        follow_ups=engine.follow_ups,
        follow_ups_note=engine.follow_ups_note,
        shared_budget_questions=engine.shared_budget_questions,
    )
    events = tuple(
        {"type": type(event).__name__, **shape(type(event)).encode(event)}
        for event in engine.stream.events
    )
    state = _State(
        run,
        tuple(_branch_state(branch) for branch in engine.branches.values()),
        tuple(_fan_out_state(fan_out) for fan_out in engine.fan_outs.values()),
    )
    return {**_STATE.encode(state), "events": list(events)}


def _branch_state(branch: Branch) -> _Branch:
    transfers = branch.transfers
    return _Branch(
        id=branch.id,
        agent=branch.agent,
        input=branch.input,
        created_at=branch.created_at,
        fan_out=branch.fan_out.id if branch.fan_out else None,
        parent=branch.parent.id if branch.parent else None,
        call_stack=tuple(branch.call_stack),
        status=branch.status,
        steps=branch.steps,
        step_number=branch.step_number,
        step_open=branch.step_open,
        step_base=branch.step_base,
        ready=branch.ready,
        retries=branch.retries,
        visited=tuple(branch.visited),
        result=branch.result,
        error=branch.error,
        ended_at=branch.ended_at,
        waiting_on=branch.waiting_on.id if branch.waiting_on else None,
        conversations={agent: tuple(messages) for agent, messages in branch.conversations.items()},
        outcome=branch.outcome,
        arrivals=branch.arrivals,
        forwards_results=branch.forwards_results,
        pending_tools=branch.pending_tools,
        tool_results=branch.tool_results,
        after_tools=branch.after_tools,
        question=branch.question,
        transfers=None if transfers is None else tuple(transfers),
        transfers_kept=None if transfers is None else transfers.maxlen,
        question_timeout=branch.question_timeout,
    )


def _fan_out_state(fan_out: FanOut) -> _FanOut:
    return _FanOut(
        id=fan_out.id,
        parent=fan_out.parent.id,
        source=fan_out.source,
        sources=fan_out.sources,
        children=tuple(child.id for child in fan_out.children),
        policy=fan_out.policy,
        required=fan_out.required,
        pending=fan_out.pending,
        created_at=fan_out.created_at,
        calls=fan_out.calls,
        succeeded=fan_out.succeeded,
        failed=fan_out.failed,
        settled=fan_out.settled,
    )


# ---- reading it back -------------------------------------------------------------------------


def _restore(engine: Engine, data: dict[str, Any]) -> None:
    state: _State = _STATE.decode({key: value for key, value in data.items() if key != "events"})
    run = state.run
    branches = {entry.id: _branch(entry) for entry in state.branches}
    fan_outs = {
        entry.id: _fan_out(entry, _known(branches, entry.parent), branches)
        for entry in state.fan_outs
    }
    for entry in state.branches:
        branch = branches[entry.id]
        branch.fan_out = _known(fan_outs, entry.fan_out) if entry.fan_out else None
        branch.parent = _known(branches, entry.parent) if entry.parent else None
        branch.waiting_on = _known(fan_outs, entry.waiting_on) if entry.waiting_on else None
    if run.root is None or any(len(gap) != 2 for gap in run.gaps):
        raise Unreadable("a run with no root branch, or a gap that is no pair of times")
    for name in ("steps", "questions_asked", "spawned", "finished", "max_steps", "paused"):
        setattr(engine, name, getattr(run, name))
    engine.pause_reason = run.pause_reason
    engine.now, engine.last_at = run.now, run.last_at
    engine.started_at, engine.stopped_at = run.started_at, run.stopped_at
    engine.gaps = [(since, until) for since, until in run.gaps]
    engine.add_context(run.context)
    engine.invocations = Counter(run.invocations)
    engine.error = run.error
    engine.checkpoint_ids = list(run.checkpoint_ids)
    engine.config, engine.error_config = run.config, run.error_config
    engine.follow_ups, engine.follow_ups_note = run.follow_ups, run.follow_ups_note
    engine.shared_budget_questions = run.shared_budget_questions
    engine.branches = branches
    engine.fan_outs = fan_outs
    engine.root = _known(branches, run.root)
    if engine.root.ended != engine.finished:
        raise Unreadable("a run whose root branch ended while the run did not, or the reverse")
    _check_branches(engine, state)
    events = data.get("events")
    if type(events) is not list:
        raise Unreadable("no list of events")
    emit = engine.stream.emit
    for item in events:
        found = item.pop("type", None) if type(item) is dict else None
        kind = _EVENTS.get(found) if type(found) is str else None
        if kind is None:
            raise Unreadable("an event of no known type")
        item["replayed"] = True
        emit(_EVENT_SHAPES[kind].decode(item))


def _check_branches(engine: Engine, state: _State) -> None:
    """What the engine's own transitions keep true, and the runner relies on: each branch at a
    node of the topology, with work when it is to work (one running with no input, or waiting
    for an answer to no question, would wait forever; the root of a run with several entries
    waits at ``User`` for their fan-out, with none), fan-outs and their branches pointing at
    each other, and a fan-out's counts agreeing with its branches."""
    if len(engine.branches) != len(state.branches) or len(engine.fan_outs) != len(state.fan_outs):
        raise Unreadable("two branches, or two fan-outs, with one id")
    nodes = set(engine.analysis.agents) | {USER}
    for branch in engine.branches.values():
        where = f"branch {branch.id[:40]}"
        if branch.agent not in nodes:
            raise Unreadable(f"{where} at {branch.agent[:40]!r}, no node of the topology")
        if branch.ended:
            continue
        status = branch.status
        if branch.input is None and status is not BranchStatus.WAITING and branch.agent != USER:
            raise Unreadable(f"{where} has work left but no input")
        if (status is BranchStatus.WAITING_USER) != (branch.question is not None):
            raise Unreadable(f"{where} is {status} with question {branch.question!r}")
        waits = branch.waiting_on
        if (status is BranchStatus.WAITING) != (waits is not None and not waits.settled):
            raise Unreadable(f"{where} is {status} but waits on no open fan-out, or the reverse")
        if waits is not None and waits.parent is not branch:
            raise Unreadable(f"{where} waits on a fan-out of another branch")
    for fan_out in engine.fan_outs.values():
        where = f"fan-out {fan_out.id[:40]}"
        if any(child.fan_out is not fan_out for child in fan_out.children):
            raise Unreadable(f"{where} holds a branch that is not of it")
        working = sum(not child.ended for child in fan_out.children)
        counted = fan_out.pending + fan_out.succeeded + fan_out.failed
        if min(fan_out.pending, fan_out.succeeded, fan_out.failed) < 0 or (
            not fan_out.settled and (fan_out.pending != working or counted != len(fan_out.children))
        ):
            raise Unreadable(f"{where} counts branches it does not have")


def _known(found: dict[str, T], key: str) -> T:
    if key not in found:
        raise Unreadable(f"a reference to {key[:40]!r}, which the snapshot does not hold")
    return found[key]


def _branch(entry: _Branch) -> Branch:
    transfers = entry.transfers
    if transfers is not None and (
        entry.transfers_kept is None
        or entry.transfers_kept < 0
        or any(len(item) != 3 for item in transfers)
    ):
        raise Unreadable(f"branch {entry.id}: transfers that are not (source, target, work)")
    if entry.question is not None and len(entry.question) != 2:
        raise Unreadable(f"branch {entry.id}: a question that is not (id, text)")
    return Branch(
        id=entry.id,
        agent=entry.agent,
        input=entry.input,
        created_at=entry.created_at,
        call_stack=list(entry.call_stack),
        status=entry.status,
        steps=entry.steps,
        step_number=entry.step_number,
        step_open=entry.step_open,
        step_base=entry.step_base,
        ready=entry.ready,
        retries=entry.retries,
        visited=list(entry.visited),
        result=entry.result,
        error=entry.error,
        ended_at=entry.ended_at,
        conversations={agent: list(messages) for agent, messages in entry.conversations.items()},
        outcome=entry.outcome,
        arrivals=dict(entry.arrivals),
        forwards_results=entry.forwards_results,
        pending_tools=entry.pending_tools,
        tool_results=dict(entry.tool_results),
        after_tools=entry.after_tools,
        question=(entry.question[0], entry.question[1]) if entry.question else None,
        question_timeout=entry.question_timeout,
        transfers=(
            None
            if transfers is None
            else deque(
                ((item[0], item[1], item[2]) for item in transfers), maxlen=entry.transfers_kept
            )
        ),
    )


def _fan_out(entry: _FanOut, parent: Branch, branches: dict[str, Branch]) -> FanOut:
    return FanOut(
        id=entry.id,
        parent=parent,
        source=entry.source,
        sources=entry.sources,
        children=[_known(branches, child) for child in entry.children],
        policy=entry.policy,
        required=entry.required,
        pending=entry.pending,
        created_at=entry.created_at,
        calls=entry.calls,
        succeeded=entry.succeeded,
        failed=entry.failed,
        settled=entry.settled,
    )
