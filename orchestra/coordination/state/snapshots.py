"""Snapshots: the folded state of a run at a log position, so a resume replays only what came
after it. A cache, never the source of truth: the log alone can always rebuild the run, and
restoring a snapshot then replaying the rest gives exactly what replaying the whole log gives —
the same state, the same events.

A snapshot is ``MAGIC | format | flags | position | crc32 | payload``, the payload the run's
state as JSON written by the shared codec (zstd-compressed when the state manager's
``compression`` is on): its counters and context, every branch and fan-out (which refer to
each other by id), and every event the run emitted. A damaged snapshot is a
SessionCorruptedError naming the session, like a damaged log; one of another format is ignored
(the log is replayed instead), so no older snapshot is ever decoded by rules it was not written
with.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import zstandard

from orchestra.agents.contract import Action, StepInput
from orchestra.coordination.config import ConvergencePolicy, ErrorHandlingConfig, ExecutionConfig
from orchestra.coordination.engine import events as ev
from orchestra.coordination.engine.branches import Branch, BranchStatus, FanOut, Frame
from orchestra.coordination.engine.core import Engine
from orchestra.errors import OrchestraError, SessionCorruptedError
from orchestra.models.base import Message, ToolCall

from .codec import Unreadable, Unstorable, converter, from_plain, shape, to_plain
from .records import dumps

MAGIC = b"ORCS"
FORMAT = 2
_HEADER = struct.Struct(">4sBBQI")
_COMPRESSED = 1
_EVENTS = {kind.__name__: kind for kind in ev.EVENT_TYPES}


@dataclass(frozen=True)
class Snapshot:
    position: int  # the last log record the state includes
    state: dict[str, Any]


def capture(engine: Engine, position: int, compress: bool) -> bytes | None:
    """The engine's state as snapshot bytes (None if some value has no stored form, which a
    value the log stored cannot lack: then there is simply no snapshot)."""
    try:
        state = _state_of(engine)
    except Unstorable:
        return None
    payload = dumps(state).encode()
    flags = 0
    if compress:
        payload = zstandard.ZstdCompressor(level=3).compress(payload)
        flags |= _COMPRESSED
    return _HEADER.pack(MAGIC, FORMAT, flags, position, zlib.crc32(payload)) + payload


def read(data: bytes, session_id: str) -> Snapshot | None:
    """The snapshot in ``data``; None when it is of another format (replay the log instead)."""
    if len(data) < _HEADER.size:
        raise SessionCorruptedError(f"session {session_id!r}: its snapshot is truncated")
    magic, version, flags, position, checksum = _HEADER.unpack_from(data)
    payload = data[_HEADER.size :]
    if magic != MAGIC or zlib.crc32(payload) != checksum:
        raise SessionCorruptedError(f"session {session_id!r}: its snapshot is damaged")
    if version != FORMAT:
        return None
    try:
        if flags & _COMPRESSED:
            payload = zstandard.ZstdDecompressor().decompress(payload)
        state = json.loads(payload)
    except (zstandard.ZstdError, ValueError, RecursionError) as error:
        raise SessionCorruptedError(
            f"session {session_id!r}: its snapshot cannot be read ({type(error).__name__})"
        ) from None
    if not isinstance(state, dict):
        raise SessionCorruptedError(f"session {session_id!r}: its snapshot holds no state")
    return Snapshot(position, state)


def restore(engine: Engine, snapshot: Snapshot, session_id: str) -> None:
    """Put a snapshot's state into a freshly built engine (instead of replaying up to it); the
    run's events so far are emitted again, marked as replayed, as a replay would emit them."""
    try:
        _restore(engine, snapshot.state)
    except (Unreadable, KeyError, TypeError, ValueError, AttributeError) as error:
        raise SessionCorruptedError(
            f"session {session_id!r}: its snapshot does not hold a run's state ({error!r})"
        ) from None


# ---- what is stored --------------------------------------------------------------------------

_RUN_FIELDS = (
    "steps",
    "questions_asked",
    "spawned",
    "finished",
    "max_steps",
    "pause_reason",
    "paused",
    "now",
    "last_at",
    "started_at",
    "active_since",
    "worked",
)

_value_of_action = converter(Action | None)
_errors = converter(OrchestraError | None)
_messages = converter(tuple[Message, ...])
_tool_calls = converter(tuple[ToolCall, ...])
_step_input = converter(StepInput | None)
_frames = converter(tuple[Frame, ...])


def _state_of(engine: Engine) -> dict[str, Any]:
    run = {name: getattr(engine, name) for name in _RUN_FIELDS}
    run.update(
        context=to_plain(engine.context),
        invocations=dict(engine.invocations),
        error=_errors[0](engine.error),
        checkpoint_ids=list(engine.checkpoint_ids),
        config=engine.config.model_dump(mode="json"),
        error_config=engine.error_config.model_dump(mode="json"),
        root=engine.root.id if engine.root else None,
    )
    return {
        "run": run,
        "branches": [_branch_state(branch) for branch in engine.branches.values()],
        "fan_outs": [_fan_out_state(fan_out) for fan_out in engine.fan_outs.values()],
        "events": [
            {"type": type(event).__name__, **shape(type(event)).encode(event)}
            for event in engine.stream.events
        ],
    }


def _branch_state(branch: Branch) -> dict[str, Any]:
    transfers = branch.transfers
    return {
        "id": branch.id,
        "agent": branch.agent,
        "input": _step_input[0](branch.input),
        "created_at": branch.created_at,
        "fan_out": branch.fan_out.id if branch.fan_out else None,
        "parent": branch.parent.id if branch.parent else None,
        "call_stack": _frames[0](branch.call_stack),
        "status": branch.status.value,
        "steps": branch.steps,
        "step_number": branch.step_number,
        "step_open": branch.step_open,
        "step_base": branch.step_base,
        "ready": branch.ready,
        "retries": branch.retries,
        "visited": list(branch.visited),
        "result": to_plain(branch.result),
        "error": _errors[0](branch.error),
        "ended_at": branch.ended_at,
        "waiting_on": branch.waiting_on.id if branch.waiting_on else None,
        "conversations": {
            agent: _messages[0](messages) for agent, messages in branch.conversations.items()
        },
        "outcome": branch.outcome,
        "arrivals": to_plain(branch.arrivals),
        "forwards_results": branch.forwards_results,
        "pending_tools": _tool_calls[0](branch.pending_tools),
        "tool_results": to_plain(branch.tool_results),
        "after_tools": _value_of_action[0](branch.after_tools),
        "question": list(branch.question) if branch.question else None,
        "transfers": (
            None if transfers is None else {"max": transfers.maxlen, "items": list(transfers)}
        ),
    }


def _fan_out_state(fan_out: FanOut) -> dict[str, Any]:
    return {
        "id": fan_out.id,
        "parent": fan_out.parent.id,
        "source": fan_out.source,
        "sources": sorted(fan_out.sources),
        "children": [child.id for child in fan_out.children],
        "policy": fan_out.policy.model_dump(mode="json"),
        "required": fan_out.required,
        "pending": fan_out.pending,
        "created_at": fan_out.created_at,
        "calls": fan_out.calls,
        "succeeded": fan_out.succeeded,
        "failed": fan_out.failed,
        "settled": fan_out.settled,
    }


# ---- reading it back -------------------------------------------------------------------------


def _restore(engine: Engine, state: dict[str, Any]) -> None:
    run = state["run"]
    for name in _RUN_FIELDS:
        setattr(engine, name, run[name])
    engine.context = from_plain(run["context"])
    engine.invocations = Counter(run["invocations"])
    engine.error = _errors[1](run["error"])
    engine.checkpoint_ids = list(run["checkpoint_ids"])
    engine.config = ExecutionConfig.model_validate(run["config"])
    engine.error_config = ErrorHandlingConfig.model_validate(run["error_config"])
    branches = {data["id"]: _branch(data) for data in state["branches"]}
    fan_outs = {
        data["id"]: _fan_out(data, branches[data["parent"]], branches) for data in state["fan_outs"]
    }
    for data in state["branches"]:
        branch = branches[data["id"]]
        branch.fan_out = fan_outs[data["fan_out"]] if data["fan_out"] else None
        branch.parent = branches[data["parent"]] if data["parent"] else None
        branch.waiting_on = fan_outs[data["waiting_on"]] if data["waiting_on"] else None
    engine.branches = branches
    engine.fan_outs = fan_outs
    engine.root = branches[run["root"]] if run["root"] else None
    for data in state["events"]:
        kind = _EVENTS[data.pop("type")]
        engine.stream.emit(shape(kind).decode(data))  # the stream marks it replayed


def _branch(data: dict[str, Any]) -> Branch:
    transfers = data["transfers"]
    question = data["question"]
    return Branch(
        id=data["id"],
        agent=data["agent"],
        input=_step_input[1](data["input"]),
        created_at=data["created_at"],
        call_stack=list(_frames[1](data["call_stack"])),
        status=BranchStatus(data["status"]),
        steps=data["steps"],
        step_number=data["step_number"],
        step_open=data["step_open"],
        step_base=data["step_base"],
        ready=data["ready"],
        retries=data["retries"],
        visited=list(data["visited"]),
        result=from_plain(data["result"]),
        error=_errors[1](data["error"]),
        ended_at=data["ended_at"],
        conversations={
            agent: list(_messages[1](messages)) for agent, messages in data["conversations"].items()
        },
        outcome=data["outcome"],
        arrivals=from_plain(data["arrivals"]),
        forwards_results=data["forwards_results"],
        pending_tools=_tool_calls[1](data["pending_tools"]),
        tool_results=from_plain(data["tool_results"]),
        after_tools=_value_of_action[1](data["after_tools"]),
        question=(question[0], question[1]) if question else None,
        transfers=(
            None
            if transfers is None
            else deque((tuple(item) for item in transfers["items"]), maxlen=transfers["max"])
        ),
    )


def _fan_out(data: dict[str, Any], parent: Branch, branches: dict[str, Branch]) -> FanOut:
    return FanOut(
        id=data["id"],
        parent=parent,
        source=data["source"],
        sources=frozenset(data["sources"]),
        children=[branches[child] for child in data["children"]],
        policy=ConvergencePolicy.model_validate(data["policy"]),
        required=data["required"],
        pending=data["pending"],
        created_at=data["created_at"],
        calls=data["calls"],
        succeeded=data["succeeded"],
        failed=data["failed"],
        settled=data["settled"],
    )
