"""A session's log as a write-ahead log: the engine acts on a record only once it and every
record before it are durable, appends of one session are never in flight together, periodic
flushes survive a failed one and periodic snapshots never capture a step in flight, and
storage failures are retried when they pass and halt the run like a crash when they last.

Every test runs against all four storage backends (see conftest.py); the backend is watched
(and made to hold or fail appends) through ``helpers.Watched``.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from helpers import Down, Watched, quiet, stamping_instance
from storage_backends import Storage
from test_sessions import Hold, pipeline_instance, wait

from orchestra import Agent, AgentRegistry, FunctionModel, ScriptedUser
from orchestra.communication import CommunicationManager
from orchestra.coordination.engine import runner as runner_module
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import StateManager
from orchestra.coordination.state.manager import SessionWriter
from orchestra.errors import SessionError, SessionNotFoundError
from orchestra.models import Message, StepInfo

# ---- the writer: every record durable before the engine acts on it, in order -----------------


async def test_appends_of_one_session_are_never_in_flight_together(storage: Storage) -> None:
    """A flush must wait for a write another flush started while it waited: with four
    parallel tool calls two appends used to be in flight together, and a backend may commit
    them in either order, leaving records out of sequence (unreadable)."""
    watched = Watched(storage)
    executed: list[str] = []
    orchestra = stamping_instance(watched, 4, executed, lambda: None)
    result = await wait(orchestra.execute("stamp", context={"session_id": "stamps4"}))
    assert result.success, result.error
    assert watched.most_in_flight == 1
    await StateManager(storage).load("stamps4")


async def test_every_effect_waits_until_the_steps_before_it_are_durable(storage: Storage) -> None:
    """With auto_save_interval=0 the engine folds a step while its record is being written,
    but no model call and no question to the user happens before the records of the steps
    that led to it are durable."""
    watched = Watched(storage)
    too_early: list[str] = []

    def durable_steps() -> int:
        return sum(1 for record in watched.durable if record["t"] == "step")

    def agent(name: str, successor: str | None) -> Agent:
        calls = Counter[str]()

        def decide(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
            calls[name] += 1
            earlier = {"A": 0, "B": 1, "C": 2}[name] + calls[name] - 1
            if durable_steps() < earlier:
                too_early.append(f"{name} called with {durable_steps()} of {earlier} durable")
            if successor is None:
                if calls[name] > 1:  # the user answered
                    return {"next_action": "final_response", "action_input": {"response": "ok"}}
                return {"next_action": "ask_user", "action_input": {"question": "fine?"}}
            return {
                "next_action": "invoke_agent",
                "action_input": [{"agent_name": successor, "request": "go on"}],
            }

        return Agent(name, FunctionModel(decide), register=False)

    class Checking(ScriptedUser):
        async def ask(self, question: Any) -> Any:
            if durable_steps() < 3:  # A's, B's and the asking step of C
                too_early.append(f"asked with {durable_steps()} of 3 durable")
            return await super().ask(question)

    orchestra = OrchestraInstance(
        {
            "nodes": ["User", "A", "B", "C"],
            "edges": ["User -> A", "A -> B", "B -> C", "C -> User"],
        },
        agent_registry=AgentRegistry([agent("A", "B"), agent("B", "C"), agent("C", None)]),
        initial_config=quiet(),
        communication_manager=CommunicationManager(Checking(["yes"])),
        state_manager=StateManager(watched, auto_save_interval=0),
    )
    result = await wait(orchestra.execute("go", context={"session_id": "effects"}))
    assert result.success, result.error
    assert too_early == []


async def test_a_run_that_fails_to_start_leaves_no_run_to_resume(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's header could not be written (the storage server is down, and stays down
    through the retries): execute raises a SessionError saying so, and nothing is left in the
    log that a later resume_session would run after all."""
    monkeypatch.setattr(runner_module, "STORAGE_RETRY_DELAYS", (0.0, 0.0))
    down = Down(storage, "run")
    orchestra = pipeline_instance(down, {"First": lambda task, context: task})
    with pytest.raises(SessionError, match=r"'unborn': its storage failed \(ConnectionError"):
        await wait(orchestra.execute("pay the invoice", context={"session_id": "unborn"}))
    assert not await storage.exists("unborn")
    assert down.durable == []
    with pytest.raises(SessionNotFoundError, match="'unborn'"):
        await orchestra.resume_session("unborn")


# ---- periodic flushes and snapshots ------------------------------------------------------------


async def test_a_failed_periodic_flush_is_retried(storage: Storage) -> None:
    """With auto_save_interval > 0, one failed append (a dropped connection) must not end the
    periodic flusher for good. (SessionWriter.flush used to take the records out of the buffer
    and keep the failed write as ``_writing``, so every later flush raised its error again:
    nothing more became durable while the run went on, so a crash then lost far more than
    ``auto_save_interval`` seconds, and the run's end raised the old ConnectionError.)"""
    watched = Watched(storage)
    watched.fail_when = lambda records: any(r["t"] == "step" for r in records)
    hold = Hold()

    async def second(data: Any, context: Any) -> str:
        await hold()
        return data

    orchestra = pipeline_instance(watched, {"First": lambda t, c: t, "Second": second}, 0.01)
    running = asyncio.create_task(orchestra.execute("job", context={"session_id": "flaky"}))
    await wait(hold.entered.wait())
    made_durable = True
    try:  # First's step becomes durable at a later flush
        while not any(r["t"] == "step" for r in watched.durable):
            await wait(watched.appended.wait())
            watched.appended.clear()
    except TimeoutError:
        made_durable = False  # the flusher is dead
    hold.release.set()
    (outcome,) = await wait(asyncio.gather(running, return_exceptions=True))
    assert watched.fail_when is None, "no append failed: the test tried nothing"
    assert made_durable, "First's step never became durable while Second worked"
    assert not isinstance(outcome, BaseException), repr(outcome)  # the old ConnectionError
    assert outcome.success, outcome.error
    assert outcome.final_response == "job"
    log = await StateManager(storage).load("flaky")
    assert log.last_run is not None and log.last_run.finished


async def test_a_periodic_snapshot_does_not_count_a_step_in_flight(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A periodic snapshot must not capture the engine while a step is in flight (the step
    count and the branch's step would include a step the log does not explain, and a resume
    from it would take the step again on top). While First works, three flush-and-snapshot
    ticks pass and no snapshot is stored (every snapshot stored is seen: ``keep_snapshot``);
    the run then counts its two steps, within max_steps=2."""
    watched = Watched(storage)
    watched.keep_snapshot = lambda: True  # every snapshot stored is seen
    ticks = asyncio.Event()
    seen = {"ticks": 0}
    original = SessionWriter.snapshot

    async def counting(self: SessionWriter) -> None:
        seen["ticks"] += 1
        if seen["ticks"] >= 3:
            ticks.set()
        await original(self)

    monkeypatch.setattr(SessionWriter, "snapshot", counting)
    stored_while_in_flight: list[int] = []

    async def first(task: Any, context: Any) -> str:
        before = len(watched.snapshots)
        await ticks.wait()  # three flush-and-snapshot ticks while this step is in flight
        stored_while_in_flight.append(len(watched.snapshots) - before)
        return f"{task}+first"

    def second(data: Any, context: Any) -> str:
        return f"{data}+second"

    orchestra = pipeline_instance(watched, {"First": first, "Second": second}, 0.01)
    result = await wait(orchestra.execute("job", context={"session_id": "tick"}, max_steps=2))
    assert result.success, result.error
    assert result.final_response == "job+first+second"
    assert result.total_steps == 2
    assert stored_while_in_flight == [0]


# ---- storage failures --------------------------------------------------------------------------


class Unreachable(Watched):
    """Storage that is down (every append of a step fails) while ``down`` is set."""

    down = False

    async def append(
        self, session_id: str, records: Sequence[str], durable: bool, after: int
    ) -> None:
        if self.down and any(json.loads(record)["t"] == "step" for record in records):
            raise ConnectionError("the storage server is down")
        await super().append(session_id, records, durable, after)


async def test_a_passing_storage_failure_is_retried_and_the_run_goes_on(storage: Storage) -> None:
    """One failed append of a step (a connection dropped for a moment) is retried: the run
    goes on as if nothing happened, and its log is whole."""
    watched = Watched(storage)
    watched.fail_when = lambda records: any(record["t"] == "step" for record in records)
    orchestra = pipeline_instance(
        watched, {"First": lambda task, context: f"{task}+1", "Second": lambda d, c: f"{d}+2"}
    )
    result = await wait(orchestra.execute("job", context={"session_id": "blip"}))
    assert watched.fail_when is None, "no append failed: the test tried nothing"
    assert result.success, result.error
    assert result.final_response == "job+1+2"
    steps = [record for record in watched.durable if record["t"] == "step"]
    assert len(steps) == 2  # each step stored once, the failed append's included
    log = await StateManager(storage).load("blip")
    assert log.last_run is not None and log.last_run.finished


async def test_storage_that_stays_down_halts_the_run_like_a_crash_and_resume_goes_on(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is recorded as failed (the workflow did not fail): execute raises an error
    naming the session, the log ends at the last durable step, and once storage is back the
    session resumes from there."""
    monkeypatch.setattr(runner_module, "STORAGE_RETRY_DELAYS", (0.0, 0.0))
    unreachable = Unreachable(storage)
    calls: Counter[str] = Counter()

    def stage(name: str) -> Callable[[Any, Any], Any]:
        def work(data: Any, context: Any) -> str:
            calls[name] += 1
            unreachable.down = name == "First" and calls[name] == 1
            return f"{data}+{name}"

        return work

    orchestra = pipeline_instance(unreachable, {"First": stage("First"), "Second": stage("Second")})
    with pytest.raises(SessionError, match=r"'down'.*storage failed.*resume it"):
        await wait(orchestra.execute("job", context={"session_id": "down"}))
    kinds = [json.loads(line)["t"] for line in await storage.read("down")]
    assert "end" not in kinds and "step" not in kinds
    unreachable.down = False
    resumed = await wait(orchestra.resume_session("down"))
    assert resumed.success, resumed.error
    assert resumed.final_response == "job+First+Second"
    assert calls == {"First": 2, "Second": 1}  # the step that was never durable ran again
