"""A spent budget that is not one branch's (the run's, an agent's) is asked about once: the
branches it stops while another branch's question about the same limit is open wait for that
answer, go on after a raise and fail with a refusal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers import final, invoke, llm, of, quiet, run
from storage_backends import close_backend, open_backend
from test_budgets import TWO_LOOPS, budgeted, failures
from test_engine_core import engine_for, step
from test_session_runs import Unanswering

from orchestra import (
    AgentRegistry,
    CommunicationConfig,
    ExecutionConfig,
    FunctionModel,
    ScriptedUser,
)
from orchestra.agents.contract import Action, StepOutcome
from orchestra.communication import CommunicationManager
from orchestra.coordination.config import Budget
from orchestra.coordination.engine import events as ev
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import StateManager
from orchestra.coordination.state.snapshots import capture, restore
from orchestra.coordination.state.snapshots import read as read_snapshot
from orchestra.errors import BranchTimeoutError, ToolError, UserInputError
from orchestra.models import Message, StepInfo
from orchestra.models.base import ModelReply

FAN = {
    "nodes": ["Hub", "A", "B", "C"],
    "edges": ["Hub -> A", "Hub -> B", "Hub -> C", "A -> Hub", "B -> Hub", "C -> Hub"],
    "entry_point": "Hub",
    "exit_points": ["Hub"],
    "rules": ["parallel(A, B, C)"],
}
SPENT = (
    "the run budget's max_steps=1 is spent (1 used); "
    "raise it in ExecutionConfig.budget.max_steps to go further"
)


def fanning() -> FunctionModel:
    """Hub fans out to A, B and C, each answers, and Hub ends with what came back."""

    def reply(messages: Sequence[Message], info: StepInfo) -> ModelReply:
        if info.agent_name != "Hub":
            return ModelReply(action=final(f"{info.agent_name} done"))
        if len(messages) > 2:
            return ModelReply(action=final("all done"))
        return ModelReply(action=invoke(("A", "a"), ("B", "b"), ("C", "c")))

    return FunctionModel(reply)


async def fan_out(user: ScriptedUser | None) -> Any:
    """The run's max_steps=1 is spent by Hub's fan-out: all three branches are stopped by it
    before their first step."""
    model = fanning()
    agents = [llm(name, model) for name in ("Hub", "A", "B", "C")]
    channel = {} if user is None else {"communication_config": CommunicationConfig(channel=user)}
    result = await run("go", FAN, agents, config=quiet(budget=Budget(max_steps=1)), **channel)
    return result, model


async def test_three_branches_stopped_by_the_run_budget_ask_once_and_one_raise_lets_all_go() -> (
    None
):
    """One answer for three branches: each used to ask its own question (the scripted user ran
    out of answers and two branches failed)."""
    user = ScriptedUser(["10"])
    result, model = await fan_out(user)
    assert result.success, result.error
    assert result.final_response == "all done" and model.call_count == 5
    assert len(user.questions) == 1
    assert user.questions[0].text.startswith("The run budget's max_steps=1 is spent (1 used)")
    spent = of(result, ev.BudgetSpent)
    assert len(spent) == 3 and len({e.question_id for e in spent}) == 1
    assert {e.branch_id for e in spent} == {"b1", "b2", "b3"}
    assert len(of(result, ev.UserInputRequested)) == 1
    assert len(of(result, ev.UserInputReceived)) == 3
    assert [(e.budget, e.limit, e.allowed) for e in of(result, ev.BudgetRaised)] == [
        ("run", "max_steps", 10.0)
    ]


def stopped_by_the_budget(result: Any) -> None:
    """The run failed with the run budget's error: the asking branch b1 with it, and each of
    the two others with it too or cancelled when the fan-out ("all") failed."""
    assert result.error is not None and f"failures: b1 (A): {SPENT}" in result.error
    failed = {e.branch_id: e.error for e in of(result, ev.BranchFailed)}
    cancelled = {e.branch_id for e in of(result, ev.BranchCompleted) if e.outcome == "cancelled"}
    assert failed["b1"] == SPENT
    for branch in ("b2", "b3"):
        assert failed.get(branch) == SPENT or branch in cancelled


@pytest.mark.parametrize("answers", [["no"], []], ids=["refused", "no-answer"])
async def test_a_refusal_stops_every_branch_waiting_for_it(answers: list[Any]) -> None:
    """'no' (or the channel failing on the question): asked once (the others used to ask
    again, one after another)."""
    user = ScriptedUser(answers)
    result, model = await fan_out(user)
    assert not result.success and model.call_count == 1
    assert len(user.questions) == 1
    stopped_by_the_budget(result)


async def test_with_no_channel_the_run_fails_with_the_budget_error() -> None:
    result, model = await fan_out(None)
    assert not result.success and model.call_count == 1
    stopped_by_the_budget(result)
    assert len(of(result, ev.UserInputRequested)) == 1


# ---- the engine core on its own ----


def both_stopped() -> Any:
    """b1 (A) and b2 (B) are both stopped by the run's max_steps=2: b1 asks, b2 waits (the
    fan-out goes on while either may still succeed)."""
    config = ExecutionConfig(budget=Budget(max_steps=2), convergence_policy="any")
    engine = budgeted(TWO_LOOPS, config)
    step(engine, "b1", 1.0, 1.0, Action.invoke("X", "x"))
    step(engine, "b2", 1.0, 1.0, Action.invoke("Y", "y"))
    engine.apply(inp.StepBegin(at=3.0, branch_id="b1"))
    engine.apply(inp.StepBegin(at=3.0, branch_id="b2"))
    asked = [e for e in engine.stream.events if type(e) is ev.UserInputRequested]
    assert [e.branch_id for e in asked] == ["b1"]
    assert engine.branches["b2"].question == engine.branches["b1"].question
    return engine


def test_a_branch_waiting_for_another_s_question_goes_on_with_its_raise() -> None:
    engine = both_stopped()
    effects = engine.apply(inp.UserAnswer(at=4.0, branch_id="b1", answer="10"))
    assert [type(e).__name__ for e in effects] == ["Spawn"]
    for branch in ("b1", "b2"):
        assert engine.branches[branch].status == "running"
        assert engine.branches[branch].question is None
    step(engine, "b2", 4.0, 1.0, Action.final("y"))
    assert not failures(engine)


def test_the_answer_times_out_and_every_waiting_branch_fails_with_the_budget_error() -> None:
    engine = both_stopped()
    timed_out = UserInputError("the user did not answer 'A''s question within 5s")
    engine.apply(inp.BranchFailure(at=8.0, branch_id="b1", error=timed_out))
    assert {b: kind for b, (kind, _) in failures(engine).items()} == {
        "b1": "BudgetExceededError",
        "b2": "BudgetExceededError",
    }


def test_an_asking_branch_that_ends_another_way_hands_its_question_on() -> None:
    """b1 fails while it asks (a branch_timeout, as the engine core is told: in a live run the
    root's, started first, runs out first): b2, which waited for that answer and which the
    failure leaves running ("any"), asks the same question now (it used to wait for good)."""
    engine = both_stopped()
    question = engine.branches["b1"].question
    timeout = BranchTimeoutError("branch_timeout", "branch b1 exceeded branch_timeout=5s")
    effects = engine.apply(inp.BranchFailure(at=8.0, branch_id="b1", error=timeout))
    assert "Spawn" in [type(e).__name__ for e in effects]
    asked = [e for e in engine.stream.events if type(e) is ev.UserInputRequested]
    assert [(e.branch_id, e.question_id) for e in asked] == [
        ("b1", question[0]),
        ("b2", question[0]),
    ]
    engine.apply(inp.UserAnswer(at=9.0, branch_id="b2", answer="no"))
    assert failures(engine)["b2"] == ("BudgetExceededError", SPENT.replace("1", "2"))


NESTED = {
    "nodes": ["Hub", "A", "B", "X", "Y"],
    "edges": [
        "Hub -> A",
        "Hub -> B",
        "A -> Hub",
        "B -> Hub",
        "A -> X",
        "A -> Y",
        "X -> A",
        "Y -> A",
    ],
    "entry_point": "Hub",
    "exit_points": ["Hub"],
}


def test_an_asking_branch_cancelled_hands_its_question_to_one_that_waits_elsewhere() -> None:
    """X (b3, in A's fan-out) asks about the run's steps and B (b2, in Hub's) waits for that
    answer; Y's return settles A's fan-out ("any") and cancels X: B asks the question now."""
    config = ExecutionConfig(budget=Budget(max_steps=3), convergence_policy="any")
    engine = budgeted(NESTED, config)
    step(engine, "b0", 0.0, 1.0, Action.invoke_parallel([("A", "a"), ("B", "b")]))
    step(engine, "b1", 1.0, 1.0, Action.invoke_parallel([("X", "x"), ("Y", "y")]))
    engine.apply(inp.StepBegin(at=2.0, branch_id="b4"))
    engine.apply(inp.StepBegin(at=2.0, branch_id="b3"))
    engine.apply(inp.StepBegin(at=2.0, branch_id="b2"))
    question = engine.branches["b3"].question
    assert question is not None and engine.branches["b2"].question == question
    engine.apply(
        inp.StepResult(
            at=3.0,
            branch_id="b4",
            outcome=StepOutcome(action=Action.final("y"), by_code=True),
            messages=(),
            duration=1.0,
        )
    )
    assert engine.branches["b3"].outcome == "cancelled"
    asked = [e for e in engine.stream.events if type(e) is ev.UserInputRequested]
    assert [e.branch_id for e in asked] == ["b3", "b2"]
    engine.apply(inp.UserAnswer(at=4.0, branch_id="b2", answer="10"))
    assert engine.branches["b2"].status == "running"


async def test_a_resumed_run_asks_the_open_question_once_again(tmp_path: Path) -> None:
    """Paused while b1 asks and b2 and b3 wait for its answer: the resumed run (rebuilt from
    its log) asks that question once, and its raise lets all three go on."""
    asked = asyncio.Event()
    storage = open_backend("sqlite", tmp_path)
    sessions = StateManager(storage)
    try:
        model = fanning()
        agents = AgentRegistry([llm(name, model) for name in ("Hub", "A", "B", "C")])
        config = quiet(budget=Budget(max_steps=1))
        waiting = CommunicationManager(Unanswering(asked))
        first = OrchestraInstance(FAN, agents, config, waiting, sessions)
        running = asyncio.ensure_future(first.execute("go", {"session_id": "s"}))
        await asyncio.wait_for(asked.wait(), 5)
        assert await first.pause_session("s")
        assert (await running).metadata["paused"]
        user = ScriptedUser(["10"])
        second = OrchestraInstance(FAN, agents, config, CommunicationManager(user), sessions)
        result = await asyncio.wait_for(second.resume_session("s"), 5)
        assert result.success, result.error
        assert result.final_response == "all done"
        assert len(user.questions) == 1
    finally:
        close_backend(storage)


SPOKES = {
    "nodes": ["Hub", "A", "B", "C"],
    "edges": ["Hub -> A", "Hub -> B", "Hub -> C", "A -> Hub", "B -> Hub", "C -> Hub"],
    "entry_point": "Hub",
    "exit_points": ["Hub"],
}


def test_branches_cancelled_together_hand_no_question_to_each_other() -> None:
    """b1 (A) asks, b2 (B) waits; C's return settles Hub's fan-out ("any"), which cancels
    both: the question is not handed on to b2, which is being cancelled too (it was, and b2
    asked it for a moment)."""
    config = ExecutionConfig(budget=Budget(max_steps=2), convergence_policy="any")
    engine = budgeted(SPOKES, config)
    step(engine, "b0", 0.0, 1.0, Action.invoke_parallel([("A", "a"), ("B", "b"), ("C", "c")]))
    engine.apply(inp.StepBegin(at=1.0, branch_id="b3"))
    engine.apply(inp.StepBegin(at=1.0, branch_id="b1"))
    engine.apply(inp.StepBegin(at=1.0, branch_id="b2"))
    assert engine.branches["b2"].question == engine.branches["b1"].question
    engine.apply(
        inp.StepResult(
            at=2.0,
            branch_id="b3",
            outcome=StepOutcome(action=Action.final("c"), by_code=True),
            messages=(),
            duration=1.0,
        )
    )
    assert [engine.branches[b].outcome for b in ("b1", "b2")] == ["cancelled", "cancelled"]
    asked = [e.branch_id for e in engine.stream.events if type(e) is ev.UserInputRequested]
    assert asked == ["b1"]


def spokes_failing(policy: str) -> tuple[Any, list[str]]:
    """SPOKES, the run's max_steps=1 spent: b1 (A) asks, b2 (B) and b3 (C) wait; b1 fails
    (its branch_timeout, as the engine is told): the effects of that failure."""
    config = ExecutionConfig(budget=Budget(max_steps=1), convergence_policy=policy)
    engine = budgeted(SPOKES, config)
    step(engine, "b0", 0.0, 1.0, Action.invoke_parallel([("A", "a"), ("B", "b"), ("C", "c")]))
    for branch in ("b1", "b2", "b3"):
        engine.apply(inp.StepBegin(at=1.0, branch_id=branch))
    timeout = BranchTimeoutError("branch_timeout", "branch b1 exceeded branch_timeout=5s")
    effects = engine.apply(inp.BranchFailure(at=8.0, branch_id="b1", error=timeout))
    return engine, [f"{type(e).__name__}:{getattr(e, 'branch_id', '')}" for e in effects]


def nested_failing(policy: str) -> tuple[Any, list[str]]:
    """NESTED, the run's max_steps=3 spent by Y's step: X (b3, in A's fan-out) asks and B (b2,
    in Hub's) waits; Y's step fails, which fails A's fan-out (cancelling X), then A, then
    Hub's fan-out (cancelling B): a cascade a live run goes through."""
    config = ExecutionConfig(budget=Budget(max_steps=3), convergence_policy=policy)
    engine = budgeted(NESTED, config)
    step(engine, "b0", 0.0, 1.0, Action.invoke_parallel([("A", "a"), ("B", "b")]))
    step(engine, "b1", 1.0, 1.0, Action.invoke_parallel([("X", "x"), ("Y", "y")]))
    for branch in ("b4", "b3", "b2"):
        engine.apply(inp.StepBegin(at=2.0, branch_id=branch))
    broken = ToolError("Y's lookup failed")
    effects = engine.apply(
        inp.StepError(at=3.0, branch_id="b4", error=broken, messages=(), duration=1.0)
    )
    return engine, [f"{type(e).__name__}:{getattr(e, 'branch_id', '')}" for e in effects]


@pytest.mark.parametrize("failing", [spokes_failing, nested_failing], ids=["asker", "cascade"])
def test_a_failure_hands_no_question_to_a_branch_it_cancels(failing: Any) -> None:
    """Convergence "all": the failure fails the fan-out(s), which cancel every waiting branch.
    The question went to one of them first (a UserInputRequested and a Spawn for a branch
    cancelled in the same breath: a question nobody was asked, in the log, trace and view)."""
    engine, effects = failing("all")
    asked = [e.branch_id for e in engine.stream.events if type(e) is ev.UserInputRequested]
    assert len(asked) == 1  # the asker's own
    assert not [effect for effect in effects if effect.startswith("Spawn")], effects
    assert engine.finished and engine.error is not None
    assert all(branch.ended for branch in engine.branches.values())


# ---- a log written before the rule replays as it ran ----

DATA = Path(__file__).parent / "data"


def per_branch_instance(sessions: StateManager, user: ScriptedUser) -> OrchestraInstance:
    """The run tests/data/format2-budget-questions-per-branch.jsonl was written by (a release
    in which each branch asked its own budget question): FAN with the run's max_steps=1 and
    convergence "any", the user answering "no", "10", "10"."""
    model = fanning()
    agents = AgentRegistry([llm(name, model) for name in ("Hub", "A", "B", "C")])
    config = quiet(budget=Budget(max_steps=1), convergence_policy="any")
    return OrchestraInstance(FAN, agents, config, CommunicationManager(user), sessions)


async def test_a_log_written_before_questions_were_shared_reads_back_as_it_ran(
    tmp_path: Path,
) -> None:
    """Each of b1, b2, b3 asked its own question there: b1 was refused, b2 and b3 raised, and
    the run succeeded. Read back with the shared rule, b2's and b3's answers were dropped and
    its stored result turned to a failure; a new run of the same workflow shares (one "no"
    stops all three)."""
    storage = open_backend("sqlite", tmp_path)
    try:
        lines = (DATA / "format2-budget-questions-per-branch.jsonl").read_text().splitlines()
        await storage.append("old", lines, durable=True, after=0)
        sessions = StateManager(storage, auto_save_interval=0)
        stored = await per_branch_instance(sessions, ScriptedUser([])).get_result("old")
        assert stored is not None and stored.success, stored and stored.error
        assert stored.final_response == "all done" and stored.total_steps == 3
        spent = [(e.branch_id, e.question_id) for e in of(stored, ev.BudgetSpent)]
        assert spent == [("b1", "budget-q1"), ("b2", "budget-q2"), ("b3", "budget-q3")]
        assert [e.branch_id for e in of(stored, ev.UserInputRequested)] == ["b1", "b2", "b3"]

        user = ScriptedUser(["no", "10", "10"])
        new = await per_branch_instance(sessions, user).execute("go", {"session_id": "new"})
        assert not new.success and len(user.questions) == 1
        assert {e.question_id for e in of(new, ev.BudgetSpent)} == {"budget-q1"}
        log = await sessions.load("new")
        assert log.last_run is not None and log.last_run.start.shared_budget_questions
    finally:
        close_backend(storage)


@pytest.mark.parametrize("shared", [True, False])
def test_a_snapshot_keeps_the_rule_the_run_was_started_with(shared: bool) -> None:
    """A run resumed from its snapshot decides as the live run did: the snapshot holds the
    rule of the run's header (a snapshot written before the rule holds none: False)."""
    config = ExecutionConfig(budget=Budget(max_steps=2), convergence_policy="any")
    engine = budgeted(TWO_LOOPS, config, shared=shared)
    data = capture(engine, 1, 0.0, compress=False)
    assert data is not None
    snapshot = read_snapshot(data, "s")
    assert snapshot is not None
    restored = engine_for(TWO_LOOPS)
    restore(restored, snapshot, "s")
    assert restored.shared_budget_questions is shared
