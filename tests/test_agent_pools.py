"""Agent pools in whole runs: a pooled instance is leased only while a branch works at the
pool's node, so a branch waiting on its own fan-out, cancelled while waiting, or ended in a
child's task never keeps a lease that another branch needs; and one pool serves runs on
different event loops.

A lease that is never returned shows up as a run that hangs: every run is bounded by
``asyncio.wait_for(..., WAIT)`` and every test checks at the end that the pool lent nothing
out.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Any

import helpers
from helpers import fn, quiet, spokes, statuses
from test_sessions import Hold, wait

from orchestra import Action, AgentPool, AgentRegistry, FunctionAgent, PatternConfig
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import FileStorageBackend, StateManager

WAIT = 3.0  # every run here takes well under a second; a hang fails after WAIT
run = partial(helpers.run, wait=WAIT)


async def test_pool_lease_held_by_a_waiting_parent_does_not_deadlock_its_own_fan_out() -> None:
    """A branch that called a pooled agent once must not keep that lease for its whole life,
    also while it waits on a fan-out to the same pool: with size 1 neither child would ever
    get the instance (the one holding it is at Hub, not W) and the run would deadlock."""

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
    assert pool.available == 1


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
    assert pool.available == 1


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
    # both of R's branches got P (the second only once the first let go of it) and ended there
    assert [(item["agent"], item["branch_id"]) for item in result.final_response] == [
        ("P", "b1"),
        ("P", "b2"),
    ]
    assert [[leaf["response"] for leaf in item["response"]] for item in result.final_response] == [
        ["X(job)", "Y(job)"],
        ["X(T(job))", "Y(T(job))"],
    ]
    assert [branch.agents for branch in result.branch_results[1:3]] == [["P"], ["T", "P"]]
    assert set(statuses(result).values()) == {"completed"}
    assert pool.available == 1


def test_an_agent_pool_serves_runs_on_different_event_loops() -> None:
    """A module-level pool used by two asyncio.run() calls (a CLI, a test suite): its
    asyncio.Queue must not stay bound to the first loop that had to wait, or the second run's
    waiting branch fails with 'bound to a different event loop'."""

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
    assert pool.available == 1


async def test_a_pause_does_not_wait_for_an_instance_another_session_holds(
    tmp_path: Path,
) -> None:
    """Session y waited for the pool's one instance, held by session x's long step: pausing y
    waited until x's step was over."""
    holds = {"x": Hold(), "y": Hold()}

    async def slow(task: Any, context: Any) -> str:
        await holds[context["session_id"]]()
        return "done"

    pool = AgentPool(lambda: FunctionAgent("P", slow, register=False), size=1, register=False)
    orchestra = OrchestraInstance(
        {"nodes": ["P"], "edges": []},
        agent_registry=AgentRegistry([pool]),
        initial_config=quiet(),
        state_manager=StateManager(FileStorageBackend(tmp_path), auto_save_interval=0),
    )
    x = asyncio.create_task(orchestra.execute("t", context={"session_id": "x"}))
    await wait(holds["x"].entered.wait())  # x's step holds the instance
    y = asyncio.create_task(orchestra.execute("t", context={"session_id": "y"}))

    async def until_y_waits() -> None:
        while not pool.waiting:
            await asyncio.sleep(0)

    await wait(until_y_waits())
    assert await orchestra.pause_session("y")
    paused = await wait(y)
    assert paused.metadata.get("paused") is True and not holds["y"].entered.is_set()
    assert pool.available == 0  # x still holds it: y gave up its place in the queue
    holds["x"].release.set()
    assert (await wait(x)).success
    holds["y"].release.set()
    resumed = await wait(orchestra.resume_session("y"))
    assert resumed.success and resumed.final_response == "done", resumed.error
    assert pool.available == 1
