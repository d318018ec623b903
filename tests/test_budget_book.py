"""The budget book's count of working branches and of those standing at a budget question
(what decides whether the run's clock stands): kept as each event is folded, in O(1), and
equal at every event to counting the open branches afresh, as the book used to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_budget_questions import NESTED, both_stopped, nested_failing, spokes_failing
from test_budgets import budgeted
from test_engine_core import engine_for, step

from orchestra.agents.contract import Action, StepOutcome
from orchestra.coordination.config import Budget, ErrorHandlingConfig, ExecutionConfig
from orchestra.coordination.engine import budgets
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.engine.budget_limits import Limits
from orchestra.coordination.engine.core import Engine


class Visited(dict[str, str | None]):
    """The book's open branches, counting how many of them are visited (iterated over)."""

    visits = 0

    def __iter__(self) -> Iterator[str]:
        for key in super().__iter__():
            self.visits += 1
            yield key


def hub(n: int) -> dict[str, Any]:
    workers = [f"W{i}" for i in range(n)]
    return {
        "nodes": ["Hub", *workers],
        "edges": [f"Hub -> {w}" for w in workers] + [f"{w} -> Hub" for w in workers],
        "entry_point": "Hub",
        "exit_points": ["Hub"],
    }


def test_folding_a_branch_event_visits_none_of_the_other_open_branches() -> None:
    """A fan-out of 300 branches under a run budget, each taking a step and returning: every
    branch event used to list every open branch (10,000 branches took 3.9 s of engine time
    instead of 0.2 s); now none is visited."""
    n = 300
    config = ExecutionConfig(budget=Budget(max_steps=10**9))
    engine = engine_for(hub(n))
    engine.apply(
        inp.RunStart(
            at=0.0,
            task="task",
            context={},
            max_steps=10**9,
            config=config,
            error_config=ErrorHandlingConfig(),
            topology=(),
        )
    )
    live = Visited()
    engine.budget_book = budgets.Book(Limits.of(config, ()), live=live)
    step(engine, "b0", 0.0, 1.0, Action.invoke_parallel([(f"W{i}", "x") for i in range(n)]))
    for i in range(1, n + 1):
        step(engine, f"b{i}", 2.0, 1.0, Action.final("y"))
    assert [b.id for b in engine.branches.values() if not b.ended] == ["b0"]
    assert live.visits == 0


def afresh(book: budgets.Book) -> bool:
    """Whether the run stands, counted afresh: every working branch (not ended, without
    children not ended) stands at a budget question."""
    working = [b for b in book.live if not book.children.get(b)]
    waits = book.waits
    return bool(working) and all(bool(waits.get(b)) and waits[b][-1][1] is None for b in working)


def answered() -> Engine:
    engine = both_stopped()
    engine.apply(inp.UserAnswer(at=4.0, branch_id="b1", answer="10"))
    step(engine, "b2", 4.0, 1.0, Action.final("y"))
    return engine


def cancelled_asker() -> Engine:
    """X asks, B waits, Y returns ("any"): X is cancelled, B asks, and raises."""
    config = ExecutionConfig(budget=Budget(max_steps=3), convergence_policy="any")
    engine = budgeted(NESTED, config)
    step(engine, "b0", 0.0, 1.0, Action.invoke_parallel([("A", "a"), ("B", "b")]))
    step(engine, "b1", 1.0, 1.0, Action.invoke_parallel([("X", "x"), ("Y", "y")]))
    for branch in ("b4", "b3", "b2"):
        engine.apply(inp.StepBegin(at=2.0, branch_id=branch))
    outcome = StepOutcome(action=Action.final("y"), by_code=True)
    engine.apply(inp.StepResult(at=3.0, branch_id="b4", outcome=outcome, messages=(), duration=1))
    engine.apply(inp.UserAnswer(at=4.0, branch_id="b2", answer="10"))
    return engine


SCENARIOS: dict[str, Callable[[], Engine]] = {
    "raised": answered,
    "handed over": cancelled_asker,
    "asker fails": lambda: spokes_failing("all")[0],
    "cascade": lambda: nested_failing("all")[0],
    "cascade, any": lambda: nested_failing("any")[0],
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_counts_agree_with_counting_afresh_at_every_event(scenario: str) -> None:
    engine = SCENARIOS[scenario]()
    events = engine.stream.events
    assert engine.budget_book is not None
    engine.budget_book.catch_up(events)  # (the engine's reads the events when it checks)
    book = budgets.Book(engine.budget_book.limits)
    stood = 0
    for seen in range(1, len(events) + 1):
        book.catch_up(events[:seen])
        assert book.working == len([b for b in book.live if not book.children.get(b)])
        assert (book.working > 0 and book.standing == book.working) == afresh(book), seen
        stood = max(stood, book.standing)
    assert stood > 0  # some branch stood at a question
    assert book.stood == engine.budget_book.stood
