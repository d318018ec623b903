"""Budgets: what a run, a branch and an agent may spend (tokens, dollars, steps, working
time). A spent budget stops the next step before its model is called; with a user channel the
user is asked to raise it, else the run fails with a BudgetExceededError naming it.
"""

from __future__ import annotations

import asyncio
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers import crash_copy, final, invoke, llm, of, quiet, run
from pydantic import ValidationError
from storage_backends import Storage
from test_replay import exactly
from test_sessions import wait

from orchestra import (
    Agent,
    AgentRegistry,
    CommunicationConfig,
    ExecutionConfig,
    FunctionModel,
    ProgrammaticChannel,
    ScriptedUser,
)
from orchestra.communication import CommunicationManager
from orchestra.coordination.config import Budget
from orchestra.coordination.engine import events as ev
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import StateManager
from orchestra.coordination.topology import BudgetRule, Topology, parse_rule
from orchestra.errors import (
    BudgetExceededError,
    LimitExceededError,
    TopologyError,
)
from orchestra.models import Message, StepInfo
from orchestra.models.base import ModelReply, Usage
from orchestra.workflow import WorkflowError, load_workflow

LOOP = {
    "nodes": ["Writer", "Critic"],
    "edges": ["Writer -> Critic", "Critic -> Writer"],
    "entry_point": "Writer",
    "exit_points": ["Writer"],
}
SPEND = Usage(prompt_tokens=60, completion_tokens=40, cost_usd=0.01)  # 100 tokens, $0.01


def looping() -> FunctionModel:
    """Writer calls Critic, Critic answers, Writer calls again, each step spending SPEND: a
    loop only a budget ends."""
    return finishing(after=0)


def finishing(after: int) -> FunctionModel:
    """Like ``looping``, but Writer's ``after``-th step gives the final response (read from
    its conversation, so a resumed run decides alike)."""

    def reply(messages: Sequence[Message], info: StepInfo) -> ModelReply:
        if info.agent_name == "Writer":
            notes = sum("notes" in (message.content or "") for message in messages)
            if notes + 1 == after:
                return ModelReply(action=final("done"), usage=SPEND)
            return ModelReply(action=invoke(("Critic", "review")), usage=SPEND)
        return ModelReply(action=final("notes"), usage=SPEND)

    return FunctionModel(reply)


def scoped(scope: str, budget: Budget) -> ExecutionConfig:
    if scope == "run":
        return quiet(budget=budget)
    if scope == "branch":
        return quiet(branch_budget=budget)
    return quiet(agent_budgets={"Writer": budget})


LIMITS = {"max_tokens": 250, "max_cost_usd": 0.025, "max_steps": 3}
SPENT = {"max_tokens": "300", "max_cost_usd": "0.03", "max_steps": "3"}
NAMES = {"run": "run", "branch": "branch b0", "agent": "agent 'Writer'"}


@pytest.mark.parametrize("field", list(LIMITS))
@pytest.mark.parametrize("scope", ["run", "branch", "agent"])
async def test_a_spent_budget_fails_the_run_before_the_next_model_call(
    scope: str, field: str
) -> None:
    """No user channel: the budget is a hard one. Three steps spend 300 tokens, $0.03 and 3
    steps (the run's and the branch's; Writer's by its third step, the loop's sixth); the step
    after them never calls its model, and the error names the budget, limit and spend."""
    model = looping()
    config = scoped(scope, Budget.model_validate({field: LIMITS[field]}))
    result = await run("draft", LOOP, [llm("Writer", model), llm("Critic", model)], config=config)
    assert not result.success
    assert model.call_count == (6 if scope == "agent" else 3)
    assert result.error == (
        f"the {NAMES[scope]} budget's {field}={LIMITS[field]:g} is spent ({SPENT[field]} used); "
        "raise it (ExecutionConfig budget, branch_budget or agent_budgets) to go further"
    )
    failed = of(result, ev.BranchFailed)
    assert [event.error_type for event in failed] == ["BudgetExceededError"]


@pytest.mark.parametrize("scope", ["run", "branch", "agent"])
async def test_a_duration_budget_counts_working_time(scope: str) -> None:
    """Every step takes some time, so a budget of a nanosecond is spent by the first step
    (or, for the run and its branch, before it): no second model call starts."""
    model = looping()
    config = scoped(scope, Budget(max_duration=1e-9))
    result = await run("draft", LOOP, [llm("Writer", model), llm("Critic", model)], config=config)
    assert not result.success and result.error is not None
    assert f"the {NAMES[scope]} budget's max_duration=1e-09 is spent" in result.error
    assert model.call_count <= (2 if scope == "agent" else 1)  # Critic has no budget
    roomy = scoped(scope, Budget(max_duration=3600))
    model = finishing(after=2)
    result = await run("draft", LOOP, [llm("Writer", model), llm("Critic", model)], config=roomy)
    assert result.success, result.error


async def test_the_tokens_of_rejected_replies_count() -> None:
    """Writer keeps naming an agent it may not invoke: each rejected reply spent 100 tokens,
    so the fourth attempt (the steering retries allow it) never calls the model."""
    model = FunctionModel(
        lambda messages, info: ModelReply(action=invoke(("Nobody", "x")), usage=SPEND)
    )
    result = await run(
        "draft",
        LOOP,
        [llm("Writer", model), llm("Critic", looping())],
        config=quiet(budget=Budget(max_tokens=250)),
    )
    assert model.call_count == 3
    assert result.error is not None
    assert result.error.startswith("the run budget's max_tokens=250 is spent (300 used)")
    assert [e.prompt_tokens for e in of(result, ev.ActionRejected)] == [60, 60, 60]


def test_the_error_names_budget_limit_and_spend() -> None:
    error = BudgetExceededError("agent 'Writer'", "max_cost_usd", 0.5, 0.52)
    assert isinstance(error, LimitExceededError)
    assert (error.budget, error.limit, error.allowed, error.spent) == (
        "agent 'Writer'",
        "max_cost_usd",
        0.5,
        0.52,
    )
    assert "agent 'Writer' budget's max_cost_usd=0.5 is spent (0.52 used)" in str(error)


async def test_the_user_raises_a_spent_budget_and_the_run_goes_on() -> None:
    """With a channel the user is asked; a higher number raises the limit asked about, and
    the step the budget stopped is taken then (nothing is lost)."""
    model = finishing(after=3)  # W C W C W: 5 steps, 500 tokens
    user = ScriptedUser(["400", 1000])
    result = await run(
        "draft",
        LOOP,
        [llm("Writer", model), llm("Critic", model)],
        config=quiet(budget=Budget(max_tokens=250)),
        communication_config=CommunicationConfig(channel=user),
    )
    assert result.success, result.error
    assert result.final_response == "done" and model.call_count == 5
    assert [question.text for question in user.questions] == [
        "The run budget's max_tokens=250 is spent (300 used) before 'Critic''s next step. "
        "Reply with a higher max_tokens to go on, or 'no' to stop.",
        "The run budget's max_tokens=400 is spent (400 used) before 'Writer''s next step. "
        "Reply with a higher max_tokens to go on, or 'no' to stop.",
    ]
    raised = [(e.budget, e.limit, e.allowed) for e in of(result, ev.BudgetRaised)]
    assert raised == [("run", "max_tokens", 400.0), ("run", "max_tokens", 1000.0)]


@pytest.mark.parametrize("answer", ["no", "", 300, "250", None])
async def test_an_answer_that_does_not_raise_the_budget_fails_the_run(answer: Any) -> None:
    """'no', or a number not above the spend (300 tokens), keeps the budget: the run fails."""
    model = looping()
    result = await run(
        "draft",
        LOOP,
        [llm("Writer", model), llm("Critic", model)],
        config=quiet(budget=Budget(max_tokens=250)),
        communication_config=CommunicationConfig(channel=ScriptedUser([answer])),
    )
    assert not result.success and model.call_count == 3
    assert result.error is not None
    assert result.error.startswith("the run budget's max_tokens=250 is spent (300 used)")


def test_a_budget_is_checked_when_configured() -> None:
    for bad, field in [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_cost_usd": -1.0}, "max_cost_usd"),
        ({"max_steps": 2.5}, "max_steps"),
        ({"max_duration": float("inf")}, "max_duration"),
        ({"max_token": 5}, "max_token"),
    ]:
        with pytest.raises(ValidationError, match=field):
            Budget.model_validate(bad)
    with pytest.raises(ValidationError, match="at least one of max_tokens"):
        Budget()
    with pytest.raises(ValidationError, match=re.escape("agent_budgets.Writer.max_steps")):
        ExecutionConfig.model_validate({"agent_budgets": {"Writer": {"max_steps": 0}}})


async def test_a_resumed_run_keeps_the_spend_and_the_raised_limit(storage: Storage) -> None:
    """Raised to 500 tokens, then paused while asked again: resumed (from its snapshot, or
    from its log alone), the run asks the same question (500 allowed, 500 spent), and the
    result read back is the run that returned."""
    channel = ProgrammaticChannel()
    model = finishing(after=4)  # 7 steps, 700 tokens
    orchestra = OrchestraInstance(
        LOOP,
        agent_registry=AgentRegistry(
            [Agent("Writer", model, register=False), Agent("Critic", model, register=False)]
        ),
        initial_config=quiet(budget=Budget(max_tokens=250)),
        communication_manager=CommunicationManager(channel),
        state_manager=StateManager(storage, auto_save_interval=0),
    )
    running = asyncio.create_task(orchestra.execute("draft", context={"session_id": "b"}))
    first = await wait(channel.next_question())
    channel.answer(first.id, "500")
    second = await wait(channel.next_question())
    assert "max_tokens=500 is spent (500 used)" in second.text
    assert await orchestra.pause_session("b")
    paused = await wait(running)
    assert paused.metadata.get("paused") is True, paused.error
    await crash_copy(storage, "b", "b-copy", len(await storage.read("b")))
    assert await storage.read_snapshot("b-copy") is None
    for session in ("b", "b-copy"):
        resuming = asyncio.create_task(orchestra.resume_session(session))
        again = await wait(channel.next_question())
        assert again.text == second.text
        channel.answer(again.id, 800)
        resumed = await wait(resuming)
        assert resumed.success and resumed.final_response == "done", resumed.error
        assert resumed.total_steps == 7
        raised = [(e.limit, e.allowed) for e in of(resumed, ev.BudgetRaised)]
        assert raised == [("max_tokens", 500.0), ("max_tokens", 800.0)]
        read_back = await orchestra.get_result(session)
        assert read_back is not None and exactly(read_back) == exactly(resumed)


def test_a_budget_rule_reads_and_writes_its_text() -> None:
    rule = parse_rule("budget(Writer, max_tokens=2000, max_cost_usd=0.5)")
    assert rule == BudgetRule("Writer", (("max_tokens", 2000), ("max_cost_usd", 0.5)))
    assert parse_rule(rule.to_text()) == rule
    assert rule.to_text() == "budget(Writer, max_tokens=2000, max_cost_usd=0.5)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("budget(run)", "needs both"),
        ("budget(run, max_tokens)", "'max_tokens' is not field=limit"),
        ("budget(run, max_tokens=0)", "max_tokens: Input should be greater than or equal to 1"),
        ("budget(run, max_tokens=1.5)", "max_tokens: Input should be a valid integer"),
        ("budget(run, max_dollars=3)", "max_dollars: Extra inputs are not permitted"),
        ("budget(run, max_cost_usd=lots)", "'lots' is not a number"),
    ],
)
def test_a_bad_budget_rule_names_its_field(text: str, message: str) -> None:
    with pytest.raises(TopologyError, match=re.escape(message)):
        parse_rule(text)


def test_a_budget_rule_names_an_agent_once_per_scope() -> None:
    rules = ["budget(Editor, max_steps=2)", "budget(run, max_steps=2)", "budget(run, max_steps=3)"]
    with pytest.raises(TopologyError) as info:
        Topology.coerce({**LOOP, "rules": rules}).validate()
    assert "names 'Editor', which is not an agent node" in str(info.value)
    assert "rule budget(run) is given more than once" in str(info.value)


async def test_rules_and_config_combine_and_the_lower_limit_holds() -> None:
    """The topology's budget for Writer (3 steps) and the config's (2 steps, 10000 tokens):
    Writer may take 2 steps. A budget for an agent the topology lacks is refused by name."""
    model = looping()
    topology = {**LOOP, "rules": ["budget(Writer, max_steps=3)", "budget(branch, max_steps=50)"]}
    config = quiet(agent_budgets={"Writer": Budget(max_steps=2, max_tokens=10000)})
    result = await run(
        "draft", topology, [llm("Writer", model), llm("Critic", model)], config=config
    )
    assert result.error is not None and "agent 'Writer' budget's max_steps=2" in result.error
    assert model.call_count == 4
    refused = await run(
        "draft",
        LOOP,
        [llm("Writer", model), llm("Critic", model)],
        config=quiet(agent_budgets={"Editor": Budget(max_steps=1)}),
    )
    assert refused.error == (
        "ExecutionConfig agent_budgets['Editor']: no agent 'Editor' in the topology "
        "(its agents: Critic, Writer)"
    )


def test_a_workflow_file_sets_budgets_under_execution(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    text = """
        agents:
          - {name: A, function: flow_nodes:shout}
        topology: {nodes: [A], edges: [], rules: ["budget(A, max_steps=1)"]}
        execution:
          budget: {max_tokens: 5000, max_cost_usd: 0.5}
          branch_budget: {max_duration: 60}
          agent_budgets:
            A: {max_steps: %s}
        """
    path.write_text(textwrap.dedent(text % "4").lstrip())
    workflow = load_workflow(path)
    assert workflow.execution.budget == Budget(max_tokens=5000, max_cost_usd=0.5)
    assert workflow.execution.branch_budget == Budget(max_duration=60)
    assert workflow.execution.agent_budgets == {"A": Budget(max_steps=4)}
    path.write_text(textwrap.dedent(text % "0").lstrip())
    with pytest.raises(
        WorkflowError,
        match=r"flow.yaml:8: execution.agent_budgets.A.max_steps: Input should be greater than or equal to 1",
    ):
        load_workflow(path)
