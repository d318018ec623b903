"""Engine review: fan-out bookkeeping, timers, leases, races and error paths.

Each test states what the docs promise and how the engine falls short, except the "regression
coverage" tests and the step-number test, which pass. Runs are offline and deterministic;
anything that could hang is bounded by ``asyncio.wait_for(..., WAIT)``, so a broken engine
fails a test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from functools import partial
from typing import Any

import helpers
import pytest
from helpers import ask, final, fn, invoke, llm, of, quiet, spokes, statuses

from orchestra import (
    Action,
    AgentPool,
    CommunicationConfig,
    ConvergencePolicy,
    ErrorHandlingConfig,
    ExecutionConfig,
    Node,
    OrchestraResult,
    PatternConfig,
    ProgrammaticChannel,
    ScriptedModel,
    ScriptedUser,
    Topology,
)
from orchestra.communication.channels import Question
from orchestra.coordination.engine import events as ev
from orchestra.coordination.engine.runner import Runner
from orchestra.models.base import ModelReply, ToolCall

WAIT = 3.0  # every run here takes well under a second; a hang fails after WAIT
run = partial(helpers.run, wait=WAIT)


# ---- runs that hang instead of ending --------------------------------------------------------


async def test_empty_parallel_invocation_from_code_ends_the_run() -> None:
    """Code fans out over a computed list; an empty list must not leave the branch waiting on
    a fan-out with no children, which nothing ever settles."""

    def hub(value: Any, ctx: Any) -> Any:
        if isinstance(value, list):
            return Action.final(value)
        return Action.invoke_parallel([("W", item) for item in value["items"]])

    result = await run(
        {"items": []}, spokes("W"), [fn("Hub", hub), fn("W", lambda x, c: x)], max_steps=10
    )
    # either an empty result list or a clear ActionError: but an answer, not a hang
    assert result.success or result.metadata["error_type"] == "ActionError", result.error


async def test_agent_step_raising_cancelled_error_fails_the_branch_not_the_run_loop() -> None:
    """A step that raises CancelledError of its own (a cancelled future it awaited) is the
    agent's failure: the branch must fail; the run must end."""

    async def broken(value: Any, ctx: Any) -> Any:
        raise asyncio.CancelledError("an inner future was cancelled")

    result = await run("task", {"nodes": ["A"], "edges": []}, [fn("A", broken)])
    assert not result.success
    assert statuses(result) == {"b0": "failed"}


async def test_pool_lease_held_by_a_waiting_parent_does_not_deadlock_its_own_fan_out() -> None:
    """A branch that called a pooled agent once keeps that lease for its whole life, also
    while it waits on a fan-out to the same pool: with size 1 neither child ever gets the
    instance (the one holding it is at Hub, not W) and the run deadlocks."""

    def hub(value: Any, ctx: Any) -> Any:
        if value == "task":
            return Action.invoke("W", "warm-up")  # a call: W answers back to Hub
        if value == "W:warm-up":
            return Action.invoke_parallel([("W", 1), ("W", 2)])
        return Action.final([item["response"] for item in value])

    pool = AgentPool(lambda: fn("W", lambda x, c: f"W:{x}"), size=1, register=False)
    result = await run("task", spokes("W"), [fn("Hub", hub), pool])
    assert result.success, result.error
    assert result.final_response == ["W:1", "W:2"]


async def test_pool_lease_of_a_branch_cancelled_while_waiting_is_returned() -> None:
    """'any' cancels sibling P, which waits on its own fan-out (no task of its own): its lease
    on pool P must be returned when it ends, or the next use of P waits forever."""
    p_fanned_out = asyncio.Event()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def root(value: Any, ctx: Any) -> Any:
        if value == "task":
            return Action.invoke_parallel([("P", "work"), ("Q", "work")])
        if isinstance(value, list):
            return Action.invoke("P", "again")
        return Action.final(value)

    def p(value: Any, ctx: Any) -> Any:
        if value == "again":
            return "P done"
        p_fanned_out.set()
        return Action.invoke_parallel([("X", value), ("Y", value)])

    async def q(value: Any, ctx: Any) -> Any:
        await asyncio.wait_for(p_fanned_out.wait(), WAIT)
        return "Q done"

    async def stuck(value: Any, ctx: Any) -> Any:
        await never
        return "never"

    topology = PatternConfig.hierarchical({"Root": ["P", "Q"], "P": ["X", "Y"]})
    pool = AgentPool(lambda: fn("P", p), size=1, register=False)
    result = await run(
        "task",
        topology,
        [fn("Root", root), pool, fn("Q", q), fn("X", stuck), fn("Y", stuck)],
        config=quiet(convergence_policy="any"),
    )
    assert result.success, result.error
    assert result.final_response == "P done"
    assert statuses(result) == {
        "b0": "completed",
        "b1": "cancelled",  # P, waiting on X and Y
        "b2": "completed",  # Q
        "b3": "cancelled",  # X
        "b4": "cancelled",  # Y
    }


async def test_pool_lease_of_a_branch_that_finished_while_waiting_is_returned() -> None:
    """A branch at pool node P broadcasts to two exits; when they finish, the engine answers
    for P and the branch ends, in a child's task. Its P lease must come back then, not at the
    end of the run: sibling T hands off to P next and would wait forever."""
    topology = {
        "nodes": ["R", "P", "T", "X", "Y"],
        "edges": ["R -> P", "R -> T", "T -> P", "P -> X", "P -> Y"],
    }
    pool = AgentPool(lambda: fn("P", lambda x, c: x), size=1, register=False)
    agents = [
        fn("R", lambda x, c: x),  # follows both edges: P and T in parallel
        pool,
        fn("T", lambda x, c: f"T({x})"),
        fn("X", lambda x, c: f"X({x})"),
        fn("Y", lambda x, c: f"Y({x})"),
    ]
    result = await run(
        "job", topology, agents, config=quiet(dynamic_convergence_enabled=False), max_steps=20
    )
    assert result.success, result.error


# ---- wrong results ---------------------------------------------------------------------------


async def test_proceed_with_every_called_branch_failed_resumes_the_caller() -> None:
    """'proceed' resumes the waiting agent with what arrived, failures included. When every
    called spoke failed, the engine instead answers *for* the hub with the failure list: the
    hub never runs again and the run reports success with a list of errors."""
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


async def test_error_routed_to_a_convergence_point_arrives_there() -> None:
    """Star: P1 fails and error routing hands its report to Agg, its only peer. The report
    must arrive at the convergence point with P2's result; instead the failing branch runs
    Agg on its own, and Agg runs a second time on P2's result alone."""
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
    convergence point of both S and A. C must run once on all three; instead A's branch runs
    C for A1 and A2, then C runs again on B alone (A's work missing from the final answer)."""
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


async def test_a_convergence_points_policy_does_not_govern_the_sources_call_fan_outs() -> None:
    """C's metadata says 'any' for the branches meeting at C. Hub's parallel *calls* to W1 and
    W2 meet at Hub (which has no policy): the run default 'all' applies, so Hub gets both
    answers. The policy is looked up per source, so C's 'any' cancels W2."""
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


async def test_step_timeout_does_not_count_waiting_for_a_max_agents_slot() -> None:
    """step_timeout bounds one agent step. With max_agents(1) the second worker waits for the
    slot; asyncio.timeout() fixes its deadline when created, before the wait, so the wait
    counts and a step that itself takes 0.4 s fails a 0.6 s step_timeout."""

    async def worker(value: Any, ctx: Any) -> Any:
        await asyncio.sleep(0.4)
        return f"done {value}"

    def hub(value: Any, ctx: Any) -> Any:
        if isinstance(value, list):
            return Action.final([item["status"] for item in value])
        return Action.invoke_parallel([("W1", 1), ("W2", 2)])

    topology = spokes("W1", "W2")
    topology.add_rule("max_agents(1)")
    result = await run(
        "task",
        topology,
        [fn("Hub", hub), fn("W1", worker), fn("W2", worker)],
        config=quiet(step_timeout=0.6),
    )
    assert result.success, result.error
    assert result.final_response == ["completed", "completed"]


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


async def test_timers_of_ended_branches_and_settled_fan_outs_are_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """branch_timeout and convergence_timeout arm a timer per branch and per fan-out. A branch
    that completes (or a fan-out that settles) never cancels its timer: live timers grow with
    every fan-out of a run until they fire or the run ends."""
    runners: list[Runner] = []
    original_run = Runner.run

    async def capture(self: Runner, task: Any) -> None:
        runners.append(self)
        await original_run(self, task)

    monkeypatch.setattr(Runner, "run", capture)
    live: list[int] = []

    def hub(value: Any, ctx: Any) -> Any:
        rounds = ctx["rounds"]
        if isinstance(value, list):
            rounds.append(value)
        if len(rounds) == 3:
            live.append(len(runners[0]._timers))
            return Action.final("done")
        return Action.invoke_parallel([("W1", 1), ("W2", 2)])

    result = await run(
        "task",
        spokes("W1", "W2"),
        [fn("Hub", hub), fn("W1", lambda x, c: x), fn("W2", lambda x, c: x)],
        config=quiet(branch_timeout=60, convergence_timeout=60),
        context={"rounds": []},
    )
    assert result.success, result.error
    assert live == [1], live  # only the root branch's own timer is still needed


# ---- the user channel ------------------------------------------------------------------------


async def run_asker_beside(
    sibling: str, work: Callable[[Any, Any], Any], channel: Any
) -> OrchestraResult:
    """Hub calls Asker, who asks the user through ``channel``, and ``sibling`` (code doing
    ``work``) in parallel; under the 'any' policy the sibling alone can carry the run."""
    hub = ScriptedModel([invoke(("Asker", "q"), (sibling, "work")), final("hub done")])
    topology = Topology(
        nodes=["Hub", "Asker", sibling],
        edges=["Hub <-> Asker", f"Hub <-> {sibling}", "Asker -> User"],
        rules=[f"parallel(Asker, {sibling})"],
        entry_point="Hub",
        exit_points=["Hub"],
    )
    return await run(
        "task",
        topology,
        [llm("Hub", hub), llm("Asker", ScriptedModel([ask("which one?")])), fn(sibling, work)],
        config=quiet(convergence_policy="any"),
        communication_config=CommunicationConfig(channel=channel),
    )


async def test_a_cancelled_question_is_withdrawn_from_the_channel() -> None:
    """'any' cancels the branch waiting for the user; its question leaves channel.pending but
    stays in the queue, so the next reader of next_question() gets a question that can no
    longer be answered (answer() raises)."""
    channel = ProgrammaticChannel()
    asked = asyncio.Event()

    class Recording(ProgrammaticChannel):
        async def ask(self, question: Question) -> Any:
            asked.set()
            return await channel.ask(question)

    async def fast(value: Any, ctx: Any) -> Any:
        await asyncio.wait_for(asked.wait(), WAIT)
        return "fast"

    result = await run_asker_beside("Fast", fast, Recording())
    assert result.success, result.error
    assert statuses(result)["b1"] == "cancelled"
    assert channel.pending == []
    with pytest.raises(TimeoutError):
        stale = await asyncio.wait_for(channel.next_question(), 0.05)
        pytest.fail(f"a cancelled question is still queued: {stale}")


async def test_questions_of_concurrent_runs_sharing_a_channel_have_distinct_ids() -> None:
    """Question ids are "<session_id>:q<n>". Two concurrent runs of one session share a
    channel: both ask "s:q1", the second overwrites the first's future, and the first run
    can never be answered."""
    channel = ProgrammaticChannel()
    topology = {"nodes": ["A"], "edges": ["A -> User"]}

    def one_run(answer_prefix: str) -> Any:
        model = ScriptedModel([ask("name?"), final(f"{answer_prefix} done")])
        return run(
            "task",
            topology,
            [llm("A", model)],
            context={"session_id": "s"},
            communication_config=CommunicationConfig(channel=channel),
        )

    async def answer_two() -> list[str]:
        ids = []
        for _ in range(2):
            question = await channel.next_question()
            ids.append(question.id)
            channel.answer(question.id, "Ada")
        return ids

    ids, first, second = await asyncio.wait_for(
        asyncio.gather(answer_two(), one_run("first"), one_run("second")), WAIT
    )
    assert len(set(ids)) == 2, ids
    assert first.success and second.success


async def test_a_channel_raising_fails_only_the_asking_branch() -> None:
    """A channel that raises something other than an OrchestraError (a UI's ConnectionError)
    escapes _ask_user and is turned into an InternalError that aborts the whole run; the
    branch that asked should fail, and 'any' lets its sibling carry the run."""

    class Broken:
        async def ask(self, question: Question) -> Any:
            raise ConnectionError("UI went away")

    async def slow(value: Any, ctx: Any) -> Any:
        await asyncio.sleep(0.05)
        return "slow but fine"

    result = await run_asker_beside("Slow", slow, Broken())
    assert result.metadata.get("error_type") != "InternalError", result.error
    assert result.success, result.error
    assert statuses(result)["b1"] == "failed"


# ---- small things ----------------------------------------------------------------------------


async def test_code_calling_no_tools_fails_at_once() -> None:
    """An action code may not take fails its branch at once. Action.call_tools([]) from a
    function agent with no tools sets no pending tools and leaves the input in place, so the
    same step is repeated until max_steps."""
    result = await run(
        "task",
        {"nodes": ["A"], "edges": []},
        [fn("A", lambda x, c: Action.call_tools([]))],
        max_steps=50,
    )
    assert not result.success
    assert result.metadata["error_type"] == "ActionError", result.error
    assert result.total_steps == 1


# ---- tools before a coordination action --------------------------------------------------------


async def test_tools_then_ask_user_asks_the_user() -> None:
    """A reply may carry tool calls and an action; the tools run first, then the action. When
    the action is ask_user, tools_completed puts the branch in WAITING_USER but the runner only
    asks right after a step, so nobody ever asks and the run hangs."""

    def lookup(q: str) -> str:
        return f"found {q}"

    first = ModelReply(action=ask("which one?"), tool_calls=(ToolCall("lookup", {"q": "x"}, "c1"),))
    agent = llm("A", ScriptedModel([first, final("done")]), tools=[lookup])
    user = ScriptedUser(["the first"])
    result = await run(
        "task",
        {"nodes": ["A"], "edges": ["A -> User"]},
        [agent],
        communication_config=CommunicationConfig(channel=user),
    )
    assert result.success, result.error
    assert result.final_response == "done"
    assert [q.text for q in user.questions] == ["which one?"]


# ---- what a callee may invoke ------------------------------------------------------------------


async def test_a_callee_may_not_call_its_waiting_caller_back() -> None:
    """The caller is left out of a callee's peers ("a callee answers it with a final response
    rather than calling it back"), but validation checks only that the edge exists: the
    model's call back is accepted and Hub runs as W's callee inside Hub's own call."""
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
    assert result.success, result.error


# ---- model retries -----------------------------------------------------------------------------


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


# ---- configuration that cannot be written down -------------------------------------------------


def test_an_execution_config_reads_back_its_own_plain_data() -> None:
    """Configs "serialise to plain data (for logs and durable sessions)", but the policy
    serialises to a mapping that the convergence_policy validator rejects."""
    config = ExecutionConfig(convergence_policy=ConvergencePolicy(k=2, on_insufficient="proceed"))
    assert ExecutionConfig.model_validate(config.model_dump(mode="json")) == config


async def test_a_node_policy_with_k_or_proceed_can_be_written_in_a_dict_topology() -> None:
    """Node metadata from a dict, JSON or YAML topology can only say 'all', 'any' or a ratio:
    a mapping such as {"k": 1, "on_insufficient": "proceed"} is rejected at run start."""
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


# ---- pools across event loops ------------------------------------------------------------------


def test_an_agent_pool_serves_runs_on_different_event_loops() -> None:
    """A module-level pool used by two asyncio.run() calls (a CLI, a test suite): its
    asyncio.Queue binds to the first loop that had to wait, so the second run's waiting
    branch fails with 'bound to a different event loop'."""

    async def worker(value: Any, ctx: Any) -> Any:
        await asyncio.sleep(0.01)
        return f"W:{value}"

    def hub(value: Any, ctx: Any) -> Any:
        if isinstance(value, list):
            return Action.final([item["status"] for item in value])
        return Action.invoke_parallel([("W", 1), ("W", 2)])

    pool = AgentPool(lambda: fn("W", worker), size=1, register=False)
    outcomes = [asyncio.run(run("task", spokes("W"), [fn("Hub", hub), pool])) for _ in range(2)]
    assert [r.error for r in outcomes] == [None, None]
    assert [r.final_response for r in outcomes] == [["completed", "completed"]] * 2
