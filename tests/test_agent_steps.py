"""What the engine makes of an agent's step: an action the agent may not take (code fails its
branch at once, a model is steered), an exception the step raises itself, and the run-wide
step number its events carry.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import helpers
from helpers import final, fn, invoke, llm, of, spokes, statuses

from orchestra import Action, PatternConfig, ScriptedModel
from orchestra.coordination.engine import events as ev

WAIT = 3.0  # every run here takes well under a second; a hang fails after WAIT
run = partial(helpers.run, wait=WAIT)


# ---- actions an agent may not take -------------------------------------------------------------


async def test_empty_parallel_invocation_from_code_ends_the_run() -> None:
    """Code fans out over a computed list; an empty list must not leave the branch waiting on
    a fan-out with no children, which nothing ever settles. It is an action code may not
    take: the branch fails at once with an ActionError, before any fan-out starts."""

    def hub(value: Any, ctx: Any) -> Any:
        if isinstance(value, list):
            return Action.final(value)
        return Action.invoke_parallel([("W", item) for item in value["items"]])

    result = await run(
        {"items": []}, spokes("W"), [fn("Hub", hub), fn("W", lambda x, c: x)], max_steps=10
    )
    assert not result.success
    assert result.metadata["error_type"] == "ActionError", result.error
    assert result.error == (
        "agent 'Hub' returned an action it may not take: invoke_agent needs at least one invocation"
    )
    assert statuses(result) == {"b0": "failed"}
    assert result.total_steps == 1
    assert of(result, ev.FanOutStarted) == []


async def test_code_calling_no_tools_fails_at_once() -> None:
    """An action code may not take fails its branch at once. Action.call_tools([]) from a
    function agent with no tools used to set no pending tools and leave the input in place,
    so the same step was repeated until max_steps."""
    result = await run(
        "task",
        {"nodes": ["A"], "edges": []},
        [fn("A", lambda x, c: Action.call_tools([]))],
        max_steps=50,
    )
    assert not result.success
    assert result.metadata["error_type"] == "ActionError", result.error
    assert result.error == (
        "agent 'A' returned an action it may not take: call_tool needs at least one tool call"
    )
    assert result.total_steps == 1


async def test_a_callee_may_not_call_its_waiting_caller_back() -> None:
    """The caller is left out of a callee's peers ("a callee answers it with a final response
    rather than calling it back"), and validation must refuse the call back too, not only
    check that the edge exists (the model's call back was accepted and Hub ran as W's callee
    inside Hub's own call). The model is steered and answers instead."""
    hub = ScriptedModel([invoke(("W", "work")), final("hub done"), final("hub done")])
    w = ScriptedModel([invoke(("Hub", "help me")), final("w answer")])
    result = await run(
        "task",
        PatternConfig.hub_and_spoke("Hub", ["W"]),
        [llm("Hub", hub), llm("W", w)],
    )
    assert w.calls[0].info.peer_names == ()  # W is told it may not invoke Hub
    rejected = of(result, ev.ActionRejected)
    assert [e.agent for e in rejected] == ["W"], result.get_execution_trace()
    assert (
        rejected[0].problem == "'Hub' is waiting for your answer: reply with final_response instead"
    )
    assert result.success, result.error
    assert result.final_response == "hub done"
    assert (len(hub.calls), len(w.calls)) == (2, 2)  # Hub never ran as W's callee
    assert hub.calls[1].messages[-1].content.endswith("w answer")


# ---- a step that raises ------------------------------------------------------------------------


async def test_agent_step_raising_cancelled_error_fails_the_branch_not_the_run_loop() -> None:
    """A step that raises CancelledError of its own (a cancelled future it awaited) is the
    agent's failure: the branch fails with an AgentStepError naming the agent; the run ends
    (the CancelledError does not reach the run loop)."""

    async def broken(value: Any, ctx: Any) -> Any:
        raise asyncio.CancelledError("an inner future was cancelled")

    result = await run("task", {"nodes": ["A"], "edges": []}, [fn("A", broken)])
    assert not result.success
    assert result.metadata["error_type"] == "AgentStepError", result.error
    assert result.error == "agent 'A' raised CancelledError"
    assert statuses(result) == {"b0": "failed"}
    [branch] = result.branch_results
    assert (branch.agents, branch.error_type) == (["A"], "AgentStepError")


# ---- step numbers ------------------------------------------------------------------------------


async def test_step_events_carry_the_number_of_their_own_step() -> None:
    """With parallel branches, each StepCompleted (and ActionRejected) names the run-wide
    number of its own step, as its StepStarted did, so the trace has no duplicates. (It used to
    read the run-wide counter when the step completed, naming another branch's step.)"""

    async def worker(value: Any, ctx: Any) -> Any:
        await asyncio.sleep(0)  # both workers start before either completes
        return value

    def hub(value: Any, ctx: Any) -> Any:
        if isinstance(value, list):
            return Action.final("ok")
        return Action.invoke_parallel([("W1", 1), ("W2", 2)])

    result = await run(
        "task", spokes("W1", "W2"), [fn("Hub", hub), fn("W1", worker), fn("W2", worker)]
    )
    assert result.success, result.error
    started = [(e.branch_id, e.step) for e in of(result, ev.StepStarted)]
    done = [(e.branch_id, e.step) for e in of(result, ev.StepCompleted)]
    assert sorted(done) == sorted(started)
    steps = [entry["step"] for entry in result.get_execution_trace()]
    assert len(steps) == len(set(steps)), steps
