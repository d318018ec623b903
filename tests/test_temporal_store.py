"""Sessions on Temporal as a store and the command line see them: the run's header says it
runs on Temporal (``RunStart.executor``, set by the client), so the log a worker mirrors reads
as a run "on Temporal" while it has no end (never "interrupted"), and no embedded resume,
from the API, the command line or the inspector, runs it a second time beside its workers.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from helpers import WAIT, fn, quiet, run_cli
from temporalio.client import Client

from orchestra import AgentRegistry, Topology
from orchestra.communication.channels import CommunicationManager
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.coordination.state.manager import ON_TEMPORAL, run_state
from orchestra.errors import SessionError
from orchestra.temporal import Hosting, TemporalExecutor, worker
from orchestra.ui.catalog import Catalog

PAIR = Topology(nodes=["First", "Second"], edges=["First -> Second"])
FLOW = "agents: [{name: A, function: 'flow_nodes:shout'}, {name: B, function: 'flow_nodes:shout'}]\ntopology: {nodes: [A, B], edges: [A -> B]}\n"
WHERE = {"kind": "temporal", "task_queue": "q1", "namespace": "default"}


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``condition`` until it holds (the mirror writes in the background)."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def view_of(store: Path, session_id: str) -> tuple[str, list[str]]:
    """The inspector's status of the session, and its runs' states."""
    catalog = Catalog(store)
    try:
        view = await catalog.view(session_id, None)
    finally:
        catalog.close()
    return view["summary"]["status"], [run["state"] for run in view["runs"]]


def as_on_temporal(store: Path, source: str, target: str, keep: int) -> list[str]:
    """``target``: the first ``keep`` records of ``source``'s log, its header marked as a run
    on Temporal's (as a worker's mirror leaves it while the run goes on)."""

    async def copy() -> list[str]:
        backend = SQLiteStorageBackend(store)
        try:
            lines = (await backend.read(source))[:keep]
            header = json.loads(lines[0])
            header["executor"] = WHERE
            lines[0] = json.dumps(header, separators=(",", ":"))
            await backend.append(target, lines, durable=True, after=0)
            return lines
        finally:
            backend.close()

    return asyncio.run(copy())


def stored_lines(store: Path, session_id: str) -> list[str]:
    async def read() -> list[str]:
        backend = SQLiteStorageBackend(store)
        try:
            return await backend.read(session_id)
        finally:
            backend.close()

    return asyncio.run(read())


def test_a_session_on_temporal_is_listed_so_and_never_resumed_here(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW)
    store = tmp_path / "s.db"
    done = run_cli("run", str(flow), "--task", "hi", "--session", "done", "--store", str(store))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = as_on_temporal(store, "done", "away", 3)

    listed = run_cli("sessions", "list", "--store", str(store))
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "away" in line)
    assert ON_TEMPORAL in row and "interrupted" not in row
    assert asyncio.run(view_of(store, "away")) == (ON_TEMPORAL, [ON_TEMPORAL])

    resumed = run_cli("resume", str(flow), "away", "--store", str(store))
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    said = " ".join(resumed.stdout.split())
    assert "session 'away' runs on Temporal (task queue 'q1', namespace 'default')" in said
    assert "orchestra resume FILE away --temporal HOST:PORT --task-queue q1" in said
    assert "Traceback" not in resumed.stdout + resumed.stderr

    again = run_cli("run", str(flow), "--task", "hi", "--session", "away", "--store", str(store))
    assert again.returncode == 1, again.stdout + again.stderr
    assert f"orchestra resume {flow} away --temporal" in " ".join(again.stdout.split())
    assert stored_lines(store, "away") == lines  # nothing was run, nothing written


async def test_a_mirrored_session_reads_as_on_temporal_while_its_workers_run_it(
    temporal_server: str, tmp_path: Path
) -> None:
    started, go_on = asyncio.Event(), asyncio.Event()

    async def first(value: object, context: object) -> str:
        started.set()
        await asyncio.wait_for(go_on.wait(), WAIT)
        return f"{value} first"

    agents = [fn("First", first), fn("Second", lambda value, context: f"{value} second")]
    client = await Client.connect(temporal_server)
    queue, session_id = f"store-{uuid.uuid4().hex}", f"away-{uuid.uuid4().hex[:8]}"
    hosting = Hosting()
    hosting.add(PAIR, AgentRegistry(agents))
    path = tmp_path / "sessions.db"
    backend = SQLiteStorageBackend(path)
    store = StateManager(backend, auto_save_interval=0)
    try:
        async with worker(client, queue, hosting, store=store):
            on_temporal = OrchestraInstance(
                PAIR,
                AgentRegistry(agents),
                quiet(),
                CommunicationManager(),
                executor=TemporalExecutor(client, queue),
            )
            running = asyncio.create_task(on_temporal.execute("job", {"session_id": session_id}))
            await asyncio.wait_for(started.wait(), WAIT)

            async def mirrored() -> bool:
                return session_id in await store.list_sessions()

            await until(mirrored, "the header's copy in the store")
            log = await store.load(session_id)
            assert log.last_run is not None
            assert log.last_run.start.executor == {
                "kind": "temporal",
                "task_queue": queue,
                "namespace": "default",
            }
            assert run_state(log) == ON_TEMPORAL
            assert (await view_of(path, session_id))[0] == ON_TEMPORAL
            here = OrchestraInstance(PAIR, AgentRegistry(agents), quiet(), None, store)
            with pytest.raises(SessionError, match=rf"'{session_id}' runs on Temporal.*{queue}"):
                await here.resume_session(session_id)
            go_on.set()
            result = await asyncio.wait_for(running, WAIT)
            assert result.success, result.error

            async def finished() -> bool:
                return run_state(await store.load(session_id)) == "finished"

            await until(finished, "the run's end in the store")
        stored = await here.resume_session(session_id)  # a finished run's result, as stored
        assert stored.final_response == "job first second"
    finally:
        backend.close()
