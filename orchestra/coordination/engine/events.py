"""Everything the engine does, as typed events on one stream.

The result's trace, the status display, and later metrics, traces and the web inspector all
read this stream. Events are small frozen records; ``to_dict`` gives their plain-data form with
a ``type`` tag. An event's ``at`` is the time of the input that caused it, never the time it
was emitted, so a run rebuilt from its log emits the very events the live run did. Those
carry ``replayed=True`` (equality compares that field too: set it aside to compare a rebuilt
run's events with the live run's): a subscriber that acts on news (prints it, counts it) skips
them; one that mirrors the run's history takes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import msgspec

from orchestra.agents.contract import Action


class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Something the engine did. (A frozen ``msgspec.Struct``: built in about a tenth of a
    frozen dataclass's time, and a step emits several. A run keeps all its events, so they are
    left out of the garbage collector's rounds: nothing an event holds refers back to it.)"""

    run_id: str
    at: float
    replayed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain data: its fields (an action as a dict), tagged with its type's name."""
        fields = {
            name: dataclasses.asdict(value) if isinstance(value, Action) else value
            for name, value in msgspec.structs.asdict(self).items()
        }
        return {"type": type(self).__name__, **fields}


class RunStarted(Event, frozen=True, kw_only=True):
    task: Any
    entries: tuple[str, ...]
    max_steps: int


class BranchCreated(Event, frozen=True, kw_only=True):
    branch_id: str
    agent: str
    parent_branch_id: str | None
    fan_out_id: str | None


class StepStarted(Event, frozen=True, kw_only=True):
    """A step began; ``retaken`` when it is a step a crash cut short, begun again (it is not
    counted twice)."""

    branch_id: str
    agent: str
    step: int
    branch_step: int
    retaken: bool = False


class StepCompleted(Event, frozen=True, kw_only=True):
    """An agent step produced a usable decision: ``action`` (an Action); ``finish_reason`` is
    why its model stopped, as the provider said (None for code, and in logs written before it
    was recorded)."""

    branch_id: str
    agent: str
    step: int
    duration: float
    action: Action
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    finish_reason: str | None = None


class StepFailed(Event, frozen=True, kw_only=True):
    """An agent step raised (or timed out). What follows says what became of it: the error
    routed on (a hand-over) or the branch failed (``BranchFailed``)."""

    branch_id: str
    agent: str
    step: int
    error_type: str
    error: str


class ModelCallRetried(Event, frozen=True, kw_only=True):
    """A model call failed in a way that passes (rate limit, 5xx, timeout) and is retried.
    ``error_type``: the HTTP status when the provider answered one, else the error's class
    (None in logs written before it was recorded)."""

    branch_id: str
    agent: str
    attempt: int
    delay: float
    error: str
    error_type: str | None = None


class StepDelta(Event, frozen=True, kw_only=True):
    """A piece of the reply an agent's model is writing at step ``step``, as it arrives:
    ``text`` is the new piece (untrusted model text, as the reply is), ``attempt`` the model
    call it belongs to (0, then 1 for its first retry, ...): once a later attempt's text
    arrives, the earlier attempt's text is void. Sent only to subscribers that asked for deltas
    (``EventStream.subscribe(..., deltas=True)``), only while the run is live: never stored
    with the run's events, journaled or replayed. The step's outcome is its ``StepCompleted``
    (or ``ActionRejected``, ``StepFailed``), as without streaming."""

    branch_id: str
    agent: str
    step: int
    text: str
    attempt: int = 0


class ActionRejected(Event, frozen=True, kw_only=True):
    """A reply could not be used; the agent is steered and asked again (or the branch fails)."""

    branch_id: str
    agent: str
    step: int
    problem: str
    reply: str
    attempt: int
    # what the rejected reply cost (budgets count it)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None


class WorkHandedOver(Event, frozen=True, kw_only=True):
    """Work moved between agents inside a branch: ``kind`` is call, handoff or return."""

    branch_id: str
    source: str
    target: str
    kind: str


class FanOutStarted(Event, frozen=True, kw_only=True):
    fan_out_id: str
    branch_id: str
    source: str
    child_branch_ids: tuple[str, ...]
    targets: tuple[str, ...]


class BranchArrived(Event, frozen=True, kw_only=True):
    """A branch reached a convergence point of its fan-out and waits there."""

    branch_id: str
    fan_out_id: str
    nodes: tuple[str, ...]


class ConvergenceReached(Event, frozen=True, kw_only=True):
    """A fan-out settled: ``outcome`` is met, proceed (insufficient but resuming) or failed."""

    fan_out_id: str
    branch_id: str
    succeeded: int
    failed: int
    cancelled: int
    outcome: str
    resumes_at: tuple[str, ...]


class ToolCallStarted(Event, frozen=True, kw_only=True):
    branch_id: str
    agent: str
    tool: str
    call_id: str


class ToolCallCompleted(Event, frozen=True, kw_only=True):
    branch_id: str
    agent: str
    tool: str
    call_id: str
    ok: bool
    duration: float


class UserInputRequested(Event, frozen=True, kw_only=True):
    branch_id: str
    agent: str
    question_id: str
    question: str


class UserInputReceived(Event, frozen=True, kw_only=True):
    branch_id: str
    question_id: str
    answer: Any


class RoundCompleted(Event, frozen=True, kw_only=True):
    """A round of a conversation with follow-ups ended with the root's final ``response``
    (``steps``: the round's own, ``total_steps``: the run's so far); a follow-up is offered."""

    branch_id: str
    round: int
    response: Any
    steps: int
    total_steps: int


class RoundStarted(Event, frozen=True, kw_only=True):
    """The user's follow-up ``question`` began round ``round`` (2 for the first follow-up)."""

    branch_id: str
    round: int
    question: Any


class BudgetSpent(Event, frozen=True, kw_only=True):
    """A spent budget stopped the branch before its next step and ``question_id`` asks the
    user about it: ``budget`` (its scope), ``limit`` (the field), ``allowed`` and ``spent``
    (at the question), ``source`` (where the limit was set). The answer is judged against
    this, whatever else is spent by the time it comes."""

    branch_id: str
    question_id: str
    budget: str
    limit: str
    allowed: float
    spent: float
    source: str


class BudgetRaised(Event, frozen=True, kw_only=True):
    """The user raised a spent budget (``budget``: ``"run"``, ``"branch b2"``, ``"agent
    'Writer'"``) by answering its question: ``limit`` (a field such as ``max_tokens``) is now
    ``allowed``."""

    branch_id: str
    budget: str
    limit: str
    allowed: float


class BranchCompleted(Event, frozen=True, kw_only=True):
    branch_id: str
    agent: str
    outcome: str


class BranchFailed(Event, frozen=True, kw_only=True):
    branch_id: str
    agent: str
    error_type: str
    error: str


class CheckpointCreated(Event, frozen=True, kw_only=True):
    checkpoint_id: str
    name: str


class PauseRequested(Event, frozen=True, kw_only=True):
    """The run will stop at its next step boundary (steps in flight finish first)."""

    reason: str | None


class RunPaused(Event, frozen=True, kw_only=True):
    """The run stopped at a step boundary; ``resume_session`` goes on from here."""

    reason: str | None
    total_steps: int
    duration: float


class RunResumed(Event, frozen=True, kw_only=True):
    """A paused or interrupted run goes on; ``context_keys`` were added to its context."""

    context_keys: tuple[str, ...]


class RunCompleted(Event, frozen=True, kw_only=True):
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
    StepFailed,
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
    RoundCompleted,
    RoundStarted,
    BudgetSpent,
    BudgetRaised,
    BranchCompleted,
    BranchFailed,
    CheckpointCreated,
    PauseRequested,
    RunPaused,
    RunResumed,
    RunCompleted,
)
"""Every kind of event a run stores (a snapshot stores a run's events by these names);
:class:`StepDelta` is not one: it is never stored."""


class EventStream:
    """The run's events in order, delivered synchronously to each subscriber as emitted.

    Subscribers run on the engine's path: they must be quick and must not block (hand slow
    work to a queue or a thread). A subscriber that raises is removed and reported once, so
    a faulty observer never breaks a run. :class:`StepDelta` goes only to the subscribers that
    asked for deltas, and is not kept in ``events``; while none asked (``wants_deltas``), the
    runner does not stream at all.
    """

    __slots__ = ("_delta_subscribers", "_subscribers", "events", "observer_errors", "replaying")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._subscribers: list[Subscriber] = []
        self._delta_subscribers: list[Subscriber] = []
        self.observer_errors: list[str] = []
        self.replaying = False  # what is emitted now is a run catching up with its log

    def subscribe(self, subscriber: Subscriber, *, deltas: bool = False) -> Callable[[], None]:
        """Receive every later event (with ``deltas``, each :class:`StepDelta` too); returns
        a function that unsubscribes."""
        self._subscribers.append(subscriber)
        if deltas:
            self._delta_subscribers.append(subscriber)
        return lambda: self._drop(subscriber)

    @property
    def wants_deltas(self) -> bool:
        """Whether a subscriber listens for replies as they are written."""
        return bool(self._delta_subscribers)

    def emit(self, event: Event) -> None:
        if self.replaying and not event.replayed:
            event = msgspec.structs.replace(event, replayed=True)
        self.events.append(event)
        for subscriber in tuple(self._subscribers):  # inline: the engine's hot path
            try:
                subscriber(event)
            except Exception as error:
                self._failed(subscriber, error)

    def emit_delta(self, delta: StepDelta) -> None:
        """Deliver ``delta`` to the subscribers that asked for deltas (it is not stored)."""
        for subscriber in tuple(self._delta_subscribers):
            try:
                subscriber(delta)
            except Exception as error:
                self._failed(subscriber, error)

    def _failed(self, subscriber: Subscriber, error: Exception) -> None:
        self._drop(subscriber)
        self.observer_errors.append(
            f"event subscriber {subscriber!r} raised {type(error).__name__}: {error}; "
            "it was unsubscribed"
        )

    def _drop(self, subscriber: Subscriber) -> None:
        self._subscribers.remove(subscriber)
        if subscriber in self._delta_subscribers:
            self._delta_subscribers.remove(subscriber)
