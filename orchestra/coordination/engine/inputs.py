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
from dataclasses import dataclass
from typing import Any, ClassVar

from orchestra.agents.contract import StepOutcome
from orchestra.coordination.config import ErrorHandlingConfig, ExecutionConfig
from orchestra.errors import OrchestraError
from orchestra.models.base import Message


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """Something that happened, and when."""

    KIND: ClassVar[str]
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStart(Record):
    """A run began: its task and everything it was started with (the log's run header)."""

    KIND = "run"
    task: Any
    context: dict[str, Any]
    max_steps: int
    config: ExecutionConfig
    error_config: ErrorHandlingConfig
    topology: tuple[str, ...]  # a fingerprint: the nodes and edges it was run with


@dataclass(frozen=True, slots=True, kw_only=True)
class StepBegin(Record):
    """A branch's next step began (or a step cut short by a crash began again)."""

    KIND = "begin"
    branch_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StepResult(Record):
    """A step returned: what it decided, the messages it added to its agent's conversation."""

    KIND = "step"
    branch_id: str
    outcome: StepOutcome
    messages: tuple[Message, ...]
    duration: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StepError(Record):
    """A step raised, timed out, or produced what the log cannot store."""

    KIND = "step_failed"
    branch_id: str
    error: OrchestraError
    messages: tuple[Message, ...]
    duration: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRetry(Record):
    """A model call of a step in progress failed in passing and is tried again."""

    KIND = "retry"
    branch_id: str
    attempt: int
    delay: float
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolStart(Record):
    """One of a branch's pending tool calls is about to run."""

    KIND = "tool_started"
    branch_id: str
    call_id: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolResult(Record):
    """One tool call returned (``ok``) or raised (``result`` is then the error's text)."""

    KIND = "tool_done"
    branch_id: str
    call_id: str
    name: str
    ok: bool
    result: Any
    duration: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolsDone(Record):
    """Every pending tool call of the branch has its result: the branch goes on."""

    KIND = "tools"
    branch_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UserAnswer(Record):
    """The user answered the branch's question."""

    KIND = "answer"
    branch_id: str
    answer: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class BranchFailure(Record):
    """Something outside a step failed the branch: its timeout, the user channel, its agent."""

    KIND = "branch_failed"
    branch_id: str
    error: OrchestraError


@dataclass(frozen=True, slots=True, kw_only=True)
class ConvergenceTimeout(Record):
    """A fan-out's branches did not converge within ``convergence_timeout``."""

    KIND = "convergence_timeout"
    fan_out_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunAbort(Record):
    """The whole run stops now (its timeout, an internal error); ``branch_id`` is to blame."""

    KIND = "abort"
    error: OrchestraError
    branch_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PauseRequest(Record):
    """Someone asked the run to pause at its next step boundary."""

    KIND = "pause"
    reason: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunEnd(Record):
    """The run stopped: paused, or over. ``success`` and ``error`` summarise it for listings
    (the engine derives both itself when it applies the record)."""

    KIND = "end"
    paused: bool
    success: bool
    error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResume(Record):
    """A paused or interrupted run goes on, with ``context`` added to what agents see."""

    KIND = "resume"
    context: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint(Record):
    """A name for a position in the session's log (``position``: the last record it keeps)."""

    KIND = "checkpoint"
    checkpoint_id: str
    name: str
    position: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Restore(Record):
    """The session went back to a checkpoint: its history continues from ``position``."""

    KIND = "restore"
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
