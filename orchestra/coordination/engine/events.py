"""Everything the engine does, as typed events on one stream.

The result's trace, the status display, and later metrics, traces and the web inspector all
read this stream. Events are small frozen records; ``to_dict`` gives their plain-data form with
a ``type`` tag. An event's ``at`` is the time of the input that caused it, never the time it
was emitted, so a run rebuilt from its log emits the very events the live run did. Those
carry ``replayed=True`` (a field equality ignores): a subscriber that acts on news (prints it,
counts it) skips them; one that mirrors the run's history takes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestra.agents.contract import Action


@dataclass(slots=True, frozen=True, kw_only=True)
class Event:
    run_id: str
    at: float
    replayed: bool = field(default=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **asdict(self)}


@dataclass(slots=True, frozen=True, kw_only=True)
class RunStarted(Event):
    task: Any
    entries: tuple[str, ...]
    max_steps: int


@dataclass(slots=True, frozen=True, kw_only=True)
class BranchCreated(Event):
    branch_id: str
    agent: str
    parent_branch_id: str | None
    fan_out_id: str | None


@dataclass(slots=True, frozen=True, kw_only=True)
class StepStarted(Event):
    """A step began; ``retaken`` when it is a step a crash cut short, begun again (it is not
    counted twice)."""

    branch_id: str
    agent: str
    step: int
    branch_step: int
    retaken: bool = False


@dataclass(slots=True, frozen=True, kw_only=True)
class StepCompleted(Event):
    """An agent step produced a usable decision: ``action`` (an Action)."""

    branch_id: str
    agent: str
    step: int
    duration: float
    action: Action
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None


@dataclass(slots=True, frozen=True, kw_only=True)
class ModelCallRetried(Event):
    """A model call failed in a way that passes (rate limit, 5xx, timeout) and is retried."""

    branch_id: str
    agent: str
    attempt: int
    delay: float
    error: str


@dataclass(slots=True, frozen=True, kw_only=True)
class ActionRejected(Event):
    """A reply could not be used; the agent is steered and asked again (or the branch fails)."""

    branch_id: str
    agent: str
    step: int
    problem: str
    reply: str
    attempt: int


@dataclass(slots=True, frozen=True, kw_only=True)
class WorkHandedOver(Event):
    """Work moved between agents inside a branch: ``kind`` is call, handoff or return."""

    branch_id: str
    source: str
    target: str
    kind: str


@dataclass(slots=True, frozen=True, kw_only=True)
class FanOutStarted(Event):
    fan_out_id: str
    branch_id: str
    source: str
    child_branch_ids: tuple[str, ...]
    targets: tuple[str, ...]


@dataclass(slots=True, frozen=True, kw_only=True)
class BranchArrived(Event):
    """A branch reached a convergence point of its fan-out and waits there."""

    branch_id: str
    fan_out_id: str
    nodes: tuple[str, ...]


@dataclass(slots=True, frozen=True, kw_only=True)
class ConvergenceReached(Event):
    """A fan-out settled: ``outcome`` is met, proceed (insufficient but resuming) or failed."""

    fan_out_id: str
    branch_id: str
    succeeded: int
    failed: int
    cancelled: int
    outcome: str
    resumes_at: tuple[str, ...]


@dataclass(slots=True, frozen=True, kw_only=True)
class ToolCallStarted(Event):
    branch_id: str
    agent: str
    tool: str
    call_id: str


@dataclass(slots=True, frozen=True, kw_only=True)
class ToolCallCompleted(Event):
    branch_id: str
    agent: str
    tool: str
    call_id: str
    ok: bool
    duration: float


@dataclass(slots=True, frozen=True, kw_only=True)
class UserInputRequested(Event):
    branch_id: str
    agent: str
    question_id: str
    question: str


@dataclass(slots=True, frozen=True, kw_only=True)
class UserInputReceived(Event):
    branch_id: str
    question_id: str
    answer: Any


@dataclass(slots=True, frozen=True, kw_only=True)
class BranchCompleted(Event):
    branch_id: str
    agent: str
    outcome: str


@dataclass(slots=True, frozen=True, kw_only=True)
class BranchFailed(Event):
    branch_id: str
    agent: str
    error_type: str
    error: str


@dataclass(slots=True, frozen=True, kw_only=True)
class CheckpointCreated(Event):
    checkpoint_id: str
    name: str


@dataclass(slots=True, frozen=True, kw_only=True)
class PauseRequested(Event):
    """The run will stop at its next step boundary (steps in flight finish first)."""

    reason: str | None


@dataclass(slots=True, frozen=True, kw_only=True)
class RunPaused(Event):
    """The run stopped at a step boundary; ``resume_session`` goes on from here."""

    reason: str | None
    total_steps: int
    duration: float


@dataclass(slots=True, frozen=True, kw_only=True)
class RunResumed(Event):
    """A paused or interrupted run goes on; ``context_keys`` were added to its context."""

    context_keys: tuple[str, ...]


@dataclass(slots=True, frozen=True, kw_only=True)
class RunCompleted(Event):
    """The run is over and its result is final (with a session: durable)."""

    success: bool
    total_steps: int
    duration: float
    error: str | None


Subscriber = Callable[[Event], None]


EVENT_TYPES: tuple[type[Event], ...] = (
    RunStarted,
    BranchCreated,
    StepStarted,
    StepCompleted,
    ModelCallRetried,
    ActionRejected,
    WorkHandedOver,
    FanOutStarted,
    BranchArrived,
    ConvergenceReached,
    ToolCallStarted,
    ToolCallCompleted,
    UserInputRequested,
    UserInputReceived,
    BranchCompleted,
    BranchFailed,
    CheckpointCreated,
    PauseRequested,
    RunPaused,
    RunResumed,
    RunCompleted,
)
"""Every kind of event (a snapshot stores a run's events by these names)."""


class EventStream:
    """The run's events in order, delivered synchronously to each subscriber as emitted.

    Subscribers run on the engine's path: they must be quick and must not block (hand slow
    work to a queue or a thread). A subscriber that raises is removed and reported once, so
    a faulty observer never breaks a run.
    """

    __slots__ = ("_subscribers", "events", "observer_errors")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._subscribers: list[Subscriber] = []
        self.observer_errors: list[str] = []

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Receive every later event; returns a function that unsubscribes."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def emit(self, event: Event) -> None:
        self.events.append(event)
        for subscriber in tuple(self._subscribers):
            try:
                subscriber(event)
            except Exception as error:
                self._subscribers.remove(subscriber)
                self.observer_errors.append(
                    f"event subscriber {subscriber!r} raised {type(error).__name__}: {error}; "
                    "it was unsubscribed"
                )
