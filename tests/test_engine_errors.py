"""Every error path of the Orchestra engine, driven offline by scripted and function agents.

Workflow problems never raise out of ``Orchestra.run``: the result says ``success=False``, its
``error`` names the culprit (agent, edge, limit, node) and ``metadata["error_type"]`` the
exception class. Misuse of the API itself raises. Work finished before a failure is kept in
``branch_results``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import helpers
import pytest
from helpers import ask, final, fn, llm, of, quiet, run
from pydantic import ValidationError

from orchestra import (
    Action,
    Agent,
    AgentRegistry,
    CommunicationConfig,
    ConvergencePolicy,
    Edge,
    ErrorHandlingConfig,
    ExecutionConfig,
    FunctionAgent,
    FunctionModel,
    Node,
    Orchestra,
    OrchestraResult,
    PatternConfig,
    ProgrammaticChannel,
    ScriptedModel,
    ScriptedUser,
    Topology,
)
from orchestra.coordination.engine import events as ev
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.results import BranchResult
from orchestra.coordination.state import FileStorageBackend, StateManager, records
from orchestra.errors import ConfigurationError, UserInputError
from orchestra.models import Message, StepInfo

# ---- helpers ------------------------------------------------------------------------------------

TINY = 0.05  # seconds: every timeout in this file


def scripted(name: str, *replies: Any, tools: Any = None) -> tuple[Agent, ScriptedModel]:
    """A model agent replying ``replies`` in turn, and its model (to inspect its calls)."""
    model = ScriptedModel(list(replies))
    return llm(name, model, tools=tools), model


def invoke(*targets: str, request: Any = "work", label: str | None = None) -> dict[str, Any]:
    """invoke_agent for ``targets``, all with one request: these tests care who is called."""
    return helpers.invoke(*((target, request) for target in targets), label=label)


def call_tool(name: str, **arguments: Any) -> dict[str, Any]:
    return {"next_action": "call_tool", "action_input": [{"name": name, "arguments": arguments}]}


def steering_input(model: ScriptedModel, call: int) -> str:
    """The input of the model's ``call``-th call (0-based), checked to be a steering message."""
    message = model.calls[call].messages[-1]
    assert message.role == "user"
    assert message.content.startswith("[Orchestra]\nYour last reply could not be used: ")
    return message.content


def branch(result: OrchestraResult, branch_id: str) -> BranchResult:
    found = result.get_branch_by_id(branch_id)
    assert found is not None, f"no branch {branch_id} in {result.branch_results}"
    return found


def assert_failed(result: OrchestraResult, error_type: str, *fragments: str) -> str:
    """The run failed with ``error_type`` and an error mentioning every fragment."""
    assert result.success is False
    assert result.final_response is None
    assert result.metadata["error_type"] == error_type
    assert result.error is not None
    for fragment in fragments:
        assert fragment in result.error, f"{fragment!r} not in {result.error!r}"
    return result.error


async def hang(_input: Any, _context: Any) -> None:
    """A function agent that never finishes (for timeouts)."""
    await asyncio.Event().wait()


def boom(_input: Any, _context: Any) -> None:
    raise RuntimeError("disk on fire")


def echo(prefix: str) -> Any:
    return lambda value, _context: f"{prefix}({value})"


# A -> B -> C: A is an LLM agent (not an exit), B and C are code; C is the exit.
LINE = {"nodes": ["A", "B", "C"], "edges": ["A -> B", "B -> C"]}
# S fans out to Fast and Slow (code may fan out over its edges); both are exits.
SCATTER = {"nodes": ["S", "Fast", "Slow"], "edges": ["S -> Fast", "S -> Slow"]}
# A calls B (B answers back to A); A alone talks to the user.
CALLER = {"nodes": ["A", "B"], "edges": ["User -> A", "A <-> B", "A -> User"]}
TALKER = {"nodes": ["A"], "edges": ["User -> A", "A -> User"]}


def line_agents(*replies: Any) -> tuple[ScriptedModel, list[Any]]:
    a, model = scripted("A", *replies, tools=[lookup])
    return model, [a, fn("B", echo("B")), fn("C", echo("C"))]


def lookup(city: str) -> str:
    return f"sunny in {city}"


def scatter_agents(slow: Any) -> list[FunctionAgent]:
    return [fn("S", echo("S")), fn("Fast", echo("Fast")), fn("Slow", slow)]


def hanging_line() -> list[FunctionAgent]:
    """LINE in code, with B never finishing: only a timeout ends the run."""
    return [fn("A", echo("A")), fn("B", hang), fn("C", echo("C"))]


def assert_fast_branch_kept(result: OrchestraResult) -> None:
    fast = branch(result, "b1")
    assert fast.agents == ["Fast"]
    assert fast.status == "completed"
    assert fast.result == "Fast(S(go))"


# ---- steering: an invalid reply is rejected, the model is told, a corrected reply succeeds ----

DEEP_REPLY = (
    '{"next_action": "invoke_agent", "action_input": ' + "[" * 100_000 + "]" * 100_000 + "}"
)
LONG_NUMBER = '{"next_action": "invoke_agent", "action_input": ' + "9" * 5000 + "}"

STEERING_CASES = [
    pytest.param(invoke("Ghost"), "'Ghost' is not an agent", id="unknown-agent"),
    pytest.param(invoke("C"), "'C' is not your peer", id="forbidden-peer"),
    pytest.param('{"next_action": "invoke_agent", ', "the reply is not valid JSON", id="bad-json"),
    pytest.param("I think B should handle this.", "the reply has no action", id="no-action"),
    pytest.param(final("done"), "A cannot give the final response here", id="final-non-exit"),
    pytest.param(ask("Which city?"), "no edge 'A -> User'", id="ask-user-no-edge"),
    pytest.param(call_tool("teleport"), "A has no tool 'teleport'", id="unknown-tool"),
    pytest.param(invoke("User"), "the user is not invoked", id="invoke-user"),
    # json.loads raises RecursionError and ValueError on these: they failed the branch at once
    pytest.param(DEEP_REPLY, "the reply nests deeper than 100 levels", id="deep-json"),
    pytest.param(LONG_NUMBER, "the reply holds a number of more than 4300", id="long-number"),
]


@pytest.mark.parametrize(("bad_reply", "problem"), STEERING_CASES)
async def test_invalid_reply_is_steered_then_corrected(bad_reply: Any, problem: str) -> None:
    model, agents = line_agents(bad_reply, invoke("B", request="go"))
    result = await run("task", LINE, agents)

    assert result.success, result.error
    assert result.final_response == "C(B(go))"
    [rejected] = of(result, ev.ActionRejected)
    assert rejected.agent == "A"
    assert rejected.branch_id == "b0"
    assert rejected.attempt == 1
    assert problem in rejected.problem
    # The model sees its bad reply, then the steering input naming the problem and the menu.
    assert len(model.calls) == 2
    assert model.calls[1].messages[-2].role == "assistant"
    steering = steering_input(model, 1)
    assert problem in steering
    assert "You may: invoke_agent with one of: B; call_tool with one of: lookup." in steering
    assert result.total_steps == 4  # A (rejected), A, B, C
    assert result.get_execution_trace()[0]["action"] == "rejected"
    assert result.get_metrics()["rejected_actions"] == 1


async def test_unknown_tool_steered_then_real_tool_used() -> None:
    model, agents = line_agents(
        call_tool("teleport", to="Mars"), call_tool("lookup", city="Oslo"), invoke("B")
    )
    result = await run("task", LINE, agents)

    assert result.success, result.error
    assert "A has no tool 'teleport'" in steering_input(model, 1)
    tool_message = model.calls[2].messages[-1]
    assert tool_message.role == "tool"
    assert "sunny in Oslo" in tool_message.content


async def test_a_failing_tool_is_reported_to_the_model_not_fatal() -> None:
    model, agents = line_agents(call_tool("lookup"), invoke("B", request="go"))
    result = await run("task", LINE, agents)

    assert result.success, result.error
    tool_message = model.calls[1].messages[-1]
    assert tool_message.role == "tool"
    assert (tool_message.name, tool_message.tool_call_id) == ("lookup", "call_0")
    assert tool_message.content.startswith("error: ToolError: invalid arguments for tool 'lookup'")
    assert "city" in tool_message.content
    [completed] = of(result, ev.ToolCallCompleted)
    assert completed.ok is False


async def test_unmet_label_condition_is_steered_then_label_accepted() -> None:
    topology = Topology(
        nodes=["A", "B"], edges=[Edge("A", "B", metadata={"condition": "approved"})]
    )
    a, model = scripted("A", invoke("B"), invoke("B", label="approved"))
    b, _ = scripted("B", "all good")
    result = await run("task", topology, [a, b])

    assert result.success, result.error
    assert result.final_response == "all good"
    [rejected] = of(result, ev.ActionRejected)
    assert 'invoking \'B\' needs "label": "approved"' in rejected.problem
    assert 'needs "label": "approved"' in steering_input(model, 1)
    # The model was told the label up front, too.
    assert model.calls[0].info.peers[0].label == "approved"


async def test_parallel_invocation_without_parallel_rule_is_steered() -> None:
    """A FunctionModel that reacts to steering: it fans out until told it may not."""
    seen: list[Sequence[Message]] = []

    def hub(messages: Sequence[Message], info: StepInfo) -> Any:
        seen.append(list(messages))
        last = messages[-1].content
        if last.startswith("[Response from W1]"):
            return final("summary")
        if "may not be invoked together" in last:
            return invoke("W1")
        return invoke("W1", "W2")

    topology = PatternConfig.hub_and_spoke(hub="H", spokes=["W1", "W2"])
    w1, _ = scripted("W1", "w1 answer")
    w2, w2_model = scripted("W2")
    h = llm("H", FunctionModel(hub))
    result = await run("task", topology, [h, w1, w2])

    assert result.success, result.error
    assert result.final_response == "summary"
    [rejected] = of(result, ev.ActionRejected)
    assert rejected.agent == "H"
    assert "W1, W2 may not be invoked together (parallel groups you may use: none)" in (
        rejected.problem
    )
    assert "may not be invoked together" in seen[1][-1].content
    assert w2_model.calls == []
    assert [b.branch_id for b in result.branch_results] == ["b0"]  # no fan-out happened


async def test_parallel_invocation_allowed_with_parallel_rule() -> None:
    """The counterpart: the same reply is accepted when a parallel rule covers the targets."""
    topology = PatternConfig.hub_and_spoke(hub="H", spokes=["W1", "W2"], parallel_spokes=True)
    h, _ = scripted("H", invoke("W1", "W2"), final("both"))
    w1, _ = scripted("W1", "one")
    w2, _ = scripted("W2", "two")
    result = await run("task", topology, [h, w1, w2])

    assert result.success, result.error
    assert of(result, ev.ActionRejected) == []


# ---- steering limits and modes -------------------------------------------------------------------


async def test_past_max_steering_retries_the_branch_fails_quoting_last_reply() -> None:
    model, agents = line_agents("first chat", "second chat", "third chat", "fourth chat")
    result = await run("task", LINE, agents)

    assert_failed(
        result,
        "ActionError",
        "agent 'A' gave no usable action after 4 attempt(s)",
        "the reply has no action",
        "Last reply: 'fourth chat'",
    )
    assert [r.attempt for r in of(result, ev.ActionRejected)] == [1, 2, 3, 4]
    assert len(model.calls) == 4  # the default max_steering_retries=3 allows 3 retries
    root = branch(result, "b0")
    assert root.status == "failed"
    assert root.error_type == "ActionError"
    assert result.total_steps == 4  # steering retries count as steps


async def test_an_unreadable_reply_past_the_retries_fails_quoting_a_bounded_prefix() -> None:
    _, agents = line_agents(*[DEEP_REPLY] * 4)
    result = await run("task", LINE, agents)

    error = assert_failed(
        result,
        "ActionError",
        "agent 'A' gave no usable action after 4 attempt(s)",
        "nests deeper than 100 levels",
        """Last reply: '{"next_action": "invoke_agent", "action_input": [[[""",
    )
    assert len(error) < 1_000  # the reply is 200,000 characters


def durable_line(storage: FileStorageBackend, agents: list[Any]) -> OrchestraInstance:
    return OrchestraInstance(
        topology=Topology(**LINE),
        agent_registry=AgentRegistry(agents),
        initial_config=quiet(),
        state_manager=StateManager(storage, auto_save_interval=0),
    )


async def test_a_steered_unreadable_reply_is_stored_and_read_back(tmp_path: Path) -> None:
    """The rejected reply is kept as text (the parsed value is never stored): the session log
    writes it and reads it back."""
    storage = FileStorageBackend(tmp_path)
    _, agents = line_agents(DEEP_REPLY, invoke("B", request="go"))
    instance = durable_line(storage, agents)
    try:
        result = await asyncio.wait_for(instance.execute("task"), helpers.WAIT)
        assert result.success, result.error
        assert result.session_id is not None
        stored = await instance.get_result(result.session_id)
    finally:
        storage.close()
    assert stored is not None
    assert stored.final_response == "C(B(go))"
    [rejected] = of(stored, ev.ActionRejected)
    assert (
        rejected.reply == DEEP_REPLY[:10_000] + "\n[190,049 more characters of this reply were cut]"
    )


async def test_a_huge_unusable_reply_is_kept_cut_and_steered_in_a_durable_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rejected reply was kept whole, twice in its record: in a durable run one of 34 MB
    failed its step as too large to store, where it should be steered; and the model was
    shown all of it again."""
    monkeypatch.setattr(records, "MAX_RECORD_CHARS", 30_000)
    garbage = "{" + "not json " * 2_500  # 22,501 characters: twice that is over the limit
    model, agents = line_agents(garbage, invoke("B", request="go"))
    storage = FileStorageBackend(tmp_path)
    instance = durable_line(storage, agents)
    try:
        result = await asyncio.wait_for(instance.execute("task"), helpers.WAIT)
    finally:
        storage.close()
    assert result.success, result.error
    shown = model.calls[1].messages[-2]  # its bad reply, as the steered call saw it
    assert shown.role == "assistant" and len(shown.content) < 10_100
    assert shown.content.endswith("[12,501 more characters of this reply were cut]")


async def test_max_steering_retries_is_configurable() -> None:
    model, agents = line_agents("chat", "more chat", invoke("B"))
    result = await run("task", LINE, agents, config=quiet(max_steering_retries=1))

    assert_failed(result, "ActionError", "after 2 attempt(s)", "Last reply: 'more chat'")
    assert model.remaining == 1


async def test_steering_retries_are_counted_per_step() -> None:
    """A valid step resets the count: one retry allowed before each of two decisions."""
    topology = PatternConfig.hub_and_spoke(hub="H", spokes=["W"])
    h, _ = scripted("H", invoke("Ghost"), invoke("W"), "{not json", final("done"))
    w, _ = scripted("W", "w answer")
    result = await run("task", topology, [h, w], config=quiet(max_steering_retries=1))

    assert result.success, result.error
    assert result.final_response == "done"
    assert [r.attempt for r in of(result, ev.ActionRejected)] == [1, 1]


async def test_steering_mode_never_fails_on_first_invalid_reply() -> None:
    model, agents = line_agents(invoke("Ghost"), invoke("B"))
    result = await run("task", LINE, agents, config=quiet(steering_mode="never"))

    assert_failed(
        result, "ActionError", "agent 'A' gave no usable action after 1 attempt(s)", "'Ghost'"
    )
    assert len(model.calls) == 1
    assert len(of(result, ev.ActionRejected)) == 1


@pytest.mark.parametrize("mode", ["auto", "always"])
async def test_steering_mode_always_adds_a_reminder_before_later_steps(mode: str) -> None:
    topology = PatternConfig.hub_and_spoke(hub="H", spokes=["W"])
    h, model = scripted("H", invoke("W"), final("done"))
    w, _ = scripted("W", "w answer")
    result = await run("task", topology, [h, w], config=quiet(steering_mode=mode))

    assert result.success, result.error
    reminder = "[Orchestra] You may now: invoke_agent with one of: W; final_response."
    first, second = (call.messages for call in model.calls)
    assert all(m.content != reminder for m in first)
    assert any(m.content == reminder for m in second) is (mode == "always")
    assert second[-1].content == "[Response from W]\nw answer"


# ---- function agents and models failing ---------------------------------------------------------


async def test_function_agent_value_no_edge_accepts_fails_naming_agent() -> None:
    topology = Topology(
        nodes=["A", "B"], edges=[Edge("A", "B", metadata={"condition": "approved"})]
    )
    a = fn("A", lambda value, _c: "not labelled")
    b, b_model = scripted("B", "unused")
    result = await run("task", topology, [a, b])

    assert_failed(
        result,
        "ActionError",
        "function agent 'A' returned 'not labelled'",
        "A -> B",
        "'A' is not an exit",
    )
    assert b_model.calls == []
    assert of(result, ev.ActionRejected) == []  # code is not steered


@pytest.mark.parametrize(
    ("action", "problem"),
    [
        pytest.param(Action.invoke("C", "x"), "'C' is not your peer", id="forbidden-peer"),
        pytest.param(Action.invoke("Ghost"), "'Ghost' is not an agent", id="unknown-agent"),
        pytest.param(Action.final("x"), "A cannot give the final response", id="final"),
        pytest.param(Action.ask_user("why?"), "no edge 'A -> User'", id="ask-user"),
    ],
)
async def test_function_agent_forbidden_action_fails_at_once(action: Action, problem: str) -> None:
    a = fn("A", lambda value, _c: action)
    result = await run("task", LINE, [a, fn("B", echo("B")), fn("C", echo("C"))])

    assert_failed(result, "ActionError", "agent 'A' returned an action it may not take", problem)
    assert of(result, ev.ActionRejected) == []
    assert result.total_steps == 1


def _raising_predicate(payload: Any, context: Any) -> bool:
    raise KeyError("score")


@pytest.mark.parametrize("decided_by", ["code", "model"])
async def test_edge_predicate_raising_is_condition_error_naming_edge(decided_by: str) -> None:
    topology = Topology(
        nodes=["A", "B"], edges=[Edge("A", "B", metadata={"condition": _raising_predicate})]
    )
    if decided_by == "code":
        a: Any = fn("A", lambda value, _c: "payload")
    else:
        a, _ = scripted("A", invoke("B"))
    b, b_model = scripted("B", "unused")
    result = await run("task", topology, [a, b])

    assert_failed(result, "ConditionError", "the condition on edge 'A -> B' raised KeyError")
    assert b_model.calls == []


async def test_function_agent_raising_is_agent_step_error_naming_agent() -> None:
    a, _ = scripted("A", invoke("B"))
    result = await run("task", LINE, [a, fn("B", echo("B")), fn("C", boom)])

    assert_failed(result, "AgentStepError", "agent 'C' raised RuntimeError: disk on fire")
    root = branch(result, "b0")
    assert root.agents == ["A", "B", "C"]
    assert root.error_type == "AgentStepError"


async def test_model_raising_is_agent_step_error_naming_agent() -> None:
    a, model = scripted("A", ConnectionError("provider unreachable"))
    result = await run("task", LINE, [a, fn("B", echo("B")), fn("C", echo("C"))])

    assert_failed(
        result, "AgentStepError", "agent 'A' raised ConnectionError: provider unreachable"
    )
    assert len(model.calls) == 1


@pytest.mark.parametrize("step_timeout", [None, 5.0])
async def test_agent_raising_timeout_error_is_its_own_failure(step_timeout: float | None) -> None:
    """A TimeoutError the agent raises itself (an HTTP client's, say) is not a step timeout."""

    def upstream(_input: Any, _context: Any) -> None:
        raise TimeoutError("upstream HTTP timeout")

    agents = [fn("A", upstream), fn("B", echo("B")), fn("C", echo("C"))]
    result = await run("go", LINE, agents, config=quiet(step_timeout=step_timeout))

    assert_failed(result, "AgentStepError", "agent 'A' raised TimeoutError: upstream HTTP timeout")


async def test_scripted_model_running_out_names_agent() -> None:
    topology = PatternConfig.hub_and_spoke(hub="H", spokes=["W"])
    h, _ = scripted("H", invoke("W", request="one"), invoke("W", request="two"), final("x"))
    w, _ = scripted("W", "first answer")
    result = await run("task", topology, [h, w])

    assert_failed(
        result,
        "ScriptExhaustedError",
        "the ScriptedModel of agent 'W' ran out of replies after 1",
    )
    assert branch(result, "b0").agents == ["H", "W", "W"]


async def test_failure_in_one_parallel_branch_keeps_the_others_work() -> None:
    result = await run("go", SCATTER, scatter_agents(boom))

    assert_failed(
        result,
        "ConvergenceError",
        "the fan-out from 'S' (f1) had 1 of 2 branches succeed, 2 required",
        "b2 (Slow): agent 'Slow' raised RuntimeError: disk on fire",
    )
    assert_fast_branch_kept(result)
    slow = branch(result, "b2")
    assert slow.status == "failed"
    assert slow.error_type == "AgentStepError"
    assert branch(result, "b0").error_type == "ConvergenceError"


# ---- limits ------------------------------------------------------------------------------------


async def test_step_timeout_fails_the_branch_naming_agent() -> None:
    result = await run("go", LINE, hanging_line(), config=quiet(step_timeout=TINY))

    assert_failed(
        result, "StepTimeoutError", "agent 'B' (branch b0) took longer than step_timeout=0.05s"
    )


async def test_step_timeout_in_a_fan_out_keeps_finished_branch() -> None:
    result = await run("go", SCATTER, scatter_agents(hang), config=quiet(step_timeout=TINY))

    assert_failed(result, "ConvergenceError", "b2 (Slow)", "step_timeout=0.05s")
    assert_fast_branch_kept(result)
    assert branch(result, "b2").error_type == "StepTimeoutError"


async def test_branch_timeout_fails_the_branch() -> None:
    result = await run("go", LINE, hanging_line(), config=quiet(branch_timeout=TINY))

    assert_failed(result, "BranchTimeoutError", "branch b0 (at 'B') exceeded branch_timeout=0.05s")
    assert branch(result, "b0").agents == ["A", "B"]


async def test_convergence_timeout_with_fail_policy() -> None:
    result = await run("go", SCATTER, scatter_agents(hang), config=quiet(convergence_timeout=TINY))

    assert_failed(
        result,
        "ConvergenceTimeoutError",
        "the fan-out from 'S' (f1) had 1 of 2 branches succeed, 2 required",
        "convergence_timeout=0.05s passed",
    )
    assert_fast_branch_kept(result)
    assert branch(result, "b2").status == "cancelled"


async def test_convergence_timeout_with_proceed_policy_resumes_with_what_arrived() -> None:
    policy = ConvergencePolicy(on_insufficient="proceed")
    result = await run(
        "go",
        SCATTER,
        scatter_agents(hang),
        config=quiet(convergence_timeout=TINY, convergence_policy=policy),
    )

    assert result.success, result.error
    assert result.final_response == [
        {"agent": "Fast", "branch_id": "b1", "status": "completed", "response": "Fast(S(go))"}
    ]
    assert branch(result, "b2").status == "cancelled"


async def test_insufficient_branches_with_proceed_policy_include_the_failure() -> None:
    policy = ConvergencePolicy(on_insufficient="proceed")
    result = await run("go", SCATTER, scatter_agents(boom), config=quiet(convergence_policy=policy))

    assert result.success, result.error
    fast, slow = result.final_response
    assert fast["status"] == "completed"
    assert slow["status"] == "failed"
    assert "agent 'Slow' raised RuntimeError: disk on fire" in slow["error"]


async def test_run_timeout_rule_ends_the_run_keeping_finished_work() -> None:
    topology = {**SCATTER, "rules": ["timeout(0.05)"]}
    result = await run("go", topology, scatter_agents(hang))

    assert_failed(result, "RunTimeoutError", "the run exceeded its timeout(0.05) rule")
    assert_fast_branch_kept(result)
    assert branch(result, "b2").status == "cancelled"


@pytest.mark.parametrize(("rules", "peak"), [([], 3), (["max_agents(1)"], 1)])
async def test_max_agents_rule_bounds_concurrent_steps(rules: list[str], peak: int) -> None:
    running = 0
    highest = 0

    async def work(value: Any, _context: Any) -> str:
        nonlocal running, highest
        running += 1
        highest = max(highest, running)
        await asyncio.sleep(0.01)  # simulated work, long enough for the others to start
        running -= 1
        return f"done {value}"

    topology = {
        "nodes": ["S", "W1", "W2", "W3"],
        "edges": ["S -> W1", "S -> W2", "S -> W3"],
        "rules": rules,
    }
    workers = [fn(name, work) for name in ("W1", "W2", "W3")]
    result = await run("go", topology, [fn("S", echo("S")), *workers])

    assert result.success, result.error
    assert [item["response"] for item in result.final_response] == ["done S(go)"] * 3
    assert highest == peak


def _endless_caller() -> tuple[FunctionAgent, FunctionAgent]:
    """A calls B with a new request every time, forever."""
    rounds = itertools.count()
    a = fn("A", lambda value, _c: Action.invoke("B", f"round {next(rounds)}"))
    return a, fn("B", echo("B"))


@pytest.mark.parametrize(("rule", "max_steps", "limit"), [(5, 100, 5), (50, 3, 3)])
async def test_the_smaller_of_max_steps_and_its_rule_wins(
    rule: int, max_steps: int, limit: int
) -> None:
    topology = {**CALLER, "rules": [f"max_steps({rule})"]}
    result = await run("go", topology, _endless_caller(), max_steps=max_steps)

    assert_failed(result, "StepLimitError", f"the run reached max_steps={limit}")
    assert result.total_steps == limit
    assert branch(result, "b0").status == "failed"


async def test_ping_pong_rule_stops_same_payloads() -> None:
    topology = {**CALLER, "rules": ["ping_pong(2)"]}
    a = fn("A", lambda value, _c: Action.invoke("B", "same request"))
    b = fn("B", lambda value, _c: "same answer")
    result = await run("go", topology, [a, b])

    assert_failed(
        result,
        "PingPongError",
        "'A' and 'B' handed the same work back and forth 2 times",
        "ping_pong(2)",
    )
    assert result.total_steps == 4


async def test_ping_pong_rule_lets_changing_payloads_run() -> None:
    topology = {**CALLER, "rules": ["ping_pong(2)"]}
    rounds = itertools.count()

    def a_fn(value: Any, _context: Any) -> Action:
        return Action.invoke("B", value) if next(rounds) < 5 else Action.final(value)

    result = await run("go", topology, [fn("A", a_fn), fn("B", echo("B"))])

    assert result.success, result.error
    assert result.final_response == "B(B(B(B(B(go)))))"


# ---- topology and agents, reported at run start --------------------------------------------------


async def test_invalid_topology_returns_topology_error_text() -> None:
    a, model = scripted("A", "x")
    result = await run("task", {"nodes": ["A"], "edges": ["A -> Z"]}, [a])

    error = assert_failed(result, "TopologyError", "Invalid topology", "'Z'", "A -> Z")
    assert "not a node" in error
    assert result.branch_results == []
    assert model.calls == []


async def test_unknown_topology_key_returns_topology_error() -> None:
    a, _ = scripted("A", "x")
    result = await run("task", {"nodes": ["A"], "edge": []}, [a])

    assert_failed(result, "TopologyError", "unknown topology key 'edge'")


async def test_missing_agents_are_named_at_run_start() -> None:
    a, model = scripted("A", invoke("B"))
    result = await run("task", {"nodes": ["A", "B", "C"], "edges": ["A -> B", "A -> C"]}, [a])

    assert_failed(result, "AgentNotFoundError", "node(s) 'B', 'C'", "agent_registry")
    assert model.calls == []
    assert result.total_steps == 0
    assert result.branch_results == []


async def test_bad_node_convergence_policy_is_configuration_error_naming_node() -> None:
    topology = Topology(
        nodes=[Node("S", metadata={"convergence_policy": "most"}), "Fast", "Slow"],
        edges=["S -> Fast", "S -> Slow"],
    )
    s = fn("S", boom)
    result = await run("go", topology, [s, fn("Fast", echo("F")), fn("Slow", echo("S"))])

    assert_failed(result, "ConfigurationError", "node 'S': convergence_policy", "'most'")
    assert result.total_steps == 0


# ---- API misuse raises ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        pytest.param({"task": None}, TypeError, "task must be", id="task-none"),
        pytest.param(
            {"task": 42}, TypeError, "task must be a string or a dict, got int", id="task-int"
        ),
        pytest.param({"topology": ["A"]}, TypeError, "got list", id="topology-list"),
        pytest.param({"max_steps": 0}, ConfigurationError, "max_steps", id="max-steps-0"),
        pytest.param({"max_steps": True}, ConfigurationError, "max_steps", id="max-steps-bool"),
        pytest.param({"max_step": 5}, TypeError, "max_step", id="unknown-kwarg"),
        pytest.param(
            {"execution_config": {"step_timeout": 1}},
            TypeError,
            "execution_config must be ExecutionConfig, got dict",
            id="execution-config-dict",
        ),
        pytest.param({"context": "ctx"}, TypeError, "context must be dict", id="context-str"),
        pytest.param(
            {"agent_registry": []}, TypeError, "agent_registry must be", id="registry-list"
        ),
        pytest.param(
            {"communication_config": CommunicationConfig(channel=object())},
            TypeError,
            "channel must have an async ask",
            id="channel-object",
        ),
        pytest.param(
            {"error_config": ExecutionConfig()}, TypeError, "error_config", id="error-config"
        ),
        pytest.param(
            {"follow_up_timeout": -5},
            ConfigurationError,
            "follow_up_timeout must be a positive, finite number of seconds, got -5",
            id="follow-up-timeout-negative",
        ),
        pytest.param(
            {"follow_up_timeout": "60"},
            ConfigurationError,
            "follow_up_timeout",
            id="follow-up-timeout-str",
        ),
        pytest.param(
            {"follow_up_timeout": float("nan")},
            ConfigurationError,
            "follow_up_timeout",
            id="follow-up-timeout-nan",
        ),
        pytest.param(
            {"allow_follow_ups": "yes"}, TypeError, "allow_follow_ups", id="follow-ups-str"
        ),
    ],
)
async def test_api_misuse_raises(arguments: dict[str, Any], error: type, message: str) -> None:
    a, model = scripted("A", "x")
    call: dict[str, Any] = {
        "task": "task",
        "topology": {"nodes": ["A"], "edges": []},
        "agent_registry": AgentRegistry([a]),
        **arguments,
    }
    with pytest.raises(error, match=message):
        await Orchestra.run(**call)
    assert model.calls == []


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: ExecutionConfig(step_timeout=-1), "step_timeout"),
        (lambda: ExecutionConfig(max_steering_retries=-1), "max_steering_retries"),
        (lambda: ExecutionConfig(steering_mode="sometimes"), "steering_mode"),
        (lambda: ConvergencePolicy(min_ratio=2), "min_ratio"),
        (lambda: CommunicationConfig(user_timeout=0), "user_timeout"),
    ],
)
def test_config_validation_names_the_field(build: Any, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        build()


# ---- the user ------------------------------------------------------------------------------------


async def test_ask_user_without_channel_is_user_input_error() -> None:
    a, model = scripted("A", ask("Which city?"), final("unused"))
    result = await run(
        "task", TALKER, [a], communication_config=CommunicationConfig(terminal=False)
    )

    assert_failed(
        result, "UserInputError", "agent 'A' asked the user 'Which city?'", "no user channel"
    )
    assert len(model.calls) == 1


async def test_scripted_user_out_of_answers() -> None:
    a, model = scripted("A", ask("Which city?"), ask("Which day?"), final("unused"))
    user = ScriptedUser(["Paris"])
    result = await run("task", TALKER, [a], communication_config=CommunicationConfig(channel=user))

    assert_failed(
        result,
        "UserInputError",
        "ScriptedUser has no answer left for the question of agent 'A'",
        "'Which day?'",
    )
    assert model.calls[1].messages[-1].content == "[The user answered]\nParis"
    assert [q.text for q in user.questions] == ["Which city?", "Which day?"]


async def test_programmatic_channel_rejects_an_unknown_question_id() -> None:
    channel = ProgrammaticChannel()
    a, model = scripted("A", ask("Which city?"), final("done"))
    communication = CommunicationConfig(channel=channel)
    running = asyncio.create_task(run("task", TALKER, [a], communication_config=communication))
    question = await channel.next_question()
    with pytest.raises(UserInputError, match="no pending question 'nope'"):
        channel.answer("nope", "Rome")
    channel.answer(question.id, "Paris")
    result = await running

    assert result.success, result.error
    assert model.calls[1].messages[-1].content == "[The user answered]\nParis"
    with pytest.raises(UserInputError, match="no pending question"):
        channel.answer(question.id, "again")


async def test_user_timeout_is_user_input_error() -> None:
    channel = ProgrammaticChannel()
    a, _ = scripted("A", ask("Which city?"), final("unused"))
    communication = CommunicationConfig(channel=channel, user_timeout=TINY)
    result = await run("task", TALKER, [a], communication_config=communication)

    assert_failed(
        result,
        "UserInputError",
        "did not answer the question of agent 'A' within 0.05s (CommunicationConfig.user_timeout;",
        "Which city?",
    )
    assert channel.pending == []


# ---- error routing -------------------------------------------------------------------------------

PATTERN_4 = {
    "nodes": ["User", "MainProcessor", "ErrorHandler", "Fallback"],
    "edges": [
        "User -> MainProcessor",
        "MainProcessor -> User",
        "MainProcessor -> ErrorHandler",
        "ErrorHandler -> User",
        "ErrorHandler -> Fallback",
        "Fallback -> User",
    ],
}


def _pattern_4_agents() -> tuple[list[Any], list[Any], ScriptedModel]:
    reports: list[Any] = []

    def handler(messages: Sequence[Message], info: StepInfo) -> Any:
        report = json.loads(messages[-1].content.split("\n", 1)[1])
        reports.append(report)
        return final(f"recovered from {report['error_type']}")

    main = fn("MainProcessor", boom)
    fallback, fallback_model = scripted("Fallback")
    agents = [main, llm("ErrorHandler", FunctionModel(handler)), fallback]
    return agents, reports, fallback_model


async def test_error_routing_hands_the_error_report_to_the_error_handler() -> None:
    agents, reports, fallback_model = _pattern_4_agents()
    result = await run(
        "Process with error recovery",
        PATTERN_4,
        agents,
        error_config=ErrorHandlingConfig(enable_error_routing=True, preserve_error_context=True),
    )

    assert result.success, result.error
    assert result.final_response == "recovered from AgentStepError"
    assert reports == [
        {
            "failed_agent": "MainProcessor",
            "error": "agent 'MainProcessor' raised RuntimeError: disk on fire",
            "error_type": "AgentStepError",
            "input": "Process with error recovery",
        }
    ]
    assert branch(result, "b0").agents == ["MainProcessor", "ErrorHandler"]
    assert fallback_model.calls == []


async def test_an_instance_runs_with_the_error_config_it_was_given() -> None:
    """``OrchestraInstance(..., error_config=...)``: its runs route errors as ``Orchestra.run``
    does with the same config (an instance once always ran with the default, no routing)."""
    agents, reports, _ = _pattern_4_agents()
    instance = OrchestraInstance(
        PATTERN_4,
        agent_registry=AgentRegistry(agents),
        initial_config=quiet(),
        error_config=ErrorHandlingConfig(enable_error_routing=True),
    )
    result = await asyncio.wait_for(instance.execute("Process with error recovery"), 10)
    assert result.success, result.error
    assert result.final_response == "recovered from AgentStepError"
    assert len(reports) == 1


async def test_without_error_routing_the_pattern_4_run_fails() -> None:
    agents, reports, _ = _pattern_4_agents()
    result = await run("Process with error recovery", PATTERN_4, agents)

    assert_failed(result, "AgentStepError", "agent 'MainProcessor' raised RuntimeError")
    assert reports == []


async def test_error_routing_prefers_the_on_error_edge() -> None:
    topology = Topology(
        nodes=["Main", "Helper", "Handler"],
        edges=[
            "User -> Main",
            "Main -> Helper",
            Edge("Main", "Handler", metadata={"on_error": True}),
            "Helper -> User",
            "Handler -> User",
        ],
    )
    seen: list[Any] = []

    def handle(report: Any, _context: Any) -> str:
        seen.append(report)
        return "handled"

    helper, helper_model = scripted("Helper")
    result = await run(
        "task",
        topology,
        [fn("Main", boom), helper, fn("Handler", handle)],
        error_config=ErrorHandlingConfig(enable_error_routing=True, preserve_error_context=False),
    )

    assert result.success, result.error
    assert result.final_response == "handled"
    assert seen == [
        {"failed_agent": "Main", "error": "agent 'Main' raised RuntimeError: disk on fire"}
    ]
    assert helper_model.calls == []


async def test_error_routing_from_a_called_agent_reports_to_its_caller() -> None:
    """W, called by H, fails every time: H gets the report and its answer ends the run.

    The report must not turn W into H's caller (H's answer would go back to the failed W,
    which fails again, and so on until max_steps).
    """
    seen: list[str] = []

    def hub(messages: Sequence[Message], info: StepInfo) -> Any:
        seen.append(messages[-1].content)
        return invoke("W") if len(seen) == 1 else final("W is down, answered without it")

    w_model = FunctionModel(lambda messages, info: boom(None, None))
    topology = PatternConfig.hub_and_spoke(hub="H", spokes=["W"])
    result = await run(
        "task",
        topology,
        [llm("H", FunctionModel(hub)), llm("W", w_model)],
        error_config=ErrorHandlingConfig(enable_error_routing=True),
        max_steps=20,
    )

    assert result.success, result.error
    assert result.final_response == "W is down, answered without it"
    assert w_model.call_count == 1
    assert len(seen) == 2
    assert '"failed_agent": "W"' in seen[1]


async def test_error_routing_does_not_route_limits() -> None:
    agents, reports, _ = _pattern_4_agents()
    agents[0] = fn("MainProcessor", hang)
    result = await run(
        "task",
        PATTERN_4,
        agents,
        config=quiet(step_timeout=TINY),
        error_config=ErrorHandlingConfig(enable_error_routing=True),
    )

    assert_failed(result, "StepTimeoutError", "agent 'MainProcessor'")
    assert reports == []


# ---- observers -----------------------------------------------------------------------------------


def test_a_faulty_subscriber_is_removed_and_reported() -> None:
    stream = ev.EventStream()
    good: list[ev.Event] = []
    calls = 0

    def faulty(event: ev.Event) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("observer bug")

    stream.subscribe(faulty)
    stream.subscribe(good.append)
    first = ev.RunStarted(run_id="r", at=1.0, task="t", entries=("A",), max_steps=1)
    second = ev.RunCompleted(
        run_id="r", at=2.0, success=True, total_steps=1, duration=0.0, error=None
    )
    stream.emit(first)
    stream.emit(second)

    assert stream.events == [first, second]
    assert good == [first, second]
    assert calls == 1
    [report] = stream.observer_errors
    assert "raised ValueError: observer bug" in report
    assert "unsubscribed" in report


def test_unsubscribe_stops_delivery() -> None:
    stream = ev.EventStream()
    seen: list[ev.Event] = []
    unsubscribe = stream.subscribe(seen.append)
    stream.emit(ev.RunStarted(run_id="r", at=1.0, task="t", entries=("A",), max_steps=1))
    unsubscribe()
    stream.emit(
        ev.RunCompleted(run_id="r", at=2.0, success=True, total_steps=1, duration=0, error=None)
    )

    assert len(seen) == 1
    assert len(stream.events) == 2
