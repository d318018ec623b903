"""A spent budget is something the user must see: the run view (and so the live block), the
plain status lines at NORMAL, the run's trace and the metrics all show ``BudgetSpent`` and
``BudgetRaised``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from helpers import llm, quiet, run
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_budget_questions import FAN, fanning
from test_status_view import plain, tty_console

from orchestra import CommunicationConfig, ScriptedUser, StatusConfig
from orchestra.coordination.config import Budget, TracingConfig
from orchestra.coordination.engine import events as ev
from orchestra.coordination.monitoring import MetricsCollector, blocks
from orchestra.coordination.monitoring.status import status_line
from orchestra.coordination.monitoring.view import BranchStatus, RunState, RunView
from orchestra.coordination.results import OrchestraResult

SPENT = "run budget's max_steps=1 spent (1 used)"


async def raised_once(**options: Any) -> OrchestraResult:
    """Hub's fan-out to A, B and C spends the run's max_steps=1: b1 asks, b2 and b3 wait for
    its answer, which raises the limit to 10."""
    model = fanning()
    agents = [llm(name, model) for name in ("Hub", "A", "B", "C")]
    config = options.pop("config", quiet())
    result = await run(
        "go",
        FAN,
        agents,
        config=config.model_copy(update={"budget": Budget(max_steps=1)}),
        communication_config=CommunicationConfig(channel=ScriptedUser(["10"])),
        **options,
    )
    assert result.success, result.error
    return result


def before_the_answer(events: list[ev.Event]) -> list[ev.Event]:
    answered = next(i for i, e in enumerate(events) if type(e) is ev.UserInputReceived)
    return events[:answered]


async def test_the_view_says_which_budget_is_spent_and_whose_answer_a_branch_waits_for() -> None:
    result = await raised_once()
    view = RunView("r", {"Hub", "A", "B", "C"})
    for event in before_the_answer(result.events):
        view(event)
    assert view.shown_state is RunState.WAITING_FOR_USER and view.asking == 3
    assert view.budget == SPENT
    rows = {b: (view.branches[b].status, view.branches[b].budget) for b in ("b1", "b2", "b3")}
    assert rows == {
        "b1": (BranchStatus.USER, SPENT),
        "b2": (BranchStatus.USER, f"{SPENT}; waits for b1's answer"),
        "b3": (BranchStatus.USER, f"{SPENT}; waits for b1's answer"),
    }
    console, out = tty_console(width=200)
    console.print(blocks.run_block(view, view.last_at))
    shown = plain(out.getvalue())
    assert f"waiting for the user · {SPENT}" in shown
    assert (
        f"b2 B  waiting for the user  step 0 · 0.0s · 0 tokens: {SPENT}; waits for b1's answer"
        in shown
    )
    for event in result.events[len(before_the_answer(result.events)) :]:
        view(event)
    assert view.budget is None and view.asking == 0
    assert all(branch.budget is None for branch in view.branches.values())


def test_the_status_lines_show_a_spent_and_a_raised_budget_at_normal() -> None:
    normal = StatusConfig.from_verbosity(1)
    spent = ev.BudgetSpent(
        run_id="r",
        at=1.0,
        branch_id="b2",
        question_id="budget-q1",
        budget="run",
        limit="max_tokens",
        allowed=2500,
        spent=2600,
        source="in ExecutionConfig.budget.max_tokens",
    )
    raised = ev.BudgetRaised(
        run_id="r", at=2.0, branch_id="b1", budget="run", limit="max_tokens", allowed=5000
    )
    assert status_line(spent, normal) == (
        "[r]     b2: the run budget's max_tokens=2,500 is spent (2,600 used): stopped before "
        "its next step (question budget-q1)"
    )
    assert status_line(raised, normal) == (
        "[r]     b1: the user raised the run budget's max_tokens to 5,000"
    )


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


async def test_the_run_span_has_the_run_budget_s_events(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    await raised_once(config=quiet(tracing=TracingConfig(tracer_provider=provider)))
    (workflow,) = [s for s in exporter.get_finished_spans() if s.name == "invoke_workflow"]
    found = [(e.name, dict(e.attributes or {})) for e in workflow.events if "budget" in e.name]
    spent = [attributes for name, attributes in found if name == "orchestra.budget_spent"]
    assert sorted(a["orchestra.branch.id"] for a in spent) == ["b1", "b2", "b3"]
    assert spent[0] == {
        "orchestra.budget.scope": "run",
        "orchestra.budget.limit": "max_steps",
        "orchestra.budget.allowed": 1,
        "orchestra.budget.spent": 1,
        "orchestra.branch.id": spent[0]["orchestra.branch.id"],
        "orchestra.question.id": "budget-q1",
    }
    assert found[-1] == (
        "orchestra.budget_raised",
        {
            "orchestra.budget.scope": "run",
            "orchestra.budget.limit": "max_steps",
            "orchestra.budget.allowed": 10.0,
            "orchestra.branch.id": "b1",
        },
    )


async def test_a_spent_budget_is_counted_once_per_question() -> None:
    with MetricsCollector(exporters=["prometheus"], prometheus_port=0) as metrics:
        await raised_once(metrics_collector=metrics)
        assert metrics.get_metric("budget_exceeded") == 1
        assert metrics.get_metric("budget_exceeded", scope="run", limit="max_steps") == 1


async def test_a_branch_budget_s_events_are_on_its_branch_span(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """Each branch may take one step: A, B and C take theirs; Hub's second (on their results)
    is stopped by b0's budget, and the user's 'no' fails it."""
    provider, exporter = spans
    model = fanning()
    config = quiet(
        branch_budget=Budget(max_steps=1), tracing=TracingConfig(tracer_provider=provider)
    )
    result = await run(
        "go",
        FAN,
        [llm(name, model) for name in ("Hub", "A", "B", "C")],
        config=config,
        communication_config=CommunicationConfig(channel=ScriptedUser(["no"])),
    )
    assert not result.success
    found = {s.name: s for s in exporter.get_finished_spans()}
    workflow_events = [e.name for e in found["invoke_workflow"].events]
    assert "orchestra.budget_spent" not in workflow_events
    spent = [e for e in found["branch b0"].events if e.name == "orchestra.budget_spent"]
    assert [dict(e.attributes or {})["orchestra.budget.scope"] for e in spent] == ["branch b0"]
