"""Checkpoints of sessions on Temporal: the same calls, in the same order, embedded (a session
store) and on Temporal (a real dev server, an in-process worker), give the same ids, the same
answers and the same results. A checkpoint of a run in progress is journaled by its workflow
(the ``checkpoint`` update); a paused run is restored in its workflow (the ``restore``
update); a run that is over goes on in a new run of its workflow, which carries its journal.
Every history replays without a non-determinism error, and a worker's store copy of the
session reads as the embedded session's log.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import fn, quiet
from temporalio.client import Client
from test_temporal_executor import ON_TEMPORAL, comparable

from orchestra import AgentRegistry, Topology
from orchestra.agents.base import BaseAgent
from orchestra.communication.channels import CommunicationManager
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.execution import stored_result
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import (
    FileStorageBackend,
    SQLiteStorageBackend,
    StateManager,
    records,
)
from orchestra.errors import ConfigurationError, SessionError
from orchestra.temporal import Hosting, TemporalExecutor, worker
from orchestra.temporal.follow import Follower
from orchestra.temporal.protocol import pack_lines, unpack_lines
from orchestra.temporal.worker import replayer

PAIR = Topology(nodes=["First", "Second"], edges=["First -> Second"])


class Pair:
    """First tells ``started`` it runs and waits for ``go_on`` (counting its steps); Second
    answers with what it got and the context's ``extra``."""

    def __init__(self) -> None:
        self.started, self.go_on = asyncio.Event(), asyncio.Event()
        self.firsts = 0

    def agents(self) -> list[BaseAgent]:
        async def first(value: Any, context: Any) -> Any:
            self.firsts += 1
            self.started.set()
            await asyncio.wait_for(self.go_on.wait(), ON_TEMPORAL)
            return f"{value} first"

        def second(value: Any, context: Any) -> Any:
            return f"{value} second {context.get('extra')}"

        return [fn("First", first), fn("Second", second)]


@pytest.fixture
async def client(temporal_server: str) -> Client:
    return await Client.connect(temporal_server)


@asynccontextmanager
async def instances(
    client: Client, tmp_path: Path, pair: Pair
) -> AsyncIterator[tuple[OrchestraInstance, OrchestraInstance, Hosting, StateManager]]:
    """An embedded instance (a file store) and one on Temporal (a worker hosting the same
    agents, with a store of its own), over ``pair``'s agents; the Temporal worker's hosting
    and store."""
    agents = pair.agents()
    embedded = OrchestraInstance(
        PAIR,
        AgentRegistry(agents),
        quiet(),
        CommunicationManager(),
        state_manager=StateManager(FileStorageBackend(tmp_path / "embedded")),
    )
    queue = f"test-{uuid.uuid4().hex}"
    hosting = Hosting()
    hosting.add(PAIR, AgentRegistry(agents))
    store = StateManager(SQLiteStorageBackend(tmp_path / "mirror.db"))
    async with worker(client, queue, hosting, store=store):
        executor = TemporalExecutor(client, queue, heartbeat_timeout=3.0)
        on_temporal = OrchestraInstance(
            PAIR, AgentRegistry(agents), quiet(), CommunicationManager(), executor=executor
        )
        yield embedded, on_temporal, hosting, store


async def paused_after_first(instance: OrchestraInstance, pair: Pair, session_id: str) -> Any:
    """A run of ``session_id`` paused once First's step is done."""
    pair.started.clear()
    pair.go_on.clear()
    running = asyncio.create_task(instance.execute("job", {"session_id": session_id}))
    await asyncio.wait_for(pair.started.wait(), ON_TEMPORAL)
    assert await instance.pause_session(session_id, "lunch")
    pair.go_on.set()
    return await asyncio.wait_for(running, ON_TEMPORAL)


async def restored_after_the_end(
    instance: OrchestraInstance, pair: Pair, session_id: str
) -> list[Any]:
    """A checkpoint at a pause, the run finished, restored there and finished otherwise; a
    checkpoint at that end, restored (nothing runs again); the first one restored again, the
    run finished a third way; the end's checkpoint, now on an abandoned branch, refused."""
    said: list[Any] = [await paused_after_first(instance, pair, session_id)]
    paused = await instance.create_checkpoint(session_id, "after first")
    said.append(paused)
    said.append(await instance.resume_session(session_id, {"extra": "one"}))
    said.append(await instance.restore_checkpoint(paused))
    said.append(await instance.resume_session(session_id, {"extra": "two"}))
    end = await instance.create_checkpoint(session_id)
    said.append(end)
    said.append(await instance.restore_checkpoint(end))
    said.append(await instance.resume_session(session_id, {"extra": "not run"}))
    said.append(await instance.restore_checkpoint(paused))
    said.append(await instance.resume_session(session_id, {"extra": "three"}))
    said.append(await instance.restore_checkpoint(end))  # abandoned by the last restore
    said.append(await instance.get_result(session_id))
    return said


def _comparable(said: list[Any]) -> list[Any]:
    return [comparable(item) if hasattr(item, "branch_results") else item for item in said]


async def _histories(client: Client, session_id: str) -> list[Any]:
    """Every workflow run of the session, each run's history."""
    runs = [run async for run in client.list_workflows(f"WorkflowId = '{session_id}'")]
    return [
        await client.get_workflow_handle(session_id, run_id=run.run_id).fetch_history()
        for run in runs
    ]


async def _all_runs_listed(client: Client, session_id: str, count: int) -> None:
    """Wait (polling, with a deadline) until the server's visibility lists ``count`` runs."""
    deadline = asyncio.get_running_loop().time() + ON_TEMPORAL
    while True:
        runs = [run async for run in client.list_workflows(f"WorkflowId = '{session_id}'")]
        if len(runs) >= count:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{len(runs)} runs listed"
        await asyncio.sleep(0.1)


async def test_a_finished_session_is_restored_and_resumed_as_embedded(
    client: Client, tmp_path: Path
) -> None:
    pair = Pair()
    session_id = f"restored-{uuid.uuid4().hex[:8]}"
    async with instances(client, tmp_path, pair) as (embedded, on_temporal, hosting, store):
        here = await restored_after_the_end(embedded, pair, session_id)
        firsts_here, pair.firsts = pair.firsts, 0
        there = await restored_after_the_end(on_temporal, pair, session_id)
        assert pair.firsts == firsts_here == 1  # First's step is never run again
        assert _comparable(there) == _comparable(here)
        assert [here[2].final_response, here[4].final_response, here[9].final_response] == [
            "job first second one",
            "job first second two",
            "job first second three",
        ]
        assert here[1] == f"{session_id}@after first"
        assert (here[3], here[6], here[8], here[10]) == (True, True, True, False)
        assert comparable(here[7]) == comparable(here[4])  # a finished run is not run again
        # the worker's store copy is the embedded session's log, record for record
        mirrored, mirrored_entries = await store.load_all(session_id)
        log, entries = await embedded.state_manager.load_all(session_id)  # type: ignore[union-attr]
        assert [e.kind for e in mirrored_entries] == [e.kind for e in entries]
        assert sorted(mirrored.checkpoints) == sorted(log.checkpoints)
        copied = await stored_result(on_temporal._setup(None, 100), mirrored, store)
        assert copied is not None and comparable(copied) == comparable(here[-1])
        keeper = OrchestraInstance(PAIR, AgentRegistry(pair.agents()), state_manager=store)
        with pytest.raises(SessionError, match=r"runs on Temporal.*executor=TemporalExecutor"):
            await keeper.create_checkpoint(session_id)  # the copy is not the workflow's journal
        with pytest.raises(SessionError, match=r"runs on Temporal.*restore_checkpoint"):
            await keeper.restore_checkpoint(here[1])
        assert [e.kind for e in (await store.load_all(session_id))[1]] == [
            e.kind for e in mirrored_entries
        ]
        await _all_runs_listed(client, session_id, 5)  # the first, 2 restores, a checkpoint
        histories = await _histories(client, session_id)
    check = replayer(hosting)
    for history in histories:
        replayed = await check.replay_workflow(history, raise_on_replay_failure=False)
        assert replayed.replay_failure is None, history.run_id


async def checkpoint_in_flight(
    instance: OrchestraInstance, pair: Pair, session_id: str
) -> list[Any]:
    """A checkpoint while First's step is in flight (an input of the run), the run paused
    after it and restored there while paused: First's step runs again on resume."""
    pair.started.clear()
    pair.go_on.clear()
    running = asyncio.create_task(instance.execute("job", {"session_id": session_id}))
    await asyncio.wait_for(pair.started.wait(), ON_TEMPORAL)
    taken = await instance.create_checkpoint(session_id)
    with pytest.raises(SessionError, match="pause it"):  # a run in progress
        await instance.restore_checkpoint(taken)
    assert await instance.pause_session(session_id)
    pair.go_on.set()
    said: list[Any] = [taken, await asyncio.wait_for(running, ON_TEMPORAL)]
    said.append(await instance.restore_checkpoint(taken))
    said.append(await instance.get_result(session_id))  # None: restored into a run in progress
    said.append(await instance.restore_checkpoint(f"{session_id}@no such"))
    said.append(await instance.restore_checkpoint("no checkpoint id"))
    said.append(await instance.restore_checkpoint(f"missing-{uuid.uuid4().hex[:8]}@x"))
    said.append(await instance.resume_session(session_id, {"extra": "again"}))
    return said


async def test_a_checkpoint_in_flight_is_restored_while_paused_as_embedded(
    client: Client, tmp_path: Path
) -> None:
    pair = Pair()
    session_id = f"in-flight-{uuid.uuid4().hex[:8]}"
    async with instances(client, tmp_path, pair) as (embedded, on_temporal, hosting, _):
        here = await checkpoint_in_flight(embedded, pair, session_id)
        firsts_here, pair.firsts = pair.firsts, 0
        there = await checkpoint_in_flight(on_temporal, pair, session_id)
        assert pair.firsts == firsts_here == 2  # the step in flight at the checkpoint runs again
        assert _comparable(there) == _comparable(here)
        assert here[0].startswith(f"{session_id}@checkpoint-")
        assert here[2:7] == [True, None, False, False, False]
        assert here[-1].final_response == "job first second again"
        assert here[-1].checkpoint_ids == []  # its record is after the position it names
        with pytest.raises(SessionError, match="no session"):
            await on_temporal.create_checkpoint(f"missing-{uuid.uuid4().hex[:8]}")
        with pytest.raises(ConfigurationError, match="checkpoint_name"):
            await on_temporal.create_checkpoint(session_id, "bad/name")
        history = await client.get_workflow_handle(session_id).fetch_history()
    replayed = await replayer(hosting).replay_workflow(history, raise_on_replay_failure=False)
    assert replayed.replay_failure is None


def test_a_closed_runs_journal_crosses_packed_within_one_payload() -> None:
    lines = ['{"t":"run","s":1}', '{"t":"end","s":2}']
    assert unpack_lines(pack_lines(lines, "s1")) == lines
    with pytest.raises(ValueError, match="base64"):
        unpack_lines("not base64!")
    noise = random.Random(0).randbytes(2_000_000).hex()  # compresses to about half: too big
    with pytest.raises(ConfigurationError, match=r"'s1': its journal is [0-9]+ bytes packed"):
        pack_lines([noise], "s1")


def test_a_restore_met_while_following_stops_the_follower() -> None:
    """The replica cannot take a restore record as one more input (it cuts the history back):
    a follower meeting one says so, naming the session and the record."""
    handle: Any = SimpleNamespace(id="s1")
    follower = Follower(handle, None, None, None)  # type: ignore[arg-type]
    follower.next = 8  # records 1..8 applied
    line = records.encode(inp.Restore(at=1.0, position=3, checkpoint_id="s1@c"), 9)
    with pytest.raises(SessionError, match=r"'s1' was restored .*record 9\): resume_session"):
        follower._applied({"lines": [line], "next": 9})


async def runs_of_one_session(
    instance: OrchestraInstance, pair: Pair, session_id: str
) -> list[Any]:
    """Two runs of one session, each with a checkpoint named by default at its end; the
    second run's end restored (its workflow run closes at once), then at once a third run and
    one more default checkpoint."""
    pair.go_on.set()
    said: list[Any] = [await instance.execute("one", {"session_id": session_id})]
    said.append(await instance.create_checkpoint(session_id))
    said.append(await instance.execute("two", {"session_id": session_id}))
    said.append(await instance.create_checkpoint(session_id))
    said.append(await instance.restore_checkpoint(said[-1]))
    said.append(await instance.execute("three", {"session_id": session_id}))
    said.append(await instance.create_checkpoint(session_id))
    return said


async def test_default_checkpoint_names_count_the_sessions_records_across_runs(
    client: Client, tmp_path: Path
) -> None:
    pair = Pair()
    session_id = f"runs-{uuid.uuid4().hex[:8]}"
    async with instances(client, tmp_path, pair) as (embedded, on_temporal, _, store):
        here = await runs_of_one_session(embedded, pair, session_id)
        there = await runs_of_one_session(on_temporal, pair, session_id)
        assert _comparable(there) == _comparable(here)
        assert len({here[1], here[3], here[6]}) == 3  # one id each, as embedded
        assert [here[n].final_response for n in (0, 2, 5)] == [
            "job first second None".replace("job", word) for word in ("one", "two", "three")
        ]
        # the first run's checkpoint is in an earlier workflow run: refused, never another's
        assert await on_temporal.restore_checkpoint(here[1]) is False
        mirrored = await store.load(session_id)
        assert sorted(mirrored.checkpoints) == sorted(
            (await embedded.state_manager.load(session_id)).checkpoints  # type: ignore[union-attr]
        )
