"""Budgets (docs/engine.md, "Budgets"): what a run, a branch and an agent may spend, checked
where a step would begin.

Spend is read from the run's events (each step's tokens, cost and duration, as its
``StepCompleted``, or a rejected reply's ``ActionRejected``, reports them from the journaled
``StepResult``), and a raised limit from its
``BudgetRaised`` event: so a replayed log, a resumed run and a run restored from a snapshot
(which keeps the events) reckon with the same spend and limits, and no clock is read here.
Working time comes from the engine (``Engine.working_time``: paused time excluded).

A spent budget stops its branch at the step boundary with a question to the user (its id
starts with ``budget-``): an answer that is a number above the spend raises that limit, anything
else fails the branch with a :class:`BudgetExceededError`. A run with no user channel fails at
once (the runner reports the error as the branch's failure, so replay decides the same).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestra.coordination.config import Budget, ExecutionConfig
from orchestra.coordination.topology import BudgetRule, Rule
from orchestra.errors import BudgetExceededError, ConfigurationError

from . import events as ev
from . import lifecycle
from .branches import Branch, BranchStatus

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


@dataclass(frozen=True, slots=True)
class Limits:
    """A run's budgets as (field, limit) pairs, by scope: read once from its config."""

    run: tuple[tuple[str, float], ...]
    branch: tuple[tuple[str, float], ...]
    agents: dict[str, tuple[tuple[str, float], ...]]

    @classmethod
    def of(cls, config: ExecutionConfig) -> Limits:
        def pairs(budget: Budget | None) -> tuple[tuple[str, float], ...]:
            return () if budget is None else tuple(budget.limits().items())

        agents = {name: pairs(budget) for name, budget in config.agent_budgets.items()}
        return cls(pairs(config.budget), pairs(config.branch_budget), agents)


@dataclass(slots=True)
class Book:
    """The spend and raised limits read from a run's events so far (``seen`` of them)."""

    limits: Limits
    seen: int = 0
    run: Spend = field(default_factory=Spend)
    branches: dict[str, Spend] = field(default_factory=dict)
    agents: dict[str, Spend] = field(default_factory=dict)
    raised: dict[tuple[str, str], float] = field(default_factory=dict)

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
    ) -> Overrun | None:
        """The first of ``limits`` that ``spend`` has reached (``working_time`` from ``since``
        is the scope's duration; None: the duration its steps took)."""
        for limit, allowed in limits:
            if self.raised:
                allowed = self.raised.get((name, limit), allowed)
            if limit == "max_tokens":
                spent: float = spend.tokens
            elif limit == "max_cost_usd":
                spent = spend.cost_usd
            elif limit == "max_steps":
                spent = steps
            else:
                spent = spend.duration if working_time is None else working_time(since, None)
            if spent >= allowed:
                return Overrun(name, limit, allowed, spent)
        return None


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


_FOLDS: dict[type[ev.Event], Callable[[Book, Any], None]] = {
    ev.StepCompleted: _spent,
    ev.ActionRejected: _spent,
    ev.StepStarted: _started,
    ev.BudgetRaised: _raised,
}


@dataclass(frozen=True, slots=True)
class Overrun:
    """A budget's limit that the spend has reached."""

    budget: str
    limit: str
    allowed: float
    spent: float

    def error(self) -> BudgetExceededError:
        return BudgetExceededError(self.budget, self.limit, self.allowed, self.spent)

    def question(self, agent: str) -> str:
        return (
            f"The {self.budget} budget's {self.limit}={self.allowed:g} is spent "
            f"({self.spent:g} used) before {agent!r}'s next step. Reply with a higher "
            f"{self.limit} to go on, or 'no' to stop."
        )


def configured(
    config: ExecutionConfig, rules: Iterable[Rule], agents: Iterable[str]
) -> ExecutionConfig:
    """The run's config with its topology's ``budget(...)`` rules added (where both set a
    limit, the lower one holds, as for ``max_steps``); a ConfigurationError for an
    ``agent_budgets`` entry naming no agent of the topology."""
    known = set(agents)
    for name in config.agent_budgets:
        if name not in known:
            raise ConfigurationError(
                f"ExecutionConfig agent_budgets[{name!r}]: no agent {name!r} in the topology "
                f"(its agents: {', '.join(sorted(known))})"
            )
    found = [rule for rule in rules if isinstance(rule, BudgetRule)]
    if not found:
        return config
    run, branch, per_agent = config.budget, config.branch_budget, dict(config.agent_budgets)
    for rule in found:
        if rule.scope == "run":
            run = _lower(run, rule.budget())
        elif rule.scope == "branch":
            branch = _lower(branch, rule.budget())
        else:
            per_agent[rule.scope] = _lower(per_agent.get(rule.scope), rule.budget())
    return config.model_copy(
        update={"budget": run, "branch_budget": branch, "agent_budgets": per_agent}
    )


def _lower(given: Budget | None, rule: Budget) -> Budget:
    if given is None:
        return rule
    limits = given.limits()
    for name, value in rule.limits().items():
        limits[name] = min(value, limits.get(name, value))
    return Budget.model_validate(limits)


def overrun(engine: Engine, branch: Branch) -> Overrun | None:
    """The first spent budget that keeps ``branch`` from taking its next step, if any. (On
    every step of a budgeted run: the limits are read once, and a working time is reckoned
    only for a ``max_duration``.)"""
    book = engine.budget_book
    if book is None:
        book = engine.budget_book = Book(limits=Limits.of(engine.config))
    events = engine.stream.events
    if book.seen != len(events):
        book.catch_up(events)
    limits = book.limits
    agent = branch.agent
    if limits.run:
        found = book.check(
            "run", limits.run, book.run, engine.steps, engine.working_time, engine.started_at
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
        )
        if found is not None:
            return found
    own = limits.agents.get(agent)
    if own:
        spend = book.agents.get(agent) or Spend()
        return book.check(f"agent {agent!r}", own, spend, spend.steps, None, 0.0)
    return None


def stop(engine: Engine, branch: Branch) -> bool:
    """Whether a spent budget stops the branch's next step: it then waits at the step
    boundary for the user's answer to whether to raise it."""
    found = overrun(engine, branch)
    if found is None:
        return False
    engine.questions_asked += 1
    question_id = f"{QUESTION_PREFIX}q{engine.questions_asked}"
    text = found.question(branch.agent)
    branch.question = (question_id, text)
    branch.status = BranchStatus.WAITING_USER
    engine.stream.emit(
        ev.UserInputRequested(
            run_id=engine.run_id,
            at=engine.now,
            branch_id=branch.id,
            agent=branch.agent,
            question_id=question_id,
            question=text,
        )
    )
    return True


def is_question(question_id: str) -> bool:
    return question_id.startswith(QUESTION_PREFIX)


def answered(engine: Engine, branch: Branch, answer: Any) -> None:
    """Take the user's answer to the branch's budget question: a number above the spend
    raises the limit asked about (the branch goes on, to the step it stopped); anything else
    fails the branch with the budget's error."""
    found = overrun(engine, branch)
    if found is None:
        return
    allowed = _number(answer)
    if allowed is None or allowed <= found.spent:
        lifecycle.fail(engine, branch, found.error())
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


def _number(answer: Any) -> float | None:
    """The answer as a finite number (``5000``, ``"5000"``, ``" 2.5 "``), else None."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int | float):
        value = float(answer)
    elif isinstance(answer, str):
        try:
            value = float(answer.strip().lstrip("$"))
        except ValueError:
            return None
    else:
        return None
    return value if value == value and abs(value) != float("inf") else None
