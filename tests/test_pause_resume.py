"""Pausing a durable run and resuming it: a pause keeps an answer that is being journaled and
stops steps still waiting for an agent slot; a resume after a crash replays into the state the
live run had (the same step count and step numbers).

Every test runs against all four storage backends (see conftest.py). A crash is simulated by
copying a prefix of a finished session's log into a new session (``crash_copy``); writes are
held with events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from helpers import Watched, crash_copy, final, kinds, quiet
from storage_backends import Storage
from test_sessions import Hold, wait

from orchestra import Action, Agent, AgentRegistry, FunctionAgent, FunctionModel, ScriptedUser
from orchestra.communication import CommunicationManager
from orchestra.coordination import orchestra as orchestra_module
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import StateManager
from orchestra.models import Message, StepInfo

# ---- pausing -----------------------------------------------------------------------------------


async def test_a_pause_while_an_answer_is_written_keeps_the_answer(storage: Storage) -> None:
    """pause_session must not lose an answer that has arrived and is being journaled. (It used
    to cancel the asking branch's task then: the answer record was written, the engine never
    applied it, and the pause snapshot, whose position includes the record, held the branch
    still waiting; the resume asked the user again.)"""
    watched = Watched(storage)
    watched.hold_when = lambda records: any(r["t"] == "answer" for r in records)
    user = ScriptedUser(["Ada"])

    def greeter(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
        if messages[-1].content.startswith("[Task]"):
            return {"next_action": "ask_user", "action_input": {"question": "Your name?"}}
        return final(f"hello {messages[-1].content.splitlines()[-1]}")

    orchestra = OrchestraInstance(
        {"nodes": ["User", "Greeter"], "edges": ["User -> Greeter", "Greeter -> User"]},
        agent_registry=AgentRegistry([Agent("Greeter", FunctionModel(greeter), register=False)]),
        initial_config=quiet(),
        communication_manager=CommunicationManager(user),
        state_manager=StateManager(watched, auto_save_interval=0),
    )
    running = asyncio.create_task(orchestra.execute("greet", context={"session_id": "hello"}))
    await wait(watched.held.wait())  # the answer arrived and is being written
    assert await orchestra.pause_session("hello")
    watched.let_go.set()
    paused = await wait(running)
    assert paused.metadata.get("paused") is True, paused.error

    resumed = await wait(orchestra.resume_session("hello"))
    assert len(user.questions) == 1  # not asked again
    assert resumed.success, resumed.error
    assert resumed.final_response == "hello Ada"


async def test_a_pause_stops_steps_still_waiting_for_an_agent_slot(storage: Storage) -> None:
    """With max_agents(1), W2 and W3 wait for W1's slot; a pause while W1 works stops them
    before they start, and the resume runs them."""
    hold = Hold()
    started: list[str] = []

    def worker(name: str) -> Callable[[Any, Any], Any]:
        async def work(data: Any, context: Any) -> str:
            started.append(name)
            if name == "W1":
                await hold()
            return f"{name} done"

        return work

    orchestra = OrchestraInstance(
        {
            "nodes": ["S", "W1", "W2", "W3"],
            "edges": ["S -> W1", "S -> W2", "S -> W3"],
            "rules": ["max_agents(1)"],
        },
        agent_registry=AgentRegistry(
            [
                FunctionAgent(
                    "S",
                    lambda task, context: Action.invoke_parallel(
                        (name, task) for name in ("W1", "W2", "W3")
                    ),
                    register=False,
                ),
                *(FunctionAgent(name, worker(name), register=False) for name in ("W1", "W2", "W3")),
            ]
        ),
        initial_config=quiet(),
        state_manager=StateManager(storage, auto_save_interval=0),
    )
    running = asyncio.create_task(orchestra.execute("go", context={"session_id": "queued"}))
    await wait(hold.entered.wait())
    assert await orchestra.pause_session("queued")
    hold.release.set()
    result = await wait(running)
    assert result.metadata.get("paused") is True, result.error
    assert started == ["W1"]  # W2 and W3 waited for the slot, and stayed put
    resumed = await wait(orchestra.resume_session("queued"))
    assert resumed.success, resumed.error
    assert sorted(started) == ["W1", "W2", "W3"]


# ---- replay: the same state as the live run ----------------------------------------------------


def racing_instance(
    storage: Storage, seen_steps: list[int], slow_started: asyncio.Event
) -> OrchestraInstance:
    """Lead calls Fast and Slow in parallel and resumes on the first answer (policy "any");
    Slow's step never ends and is cancelled when Fast answers."""

    def lead(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
        if messages[-1].content.startswith("[Results"):
            seen_steps.append(info.step)
            return final("fast won")
        return {
            "next_action": "invoke_agent",
            "action_input": [
                {"agent_name": "Fast", "request": "go"},
                {"agent_name": "Slow", "request": "go"},
            ],
        }

    async def fast(request: Any, context: Any) -> str:
        await slow_started.wait()
        return "fast"

    async def slow(request: Any, context: Any) -> str:
        slow_started.set()
        await asyncio.Event().wait()  # never answers
        return "slow"

    return OrchestraInstance(
        {
            "nodes": ["User", "Lead", "Fast", "Slow"],
            "edges": ["User -> Lead", "Lead <-> Fast", "Lead <-> Slow", "Lead -> User"],
            "rules": ["parallel(Fast, Slow)"],
        },
        agent_registry=AgentRegistry(
            [
                Agent("Lead", FunctionModel(lead), register=False),
                FunctionAgent("Fast", fast, register=False),
                FunctionAgent("Slow", slow, register=False),
            ]
        ),
        initial_config=quiet(convergence_policy="any"),
        state_manager=StateManager(storage, auto_save_interval=0),
    )


async def test_replay_counts_the_steps_the_live_run_counted(storage: Storage) -> None:
    """A step that is cancelled in flight (a sibling's when an "any" fan-out settles, a branch
    that times out) is counted by the live engine (steps, step numbers, max_steps) but has no
    record; a replay must count it too, or after a crash agents see other step numbers and
    the run reaches max_steps later than it did live."""
    seen: list[int] = []
    orchestra = racing_instance(storage, seen, asyncio.Event())
    live = await wait(orchestra.execute("race", context={"session_id": "race"}))
    assert live.success, live.error
    lines = await storage.read("race")
    assert kinds(lines) == [
        "run",
        "begin",
        "step",
        "begin",
        "begin",
        "step",
        "begin",
        "step",
        "end",
    ]

    # a crash before Lead's second step was recorded
    await crash_copy(storage, "race", "race-crashed", 3)
    resumed = await wait(
        racing_instance(storage, seen, asyncio.Event()).resume_session("race-crashed")
    )
    assert resumed.success, resumed.error
    assert seen[1] == seen[0]  # Lead's second step: step 4 live, not step 3 after the crash
    assert seen == [4, 4]  # Lead, Fast, Slow (cancelled in flight), Lead
    assert resumed.total_steps == live.total_steps


async def test_a_checkpoint_taken_while_a_crashed_run_lies_stopped_is_no_part_of_the_run(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint taken at rest after a crash was applied as one of the run's inputs: it
    moved the run's clock to when it was taken, so the time the run lay stopped counted as
    working time (a format-1 log, whose times are 0, came back 56 years long), and the resumed
    run listed it, though one taken at rest after a pause is not listed."""
    orchestra = OrchestraInstance(
        {"nodes": ["A", "B"], "edges": ["A -> B"]},
        agent_registry=AgentRegistry(
            [
                FunctionAgent("A", lambda task, context: "b", register=False),
                FunctionAgent("B", lambda work, context: "ok", register=False),
            ]
        ),
        initial_config=quiet(),
        state_manager=StateManager(storage, auto_save_interval=0),
    )
    live = await wait(orchestra.execute("t", context={"session_id": "whole"}))
    await crash_copy(storage, "whole", "crashed", 3)  # cut off after A's step
    later = time.time() + 3600  # the checkpoint is taken an hour after the crash
    monkeypatch.setattr(orchestra_module, "now", lambda: later)
    checkpoint = await orchestra.create_checkpoint("crashed", "after-the-crash")
    monkeypatch.undo()
    resumed = await wait(orchestra.resume_session("crashed"))
    assert resumed.success and resumed.final_response == live.final_response, resumed.error
    assert resumed.total_duration < 60 and resumed.checkpoint_ids == []
    assert await orchestra.restore_checkpoint(checkpoint)  # it still names its position
