"""Fan-outs and where they converge: convergence points reached by nested fan-outs, by several
sources, by an error report, or inside a call; which convergence policy governs which fan-out
('any' cancelling a sibling's whole subtree, 'proceed' resuming the caller with failures); and
policies written down as plain data (an ExecutionConfig, a dict topology's node metadata).

Runs are offline and deterministic; anything that could hang is bounded by
``asyncio.wait_for(..., WAIT)``, so a broken engine fails a test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import json
from functools import partial
from typing import Any

import helpers
from helpers import final, fn, invoke, llm, of, quiet, spokes, statuses

from orchestra import (
    Action,
    ConvergencePolicy,
    ErrorHandlingConfig,
    ExecutionConfig,
    Node,
    PatternConfig,
    ScriptedModel,
    Topology,
)
from orchestra.coordination.engine import events as ev

WAIT = 3.0  # every run here takes well under a second; a hang fails after WAIT
run = partial(helpers.run, wait=WAIT)


# ---- convergence points ------------------------------------------------------------------------


async def test_error_routed_to_a_convergence_point_arrives_there() -> None:
    """Star: P1 fails and error routing hands its report to Agg, its only peer. The report
    must arrive at the convergence point with P2's result, not make the failing branch run
    Agg on its own (and Agg then run a second time on P2's result alone)."""
    seen: list[Any] = []

    def agg(items: Any, ctx: Any) -> Any:
        seen.append(items)
        return "aggregated"

    def p1(value: Any, ctx: Any) -> Any:
        raise RuntimeError("P1 broke")

    result = await run(
        "job",
        PatternConfig.star("Agg", ["P1", "P2"]),
        [fn("Agg", agg), fn("P1", p1), fn("P2", lambda x, c: "p2 result")],
        error_config=ErrorHandlingConfig(enable_error_routing=True),
    )
    assert result.success, result.error
    assert len(seen) == 1, seen  # the convergence point runs once
    assert sorted(item["agent"] for item in seen[0]) == ["P1", "P2"]


async def test_nested_fan_out_reaching_the_outer_convergence_point_runs_it_once() -> None:
    """S fans out to A and B; A fans out again to A1 and A2. A1, A2 and B all meet at C, a
    convergence point of both S and A. C must run once on all three, not once in A's branch
    for A1 and A2 and again on B alone (A's work missing from the final answer)."""
    runs: list[Any] = []

    def c(items: Any, ctx: Any) -> Any:
        runs.append(items)
        return sorted(item["response"] for item in items if item["status"] == "completed")

    topology = {
        "nodes": ["S", "A", "B", "A1", "A2", "C"],
        "edges": ["S -> A", "S -> B", "A -> A1", "A -> A2", "A1 -> C", "A2 -> C", "B -> C"],
    }
    agents = [
        fn("S", lambda x, ctx: x),
        fn("A", lambda x, ctx: x),
        fn("B", lambda x, ctx: "b"),
        fn("A1", lambda x, ctx: "a1"),
        fn("A2", lambda x, ctx: "a2"),
        fn("C", c),
    ]
    result = await run("job", topology, agents)
    assert result.success, result.error
    assert len(runs) == 1, runs
    assert result.final_response == ["a1", "a2", "b"]


async def test_two_convergence_points_run_once_each_then_meet_again() -> None:
    """A and B both reach C1 and C2 (convergence points of S): a second fan-out runs C1 and C2
    once each on both results, and both meet again at D, which runs once."""
    inputs: dict[str, list[Any]] = {}

    def record(name: str, answer: Any) -> Any:
        def agent(value: Any, ctx: Any) -> Any:
            inputs.setdefault(name, []).append(value)
            return answer

        return agent

    topology = {
        "nodes": ["S", "A", "B", "C1", "C2", "D"],
        "edges": [
            "S -> A",
            "S -> B",
            "A -> C1",
            "A -> C2",
            "B -> C1",
            "B -> C2",
            "C1 -> D",
            "C2 -> D",
        ],
    }
    agents = [
        fn("S", lambda x, c: x),
        fn("A", lambda x, c: "a"),
        fn("B", lambda x, c: "b"),
        fn("C1", record("C1", "c1")),
        fn("C2", record("C2", "c2")),
        fn("D", record("D", "d")),
    ]
    result = await run("job", topology, agents)
    assert result.success, result.error
    assert result.final_response == "d"
    for node in ("C1", "C2"):
        [items] = inputs[node]
        assert [(i["agent"], i["response"]) for i in items] == [("A", "a"), ("B", "b")]
    [d_items] = inputs["D"]
    assert [(i["agent"], i["response"]) for i in d_items] == [("C1", "c1"), ("C2", "c2")]
    assert statuses(result) == {
        "b0": "completed",
        "b1": "arrived",
        "b2": "arrived",
        "b3": "arrived",
        "b4": "arrived",
    }


async def test_a_fan_out_inside_a_call_converges_and_answers_the_caller() -> None:
    """Top calls B; B fans out to X and Y, which meet at C. C runs once in B's branch and its
    answer goes back to Top, the caller still waiting at the bottom of the call stack."""
    seen: list[Any] = []

    def top(value: Any, ctx: Any) -> Any:
        seen.append(value)
        return Action.invoke("B", "work") if value == "job" else Action.final(value)

    topology = Topology(
        nodes=["Top", "B", "X", "Y", "C"],
        edges=["Top <-> B", "B -> X", "B -> Y", "X -> C", "Y -> C"],
        entry_point="Top",
        exit_points=["Top", "C"],
    )
    agents = [
        fn("Top", top),
        fn("B", lambda x, c: Action.invoke_parallel([("X", x), ("Y", x)])),
        fn("X", lambda x, c: "x"),
        fn("Y", lambda x, c: "y"),
        fn("C", lambda items, c: sorted(item["response"] for item in items)),
    ]
    result = await run("job", topology, agents)
    assert result.success, result.error
    assert seen == ["job", ["x", "y"]]
    assert result.final_response == ["x", "y"]
    returned = [e for e in of(result, ev.WorkHandedOver) if e.kind == "return"]
    assert [(e.source, e.target) for e in returned] == [("C", "Top")]


# ---- which policy governs which fan-out --------------------------------------------------------


async def test_proceed_with_every_called_branch_failed_resumes_the_caller() -> None:
    """'proceed' resumes the waiting agent with what arrived, failures included, also when
    every called spoke failed: the engine must not answer *for* the hub with the failure list
    (the hub never running again and the run reporting success with a list of errors)."""
    hub = ScriptedModel([invoke(("W1", "a"), ("W2", "b")), final("hub handled the failures")])

    def boom(value: Any, ctx: Any) -> Any:
        raise RuntimeError(f"cannot do {value}")

    result = await run(
        "job",
        spokes("W1", "W2"),
        [llm("Hub", hub), fn("W1", boom), fn("W2", boom)],
        config=quiet(convergence_policy=ConvergencePolicy(on_insufficient="proceed")),
    )
    assert len(hub.calls) == 2, result.final_response
    assert result.final_response == "hub handled the failures"
    heading, _, body = hub.calls[1].messages[-1].content.partition("\n")
    assert heading == "[Results of the parallel branches you started]"
    assert [item["status"] for item in json.loads(body)] == ["failed", "failed"]


async def test_a_convergence_points_policy_does_not_govern_the_sources_call_fan_outs() -> None:
    """C's metadata says 'any' for the branches meeting at C. Hub's parallel *calls* to W1 and
    W2 meet at Hub (which has no policy): the run default 'all' applies, so Hub gets both
    answers. (The policy used to be looked up per source, so C's 'any' cancelled W2.) C's
    'any' still governs the fan-out to A and B that meets at C."""
    seen: list[Any] = []

    def hub(value: Any, ctx: Any) -> Any:
        if value == "task":
            return Action.invoke_parallel([("W1", "x"), ("W2", "y")])
        seen.append(value)
        return Action.invoke_parallel([("A", "a"), ("B", "b")])

    topology = Topology(
        nodes=["Hub", "W1", "W2", "A", "B", Node("C", metadata={"convergence_policy": "any"})],
        edges=["Hub <-> W1", "Hub <-> W2", "Hub -> A", "Hub -> B", "A -> C", "B -> C"],
        entry_point="Hub",
    )
    agents = [
        fn("Hub", hub),
        fn("W1", lambda x, c: "w1"),
        fn("W2", lambda x, c: "w2"),
        fn("A", lambda x, c: x),
        fn("B", lambda x, c: x),
        fn("C", lambda items, c: "done"),
    ]
    result = await run("task", topology, agents)
    assert result.success, result.error
    assert [item["agent"] for item in seen[0]] == ["W1", "W2"]
    assert result.final_response == "done"
    assert statuses(result) == {
        "b0": "completed",  # Hub, then C
        "b1": "completed",  # W1
        "b2": "completed",  # W2: not cancelled by C's 'any'
        "b3": "arrived",  # A reached C first ...
        "b4": "cancelled",  # ... so 'any' at C cancelled B
    }


async def test_any_cancels_a_sibling_together_with_its_own_children() -> None:
    """'any': Q answers first, so sibling P, which waits on its own fan-out to X and Y, is
    cancelled with X and Y, whose running steps are interrupted before the root resumes."""
    p_fanned_out = asyncio.Event()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    interrupted: list[str] = []

    def root(value: Any, ctx: Any) -> Any:
        if value == "task":
            return Action.invoke_parallel([("P", "work"), ("Q", "work")])
        return Action.final({"items": value, "interrupted": sorted(interrupted)})

    def p(value: Any, ctx: Any) -> Any:
        p_fanned_out.set()
        return Action.invoke_parallel([("X", value), ("Y", value)])

    async def q(value: Any, ctx: Any) -> Any:
        await asyncio.wait_for(p_fanned_out.wait(), WAIT)
        await asyncio.sleep(0)  # X and Y have started their steps
        return "Q done"

    def stuck(name: str) -> Any:
        async def agent(value: Any, ctx: Any) -> Any:
            try:
                await never
            except asyncio.CancelledError:
                interrupted.append(name)
                raise
            return "never"

        return agent

    topology = PatternConfig.hierarchical({"Root": ["P", "Q"], "P": ["X", "Y"]})
    result = await run(
        "task",
        topology,
        [fn("Root", root), fn("P", p), fn("Q", q), fn("X", stuck("X")), fn("Y", stuck("Y"))],
        config=quiet(convergence_policy="any"),
    )
    assert result.success, result.error
    assert result.final_response == {
        "items": [{"agent": "Q", "branch_id": "b2", "status": "completed", "response": "Q done"}],
        "interrupted": ["X", "Y"],
    }
    assert statuses(result) == {
        "b0": "completed",
        "b1": "cancelled",
        "b2": "completed",
        "b3": "cancelled",
        "b4": "cancelled",
    }
    reached = [(e.fan_out_id, e.outcome) for e in of(result, ev.ConvergenceReached)]
    assert reached == [("f1", "met")]


# ---- policies written down as plain data -------------------------------------------------------


def test_an_execution_config_reads_back_its_own_plain_data() -> None:
    """Configs "serialise to plain data (for logs and durable sessions)": the policy's
    mapping must be accepted back by the convergence_policy validator."""
    config = ExecutionConfig(convergence_policy=ConvergencePolicy(k=2, on_insufficient="proceed"))
    assert ExecutionConfig.model_validate(config.model_dump(mode="json")) == config


async def test_a_node_policy_with_k_or_proceed_can_be_written_in_a_dict_topology() -> None:
    """Node metadata from a dict, JSON or YAML topology may give a policy as a mapping such as
    {"k": 1, "on_insufficient": "proceed"}, not only 'all', 'any' or a ratio: it is accepted
    at run start and applied (k=1: Hub resumes on the first answer, the other is cancelled)."""
    topology = {
        "nodes": [
            {"name": "Hub", "metadata": {"convergence_policy": {"k": 1}}},
            "W1",
            "W2",
        ],
        "edges": ["Hub <-> W1", "Hub <-> W2"],
        "entry_point": "Hub",
    }

    def hub(value: Any, ctx: Any) -> Any:
        if isinstance(value, list):
            return Action.final(len(value))
        return Action.invoke_parallel([("W1", 1), ("W2", 2)])

    result = await run(
        "task", topology, [fn("Hub", hub), fn("W1", lambda x, c: x), fn("W2", lambda x, c: x)]
    )
    assert result.success, result.error
    assert result.final_response == 1  # k=1, not the default 'all' (which would give 2)
    assert statuses(result) == {"b0": "completed", "b1": "completed", "b2": "cancelled"}
