"""OrchestraResult and BranchResult after real runs: fields, helpers, metrics, JSON, events."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from helpers import final, fn, invoke, llm, quiet, run

from orchestra import (
    BranchResult,
    ConvergencePolicy,
    OrchestraResult,
    PatternConfig,
    ScriptedModel,
)
from orchestra.coordination.engine import events as ev
from orchestra.models import ModelReply, Usage


def boom(request: Any, context: Any) -> Any:
    raise RuntimeError("S2 exploded")


async def fan_out_run(context: dict[str, Any] | None = None) -> OrchestraResult:
    """Hub consults S1, S2, S3 in parallel; S2 fails, the rest succeed; Hub answers.

    Hub's first reply invokes an unknown agent (rejected, steered); its model reports tokens.
    ``Idle`` is a spoke that is never consulted.
    """
    hub = llm(
        "Hub",
        ScriptedModel(
            [
                invoke(("Nobody", "x")),
                ModelReply(
                    action=invoke(("S1", "one"), ("S2", "two"), ("S3", "three")),
                    usage=Usage(prompt_tokens=100, completion_tokens=20),
                ),
                ModelReply(content="all done", usage=Usage(prompt_tokens=50, completion_tokens=5)),
            ]
        ),
    )
    s1 = llm("S1", ScriptedModel([ModelReply(action=final("r1"), usage=Usage(7, 3))]))
    s2 = fn("S2", boom)
    s3 = fn("S3", lambda request, context: {"echo": request})
    idle = llm("Idle", ScriptedModel([]))
    topology = PatternConfig.hub_and_spoke("Hub", ["S1", "S2", "S3", "Idle"], parallel_spokes=True)
    return await run(
        "investigate",
        topology,
        [hub, s1, s2, s3, idle],
        context=context,
        config=quiet(convergence_policy=ConvergencePolicy(on_insufficient="proceed")),
    )


async def single(function: Any, task: Any = "task", **options: Any) -> OrchestraResult:
    return await run(task, {"nodes": ["Solo"], "edges": []}, [fn("Solo", function)], **options)


@pytest.fixture
async def result() -> OrchestraResult:
    return await fan_out_run()


# ---- top-level fields -------------------------------------------------------------------------


async def test_top_level_fields(result: OrchestraResult) -> None:
    assert result.success is True
    assert result.error is None
    assert result.final_response == "all done"
    assert result.total_steps == 6  # Hub x3 (one rejected), S1, S2, S3
    assert result.total_duration >= 0
    assert result.checkpoint_ids == []
    assert isinstance(result.session_id, str) and result.session_id
    assert [b.branch_id for b in result.branch_results] == ["b0", "b1", "b2", "b3"]
    assert "error_type" not in result.metadata


def test_result_dataclass_field_order_matches_the_api_page() -> None:
    result = OrchestraResult(True, "x", [], 0, 0.0, {})
    assert (result.error, result.session_id, result.checkpoint_ids) == (None, None, [])
    assert result.events == []


async def test_branch_results(result: OrchestraResult) -> None:
    root, b1, b2, b3 = result.branch_results
    assert isinstance(root, BranchResult)
    assert (root.status, root.parent_branch_id, root.agents) == ("completed", None, ["Hub"])
    assert root.step_count == 3
    assert root.result == "all done"
    assert (root.error, root.error_type) == (None, None)

    assert (b1.status, b1.parent_branch_id, b1.agents, b1.result) == (
        "completed",
        "b0",
        ["S1"],
        "r1",
    )
    assert b1.step_count == 1
    assert b3.result == {"echo": "three"}
    assert b3.agents == ["S3"]

    assert b2.status == "failed"
    assert b2.parent_branch_id == "b0"
    assert b2.agents == ["S2"]
    assert b2.step_count == 1
    assert b2.error is not None and "S2 exploded" in b2.error and "'S2'" in b2.error
    assert b2.error_type == "AgentStepError"
    assert b2.result is None
    assert not b2.success
    for branch in result.branch_results:
        assert branch.duration >= 0


async def test_get_branch_by_id(result: OrchestraResult) -> None:
    branch = result.get_branch_by_id("b2")
    assert branch is result.branch_results[2]
    assert result.get_branch_by_id("b0") is result.branch_results[0]
    assert result.get_branch_by_id("branch_123") is None
    assert result.get_branch_by_id("") is None


async def test_successful_and_failed_branches(result: OrchestraResult) -> None:
    assert [b.branch_id for b in result.get_successful_branches()] == ["b0", "b1", "b3"]
    assert [b.branch_id for b in result.get_failed_branches()] == ["b2"]


# ---- invocation helpers -----------------------------------------------------------------------


async def test_invocations(result: OrchestraResult) -> None:
    assert result.was_agent_invoked("Hub")
    assert result.was_agent_invoked("S2")  # invoked even though it failed
    assert not result.was_agent_invoked("Idle")
    assert not result.was_agent_invoked("Nobody")
    # Hub took three steps (one was a steering retry, one a resume after the fan-out)
    assert result.get_agent_invocation_count("Hub") == 1
    assert result.get_agent_invocation_count("S1") == 1
    assert result.get_agent_invocation_count("Idle") == 0
    assert result.get_agent_invocation_count("DataAnalyst") == 0
    assert result.metadata["invocations"] == {"Hub": 1, "S1": 1, "S2": 1, "S3": 1}


async def test_steering_retries_are_not_invocations() -> None:
    agent = llm("Writer", ScriptedModel(["{broken json", invoke(("Ghost", 1)), "final text"]))
    result = await run("t", {"nodes": ["Writer"], "edges": []}, [agent])
    assert result.success
    assert result.final_response == "final text"
    assert result.total_steps == 3
    assert result.get_agent_invocation_count("Writer") == 1
    assert result.get_metrics()["agents"]["Writer"]["steps"] == 3
    assert result.get_metrics()["rejected_actions"] == 2


async def test_repeated_calls_count_each_invocation() -> None:
    hub = llm("Hub", ScriptedModel([invoke(("W", "a")), invoke(("W", "b")), "done"]))
    worker = fn("W", lambda request, context: request.upper())
    result = await run("t", PatternConfig.hub_and_spoke("Hub", ["W"]), [hub, worker])
    assert result.success
    assert result.get_agent_invocation_count("W") == 2
    assert result.get_agent_invocation_count("Hub") == 1


# ---- final response as text -------------------------------------------------------------------


async def test_final_response_as_text_for_a_string(result: OrchestraResult) -> None:
    assert result.get_final_response_as_text() == "all done"


async def test_final_response_as_text_for_a_dict() -> None:
    result = await single(lambda request, context: {"answer": 42, "items": ["é", 1]})
    assert result.final_response == {"answer": 42, "items": ["é", 1]}
    text = result.get_final_response_as_text()
    assert json.loads(text) == {"answer": 42, "items": ["é", 1]}
    assert text == json.dumps({"answer": 42, "items": ["é", 1]}, indent=2, ensure_ascii=False)


async def test_final_response_as_text_for_none_when_failed() -> None:
    result = await single(boom)
    assert result.success is False
    assert result.final_response is None
    assert result.get_final_response_as_text() == ""


# ---- the execution trace ----------------------------------------------------------------------


async def test_execution_trace(result: OrchestraResult) -> None:
    trace = result.get_execution_trace()
    summary = [(t["agent"], t["branch_id"], t["action"]) for t in trace]
    assert summary == [
        ("Hub", "b0", "rejected"),
        ("Hub", "b0", "invoke_agent(S1, S2, S3)"),
        ("S1", "b1", "final_response"),
        ("S2", "b2", "failed"),
        ("S3", "b3", "final_response"),
        ("Hub", "b0", "final_response"),
    ]
    rejected = trace[0]
    assert rejected["step"] == 1
    assert "'Nobody'" in rejected["problem"]
    failed = trace[3]
    assert "S2 exploded" in failed["error"]
    steps = [t["step"] for t in trace if "step" in t]
    assert steps == sorted(steps)
    for entry in trace:
        if entry["action"] not in ("rejected", "failed"):
            assert entry["duration"] >= 0


# ---- metrics ----------------------------------------------------------------------------------


async def test_metrics(result: OrchestraResult) -> None:
    metrics = result.get_metrics()
    assert metrics["total_steps"] == result.total_steps == 6
    assert metrics["total_duration"] == result.total_duration
    assert metrics["branches"] == 4
    assert metrics["failed_branches"] == 1
    assert metrics["rejected_actions"] == 1
    assert metrics["prompt_tokens"] == 157
    assert metrics["completion_tokens"] == 28
    assert metrics["total_tokens"] == 185
    agents = metrics["agents"]
    assert set(agents) == {"Hub", "S1", "S2", "S3"}
    assert agents["Hub"]["steps"] == 3
    assert agents["Hub"]["invocations"] == 1
    assert agents["Hub"]["prompt_tokens"] == 150
    assert agents["Hub"]["completion_tokens"] == 25
    assert agents["Hub"]["total_tokens"] == 175
    assert agents["S1"]["total_tokens"] == 10
    assert agents["S2"] == {
        "steps": 1,
        "invocations": 1,
        "time_in_agent": 0.0,  # its step failed: no completed step to time
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "cost_usd": None,  # scripted models have no price
    }
    assert agents["S3"]["steps"] == 1
    assert all(a["time_in_agent"] >= 0 for a in agents.values())
    json.dumps(metrics)


# ---- JSON -------------------------------------------------------------------------------------


async def test_to_json_is_json_serialisable_and_round_trips(result: OrchestraResult) -> None:
    data = result.to_json()
    text = json.dumps(data)
    assert json.loads(text) == data
    assert "events" not in data
    assert data["success"] is True
    assert data["final_response"] == "all done"
    assert data["session_id"] == result.session_id
    assert data["branch_results"][2]["status"] == "failed"
    assert data["branch_results"][3]["result"] == {"echo": "three"}
    back = OrchestraResult.from_json(data)
    assert back.to_json() == data
    assert all(isinstance(b, BranchResult) for b in back.branch_results)
    assert back == result  # events are not compared
    assert back.get_branch_by_id("b2") == result.get_branch_by_id("b2")


async def test_to_json_of_a_failed_run_round_trips() -> None:
    result = await single(boom)
    data = result.to_json()
    json.dumps(data)
    assert data["error"] == result.error
    assert data["metadata"]["error_type"] == "AgentStepError"
    assert OrchestraResult.from_json(data).to_json() == data


async def test_to_json_of_a_run_that_failed_before_starting_round_trips() -> None:
    result = await run("t", {"nodes": ["Missing"], "edges": []}, [fn("Other", boom)])
    assert not result.success
    assert result.metadata["error_type"] == "AgentNotFoundError"
    data = result.to_json()
    json.dumps(data)
    assert OrchestraResult.from_json(data).to_json() == data


class Opaque:
    """A value that is neither JSON nor copyable (it holds a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __str__(self) -> str:
        return "<opaque>"


@pytest.mark.parametrize(
    "value",
    [{1, 2}, (1, "a"), b"bytes", Opaque(), {"nested": Opaque()}],
    ids=["set", "tuple", "bytes", "opaque", "nested-opaque"],
)
async def test_to_json_with_values_that_are_not_json(value: Any) -> None:
    result = await single(lambda request, context: value)
    assert result.success
    assert result.final_response is value
    data = result.to_json()
    text = json.dumps(data)
    assert OrchestraResult.from_json(json.loads(text)).to_json() == data


# ---- session id -------------------------------------------------------------------------------


async def test_session_id_from_context() -> None:
    result = await fan_out_run({"session_id": "market_analysis_2024", "other": 1})
    assert result.session_id == "market_analysis_2024"
    assert all(event.run_id == "market_analysis_2024" for event in result.events)


async def test_session_id_generated_and_unique_per_run() -> None:
    first = await single(lambda request, context: "x")
    second = await single(lambda request, context: "x")
    third = await single(lambda request, context: "x", context={"phase": "research"})
    ids = {first.session_id, second.session_id, third.session_id}
    assert len(ids) == 3
    assert all(isinstance(i, str) and i for i in ids)


async def test_context_session_id_is_visible_to_agents_and_context_not_mutated() -> None:
    seen: list[dict[str, Any]] = []
    context = {"session_id": "s-1"}

    def solo(request: Any, ctx: Any) -> str:
        seen.append(dict(ctx))
        return "ok"

    result = await single(solo, context=context)
    assert result.session_id == "s-1"
    assert seen == [{"session_id": "s-1"}]
    assert context == {"session_id": "s-1"}


async def test_no_context_leaves_no_session_id_in_context() -> None:
    seen: list[dict[str, Any]] = []
    await single(lambda request, ctx: seen.append(dict(ctx)) or "ok")
    assert seen == [{}]


# ---- the event stream -------------------------------------------------------------------------


async def test_events_start_and_end_with_the_run(result: OrchestraResult) -> None:
    events = result.events
    assert isinstance(events[0], ev.RunStarted)
    assert events[0].task == "investigate"
    assert events[0].entries == ("Hub",)
    assert isinstance(events[-1], ev.RunCompleted)
    assert events[-1].success is True
    assert events[-1].total_steps == result.total_steps
    assert sum(isinstance(e, ev.RunStarted) for e in events) == 1
    assert sum(isinstance(e, ev.RunCompleted) for e in events) == 1
    for event in events:
        data = event.to_dict()
        assert data["type"] == type(event).__name__
        assert data["run_id"] == result.session_id
    kinds = {type(e).__name__ for e in events}
    assert {
        "BranchCreated",
        "StepStarted",
        "StepCompleted",
        "ActionRejected",
        "FanOutStarted",
        "ConvergenceReached",
        "BranchCompleted",
        "BranchFailed",
    } <= kinds
    fan_out = next(e for e in events if isinstance(e, ev.FanOutStarted))
    assert fan_out.child_branch_ids == ("b1", "b2", "b3")
    convergence = next(e for e in events if isinstance(e, ev.ConvergenceReached))
    assert (convergence.succeeded, convergence.failed, convergence.outcome) == (2, 1, "proceed")


async def test_events_of_a_failed_run() -> None:
    result = await single(boom)
    assert isinstance(result.events[0], ev.RunStarted)
    last = result.events[-1]
    assert isinstance(last, ev.RunCompleted)
    assert last.success is False
    assert last.error == result.error
    assert all("type" in e.to_dict() for e in result.events)
