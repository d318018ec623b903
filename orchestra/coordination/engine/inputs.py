"""Everything that can happen to a run, as typed values: the engine's inputs.

The engine changes only by applying one of these (``Engine.apply``), and a durable session's
log is exactly the inputs its runs applied, in order: replay is applying them again, so a
resumed run, a replayed log and the live run see the same thing. Each input carries the time it
happened (``at``, seconds since the epoch), so nothing the engine derives from time (branch
durations, the run's duration, every event's time) depends on when it is applied.

Every log record kind is defined here, with its ``KIND``: the name it is stored under. All but
:class:`Restore` are inputs; a restore only reshapes a session's history (it sends the session
back to a checkpoint) and is read where logs are folded, never applied.
"""

from __future__ import annotations

import typing
from typing import Any, ClassVar

import msgspec

from orchestra.agents.contract import StepOutcome
from orchestra.coordination.config import ErrorHandlingConfig, ExecutionConfig
from orchestra.errors import OrchestraError
from orchestra.models.base import Message


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """Something that happened, and when. (A frozen ``msgspec.Struct``: built in about a tenth
    of a frozen dataclass's time, and the engine builds two per step.)"""

    KIND: ClassVar[str]
    at: float


class RunStart(Record, frozen=True, kw_only=True):
    """A run began: its task and everything it was started with (the log's run header)."""

    KIND: ClassVar[str] = "run"
    task: Any
    context: dict[str, Any]
    max_steps: int
    config: ExecutionConfig
    error_config: ErrorHandlingConfig
    topology: tuple[str, ...]  # a fingerprint: the nodes and edges it was run with
    # follow-ups: how long the user has to ask one after each round (None: not offered), and
    # why they were asked for and not offered (absent from logs written before follow-ups)
    follow_up_timeout: float | None = None
    follow_ups_note: str | None = None
    # whether a spent run or agent budget is asked about once, other branches it stops waiting
    # for that answer (see engine/budgets.py); a log written before that rule reads as False,
    # each branch asking its own question, so it replays as it ran
    shared_budget_questions: bool = False
    # where the run runs when not in the process that wrote this header: for a session on
    # Temporal, {"kind": "temporal", "task_queue": ..., "namespace": ...} (its workers run it and
    # keep this log), so readers of a store show it running there and an embedded resume
    # refuses it (it would run it twice); None (absent before log format 4): here
    executor: dict[str, str] | None = None


class StepBegin(Record, frozen=True, kw_only=True):
    """A branch's next step began (or a step cut short by a crash began again).

    The rest says, for readers of the log only (the engine knows it already and ignores it),
    whose step it is, on a forked branch's first step where the branch came from, and, when
    the agent was called, the caller its final response returns to (a return, not the end of
    the branch or of the run's round): so a viewer folds a stored session into branches and
    steps without the topology's code. All are absent (None) from logs written before they
    were recorded, and ``returns_to`` from every step not taken by a called agent."""

    KIND: ClassVar[str] = "begin"
    branch_id: str
    agent: str | None = None  # the agent taking the step
    parent: str | None = None  # the branch it was forked from (a branch's first step only)
    fan_out: str | None = None  # the fan-out that forked it (a branch's first step only)
    returns_to: str | None = None  # the caller a final response goes back to (a call's step)


class StepResult(Record, frozen=True, kw_only=True):
    """A step returned: what it decided, the messages it added to its agent's conversation."""

    KIND: ClassVar[str] = "step"
    branch_id: str
    outcome: StepOutcome
    messages: tuple[Message, ...]
    duration: float


class StepError(Record, frozen=True, kw_only=True):
    """A step raised, timed out, or produced what the log cannot store."""

    KIND: ClassVar[str] = "step_failed"
    branch_id: str
    error: OrchestraError
    messages: tuple[Message, ...]
    duration: float


class ModelRetry(Record, frozen=True, kw_only=True):
    """A model call of a step in progress failed in passing and is tried again."""

    KIND: ClassVar[str] = "retry"
    branch_id: str
    attempt: int
    delay: float
    error: str
    error_type: str | None = None  # absent from logs written before it was recorded


class ToolStart(Record, frozen=True, kw_only=True):
    """One of a branch's pending tool calls is about to run."""

    KIND: ClassVar[str] = "tool_started"
    branch_id: str
    call_id: str
    name: str


class ToolResult(Record, frozen=True, kw_only=True):
    """One tool call returned (``ok``) or raised (``result`` is then the error's text)."""

    KIND: ClassVar[str] = "tool_done"
    branch_id: str
    call_id: str
    name: str
    ok: bool
    result: Any
    duration: float


class ToolsDone(Record, frozen=True, kw_only=True):
    """Every pending tool call of the branch has its result: the branch goes on."""

    KIND: ClassVar[str] = "tools"
    branch_id: str


class UserAnswer(Record, frozen=True, kw_only=True):
    """The user answered the branch's question. ``error``: why a follow-up offer got no answer
    (its channel failed; the conversation ends, the run stays a success)."""

    KIND: ClassVar[str] = "answer"
    branch_id: str
    answer: Any
    error: str | None = None


class BranchFailure(Record, frozen=True, kw_only=True):
    """Something outside a step failed the branch: its timeout, the user channel, its agent."""

    KIND: ClassVar[str] = "branch_failed"
    branch_id: str
    error: OrchestraError


class ConvergenceTimeout(Record, frozen=True, kw_only=True):
    """A fan-out's branches did not converge within ``convergence_timeout``."""

    KIND: ClassVar[str] = "convergence_timeout"
    fan_out_id: str


class RunAbort(Record, frozen=True, kw_only=True):
    """The whole run stops now (its timeout, an internal error); ``branch_id`` is to blame."""

    KIND: ClassVar[str] = "abort"
    error: OrchestraError
    branch_id: str | None


class PauseRequest(Record, frozen=True, kw_only=True):
    """Someone asked the run to pause at its next step boundary."""

    KIND: ClassVar[str] = "pause"
    reason: str | None


class RunEnd(Record, frozen=True, kw_only=True):
    """The run stopped: paused, or over. ``success`` and ``error`` summarise it for listings
    (the engine derives both itself when it applies the record)."""

    KIND: ClassVar[str] = "end"
    paused: bool
    success: bool
    error: str | None


class RunResume(Record, frozen=True, kw_only=True):
    """A paused or interrupted run goes on, with ``context`` added to what agents see."""

    KIND: ClassVar[str] = "resume"
    context: dict[str, Any]


class Checkpoint(Record, frozen=True, kw_only=True):
    """A name for a position in the session's log (``position``: the last record it keeps).
    ``at_rest``: taken while no run of the session was in progress (after a pause, or a
    crash), so it is no input of the run: a rebuilt run never applies it."""

    KIND: ClassVar[str] = "checkpoint"
    checkpoint_id: str
    name: str
    position: int
    at_rest: bool = False


class Restore(Record, frozen=True, kw_only=True):
    """The session went back to a checkpoint: its history continues from ``position``."""

    KIND: ClassVar[str] = "restore"
    position: int
    checkpoint_id: str


Input = (
    RunStart
    | StepBegin
    | StepResult
    | StepError
    | ModelRetry
    | ToolStart
    | ToolResult
    | ToolsDone
    | UserAnswer
    | BranchFailure
    | ConvergenceTimeout
    | RunAbort
    | PauseRequest
    | RunEnd
    | RunResume
    | Checkpoint
)
"""What the engine applies."""

RECORD_TYPES: tuple[type[Record], ...] = (*typing.get_args(Input), Restore)
"""Every kind of log record."""
