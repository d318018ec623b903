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
from test_engine_core import engine_for, step
from test_replay import exactly
from test_sessions import wait

from orchestra import (
    Action,
    Agent,
    AgentRegistry,
    CommunicationConfig,
    ExecutionConfig,
    FunctionModel,
    ProgrammaticChannel,
    ScriptedUser,
)
from orchestra.agents.contract import StepOutcome
from orchestra.communication import CommunicationManager
from orchestra.coordination.config import Budget, ErrorHandlingConfig
from orchestra.coordination.engine import events as ev
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.engine.budget_limits import configured
from orchestra.coordination.engine.core import Engine
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import StateManager
from orchestra.coordination.topology import BudgetRule, Topology, parse_rule
from orchestra.errors import (
    BudgetExceededError,
    LimitExceededError,
    TopologyError,
    UserInputError,
    budget_amount,
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
SHOWN = {"max_tokens": "250", "max_cost_usd": "$0.025", "max_steps": "3"}
SPENT = {"max_tokens": "300", "max_cost_usd": "$0.03", "max_steps": "3"}
NAMES = {"run": "run", "branch": "branch b0", "agent": "agent 'Writer'"}
FIELDS = {
    "run": "ExecutionConfig.budget",
    "branch": "ExecutionConfig.branch_budget",
    "agent": "ExecutionConfig.agent_budgets['Writer']",
}


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
        f"the {NAMES[scope]} budget's {field}={SHOWN[field]} is spent ({SPENT[field]} used); "
        f"raise it in {FIELDS[scope]}.{field} to go further"
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
    assert f"the {NAMES[scope]} budget's max_duration=1e-09 s is spent" in result.error
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
    assert "agent 'Writer' budget's max_cost_usd=$0.5 is spent ($0.52 used)" in str(error)


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
        "The run budget's max_tokens=250 is spent (300 used) before agent 'Critic' takes its next step. "
        "Reply with a higher max_tokens (a whole number) to go on, or 'no' to stop.",
        "The run budget's max_tokens=400 is spent (400 used) before agent 'Writer' takes its next step. "
        "Reply with a higher max_tokens (a whole number) to go on, or 'no' to stop.",
    ]
    raised = [(e.budget, e.limit, e.allowed) for e in of(result, ev.BudgetRaised)]
    assert raised == [("run", "max_tokens", 400.0), ("run", "max_tokens", 1000.0)]


@pytest.mark.parametrize("answer", ["no", "", 300, "250", None, "400.5"])
async def test_an_answer_that_does_not_raise_the_budget_fails_the_run(answer: Any) -> None:
    """'no', a number not above the spend (300 tokens), or not a whole one (tokens are
    counted whole), keeps the budget: the run fails."""
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


# ---- the engine core on its own: budget questions and their answers, at times of our own ----

TWO_LOOPS = {
    "nodes": ["User", "A", "B", "X", "Y"],
    "edges": ["User -> A", "User -> B", "A -> X", "X -> A", "B -> Y", "Y -> B"],
    "exit_points": ["A", "B"],
}


def budgeted(topology: dict[str, Any], config: ExecutionConfig, shared: bool = True) -> Engine:
    """An engine started with ``config`` (``shared``: a spent budget asked about once, as a
    new run decides; False: each branch asks, as a run logged before that rule did)."""
    engine = engine_for(topology)
    engine.apply(
        inp.RunStart(
            at=0.0,
            task="task",
            context={},
            max_steps=50,
            config=config,
            error_config=ErrorHandlingConfig(),
            topology=(),
            shared_budget_questions=shared,
        )
    )
    return engine


def asks(engine: Engine, branch: str, at: float) -> str:
    """The branch's next step is stopped by a budget: the question's text."""
    engine.apply(inp.StepBegin(at=at, branch_id=branch))
    asked = engine.branches[branch].question
    assert asked is not None, f"branch {branch} was not asked"
    return asked[1]


def both_asked() -> Engine:
    """b1 (A calling X) is stopped by agent A's max_steps=1, b2 (B) by the run's max_steps=3."""
    config = ExecutionConfig(budget=Budget(max_steps=3), agent_budgets={"A": Budget(max_steps=1)})
    engine = budgeted(TWO_LOOPS, config)
    step(engine, "b1", 1.0, 1.0, Action.invoke("X", "x"))
    step(engine, "b1", 2.0, 1.0, Action.final("x done"))  # back to A
    assert asks(engine, "b1", 3.0).startswith("The agent 'A' budget's max_steps=1 is spent")
    step(engine, "b2", 3.0, 1.0, Action.invoke("Y", "y"))
    assert asks(engine, "b2", 4.0).startswith("The run budget's max_steps=3 is spent (3 used)")
    return engine


def failures(engine: Engine) -> dict[str, tuple[str, str]]:
    """The failed branches' error types and texts (b0's, the fan-out's, left out)."""
    failed = (e for e in engine.stream.events if type(e) is ev.BranchFailed)
    return {e.branch_id: (e.error_type or "", e.error or "") for e in failed if e.branch_id != "b0"}


def raised(engine: Engine) -> list[tuple[str, str, float]]:
    return [
        (e.budget, e.limit, e.allowed) for e in engine.stream.events if type(e) is ev.BudgetRaised
    ]


def test_an_answer_raises_the_budget_it_was_asked_about_and_no_other() -> None:
    """A's question was about A's steps: '5' raises them, not the run's (which was spent by
    then too, and which the old code raised), and A is asked again, about the run's steps;
    B's 'no' about the run fails B with the run's error."""
    engine = both_asked()
    engine.apply(inp.UserAnswer(at=5.0, branch_id="b1", answer="5"))
    assert raised(engine) == [("agent 'A'", "max_steps", 5.0)]
    assert asks(engine, "b1", 5.0).startswith("The run budget's max_steps=3 is spent (3 used)")
    engine.apply(inp.UserAnswer(at=6.0, branch_id="b2", answer="no"))
    assert failures(engine) == {
        "b2": (
            "BudgetExceededError",
            "the run budget's max_steps=3 is spent (3 used); "
            "raise it in ExecutionConfig.budget.max_steps to go further",
        )
    }


@pytest.mark.parametrize("answer", ["2.5", 4.5, "lots"])
def test_a_step_or_token_limit_is_raised_only_by_a_whole_number(answer: Any) -> None:
    engine = both_asked()
    engine.apply(inp.UserAnswer(at=5.0, branch_id="b1", answer=answer))
    assert failures(engine)["b1"][1].startswith("the agent 'A' budget's max_steps=1 is spent")
    assert raised(engine) == []


ONE_LOOP = {
    "nodes": ["A", "X"],
    "edges": ["A -> X", "X -> A"],
    "entry_point": "A",
    "exit_points": ["A"],
}
HUB = {
    "nodes": ["Hub", "A", "B"],
    "edges": ["Hub -> A", "Hub -> B", "A -> Hub", "B -> Hub"],
    "entry_point": "Hub",
    "exit_points": ["Hub"],
}


def test_the_wait_for_a_duration_answer_is_not_working_time() -> None:
    """The run's 0.3 s are spent by a 0.4 s step; the user takes 100 s to answer 1.0: the
    limit is raised (the answer beats the 0.4 s shown) and the next step begins, the run's
    only branch standing at the question all that time. It used to fail with 100.4 s 'used'."""
    engine = budgeted(ONE_LOOP, ExecutionConfig(budget=Budget(max_duration=0.3)))
    step(engine, "b0", 0.0, 0.4, Action.invoke("X", "x"))
    text = asks(engine, "b0", 0.4)
    assert text.startswith("The run budget's max_duration=0.3 s is spent (0.4 s used)")
    engine.apply(inp.UserAnswer(at=100.4, branch_id="b0", answer="1.0"))
    assert not failures(engine)
    step(engine, "b0", 100.4, 0.6, Action.final("x done"))
    assert asks(engine, "b0", 101.0).startswith(
        "The run budget's max_duration=1 s is spent (1 s used)"
    )


def test_the_wait_for_one_budget_is_not_working_time_for_the_branch_budget() -> None:
    """The user takes 100 s to raise the run's steps: the branch's own max_duration=5 does not
    count them (it used to stop the branch at once, with 103 s 'used'), and it is spent after
    5 s of the branch's work."""
    config = ExecutionConfig(budget=Budget(max_steps=2), branch_budget=Budget(max_duration=5))
    engine = budgeted(ONE_LOOP, config)
    step(engine, "b0", 0.0, 1.0, Action.invoke("X", "x"))
    step(engine, "b0", 1.0, 1.0, Action.final("x done"))
    assert asks(engine, "b0", 2.0).startswith("The run budget's max_steps=2 is spent")
    engine.apply(inp.UserAnswer(at=102.0, branch_id="b0", answer="100"))
    step(engine, "b0", 102.0, 1.0, Action.invoke("X", "x"))
    step(engine, "b0", 103.0, 1.0, Action.final("x done"))
    step(engine, "b0", 104.0, 1.0, Action.invoke("X", "x"))
    assert asks(engine, "b0", 105.0).startswith(
        "The branch b0 budget's max_duration=5 s is spent (5 s used)"
    )


def test_a_sibling_that_works_keeps_the_run_clock_going() -> None:
    """b1's question about agent A's steps is left open while b2 works: b2's work counts for
    the run's max_duration=10 (the open question used to stop the run's clock for good)."""
    config = ExecutionConfig(
        budget=Budget(max_duration=10), agent_budgets={"A": Budget(max_steps=1)}
    )
    engine = budgeted(TWO_LOOPS, config)
    step(engine, "b1", 0.0, 1.0, Action.invoke("X", "x"))
    step(engine, "b1", 1.0, 1.0, Action.final("x done"))
    assert asks(engine, "b1", 2.0).startswith("The agent 'A' budget's max_steps=1 is spent")
    for at in range(10):
        step(engine, "b2", float(at), 1.0, Action.final("y") if at % 2 else Action.invoke("Y", "y"))
    assert asks(engine, "b2", 10.0).startswith(
        "The run budget's max_duration=10 s is spent (10 s used)"
    )


def test_a_branch_cancelled_while_it_waits_ends_its_wait() -> None:
    """A waits on the run's steps when B's return settles the fan-out ("any") and A is
    cancelled; Hub's own wait (100 s) is left out, and the run's max_duration=5 binds again
    (A's wait used to stay open, and the run's clock stood still for good)."""
    config = ExecutionConfig(budget=Budget(max_steps=2, max_duration=5), convergence_policy="any")
    engine = budgeted(HUB, config)
    step(engine, "b0", 0.0, 1.0, Action.invoke_parallel([("A", "a"), ("B", "b")]))
    engine.apply(inp.StepBegin(at=1.0, branch_id="b2"))
    assert asks(engine, "b1", 1.0).startswith("The run budget's max_steps=2 is spent")
    engine.apply(
        inp.StepResult(
            at=2.0,
            branch_id="b2",
            outcome=StepOutcome(action=Action.final("b"), by_code=True),
            messages=(),
            duration=1.0,
        )
    )
    assert engine.branches["b1"].outcome == "cancelled"
    asks(engine, "b0", 2.0)
    engine.apply(inp.UserAnswer(at=102.0, branch_id="b0", answer="100"))
    for at in (102.0, 103.0, 104.0):
        step(engine, "b0", at, 0.5, Action.invoke("A", "a"))
        step(engine, "b0", at + 0.5, 0.5, Action.final("a"))
    assert asks(engine, "b0", 105.0).startswith(
        "The run budget's max_duration=5 s is spent (5 s used)"
    )


def test_an_error_after_a_raise_names_where_the_limit_was_set() -> None:
    """The user raised the run's steps to 3, then says no: the error names the config field
    and the raise (it used to say 'by answering its question', with no question left)."""
    engine = budgeted(ONE_LOOP, ExecutionConfig(budget=Budget(max_steps=1)))
    step(engine, "b0", 0.0, 1.0, Action.invoke("X", "x"))
    asks(engine, "b0", 1.0)
    engine.apply(inp.UserAnswer(at=2.0, branch_id="b0", answer="2"))
    step(engine, "b0", 2.0, 1.0, Action.final("x done"))
    asks(engine, "b0", 3.0)
    engine.apply(inp.UserAnswer(at=4.0, branch_id="b0", answer="no"))
    failed = [e.error for e in engine.stream.events if type(e) is ev.BranchFailed]
    assert failed == [
        "the run budget's max_steps=2 is spent (2 used); raise it in "
        "ExecutionConfig.budget.max_steps (raised to 2 by the user's answer) to go further"
    ]


@pytest.mark.parametrize("on_timeout", ["fail", "default"])
def test_a_budget_question_nobody_answers_fails_with_the_budget_error(on_timeout: str) -> None:
    """The channel's timeout: with 'fail' the branch fails with the budget's error, not the
    channel's UserInputError; with 'default' the default answer (wrapped in the channel's
    note) is no number, and it fails alike."""
    engine = both_asked()
    if on_timeout == "fail":
        timed_out = UserInputError("the user did not answer 'A''s question within 5s")
        engine.apply(inp.BranchFailure(at=5.0, branch_id="b1", error=timed_out))
    else:
        default = "(The user did not answer within 5s; go on with the default answer: 100)"
        engine.apply(inp.UserAnswer(at=5.0, branch_id="b1", answer=default))
    kind, text = failures(engine)["b1"]
    assert kind == "BudgetExceededError"
    assert text.startswith("the agent 'A' budget's max_steps=1 is spent (1 used)")


def test_the_error_names_the_rule_that_set_the_limit() -> None:
    """A ``budget(...)`` rule lower than the config holds: the error says to change the rule
    (raising the config would do nothing)."""
    topology = {**TWO_LOOPS, "rules": ["budget(run, max_steps=1)"]}
    engine = engine_for(topology)
    config = configured(
        ExecutionConfig(budget=Budget(max_steps=5)), engine.analysis.budget_rules, ["A", "B"]
    )
    engine = budgeted(topology, config)
    step(engine, "b1", 1.0, 1.0, Action.invoke("X", "x"))
    asks(engine, "b1", 2.0)
    engine.apply(inp.UserAnswer(at=3.0, branch_id="b1", answer="no"))
    assert failures(engine)["b1"][1] == (
        "the run budget's max_steps=1 is spent (1 used); "
        "raise it in the topology rule budget(run, max_steps=1) to go further"
    )


@pytest.mark.parametrize(
    ("limit", "value", "shown"),
    [
        ("max_tokens", 2_500_000, "2,500,000"),
        ("max_tokens", 1_000_150.0, "1,000,150"),
        ("max_steps", 12, "12"),
        ("max_cost_usd", 1234.5, "$1,234.5"),
        ("max_cost_usd", 0.123456, "$0.1235"),
        ("max_duration", 90.0, "90 s"),
        ("max_duration", 0.401569, "0.402 s"),
    ],
)
def test_budget_amounts_read_as_a_person_writes_them(limit: str, value: float, shown: str) -> None:
    assert budget_amount(limit, value) == shown
