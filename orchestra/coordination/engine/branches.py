"""The branches of a run and the fan-outs that join them: plain data, changed only by the
engine core (and rebuilt from a session's log or snapshot)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from orchestra.agents.base import BaseAgent
from orchestra.agents.contract import Action, StepInput
from orchestra.coordination.config import ConvergencePolicy
from orchestra.errors import OrchestraError
from orchestra.models.base import Message, ToolCall

from .routing import Permissions


class BranchStatus(StrEnum):
    RUNNING = "running"  # has a step to take (or is taking it)
    WAITING = "waiting"  # waits for the branches of its fan-out
    WAITING_USER = "waiting_user"  # waits for the user's answer
    ARRIVED = "arrived"  # delivered its work to a convergence point: done
    COMPLETED = "completed"  # ended with a result (a final response or an answer returned)
    FAILED = "failed"
    CANCELLED = "cancelled"  # stopped because its outcome was no longer needed


ENDED = frozenset(
    {BranchStatus.ARRIVED, BranchStatus.COMPLETED, BranchStatus.FAILED, BranchStatus.CANCELLED}
)
SUCCEEDED = frozenset({BranchStatus.ARRIVED, BranchStatus.COMPLETED})


@dataclass(slots=True)
class Frame:
    """A call in progress: ``caller`` waits for the answer. The bottom frame of a branch
    started by a parallel *call* returns to the fan-out instead of to an agent."""

    caller: str
    returns_to_fan_out: bool = False


@dataclass(slots=True, eq=False)
class Branch:
    id: str
    agent: str
    input: StepInput | None
    created_at: float
    fan_out: FanOut | None = None
    parent: Branch | None = None
    call_stack: list[Frame] = field(default_factory=list)
    status: BranchStatus = BranchStatus.RUNNING
    steps: int = 0
    step_number: int = 0  # the run-wide number of the branch's current step
    step_open: bool = False  # its current step has begun and not finished
    step_base: int = 0  # its agent's conversation length when the current step began
    ready: int = 0  # when it last got work: the run's count of branches given work by then
    retries: int = 0
    visited: list[str] = field(default_factory=list)
    result: Any = None
    error: OrchestraError | None = None
    ended_at: float | None = None
    waiting_on: FanOut | None = None
    allowed: Permissions | None = None
    conversations: dict[str, list[Message]] = field(default_factory=dict)
    outcome: str = ""  # how it ended: finished, returned, arrived, failed, cancelled
    arrivals: dict[str, Any] = field(default_factory=dict)
    forwards_results: bool = False  # it arrived carrying its own fan-out's result items
    pending_tools: tuple[ToolCall, ...] = ()
    # the pending tool calls the run has started, by call id, with their result once it is in
    # (None until then): what a resumed run must not run twice
    tool_results: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    after_tools: Action | None = None
    question: tuple[str, str] | None = None
    question_timeout: float | None = None  # the seconds its question may wait (None: the channel's)
    transfers: deque[tuple[str, str, str]] | None = None
    # what belongs to this process, not to the run (never stored): the pooled agents it holds
    # and its agent's permissions at the current step, both taken anew when it next steps
    leases: dict[str, BaseAgent] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @property
    def returns_to(self) -> str | None:
        """The caller its agent's final response goes back to (None: that response ends the
        branch, or the run's round): what its steps' log says, so a viewer tells the two apart."""
        frame = self.call_stack[-1] if self.call_stack else None
        return frame.caller if frame is not None and not frame.returns_to_fan_out else None


@dataclass(slots=True, eq=False)
class FanOut:
    """Parallel branches started by one action, and how far they have converged."""

    id: str
    parent: Branch
    source: str
    sources: frozenset[str]
    children: list[Branch]
    policy: ConvergencePolicy
    required: int
    pending: int
    created_at: float
    calls: bool = False  # its branches were called: their answers go back to the source
    succeeded: int = 0
    failed: int = 0
    settled: bool = False
