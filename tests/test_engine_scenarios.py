"""Scenario tests for the engine: whole runs through Orchestra.run, offline and deterministic.

Agents are driven by ScriptedModel / FunctionModel (LLM agents) and FunctionAgent (code).
Synchronisation between branches uses asyncio events and futures, never sleeps; a sleep
appears only where an agent simulates slow work. Where the outcome depends on which of
concurrent branches ends first, the order is explicit: the branch that must end later waits
until the run has heard of the earlier one's result (``Heard``), so the scenario means the
same on any executor (test_temporal_executor.py runs each on Temporal too). Every scenario
checks the final response, success, and the status of every branch of the run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from helpers import WAIT, Heard, ask, final, fn, invoke, llm, of, quiet, run, spokes, statuses

from orchestra import (
    Action,
    CommunicationConfig,
    ConvergencePolicy,
    FunctionModel,
    Node,
    OrchestraResult,
    PatternConfig,
    ProgrammaticChannel,
    ScriptedModel,
    ScriptedUser,
    Topology,
)
from orchestra.agents.base import BaseAgent
from orchestra.coordination.engine import events as ev
from orchestra.models import Message, StepInfo

# ---- helpers -------------------------------------------------------------------------------


def heading_and_body(message: Message) -> tuple[str, str]:
    """Split an input message into its "[heading]" line and its body."""
    heading, _, body = message.content.partition("\n")
    return heading, body


def completed(agent: str, branch_id: str, response: Any) -> dict[str, Any]:
    """A result item of a branch that succeeded."""
    return {"agent": agent, "branch_id": branch_id, "status": "completed", "response": response}


def failed_item(result: OrchestraResult, agent: str, branch_id: str) -> dict[str, Any]:
    """A result item of a failed branch, with the error text the run recorded for it."""
    branch = result.get_branch_by_id(branch_id)
    assert branch is not None
    return {"agent": agent, "branch_id": branch_id, "status": "failed", "error": branch.error}


def event_index(result: OrchestraResult, kind: type[ev.Event], **fields: Any) -> int:
    """Position of the first event of ``kind`` whose attributes match ``fields``."""
    for index, event in enumerate(result.events):
        if isinstance(event, kind) and all(getattr(event, k) == v for k, v in fields.items()):
            return index
    raise AssertionError(f"no {kind.__name__} with {fields}")


def fan_out_hub(targets: Sequence[str]) -> Callable[[Any, Any], Any]:
    """A code hub: the task fans out to ``targets``; the collected results are its answer."""

    def hub(value: Any, context: Any) -> Any:
        if isinstance(value, list):
            return Action.final(value)
        return Action.invoke_parallel([(target, value) for target in targets])

    return hub


# ---- 1. pipeline ---------------------------------------------------------------------------

PIPELINE = PatternConfig.pipeline(
    stages=[
        {"name": "extract", "agents": ["Extractor"]},
        {"name": "transform", "agents": ["Transformer"]},
        {"name": "load", "agents": ["Loader"]},
    ]
)


async def test_pipeline_of_llm_agents_hands_off_stage_to_stage() -> None:
    extractor = ScriptedModel([invoke(("Transformer", "rows: 1, 2"))])
    transformer = ScriptedModel([invoke(("Loader", "rows: 2, 4"))])
    loader = ScriptedModel([final("loaded 2 rows")])
    result = await run(
        "process customer data",
        PIPELINE,
        [llm("Extractor", extractor), llm("Transformer", transformer), llm("Loader", loader)],
    )
    assert result.success, result.error
    assert result.final_response == "loaded 2 rows"
    assert statuses(result) == {"b0": "completed"}
    root = result.get_branch_by_id("b0")
    assert root is not None
    assert root.agents == ["Extractor", "Transformer", "Loader"]
    assert result.total_steps == 3
    assert heading_and_body(transformer.calls[0].messages[-1]) == (
        "[Request from Extractor]",
        "rows: 1, 2",
    )
    assert heading_and_body(loader.calls[0].messages[-1]) == (
        "[Request from Transformer]",
        "rows: 2, 4",
    )
    handoffs = [(e.source, e.target, e.kind) for e in of(result, ev.WorkHandedOver)]
    assert handoffs == [
        ("Extractor", "Transformer", "handoff"),
        ("Transformer", "Loader", "handoff"),
    ]
    # Only the last stage may finish: the earlier ones are told so.
    assert not extractor.calls[0].info.can_finish
    assert loader.calls[0].info.can_finish


async def test_pipeline_of_function_agents_chains_their_values() -> None:
    result = await run(
        "data",
        PIPELINE,
        [
            fn("Extractor", lambda x, ctx: f"{x}|extracted"),
            fn("Transformer", lambda x, ctx: f"{x}|transformed"),
            fn("Loader", lambda x, ctx: f"{x}|loaded"),
        ],
    )
    assert result.success, result.error
    assert result.final_response == "data|extracted|transformed|loaded"
    assert statuses(result) == {"b0": "completed"}
    assert result.metadata["invocations"] == {"Extractor": 1, "Transformer": 1, "Loader": 1}


# ---- 2. hub and spoke ----------------------------------------------------------------------


def echo_spoke(messages: Sequence[Message], info: StepInfo) -> str:
    """A spoke's model: answers its request, tagged with its name."""
    _, request = heading_and_body(messages[-1])
    return f"{info.agent_name}: {request}"


async def test_hub_and_spoke_sequential_calls_each_spoke_and_gets_its_answer() -> None:
    hub = ScriptedModel(
        [
            invoke(("S1", "q1")),
            invoke(("S2", "q2")),
            invoke(("S3", "q3")),
            final("summary of three answers"),
        ]
    )
    result = await run(
        "survey",
        PatternConfig.hub_and_spoke("Hub", ["S1", "S2", "S3"]),
        [llm("Hub", hub), *(llm(s, FunctionModel(echo_spoke)) for s in ("S1", "S2", "S3"))],
    )
    assert result.success, result.error
    assert result.final_response == "summary of three answers"
    assert statuses(result) == {"b0": "completed"}
    # Each answer comes back to the hub as its next input.
    for index, spoke in enumerate(("S1", "S2", "S3"), start=1):
        assert heading_and_body(hub.calls[index].messages[-1]) == (
            f"[Response from {spoke}]",
            f"{spoke}: q{index}",
        )
    moves = [(e.source, e.target, e.kind) for e in of(result, ev.WorkHandedOver)]
    assert moves == [
        ("Hub", "S1", "call"),
        ("S1", "Hub", "return"),
        ("Hub", "S2", "call"),
        ("S2", "Hub", "return"),
        ("Hub", "S3", "call"),
        ("S3", "Hub", "return"),
    ]
    assert result.total_steps == 7


async def test_hub_and_spoke_parallel_hub_receives_results_labelled_by_agent() -> None:
    hub = ScriptedModel([invoke(("S1", "a"), ("S2", "b"), ("S3", "c")), final("merged")])
    result = await run(
        "survey",
        spokes("S1", "S2", "S3"),
        [llm("Hub", hub), *(llm(s, FunctionModel(echo_spoke)) for s in ("S1", "S2", "S3"))],
    )
    assert result.success, result.error
    assert result.final_response == "merged"
    assert statuses(result) == {
        "b0": "completed",
        "b1": "completed",
        "b2": "completed",
        "b3": "completed",
    }
    assert [b.parent_branch_id for b in result.branch_results] == [None, "b0", "b0", "b0"]
    heading, body = heading_and_body(hub.calls[1].messages[-1])
    assert heading == "[Results of the parallel branches you started]"
    assert json.loads(body) == [
        completed("S1", "b1", "S1: a"),
        completed("S2", "b2", "S2: b"),
        completed("S3", "b3", "S3: c"),
    ]
    assert hub.calls[0].info.parallel_groups == (("S1", "S2", "S3"),)
    assert result.metadata["invocations"] == {"Hub": 1, "S1": 1, "S2": 1, "S3": 1}


# ---- 3. hierarchy --------------------------------------------------------------------------

TREE = {"CEO": ["CTO", "CFO"], "CTO": ["Dev1", "Dev2"], "CFO": ["Acc1", "Acc2"]}

FANS_OUT_AFTER = {"CFO": "CTO"}
"""Branches are numbered as fan-outs start: CFO's reports are numbered after CTO's."""


def org_member(heard: Heard) -> Callable[[Sequence[Message], StepInfo], Any]:
    """Managers fan out to all their reports (each once the run has heard the fan-out of the
    manager it follows), then answer with what came back; workers answer."""

    async def reply(messages: Sequence[Message], info: StepInfo) -> Any:
        heading, body = heading_and_body(messages[-1])
        name = info.agent_name
        if not info.parallel_groups:  # a worker: its only peer is its manager
            return final(f"{name} did {body}")
        if heading.startswith("[Results"):
            return final({name: [item["response"] for item in json.loads(body)]})
        if name in FANS_OUT_AFTER:
            await heard.until(ev.FanOutStarted, source=FANS_OUT_AFTER[name])
        [children] = info.parallel_groups  # its reports (its own manager is a peer too)
        return invoke(*((child, f"{body}/{child}") for child in children))

    return reply


async def test_three_level_hierarchy_with_nested_fan_outs() -> None:
    topology = PatternConfig.hierarchical(TREE)
    names = ["CEO", "CTO", "CFO", "Dev1", "Dev2", "Acc1", "Acc2"]
    heard = Heard()
    model = FunctionModel(org_member(heard))
    result = await run("plan", topology, [llm(name, model) for name in names], heard=heard)
    assert result.success, result.error
    assert result.final_response == {
        "CEO": [
            {"CTO": ["Dev1 did plan/CTO/Dev1", "Dev2 did plan/CTO/Dev2"]},
            {"CFO": ["Acc1 did plan/CFO/Acc1", "Acc2 did plan/CFO/Acc2"]},
        ]
    }
    assert len(result.branch_results) == 7
    assert all(status == "completed" for status in statuses(result).values()), statuses(result)
    by_agent = {branch.agents[0]: branch for branch in result.branch_results}
    assert by_agent["CEO"].parent_branch_id is None
    ceo = by_agent["CEO"].branch_id
    for manager, workers in TREE.items():
        if manager == "CEO":
            continue
        assert by_agent[manager].parent_branch_id == ceo
        for worker in workers:
            assert by_agent[worker].parent_branch_id == by_agent[manager].branch_id
            assert by_agent[worker].result == f"{worker} did plan/{manager}/{worker}"
    assert model.call_count == 2 + 2 * 2 + 4  # root and managers twice each, workers once
    fan_outs = of(result, ev.FanOutStarted)
    assert [(e.branch_id, e.targets) for e in fan_outs] == [
        (ceo, ("CTO", "CFO")),
        (by_agent["CTO"].branch_id, ("Dev1", "Dev2")),
        (by_agent["CFO"].branch_id, ("Acc1", "Acc2")),
    ]
    assert [by_agent[name].branch_id for name in names] == [f"b{i}" for i in range(7)]


# ---- 4. convergence point ------------------------------------------------------------------


async def test_diamond_convergence_node_runs_once_on_the_aggregate() -> None:
    seen: list[Any] = []

    def join(items: Any, ctx: Any) -> Any:
        seen.append(items)
        return "+".join(item["response"] for item in items)

    topology = {"nodes": ["A", "B", "C", "D"], "edges": ["A -> B", "A -> C", "B -> D", "C -> D"]}
    result = await run(
        "x",
        topology,
        [
            fn("A", lambda x, ctx: f"{x}a"),
            fn("B", lambda x, ctx: f"{x}b"),
            fn("C", lambda x, ctx: f"{x}c"),
            fn("D", join),
        ],
    )
    assert result.success, result.error
    assert result.final_response == "xab+xac"
    assert statuses(result) == {"b0": "completed", "b1": "arrived", "b2": "arrived"}
    assert seen == [[completed("B", "b1", "xab"), completed("C", "b2", "xac")]]
    assert result.get_agent_invocation_count("D") == 1
    root = result.get_branch_by_id("b0")
    assert root is not None
    assert root.agents == ["A", "D"]


# ---- 5. loops that exit --------------------------------------------------------------------


async def test_writer_critic_loop_goes_round_twice_then_exits() -> None:
    writer = ScriptedModel(
        [
            invoke(("Critic", "draft 1")),
            invoke(("Critic", "draft 2")),
            final("draft 3"),
        ]
    )
    critic = ScriptedModel(["too short", "better, add a conclusion"])
    topology = {"nodes": ["Writer", "Critic"], "edges": ["User -> Writer", "Writer <-> Critic"]}
    result = await run("write an essay", topology, [llm("Writer", writer), llm("Critic", critic)])
    assert result.success, result.error
    assert result.final_response == "draft 3"
    assert statuses(result) == {"b0": "completed"}
    assert result.get_agent_invocation_count("Critic") == 2
    assert writer.remaining == 0 and critic.remaining == 0
    assert heading_and_body(writer.calls[2].messages[-1]) == (
        "[Response from Critic]",
        "better, add a conclusion",
    )


async def test_ring_with_a_lap_counter_goes_round_twice_then_exits() -> None:
    laps: list[Any] = []

    def head(value: Any, ctx: Any) -> Any:
        laps.append(value)
        if len(laps) == 3:  # the task, then two laps
            return Action.final(value)
        return Action.invoke("B", value)

    result = await run(
        "",
        PatternConfig.ring(["A", "B", "C"]),
        [fn("A", head), fn("B", lambda x, ctx: x + "b"), fn("C", lambda x, ctx: x + "c")],
    )
    assert result.success, result.error
    assert result.final_response == "bcbc"
    assert laps == ["", "bc", "bcbc"]
    assert statuses(result) == {"b0": "completed"}
    assert result.total_steps == 7
    assert result.metadata["invocations"] == {"A": 3, "B": 2, "C": 2}


# ---- 6. a loop with no exit ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_steps", "rules", "limit"),
    [(9, [], 9), (100, ["max_steps(5)"], 5), (4, ["max_steps(6)"], 4)],
)
async def test_endless_loop_ends_at_max_steps(max_steps: int, rules: list[str], limit: int) -> None:
    topology = {"nodes": ["A", "B"], "edges": ["A -> B", "B -> A"], "entry_point": "A"}
    topology["rules"] = rules
    result = await run(
        "spin",
        topology,
        [fn("A", lambda x, ctx: Action.invoke("B", x)), fn("B", lambda x, ctx: x)],
        max_steps=max_steps,
    )
    assert not result.success
    assert result.final_response is None
    assert result.metadata["error_type"] == "StepLimitError"
    assert result.total_steps == limit
    assert "max_steps" in (result.error or "")
    assert statuses(result) == {"b0": "failed"}
    root = result.get_branch_by_id("b0")
    assert root is not None
    assert root.error_type == "StepLimitError"
    assert root.step_count == limit


# ---- 7. convergence policies with one failed child -----------------------------------------


def three_workers(
    *, w1: Callable[[Any, Any], Any], w2: Callable[[Any, Any], Any], w3: Callable[[Any, Any], Any]
) -> list[BaseAgent]:
    return [
        fn("Hub", fan_out_hub(["W1", "W2", "W3"])),
        fn("W1", w1),
        fn("W2", w2),
        fn("W3", w3),
    ]


def boom(value: Any, ctx: Any) -> Any:
    raise RuntimeError(f"W2 cannot handle {value!r}")


def after(heard: Heard, *agents: str, then: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    """Code that does ``then`` once the run has heard the branches of ``agents`` end: it
    ends after them, whichever executor runs it."""

    async def gated(value: Any, ctx: Any) -> Any:
        await heard.ended(*agents)
        return then(value, ctx)

    return gated


def w2_failing(heard: Heard) -> list[BaseAgent]:
    """Hub fans out to W1, W2 and W3, which end in that order: W1 and W3 answer, W2 raises."""
    return three_workers(
        w1=lambda x, c: "W1 ok",
        w2=after(heard, "W1", then=boom),
        w3=after(heard, "W2", then=lambda x, c: "W3 ok"),
    )


def assert_w2_failure_tolerated(result: OrchestraResult) -> None:
    """The policy let the hub go on with all three items, W2's as the failed one; only W2's
    branch failed."""
    assert result.success, result.error
    assert result.final_response == [
        completed("W1", "b1", "W1 ok"),
        failed_item(result, "W2", "b2"),
        completed("W3", "b3", "W3 ok"),
    ]
    assert statuses(result) == {
        "b0": "completed",
        "b1": "completed",
        "b2": "failed",
        "b3": "completed",
    }


async def test_policy_all_one_failure_fails_the_parent_and_keeps_the_siblings() -> None:
    heard = Heard()

    def broke(value: Any, ctx: Any) -> Any:
        raise RuntimeError("W2 broke")

    result = await run(
        "job",
        spokes("W1", "W2", "W3"),
        three_workers(
            w1=lambda x, c: "W1 ok",
            w2=after(heard, "W1", "W3", then=broke),  # fails last
            w3=lambda x, c: "W3 ok",
        ),
        config=quiet(convergence_policy="all"),
        heard=heard,
    )
    assert not result.success
    assert result.final_response is None
    assert result.metadata["error_type"] == "ConvergenceError"
    assert "W2 broke" in (result.error or "")
    assert statuses(result) == {
        "b0": "failed",
        "b1": "completed",
        "b2": "failed",
        "b3": "completed",
    }
    root, w1, w2, w3 = (result.get_branch_by_id(f"b{i}") for i in range(4))
    assert root is not None and root.error_type == "ConvergenceError"
    assert w1 is not None and w1.result == "W1 ok"
    assert w3 is not None and w3.result == "W3 ok"
    assert w2 is not None and w2.error_type == "AgentStepError"
    assert [b.branch_id for b in result.get_successful_branches()] == ["b1", "b3"]


async def test_policy_all_failure_cancels_siblings_still_running() -> None:
    heard = Heard()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def running_forever(value: Any, ctx: Any) -> Any:
        await never
        return "never"

    async def fails_while_w3_runs(value: Any, ctx: Any) -> Any:
        await heard.ended("W1")
        await heard.until(ev.StepStarted, agent="W3")
        return boom(value, ctx)

    result = await run(
        "job",
        spokes("W1", "W2", "W3"),
        three_workers(w1=lambda x, c: "W1 ok", w2=fails_while_w3_runs, w3=running_forever),
        heard=heard,
    )
    assert not result.success
    assert result.final_response is None
    assert result.metadata["error_type"] == "ConvergenceError"
    assert statuses(result) == {
        "b0": "failed",
        "b1": "completed",
        "b2": "failed",
        "b3": "cancelled",
    }
    reached = of(result, ev.ConvergenceReached)
    assert [(e.outcome, e.succeeded, e.failed, e.cancelled) for e in reached] == [
        ("failed", 1, 1, 1)
    ]
    w3 = result.get_branch_by_id("b3")
    assert w3 is not None and w3.step_count == 1  # cancelled in its step


async def test_policy_any_one_failure_still_succeeds() -> None:
    heard = Heard()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def fails_first(value: Any, ctx: Any) -> Any:
        raise RuntimeError("W2 broke")

    async def slow_forever(value: Any, ctx: Any) -> Any:
        await never  # cancelled once the policy is met
        return "W3 ok"

    result = await run(
        "job",
        spokes("W1", "W2", "W3"),
        three_workers(
            w1=after(heard, "W2", then=lambda x, c: "W1 ok"), w2=fails_first, w3=slow_forever
        ),
        config=quiet(convergence_policy="any"),
        heard=heard,
    )
    assert result.success, result.error
    assert result.final_response == [
        completed("W1", "b1", "W1 ok"),
        failed_item(result, "W2", "b2"),
    ]
    assert statuses(result) == {
        "b0": "completed",
        "b1": "completed",
        "b2": "failed",
        "b3": "cancelled",
    }
    reached = of(result, ev.ConvergenceReached)
    assert [(e.outcome, e.succeeded, e.failed, e.cancelled) for e in reached] == [("met", 1, 1, 1)]


async def test_policy_ratio_half_with_one_of_three_failing_succeeds() -> None:
    config = quiet(convergence_policy=0.5)
    heard = Heard()
    result = await run(
        "job", spokes("W1", "W2", "W3"), w2_failing(heard), config=config, heard=heard
    )
    assert_w2_failure_tolerated(result)


async def test_policy_k3_proceed_resumes_the_parent_with_the_failed_item() -> None:
    config = quiet(convergence_policy=ConvergencePolicy(k=3, on_insufficient="proceed"))
    heard = Heard()
    result = await run(
        "job", spokes("W1", "W2", "W3"), w2_failing(heard), config=config, heard=heard
    )
    assert_w2_failure_tolerated(result)
    assert "W2 cannot handle 'job'" in result.final_response[1]["error"]
    assert [e.outcome for e in of(result, ev.ConvergenceReached)] == ["proceed"]


async def test_policy_from_the_callers_node_metadata_overrides_the_run_default() -> None:
    topology = Topology(
        nodes=[Node("Hub", metadata={"convergence_policy": 0.5}), "W1", "W2", "W3"],
        edges=["Hub <-> W1", "Hub <-> W2", "Hub <-> W3"],
        entry_point="Hub",
    )
    heard = Heard()
    result = await run(
        "job", topology, w2_failing(heard), config=quiet(convergence_policy="all"), heard=heard
    )
    assert_w2_failure_tolerated(result)


async def test_policy_from_a_convergence_points_node_metadata() -> None:
    heard = Heard()
    joined: list[Any] = []

    def join(items: Any, ctx: Any) -> Any:
        joined.append(items)
        return sorted(item["agent"] for item in items if item["status"] == "completed")

    def fail_c(value: Any, ctx: Any) -> Any:
        raise RuntimeError("C broke")

    topology = Topology(
        nodes=[
            "A",
            "B",
            "C",
            "E",
            Node("D", metadata={"convergence_policy": ConvergencePolicy(k=2)}),
        ],
        edges=["A -> B", "A -> C", "A -> E", "B -> D", "C -> D", "E -> D"],
    )
    result = await run(
        "x",
        topology,
        [
            fn("A", lambda x, c: x),
            fn("B", lambda x, c: "from B"),
            fn("C", after(heard, "B", then=fail_c)),
            fn("E", after(heard, "C", then=lambda x, c: "from E")),
            fn("D", join),
        ],
        heard=heard,
    )
    assert result.success, result.error
    assert result.final_response == ["B", "E"]
    assert statuses(result) == {
        "b0": "completed",
        "b1": "arrived",
        "b2": "failed",
        "b3": "arrived",
    }
    assert joined == [
        [
            completed("B", "b1", "from B"),
            completed("E", "b3", "from E"),
            failed_item(result, "C", "b2"),
        ]
    ]
    assert result.get_agent_invocation_count("D") == 1


async def test_policy_from_a_star_centers_node_metadata() -> None:
    """The star's points are started by the task itself (User -> point edges); the policy
    of the node where they meet, the center, still governs their fan-out."""

    def fail_p2(value: Any, ctx: Any) -> Any:
        raise RuntimeError("P2 broke")

    heard = Heard()
    center = Node("Center", metadata={"convergence_policy": ConvergencePolicy(k=2)})
    result = await run(
        "t",
        PatternConfig.star(center, ["P1", "P2", "P3"]),
        [
            fn("Center", lambda items, c: [item["status"] for item in items]),
            fn("P1", lambda x, c: "p1"),
            fn("P2", after(heard, "P1", then=fail_p2)),
            fn("P3", after(heard, "P2", then=lambda x, c: "p3")),
        ],
        heard=heard,
    )
    assert result.success, result.error
    assert result.final_response == ["completed", "completed", "failed"]
    assert statuses(result) == {
        "b0": "completed",
        "b1": "arrived",
        "b2": "failed",
        "b3": "arrived",
    }
    assert result.get_agent_invocation_count("Center") == 1


async def test_same_topology_without_the_node_policy_fails_on_the_default_all() -> None:
    def fail_c(value: Any, ctx: Any) -> Any:
        raise RuntimeError("C broke")

    topology = {
        "nodes": ["A", "B", "C", "D"],
        "edges": ["A -> B", "A -> C", "B -> D", "C -> D"],
    }
    heard = Heard()
    result = await run(
        "x",
        topology,
        [
            fn("A", lambda x, c: x),
            fn("B", lambda x, c: "from B"),
            fn("C", after(heard, "B", then=fail_c)),
            fn("D", lambda x, c: x),
        ],
        heard=heard,
    )
    assert not result.success
    assert result.final_response is None
    assert result.metadata["error_type"] == "ConvergenceError"
    assert statuses(result) == {"b0": "failed", "b1": "arrived", "b2": "failed"}
    assert not result.was_agent_invoked("D")


# ---- 8. a wide fan-out ---------------------------------------------------------------------


async def test_fan_out_of_a_thousand_children_delivers_every_result() -> None:
    count = 1000

    def hub(value: Any, ctx: Any) -> Any:
        if isinstance(value, list):
            return Action.final(value)
        return Action.invoke_parallel([("W", i) for i in range(count)])

    result = await run(
        "go",
        PatternConfig.hub_and_spoke("Hub", ["W"]),
        [fn("Hub", hub), fn("W", lambda i, ctx: i * 2)],
        max_steps=count + 10,
    )
    assert result.success, result.error
    assert result.final_response == [completed("W", f"b{i + 1}", i * 2) for i in range(count)]
    assert statuses(result) == {f"b{i}": "completed" for i in range(count + 1)}
    assert result.total_steps == count + 2
    assert result.get_agent_invocation_count("W") == count


# ---- 9. asking the user --------------------------------------------------------------------

ASKER_TOPOLOGY = {"nodes": ["Asker"], "edges": ["User -> Asker", "Asker -> User"]}


def greeter(messages: Sequence[Message], info: StepInfo) -> Any:
    """Asks the user's name, then greets them."""
    heading, body = heading_and_body(messages[-1])
    if heading == "[The user answered]":
        return final(f"Hello, {body}")
    return ask("What is your name?")


async def test_ask_user_answered_through_a_programmatic_channel() -> None:
    channel = ProgrammaticChannel()
    asked: list[Any] = []

    async def user() -> None:
        question = await asyncio.wait_for(channel.next_question(), WAIT)
        asked.append(question)
        channel.answer(question.id, "Ada")

    answering = asyncio.create_task(user())
    result = await run(
        "greet",
        ASKER_TOPOLOGY,
        [llm("Asker", FunctionModel(greeter))],
        communication_config=CommunicationConfig(channel=channel),
    )
    await answering
    assert result.success, result.error
    assert result.final_response == "Hello, Ada"
    assert statuses(result) == {"b0": "completed"}
    [question] = asked
    assert (question.agent, question.branch_id, question.text) == (
        "Asker",
        "b0",
        "What is your name?",
    )
    assert channel.pending == []
    received = of(result, ev.UserInputReceived)
    assert [(e.branch_id, e.answer) for e in received] == [("b0", "Ada")]


async def test_ask_user_answered_by_a_scripted_user() -> None:
    user = ScriptedUser(["Grace"])
    result = await run(
        "greet",
        ASKER_TOPOLOGY,
        [llm("Asker", FunctionModel(greeter))],
        communication_config=CommunicationConfig(channel=user),
    )
    assert result.success, result.error
    assert result.final_response == "Hello, Grace"
    assert statuses(result) == {"b0": "completed"}
    assert [(q.agent, q.text) for q in user.questions] == [("Asker", "What is your name?")]


async def test_a_sibling_branch_completes_while_another_waits_for_the_user() -> None:
    channel = ProgrammaticChannel()
    heard = Heard()

    async def worker(value: Any, ctx: Any) -> Any:
        await heard.until(ev.UserInputRequested, agent="Asker")  # runs while Asker waits
        return "worked"

    async def user() -> None:
        question = await asyncio.wait_for(channel.next_question(), WAIT)
        await heard.ended("Worker")
        channel.answer(question.id, "Ada")

    topology = {
        "nodes": ["Hub", "Asker", "Worker"],
        "edges": ["Hub <-> Asker", "Hub <-> Worker", "Asker -> User"],
        "entry_point": "Hub",
        "exit_points": ["Hub"],
    }
    answering = asyncio.create_task(user())
    result = await run(
        "team",
        topology,
        [
            fn("Hub", fan_out_hub(["Asker", "Worker"])),
            llm("Asker", FunctionModel(greeter)),
            fn("Worker", worker),
        ],
        communication_config=CommunicationConfig(channel=channel),
        heard=heard,
    )
    await answering
    assert result.success, result.error
    assert result.final_response == [
        completed("Asker", "b1", "Hello, Ada"),
        completed("Worker", "b2", "worked"),
    ]
    assert statuses(result) == {"b0": "completed", "b1": "completed", "b2": "completed"}
    asked = event_index(result, ev.UserInputRequested, branch_id="b1")
    worker_finished = event_index(result, ev.BranchCompleted, branch_id="b2")
    answered = event_index(result, ev.UserInputReceived, branch_id="b1")
    assert asked < worker_finished < answered


# ---- 10. no global barrier -----------------------------------------------------------------


async def test_a_slow_branch_does_not_delay_an_unrelated_fast_one() -> None:
    heard = Heard()

    async def slow(value: Any, ctx: Any) -> Any:
        await asyncio.sleep(0.01)  # slow work
        await heard.ended("Fast2")  # ...that outlasts the fast path
        return "slow result"

    topology = {
        "nodes": ["Hub", "Slow", "Fast", "Fast2"],
        "edges": ["Hub -> Slow", "Hub -> Fast", "Fast -> Fast2"],
    }
    result = await run(
        "go",
        topology,
        [
            fn("Hub", lambda x, c: x),  # both edges hold: code fans out to Slow and Fast
            fn("Slow", slow),
            fn("Fast", lambda x, c: f"{x} -> fast"),
            fn("Fast2", lambda x, c: f"{x} -> fast2"),
        ],
        heard=heard,
    )
    assert result.success, result.error
    # Every branch finished at an exit, so the workflow's answer collects them all.
    assert result.final_response == [
        completed("Slow", "b1", "slow result"),
        completed("Fast2", "b2", "go -> fast -> fast2"),
    ]
    assert statuses(result) == {"b0": "completed", "b1": "completed", "b2": "completed"}
    fast_ended = event_index(result, ev.BranchCompleted, branch_id="b2")
    slow_ended = event_index(result, ev.BranchCompleted, branch_id="b1")
    fast_second_step = event_index(result, ev.StepStarted, branch_id="b2", agent="Fast2")
    assert fast_second_step < fast_ended < slow_ended
    fast = result.get_branch_by_id("b2")
    assert fast is not None and fast.agents == ["Fast", "Fast2"]


# ---- 11. broadcast and star ----------------------------------------------------------------


async def test_broadcast_final_response_lists_every_receivers_result() -> None:
    caster = ScriptedModel([invoke(("R1", "news"), ("R2", "news"), ("R3", "news"))])
    receivers = [
        fn(name, lambda x, c, name=name: f"{name} read {x}") for name in ("R1", "R2", "R3")
    ]
    result = await run(
        "announce",
        PatternConfig.broadcast("Caster", ["R1", "R2", "R3"]),
        [llm("Caster", caster), *receivers],
    )
    assert result.success, result.error
    assert result.final_response == [
        completed("R1", "b1", "R1 read news"),
        completed("R2", "b2", "R2 read news"),
        completed("R3", "b3", "R3 read news"),
    ]
    assert statuses(result) == {
        "b0": "completed",
        "b1": "completed",
        "b2": "completed",
        "b3": "completed",
    }


async def test_star_center_runs_once_on_all_points_results() -> None:
    center_inputs: list[Any] = []

    def center(items: Any, ctx: Any) -> Any:
        center_inputs.append(items)
        return " & ".join(item["response"] for item in items)

    points = [fn(name, lambda x, c, name=name: f"{name}({x})") for name in ("P1", "P2", "P3")]
    result = await run(
        "t", PatternConfig.star("Center", ["P1", "P2", "P3"]), [fn("Center", center), *points]
    )
    assert result.success, result.error
    assert result.final_response == "P1(t) & P2(t) & P3(t)"
    assert statuses(result) == {
        "b0": "completed",
        "b1": "arrived",
        "b2": "arrived",
        "b3": "arrived",
    }
    assert center_inputs == [
        [
            completed("P1", "b1", "P1(t)"),
            completed("P2", "b2", "P2(t)"),
            completed("P3", "b3", "P3(t)"),
        ]
    ]
    assert result.get_agent_invocation_count("Center") == 1
    root = result.get_branch_by_id("b0")
    assert root is not None and root.agents == ["Center"]


# ---- 12. structured task and context -------------------------------------------------------

TASK = {"request": "Analyze market trends", "sectors": ["tech", "finance"]}
CONTEXT = {"session_id": "market-2024", "format": "detailed"}


async def test_dict_task_and_context_reach_a_function_entry_agent_as_given() -> None:
    seen: list[tuple[Any, Any]] = []

    def entry(task: Any, ctx: Any) -> Any:
        seen.append((task, dict(ctx)))
        return f"{len(task['sectors'])} sectors, {ctx['format']}"

    result = await run(
        TASK, {"nodes": ["Entry"], "edges": []}, [fn("Entry", entry)], context=CONTEXT
    )
    assert result.success, result.error
    assert result.final_response == "2 sectors, detailed"
    assert statuses(result) == {"b0": "completed"}
    assert seen == [(TASK, CONTEXT)]
    assert isinstance(seen[0][0], dict)
    assert result.session_id == "market-2024"


async def test_dict_task_reaches_an_llm_entry_agent_as_json_and_context_in_its_prompt() -> None:
    model = ScriptedModel(["analysis done"])
    result = await run(
        TASK, {"nodes": ["Entry"], "edges": []}, [llm("Entry", model)], context=CONTEXT
    )
    assert result.success, result.error
    assert result.final_response == "analysis done"
    assert statuses(result) == {"b0": "completed"}
    [call] = model.calls
    heading, body = heading_and_body(call.messages[-1])
    assert heading == "[Task]"
    assert json.loads(body) == TASK
    system = call.messages[0]
    assert system.role == "system"
    shown = {key: value for key, value in CONTEXT.items() if key != "session_id"}
    assert "Shared context:\n" + json.dumps(shown) in system.content
    assert dict(call.info.context) == CONTEXT
    assert result.session_id == "market-2024"


async def test_without_dynamic_convergence_each_branch_runs_through_the_meeting_node() -> None:
    seen: list[object] = []

    def finalizer(value: object, context: object) -> str:
        seen.append(value)
        return f"final({value})"

    result = await run(
        "go",
        {"nodes": ["A", "B", "C", "D"], "edges": ["A -> B", "A -> C", "B -> D", "C -> D"]},
        [
            fn("A", lambda value, context: value),
            fn("B", lambda value, context: "from B"),
            fn("C", lambda value, context: "from C"),
            fn("D", finalizer),
        ],
        config=quiet(dynamic_convergence_enabled=False),
    )
    assert result.success, result.error
    assert sorted(map(str, seen)) == ["from B", "from C"]
    assert sorted(item["response"] for item in result.final_response) == [
        "final(from B)",
        "final(from C)",
    ]
    assert result.get_agent_invocation_count("D") == 2
