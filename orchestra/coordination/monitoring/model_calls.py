"""Model-call attempts of agent steps, timed from the event stream.

A step of a model-backed agent is one model call, and one more for each retry the adapter
reports (``ModelCallRetried``): the attempt that failed ended at the event's ``at``, and the
next one starts after the announced ``delay``. The attempt that ends the step ends with it
(``StepCompleted``, ``ActionRejected``, ``StepFailed``, or the branch's end). Tracing reads
these to draw one span per attempt; a model-call latency metric can read the same.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Attempt:
    """One model call: its number within the step (1 for the first), when it started and
    ended, and the error it was retried for and that error's type (None for the attempt that
    ended the step)."""

    number: int
    started: float
    ended: float
    retried_for: str | None = None
    error_type: str | None = None


class ModelCalls:
    """The model call in flight on each branch (at most one: a branch runs one step at a
    time)."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: dict[str, tuple[int, float]] = {}  # branch id: (attempt number, started)

    def begin(self, branch_id: str, at: float) -> None:
        """A step began on the branch: its first call starts now."""
        self._open[branch_id] = (1, at)

    def retried(
        self, branch_id: str, at: float, delay: float, error: str, error_type: str | None = None
    ) -> Attempt | None:
        """The call failed and is retried after ``delay`` seconds: the attempt that ended;
        None when no step is open on the branch."""
        found = self._open.get(branch_id)
        if found is None:
            return None
        number, started = found
        self._open[branch_id] = (number + 1, at + max(delay, 0.0))
        return Attempt(number, started, max(at, started), error, error_type)

    def end(self, branch_id: str, at: float) -> Attempt | None:
        """The step ended: its last attempt; None when no step is open on the branch."""
        found = self._open.pop(branch_id, None)
        if found is None:
            return None
        number, started = found
        return Attempt(number, min(started, at), at)
