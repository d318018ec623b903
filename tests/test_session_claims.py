"""One writer per session: while a run of a session starts, runs or finishes (its last records
still being written, also after execute was cancelled), the session is claimed, and a second
execute, resume or checkpoint is refused; a cancelled execute leaves no write and no task
behind, and a last write that fails after the cancel is reported.

Every test runs against all four storage backends (see conftest.py). Appends are held with
events through ``helpers.Watched``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from helpers import Watched, quiet
from storage_backends import Storage
from test_sessions import Hold, PausablePipeline, pipeline_instance, wait

from orchestra import AgentRegistry, FunctionAgent
from orchestra.coordination import sessions
from orchestra.coordination.engine.inputs import PauseRequest
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import StateManager
from orchestra.coordination.state.manager import SessionWriter
from orchestra.errors import SessionError

BUSY = "has a run starting, running or finishing; pause it or wait for it"  # the refusal


async def held_at(
    storage: Storage, kind: str, session_id: str, watching: type[Watched] = Watched
) -> tuple[Watched, OrchestraInstance, asyncio.Task[Any]]:
    """A run of a two-stage pipeline in session ``session_id``, started, and held where it
    appends a ``kind`` record (released by ``watched.let_go``)."""
    watched = watching(storage)
    watched.hold_when = lambda records: any(r["t"] == kind for r in records)
    orchestra = pipeline_instance(watched, {"First": lambda t, c: t, "Second": lambda d, c: d})
    running = asyncio.create_task(orchestra.execute("job", context={"session_id": session_id}))
    await wait(watched.held.wait())
    return watched, orchestra, running


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0)


# ---- a running session is refused ---------------------------------------------------------------


async def test_two_resumes_at_once_run_the_session_once(storage: Storage) -> None:
    """resume must register the run before its awaits (load, snapshot, flush), not only check
    that the session is not running: two concurrent resume_session calls both used to pass,
    both ran the rest of the session (Second twice) and both wrote to the log."""
    pipeline = PausablePipeline(storage)
    await pipeline.paused("twice")
    outcomes = await wait(
        asyncio.gather(
            pipeline.orchestra.resume_session("twice"),
            pipeline.orchestra.resume_session("twice"),
            return_exceptions=True,
        )
    )
    refused = [o for o in outcomes if isinstance(o, SessionError)]
    assert len(refused) == 1, [type(o).__name__ for o in outcomes]
    assert str(refused[0]) == f"session 'twice' {BUSY}"
    [resumed] = [o for o in outcomes if not isinstance(o, BaseException)]
    assert resumed.success, resumed.error
    assert resumed.final_response == "job+first+second"
    assert pipeline.calls["Second"] == 1
    await StateManager(storage).load("twice")


async def test_execute_on_a_running_session_is_refused_or_safe(storage: Storage) -> None:
    """execute must check that the session is already running (as resume does): a second run
    of a running session used to write with the same record positions and break the log. It
    is refused (a SessionError naming the session); the first run goes on undisturbed."""
    pipeline = PausablePipeline(storage)
    orchestra = pipeline.orchestra
    hold = pipeline.holds["busy"] = Hold()
    running = asyncio.create_task(orchestra.execute("one", context={"session_id": "busy"}))
    await wait(hold.entered.wait())
    del pipeline.holds["busy"]
    with pytest.raises(SessionError) as refused:
        await wait(orchestra.execute("two", context={"session_id": "busy"}))
    assert str(refused.value) == f"session 'busy' {BUSY}"
    hold.release.set()
    first = await wait(running)
    assert first.success, first.error
    assert first.final_response == "one+first+second"
    assert dict(pipeline.calls) == {"First": 1, "Second": 1}  # "two" never ran
    log = await StateManager(storage).load("busy")  # SessionCorruptedError: out of sequence
    assert len(log.runs) == 1


async def test_a_run_without_a_state_manager_leaves_a_durable_runs_session_held(
    storage: Storage,
) -> None:
    """A run without a state manager may use the session id of a durable run (it writes
    nothing); when it ends, the durable run's session is still held and still reachable."""
    pipeline = PausablePipeline(storage)
    hold = pipeline.holds["shared"] = Hold()
    running = asyncio.create_task(
        pipeline.orchestra.execute("one", context={"session_id": "shared"})
    )
    await wait(hold.entered.wait())
    unsaved = OrchestraInstance(
        {"nodes": ["Echo"], "edges": [], "entry_point": "Echo"},
        agent_registry=AgentRegistry([FunctionAgent("Echo", lambda t, c: t, register=False)]),
        initial_config=quiet(),
    )
    other = await wait(unsaved.execute("two", context={"session_id": "shared"}))
    assert other.success, other.error
    assert other.final_response == "two"
    with pytest.raises(SessionError, match="'shared' has a run starting"):
        await pipeline.orchestra.execute("three", context={"session_id": "shared"})
    assert await pipeline.orchestra.pause_session("shared")  # still reachable
    hold.release.set()
    assert (await wait(running)).metadata["paused"] is True


# ---- a cancelled execute ------------------------------------------------------------------------


async def test_a_cancelled_execute_leaves_no_write_in_flight(storage: Storage) -> None:
    """When execute is cancelled (a request timeout, a shutdown), the write of the record its
    step was journaling goes on (shielded); execute must wait for it, not return and free the
    session while it goes on (a resume started meanwhile wrote the same positions and the
    late write then broke the log)."""
    watched, _, running = await held_at(storage, "step", "cut")
    running.cancel()
    watched.let_go.set()  # the write can finish: execute may wait for it
    with pytest.raises(asyncio.CancelledError):
        await wait(running)
    assert watched.in_flight == 0
    assert "cut" not in sessions.CLAIMED
    stored = [json.loads(line)["t"] for line in await storage.read("cut")]
    assert stored[-1] == "step"  # the held record went in, and nothing after it
    log = await StateManager(storage).load("cut")
    assert log.last_run is not None and not log.last_run.finished


async def test_a_cancelled_execute_leaves_no_task_behind(storage: Storage) -> None:
    """The periodic flusher of a cancelled execute must be stopped: it kept the session's
    writer (and its unwritten records, with their positions) alive and flushed them into the
    log later, under any run started in the session meanwhile."""
    before = asyncio.all_tasks()
    hold = Hold()

    async def first(task: Any, context: Any) -> str:
        await hold()
        return task

    orchestra = pipeline_instance(storage, {"First": first, "Second": lambda d, c: d}, 3600)
    running = asyncio.create_task(orchestra.execute("job", context={"session_id": "left"}))
    await wait(hold.entered.wait())
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await wait(running)
    left = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()]
    for task in left:
        task.cancel()
    assert [t.get_coro().__qualname__ for t in left] == []  # type: ignore[union-attr]


async def test_a_cancelled_execute_holds_its_session_until_its_last_write_is_over(
    storage: Storage,
) -> None:
    """Cancelled while its final records were being written, execute used to free the session
    at once: a run started meanwhile wrote under the writer still writing."""
    watched, orchestra, running = await held_at(storage, "end", "ending")
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await wait(running)
    with pytest.raises(SessionError, match="'ending' has a run starting, running or finishing"):
        await orchestra.execute("again", context={"session_id": "ending"})
    with pytest.raises(SessionError, match="'ending' has a run starting, running or finishing"):
        await orchestra.create_checkpoint("ending", "too-soon")
    watched.let_go.set()
    await wait(until(lambda: "ending" not in sessions.CLAIMED))
    assert [r["t"] for r in watched.durable][-1] == "end"
    again = await wait(orchestra.execute("again", context={"session_id": "ending"}))
    assert again.success, again.error


async def test_a_start_cancelled_while_its_first_record_is_written_holds_the_session(
    storage: Storage,
) -> None:
    """The write of a new run's first record goes on after a cancel (it cannot be taken
    back); until it is over the session stays held, and then the run is an interrupted one."""
    watched, orchestra, running = await held_at(storage, "run", "early")
    running.cancel()
    with pytest.raises(SessionError, match="'early' has a run starting"):
        await orchestra.execute("again", context={"session_id": "early"})
    watched.let_go.set()
    with pytest.raises(asyncio.CancelledError):
        await wait(running)
    assert "early" not in sessions.CLAIMED
    resumed = await wait(orchestra.resume_session("early"))
    assert resumed.success and resumed.final_response == "job"


# ---- a writer lets go only once its last write is over -----------------------------------------


async def test_an_abandoned_writer_lets_go_only_once_its_append_is_over(
    storage: Storage,
) -> None:
    """Abandoning (a run that failed to start, or that storage failed) used to release the
    session with an append still in flight: whoever took the session next wrote under it."""
    watched = Watched(storage)
    watched.hold_when = lambda records: True
    writer = SessionWriter(StateManager(watched, auto_save_interval=0), "abandoned", 0)
    writer.record(PauseRequest(at=1.0, reason=None))
    writer.commit()
    abandoning = asyncio.create_task(writer.abandon())
    await wait(watched.held.wait())
    watched.let_go.set()
    await wait(abandoning)
    assert watched.released_while_writing == [0]


class LosesTheEnd(Watched):
    """Holds the append of a run's ``end`` record, then fails it."""

    async def append(
        self, session_id: str, records: Sequence[str], durable: bool, after: int
    ) -> None:
        if any(json.loads(record)["t"] == "end" for record in records):
            self.held.set()
            await self.let_go.wait()
            raise ConnectionError("the storage server went away")
        await super().append(session_id, records, durable, after)


async def test_a_last_write_that_fails_after_a_cancel_is_reported(storage: Storage) -> None:
    """Nobody awaits the last write of a cancelled execute: when it fails, the event loop's
    exception handler is told which session lost its last records and why."""
    reported: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context))
    losing, _, running = await held_at(storage, "end", "lost", LosesTheEnd)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await wait(running)
    losing.let_go.set()
    await wait(until(lambda: "lost" not in sessions.CLAIMED))
    await asyncio.sleep(0)  # the report is made by a callback of the write that failed
    assert [context["message"] for context in reported] == [
        "session 'lost': its last records could not be written after its run was cancelled; "
        "a resume goes on from its last durable step"
    ]
    error = reported[0]["exception"]  # retried first, as any write; then the run halted
    assert isinstance(error, SessionError) and "'lost': its storage failed" in str(error)
    assert isinstance(error.__cause__, ConnectionError)
