"""Sessions on Temporal as a store and the command line see them: the run's header says it
runs on Temporal (``RunStart.executor``, set by the client), so the log a worker mirrors reads
as a run "on Temporal" while it has no end (never "interrupted"), and no embedded resume,
from the API, the command line or the inspector, runs it a second time beside its workers.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from helpers import WAIT, fn, quiet, run_cli, start_cli
from temporalio.client import Client
from test_temporal_processes import WAIT as PROCESS_WAIT
from test_temporal_processes import Worker, until, workers  # noqa: F401 (the fixture)

from orchestra import AgentRegistry, Topology
from orchestra.communication.channels import CommunicationManager
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.coordination.state.manager import ON_TEMPORAL, run_state
from orchestra.errors import SessionError
from orchestra.temporal import Hosting, TemporalExecutor, worker
from orchestra.ui.catalog import Catalog
from orchestra.ui.host import RunHost
from orchestra.workflow import load_workflow

PAIR = Topology(nodes=["First", "Second"], edges=["First -> Second"])
FLOW = "agents: [{name: A, function: 'flow_nodes:shout'}, {name: B, function: 'flow_nodes:shout'}]\ntopology: {nodes: [A, B], edges: [A -> B]}\n"
WHERE = {"kind": "temporal", "task_queue": "q1", "namespace": "default"}


async def polled(condition: Callable[[], Awaitable[bool]], what: str) -> None:
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
    way_out = (  # the workflow may have been terminated: the store cannot tell
        "If Temporal closed its workflow without ending the run (terminated, cancelled or "
        "timed out: `temporal workflow describe -w away` says), nothing runs it, and this "
        "store cannot tell: start it again with `orchestra run --temporal`, or delete it "
        "(`orchestra sessions delete away`)"
    )
    assert way_out in said

    again = run_cli("run", str(flow), "--task", "hi", "--session", "away", "--store", str(store))
    assert again.returncode == 1, again.stdout + again.stderr
    assert f"orchestra resume {flow} away --temporal" in " ".join(again.stdout.split())
    assert way_out in " ".join(again.stdout.split())
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

            await polled(mirrored, "the header's copy in the store")
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

            await polled(finished, "the run's end in the store")
        stored = await here.resume_session(session_id)  # a finished run's result, as stored
        assert stored.final_response == "job first second"
    finally:
        backend.close()


# ---- the command line follows a session on Temporal again ------------------------------------

GATED = """\
agents:
  - {name: Gate, function: "temporal_flows:gate_node"}
  - {name: A, function: "flow_nodes:shout"}
topology: {nodes: [Gate, A], edges: [Gate -> A]}
task: hello
"""


async def test_ctrl_c_leaves_the_session_on_temporal_and_resume_follows_it_again(
    workers: Callable[..., Worker],  # noqa: F811 (the fixture)
    tmp_path: Path,
    temporal_server: str,
) -> None:
    queue, session_id = f"cli-{uuid.uuid4().hex}", f"away-{uuid.uuid4().hex[:8]}"
    flow = tmp_path / "gated.yaml"
    flow.write_text(GATED)
    await workers("--task-queue", queue, str(flow)).ready()
    connect = ("--temporal", temporal_server, "--task-queue", queue)
    following = start_cli("run", str(flow), "--session", session_id, *connect, cwd=tmp_path)
    starts = tmp_path / "gates" / "starts"
    await until(lambda: starts.exists() and "Gate started" in starts.read_text(), "the gate")
    again = (
        f"orchestra resume {flow} {session_id} --temporal {temporal_server} --task-queue {queue}"
    )

    twice = await asyncio.to_thread(run_cli, "run", str(flow), "--session", session_id, *connect)
    assert twice.returncode == 1, twice.stdout + twice.stderr
    said = " ".join(twice.stdout.split())
    assert (
        f"session '{session_id}' has a run in progress on Temporal; follow it with: {again}" in said
    )
    assert "OrchestraInstance" not in said

    following.send_signal(signal.SIGINT)
    out, _ = await asyncio.to_thread(following.communicate, timeout=PROCESS_WAIT)
    assert following.returncode == 130, out
    said = " ".join(out.split())
    assert f"Interrupted: session {session_id} goes on on Temporal" in said
    assert f"Follow it again with: {again}" in said
    assert f"temporal workflow terminate -w {session_id}" in said

    (tmp_path / "gates" / "open").touch()
    followed = await asyncio.to_thread(
        run_cli, "resume", str(flow), session_id, *connect, "--output", str(tmp_path / "out")
    )
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert (tmp_path / "out").read_text() == "HELLO+GATE!"
    assert starts.read_text().count("Gate started") == 1  # followed, not run again


# ---- TLS and API keys --------------------------------------------------------------------------


async def test_the_connection_options_reach_the_cluster(temporal_server: str) -> None:
    """The plain dev server takes a client with an API key and no TLS (it checks no key); the
    same frontend asked for TLS is one clear line naming it, without the key."""
    plain = TemporalExecutor(temporal_server, tls=False, api_key="k-plain-1234")
    assert (await plain.client()).service_client.config.api_key == "k-plain-1234"
    secured = TemporalExecutor(temporal_server, api_key="k-secret-5678")  # a key: TLS
    with pytest.raises(SessionError) as refused:
        await asyncio.wait_for(secured.client(), WAIT * 3)
    said = str(refused.value)
    assert said.startswith(f"cannot connect to Temporal at {temporal_server}")
    assert "TLS" in said and "\n" not in said and "k-secret-5678" not in said


def test_the_commands_take_tls_and_an_api_key_from_the_environment(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(GATED)
    unset = run_cli(
        "run",
        str(flow),
        "--task",
        "hi",
        "--temporal",
        "127.0.0.1:1",
        "--api-key-env",
        "ORCHESTRA_TEST_NO_SUCH_KEY",
    )
    assert unset.returncode == 1, unset.stdout + unset.stderr
    assert (
        "--api-key-env ORCHESTRA_TEST_NO_SUCH_KEY: the environment variable is not set"
        in unset.stdout
    )
    for command in ("run", "resume", "worker"):
        helped = run_cli(command, "--help")
        assert "--tls" in helped.stdout and "--api-key-env" in helped.stdout, command


async def test_the_inspector_refuses_to_resume_a_paused_session_on_temporal(
    tmp_path: Path,
) -> None:
    """Paused on Temporal, the session waits for its workflow's resume signal: the
    inspector's Resume (enabled for any paused session) must not run it here."""
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW)
    store = tmp_path / "sessions.db"
    done = await asyncio.to_thread(
        run_cli, "run", str(flow), "--task", "hi", "--session", "done", "--store", str(store)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    backend = SQLiteStorageBackend(store)
    try:
        lines = await backend.read("done")
        header, end = json.loads(lines[0]), json.loads(lines[-1])
        header["executor"] = WHERE
        end.update(paused=True, success=False)
        paused = [json.dumps(header), *lines[1:-1], json.dumps(end)]
        await backend.append("held", paused, durable=True, after=0)
    finally:
        backend.close()
    host = RunHost(store, {"flow": load_workflow(flow)})
    try:
        assert run_state(await host.manager.load("held")) == "paused"
        with pytest.raises(SessionError, match=r"'held' runs on Temporal \(task queue 'q1'"):
            await host.resume("held", None)
        assert await host.manager.storage.read("held") == paused  # nothing ran here
    finally:
        await host.close()
