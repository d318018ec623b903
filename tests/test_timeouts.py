"""Timeouts and their timers: step_timeout bounds an agent's own step (not its wait for a
max_agents slot), and the timers of branch_timeout and convergence_timeout live only as long
as the branch or fan-out they guard.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import helpers
import pytest
from helpers import fn, quiet, spokes, statuses

from orchestra import Action
from orchestra.coordination.engine.runner import Runner

WAIT = 3.0  # every run here takes well under a second; a hang fails after WAIT
run = partial(helpers.run, wait=WAIT)


async def test_step_timeout_does_not_count_waiting_for_a_max_agents_slot() -> None:
    """step_timeout bounds one agent step. With max_agents(1) the second worker waits for the
    slot; the wait must not count (asyncio.timeout() used to fix its deadline when created,
    before the wait, so a step that itself takes 0.4 s failed a 0.6 s step_timeout)."""

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
    assert statuses(result) == {"b0": "completed", "b1": "completed", "b2": "completed"}


async def test_timers_of_ended_branches_and_settled_fan_outs_are_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """branch_timeout and convergence_timeout arm a timer per branch and per fan-out. A branch
    that completes (or a fan-out that settles) must cancel its timer, or live timers grow
    with every fan-out of a run until they fire or the run ends."""
    runners: list[Runner] = []
    original_drive = Runner.drive

    async def capture(self: Runner) -> None:
        runners.append(self)
        await original_drive(self)

    monkeypatch.setattr(Runner, "drive", capture)
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
