"""Budgets (docs/engine.md, "Budgets"): what a run, a branch and an agent may spend, checked
where a step would begin.

Spend is read from the run's events (each step's tokens, cost and duration, as its
``StepCompleted``, or a rejected reply's ``ActionRejected``, reports them from the journaled
``StepResult``), and a raised limit from its
``BudgetRaised`` event: so a replayed log, a resumed run and a run restored from a snapshot
(which keeps the events) reckon with the same spend and limits, and no clock is read here.
Working time comes from the engine (``Engine.working_time``: paused time excluded).

A spent budget stops its branch at the step boundary with a question to the user (its id
starts with ``budget-``), recorded with what it asks about in a ``BudgetSpent`` event: an answer
that is a number above the spend shown raises exactly that limit, anything else (or no answer
in time) fails the branch with that budget's :class:`BudgetExceededError`. A run with no user
channel fails at once (the runner reports the error as the branch's failure, so replay decides
the same). A budget that is not one branch's (the run's, an agent's) is asked about once: a
branch it stops while another branch's question about the same limit is open waits for that
answer (its ``BudgetSpent`` names that question; no question of its own is put to the user),
and goes on after a raise or fails with the asking branch; should the asking branch end
another way (cancelled with its fan-out), the first waiting branch still running once the
input that ended it is applied whole asks the question (:func:`hand_over`). A run whose
``RunStart`` does not set ``shared_budget_questions`` (logged before that rule) has each branch
ask its own question, as it did.

The time a branch stands at a budget question is not its working time: it is left
out of its branch budget's ``max_duration`` (an agent's duration is its steps' own), and out of
the run's only while every working branch of the run stands at one (a sibling that works keeps
the run's clock going). A wait ends with its answer, with its branch (whatever ended it) and
with the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestra.errors import (
    BudgetExceededError,
    OrchestraError,
    UserInputError,
    budget_amount,
)

from . import events as ev
from . import lifecycle, moves
from .branches import Branch, BranchStatus
from .budget_limits import Limits

if TYPE_CHECKING:
    from .core import Engine

QUESTION_PREFIX = "budget-"


@dataclass(slots=True)
class Spend:
    """Tokens and dollars spent, steps begun and step seconds taken, by one scope."""

    tokens: int = 0
    cost_usd: float = 0.0
    steps: int = 0
    duration: float = 0.0


@dataclass(slots=True)
class Book:
    """The spend and raised limits read from a run's events so far (``seen`` of them)."""

    limits: Limits
    seen: int = 0
    run: Spend = field(default_factory=Spend)
    branches: dict[str, Spend] = field(default_factory=dict)
    agents: dict[str, Spend] = field(default_factory=dict)
    raised: dict[tuple[str, str], float] = field(default_factory=dict)
    asked: dict[str, Overrun] = field(default_factory=dict)  # by question id
    askers: dict[str, str] = field(default_factory=dict)  # the branch that asks, by question id
    # each branch's waits at budget questions, (asked, ended; None: not yet), and the spans
    # during which every working branch waited: what duration budgets leave out
    waits: dict[str, list[tuple[float, float | None]]] = field(default_factory=dict)
    stood: list[tuple[float, float | None]] = field(default_factory=list)
    # the branches not ended, their parents, and how many of each one's children are not ended
    # (a branch with such children waits for them and does no work of its own); how many
    # branches work (are not ended, without such children), and how many of those stand at a
    # budget question: kept as each event is folded, so whether the run stands is O(1)
    live: dict[str, str | None] = field(default_factory=dict)
    children: dict[str, int] = field(default_factory=dict)
    working: int = 0
    standing: int = 0

    def catch_up(self, events: list[ev.Event]) -> None:
        """Take in the events emitted since the last look."""
        for event in events[self.seen :]:
            fold = _FOLDS.get(type(event))
            if fold is not None:
                fold(self, event)
        self.seen = len(events)

    def check(
        self,
        name: str,
        limits: tuple[tuple[str, float], ...],
        spend: Spend,
        steps: int,
        working_time: Callable[[float, float | None], float] | None,
        since: float,
        waits: Iterable[tuple[float, float | None]] = (),
    ) -> Overrun | None:
        """The first of ``limits`` that ``spend`` has reached (``working_time`` from ``since``
        less the ``waits`` is the scope's duration; None: the duration its steps took)."""
        for limit, allowed in limits:
            if self.raised:
                allowed = self.raised.get((name, limit), allowed)
            if limit == "max_tokens":
                spent: float = spend.tokens
            elif limit == "max_cost_usd":
                spent = spend.cost_usd
            elif limit == "max_steps":
                spent = steps
            elif working_time is None:
                spent = spend.duration
            else:
                spent = working_time(since, None) - waited(waits, since, working_time)
            if spent >= allowed:
                return Overrun(name, limit, allowed, spent, self.source(name, limit))
        return None

    def source(self, name: str, limit: str) -> str:
        """Where the limit was set: what to change to go further."""
        scope = "branch" if name.startswith("branch ") else name
        where = self.limits.sources.get((scope, limit), "")
        raised = self.raised.get((name, limit))
        if raised is None:
            return where
        return f"{where} (raised to {budget_amount(limit, raised)} by the user's answer)"


def _spent(book: Book, event: Any) -> None:
    """A step's usage, from its StepCompleted or ActionRejected (a rejected reply's tokens
    were spent all the same); a completed step's duration counts for its agent."""
    tokens = event.prompt_tokens + event.completion_tokens
    cost = event.cost_usd or 0.0
    agent = book.agents.get(event.agent) or book.agents.setdefault(event.agent, Spend())
    for spend in (book.run, book.branches.setdefault(event.branch_id, Spend()), agent):
        spend.tokens += tokens
        spend.cost_usd += cost
    if type(event) is ev.StepCompleted:
        agent.duration += event.duration


def _started(book: Book, event: Any) -> None:
    if not event.retaken:
        agent = book.agents.get(event.agent) or book.agents.setdefault(event.agent, Spend())
        agent.steps += 1


def _raised(book: Book, event: Any) -> None:
    book.raised[(event.budget, event.limit)] = event.allowed


def waited(
    waits: Iterable[tuple[float, float | None]],
    since: float,
    working_time: Callable[[float, float | None], float],
) -> float:
    """The working time since ``since`` spent in ``waits`` (an open one lasts until now; the
    waits of one list never overlap)."""
    return sum(
        working_time(max(start, since), end) for start, end in waits if end is None or end > since
    )


def _created(book: Book, event: Any) -> None:
    parent = event.parent_branch_id
    book.live[event.branch_id] = parent
    _count(book, event.branch_id, 1)
    if parent is not None:
        _count(book, parent, -1)
        book.children[parent] = book.children.get(parent, 0) + 1
    _restate(book, event.at)


def _asked(book: Book, event: Any) -> None:
    """A budget question (or a branch joining one asked before): what it asks about, and the
    start of its branch's wait."""
    if event.question_id not in book.asked:
        book.asked[event.question_id] = Overrun(
            event.budget, event.limit, event.allowed, event.spent, event.source
        )
        book.askers[event.question_id] = event.branch_id
    branch = event.branch_id
    waits = book.waits.setdefault(branch, [])
    _count(book, branch, -1)
    waits.append((event.at, None))
    _count(book, branch, 1)
    _restate(book, event.at)


def _handed_over(book: Book, event: Any) -> None:
    """A budget question asked again by a branch that waited for it: that branch asks now."""
    if event.question_id in book.askers:
        book.askers[event.question_id] = event.branch_id


def _wait_over(book: Book, event: Any) -> None:
    """The branch's budget question was answered, or the branch failed waiting for it."""
    _close_wait(book, event.branch_id, event.at)
    _restate(book, event.at)


def _ended(book: Book, event: Any) -> None:
    """A branch ended, however (completed, returned, cancelled, failed): its wait ends."""
    branch = event.branch_id
    _close_wait(book, branch, event.at)
    if branch not in book.live:
        return
    _count(book, branch, -1)
    parent = book.live.pop(branch)
    if parent is not None:
        book.children[parent] -= 1
        _count(book, parent, 1)
    _restate(book, event.at)


def _run_over(book: Book, event: Any) -> None:
    for waits in book.waits.values():
        _close(waits, event.at)
    book.standing = 0
    _close(book.stood, event.at)


def _close_wait(book: Book, branch: str, at: float) -> None:
    """The branch's wait, if open, ends at ``at``."""
    _count(book, branch, -1)
    _close(book.waits.get(branch), at)
    _count(book, branch, 1)


def _close(waits: list[tuple[float, float | None]] | None, at: float) -> None:
    if waits and waits[-1][1] is None:
        waits[-1] = (waits[-1][0], at)


def _count(book: Book, branch: str, sign: int) -> None:
    """Take a working branch out of the counts of working and standing branches (``sign``
    -1), or put it in as it now stands (1): on each side of a change to either."""
    if branch in book.live and not book.children.get(branch):
        book.working += sign
        if _open(book.waits.get(branch)):
            book.standing += sign


def _restate(book: Book, at: float) -> None:
    """Open or close the run's standing span: whether every working branch (one not ended,
    without children not ended) now stands at a budget question."""
    stands = book.working > 0 and book.standing == book.working
    if stands and not _open(book.stood):
        book.stood.append((at, None))
    elif not stands:
        _close(book.stood, at)


def _open(waits: list[tuple[float, float | None]] | None) -> bool:
    """Whether the last of ``waits`` has not ended."""
    return bool(waits and waits[-1][1] is None)


_FOLDS: dict[type[ev.Event], Callable[[Book, Any], None]] = {
    ev.StepCompleted: _spent,
    ev.ActionRejected: _spent,
    ev.StepStarted: _started,
    ev.BudgetRaised: _raised,
    ev.BranchCreated: _created,
    ev.BudgetSpent: _asked,
    ev.UserInputRequested: _handed_over,
    ev.UserInputReceived: _wait_over,
    ev.BranchCompleted: _ended,
    ev.BranchFailed: _ended,
    ev.RunCompleted: _run_over,
}


@dataclass(frozen=True, slots=True)
class Overrun:
    """A budget's limit that the spend has reached."""

    budget: str
    limit: str
    allowed: float
    spent: float
    source: str = ""

    def error(self) -> BudgetExceededError:
        return BudgetExceededError(self.budget, self.limit, self.allowed, self.spent, self.source)

    def question(self, agent: str) -> str:
        whole = " (a whole number)" if self.limit in WHOLE else ""
        return (
            f"The {self.budget} budget's {self.limit}={budget_amount(self.limit, self.allowed)} "
            f"is spent ({budget_amount(self.limit, self.spent)} used) before agent {agent!r} "
            f"takes its next step. Reply with a higher {self.limit}{whole} to go on, or 'no' to stop."
        )


WHOLE = ("max_tokens", "max_steps")
"""The limits only a whole number raises."""


def overrun(engine: Engine, branch: Branch) -> Overrun | None:
    """The first spent budget that keeps ``branch`` from taking its next step, if any. (On
    every step of a budgeted run: the limits are read once, and a working time is reckoned
    only for a ``max_duration``.)"""
    book = _book(engine)
    limits = book.limits
    agent = branch.agent
    if limits.run:
        found = book.check(
            "run",
            limits.run,
            book.run,
            engine.steps,
            engine.working_time,
            engine.started_at,
            book.stood,
        )
        if found is not None:
            return found
    if limits.branch:
        spend = book.branches.get(branch.id) or Spend()
        found = book.check(
            f"branch {branch.id}",
            limits.branch,
            spend,
            branch.steps,
            engine.working_time,
            branch.created_at,
            book.waits.get(branch.id, ()),
        )
        if found is not None:
            return found
    own = limits.agents.get(agent)
    if own:
        spend = book.agents.get(agent) or Spend()
        return book.check(f"agent {agent!r}", own, spend, spend.steps, None, 0.0)
    return None


def _book(engine: Engine) -> Book:
    """The engine's book, caught up with its events."""
    book = engine.budget_book
    if book is None:
        book = engine.budget_book = Book(
            limits=Limits.of(engine.config, engine.analysis.budget_rules, engine.settings_file)
        )
    events = engine.stream.events
    if book.seen != len(events):
        book.catch_up(events)
    return book


def stop(engine: Engine, branch: Branch) -> bool:
    """Whether a spent budget stops the branch's next step: it then waits at the step
    boundary for the user's answer to whether to raise it (to a question already open about
    the same limit, if another branch asks one)."""
    found = overrun(engine, branch)
    if found is None:
        return False
    shared = _open_question(engine, found)
    question_id = shared[0] if shared else moves.next_question_id(engine, QUESTION_PREFIX)
    engine.stream.emit(
        ev.BudgetSpent(
            run_id=engine.run_id,
            at=engine.now,
            branch_id=branch.id,
            question_id=question_id,
            budget=found.budget,
            limit=found.limit,
            allowed=found.allowed,
            spent=found.spent,
            source=found.source,
        )
    )
    if shared is None:
        moves.ask(engine, branch, question_id, found.question(branch.agent))
    else:
        branch.question = shared
        branch.status = BranchStatus.WAITING_USER
    return True


def _open_question(engine: Engine, found: Overrun) -> tuple[str, str] | None:
    """The open question of another branch about ``found``'s limit, for a budget not of one
    branch: what a branch it stops waits for instead of asking again. (None in a run logged
    before that rule, whose ``RunStart`` does not set it: each branch asked, and its log
    replays as it ran.)"""
    if not engine.shared_budget_questions or found.budget.startswith("branch "):
        return None
    book = _book(engine)
    for question_id, asker in book.askers.items():
        about = book.asked[question_id]
        if about.budget != found.budget or about.limit != found.limit:
            continue
        branch = engine.branches[asker]
        if not branch.ended and branch.question is not None and branch.question[0] == question_id:
            return branch.question
    return None


def waits_for_another(engine: Engine, branch: Branch) -> bool:
    """Whether the branch's question is a budget question another branch asks (the runner
    does not ask it again: the engine lets the branch go on, or fails it, with that one)."""
    question = branch.question
    if question is None or not is_question(question[0]):
        return False
    return _book(engine).askers.get(question[0]) != branch.id


def _waiting(engine: Engine, question_id: str) -> list[Branch]:
    """The branches not ended that wait for the budget question ``question_id`` (the one that
    asks it is not among them once its answer came, or it ended)."""
    return [
        branch
        for branch in engine.branches.values()
        if not branch.ended and branch.question is not None and branch.question[0] == question_id
    ]


def _settle(engine: Engine, question_id: str, answer: Any, error: OrchestraError | None) -> None:
    """The branches waiting for the asker's answer take it too: they go on to the step the
    budget stopped (checked again there), or fail with the asker's ``error``."""
    for branch in _waiting(engine, question_id):
        if branch.ended:  # a failure before it ended it (its fan-out failed)
            continue
        branch.question = None
        branch.status = BranchStatus.RUNNING
        engine.stream.emit(
            ev.UserInputReceived(
                run_id=engine.run_id,
                at=engine.now,
                branch_id=branch.id,
                question_id=question_id,
                answer=answer,
            )
        )
        if error is None:
            lifecycle.spawn(engine, branch)
        else:
            lifecycle.fail(engine, branch, error)


def dropped(engine: Engine, branch: Branch, error: OrchestraError | None) -> None:
    """The branch ended (failed with ``error``, or cancelled) while it asked a budget question:
    the branches waiting for that answer fail with the budget's error when that is why it
    failed (no answer in time, no channel); otherwise the question is handed over once the
    input that ended it has been applied whole (see :func:`hand_over`)."""
    question = branch.question
    if question is None or not is_question(question[0]) or engine.error or engine.finished:
        return  # (a run that stops cancels every branch: nobody is left to ask)
    if _book(engine).askers.get(question[0]) != branch.id:
        return
    if isinstance(error, BudgetExceededError):
        for other in _waiting(engine, question[0]):
            lifecycle.fail(engine, other, error)
        return
    engine.dropped_questions.append(question)


def hand_over(engine: Engine) -> None:
    """Each budget question whose asker ended during the input just applied goes to the first
    branch still waiting for it, which asks it now. Only now: a failure cancels the branches
    it dooms (its fan-out's, those under it) after its asker ended, and a question handed to
    one of them would be put to the user for nothing. (Live and replayed alike: this runs at
    the end of ``Engine.apply``.)"""
    questions, engine.dropped_questions = engine.dropped_questions, []
    if engine.error or engine.finished:
        return
    for question_id, text in questions:
        heir = next(iter(_waiting(engine, question_id)), None)
        if heir is None:
            continue
        engine.stream.emit(
            ev.UserInputRequested(
                run_id=engine.run_id,
                at=engine.now,
                branch_id=heir.id,
                agent=heir.agent,
                question_id=question_id,
                question=text,
            )
        )
        lifecycle.spawn(engine, heir)


def is_question(question_id: str) -> bool:
    return question_id.startswith(QUESTION_PREFIX)


def asked(engine: Engine, question_id: str) -> Overrun:
    """What the budget question ``question_id`` asked about (its ``BudgetSpent`` event)."""
    found = _book(engine).asked.get(question_id)
    if found is None:
        raise ValueError(f"budget question {question_id!r} has no BudgetSpent event")
    return found


def answered(engine: Engine, branch: Branch, question_id: str, answer: Any) -> None:
    """Take the user's answer to the branch's budget question: a number above the spend the
    question showed raises the limit it asked about, and only that one (the branch goes on,
    to the step it stopped, where every budget is checked again); anything else fails the
    branch with that budget's error, even if another answer raised it meanwhile."""
    found = asked(engine, question_id)
    allowed = _number(answer, whole=found.limit in WHOLE)
    if allowed is None or allowed <= found.spent:
        lifecycle.fail(engine, branch, found.error())
        _settle(engine, question_id, answer, found.error())
        return
    _raise(engine, branch, found, allowed)
    _settle(engine, question_id, answer, None)


def _raise(engine: Engine, branch: Branch, found: Overrun, allowed: float) -> None:
    """The limit ``found`` is about is now ``allowed`` (unless another answer raised it
    further already)."""
    if allowed <= _book(engine).raised.get((found.budget, found.limit), found.allowed):
        return
    engine.stream.emit(
        ev.BudgetRaised(
            run_id=engine.run_id,
            at=engine.now,
            branch_id=branch.id,
            budget=found.budget,
            limit=found.limit,
            allowed=allowed,
        )
    )


def failure(engine: Engine, branch: Branch, error: OrchestraError) -> OrchestraError:
    """The error a branch fails with: for a budget question the user did not answer (its
    time ran out), that budget's error, not the channel's."""
    question = branch.question
    if question is None or not is_question(question[0]) or not isinstance(error, UserInputError):
        return error
    return asked(engine, question[0]).error()


def _number(answer: Any, whole: bool) -> float | None:
    """The answer as a finite number (``5000``, ``"5000"``, ``" 2.5 "``, ``"$2"``), else
    None; a whole one only where ``whole`` (``"2.5"`` does not raise a step limit)."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int | float):
        value = float(answer)
    elif isinstance(answer, str):
        try:
            value = float(answer.strip().lstrip("$").replace(",", ""))
        except ValueError:
            return None
    else:
        return None
    if value != value or abs(value) == float("inf"):
        return None
    return None if whole and not value.is_integer() else value
