"""Sessions on Temporal across real processes: ``orchestra worker`` subprocesses on the dev
server (the ``temporal_server`` fixture), killed and restarted under running sessions, and
``orchestra run --temporal`` as users run it.

A worker is ready once it prints "worker ready on task queue Q" (its log is polled for the
line); every worker is killed when its test ends. The workflows (temporal_flows.py) wait at a
gate while the test kills the worker running them: what they wait for is the file ``open`` in
the test's gate folder, and they write who started the waiting step, and each call of their
non-idempotent tool, to files there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import temporal_flows as flows
from helpers import TESTS, quiet, run_cli
from services import free_ports
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from test_temporal_executor import comparable
from test_terminal_channel import ASKER_FLOW, PROMPT, ended, flow, spawn

from orchestra import AgentRegistry, Orchestra, OrchestraResult, Topology
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.errors import WorkflowVersionError
from orchestra.temporal import TemporalExecutor
from orchestra.workflow import load_workflow

WAIT = 90.0
"""Seconds a session or a worker may take before the test fails (only a hang reaches it): a
killed worker's step runs again after its heartbeat timeout, and its workflow task once the
server gives up on the killed worker's sticky queue."""

HEARTBEAT = 10.0
"""The steps' heartbeat timeout: a killed worker is found dead this long after the kill. Wide
enough that a live worker waiting at a gate never misses one before the kill on a loaded
2-CPU machine (a second worker booting beside it): temporalio sends heartbeats at most every
0.8 x the timeout, which leaves 2 s here (0.4 s with 2 s)."""


class Worker:
    """An ``orchestra worker`` subprocess, its stdout and stderr in a log file."""

    def __init__(self, args: list[str], log: Path, gates: Path) -> None:
        self.log = log
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(Path.home()),
            "PYTHONPATH": os.pathsep.join((str(TESTS.parent), str(TESTS))),
            "PYTHONUNBUFFERED": "1",
            flows.GATES: str(gates),
        }
        with open(log, "w") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "orchestra", "worker", *args],
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=log.parent,
                env=env,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def text(self) -> str:
        return self.log.read_text()

    def versions(self) -> list[str]:
        """The versions the worker says it hosts."""
        return [line.split("(version ")[1].rstrip(")") for line in _hosting_lines(self.text())]

    async def ready(self) -> Worker:
        await until(lambda: "worker ready on task queue" in self.text(), f"{self.log} ready", self)
        return self

    def stop(self) -> None:
        """SIGTERM: the worker shuts down gracefully, exit code 0."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=WAIT) == 0, self.text()
        assert "worker stopped" in self.text()


def _hosting_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("hosting ")]


async def until(condition: Callable[[], bool], what: str, worker: Worker | None = None) -> None:
    """Poll ``condition`` until it holds; fail after WAIT seconds (or when ``worker`` exits)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if worker is not None and worker.process.poll() is not None:
            pytest.fail(f"the worker exited ({worker.process.returncode}):\n{worker.text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def workers(tmp_path: Path, temporal_server: str) -> Iterator[Callable[..., Worker]]:
    """Starts workers (``start(*args)``) on the dev server; every one is killed at the end."""
    started: list[Worker] = []

    def start(*args: str) -> Worker:
        log = tmp_path / f"worker-{len(started)}.log"
        worker = Worker(["--temporal", temporal_server, *args], log, tmp_path / "gates")
        started.append(worker)
        return worker

    (tmp_path / "gates").mkdir()
    yield start
    for worker in started:
        with contextlib.suppress(ProcessLookupError):
            worker.process.kill()
        worker.process.wait()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def embedded(
    build: Callable[[], tuple[Topology, AgentRegistry]], folder: Path, **options: Any
) -> OrchestraResult:
    """An uninterrupted embedded run of a workflow of temporal_flows, its gate open."""
    folder.mkdir()
    (folder / "open").touch()
    os.environ[flows.GATES] = str(folder)
    try:
        topology, registry = build()
        return await Orchestra.run(
            "go", topology, agent_registry=registry, execution_config=quiet(), **options
        )
    finally:
        del os.environ[flows.GATES]


def on_temporal(
    build: Callable[[], tuple[Topology, AgentRegistry]], address: str, queue: str
) -> asyncio.Task[OrchestraResult]:
    """A session of a temporal_flows workflow submitted from this process, followed in a
    task."""
    topology, registry = build()
    executor = TemporalExecutor(address, queue, heartbeat_timeout=HEARTBEAT)
    run = Orchestra.run(
        "go", topology, agent_registry=registry, execution_config=quiet(), executor=executor
    )
    return asyncio.ensure_future(run)


async def killed_mid_run(
    build: Callable[[], tuple[Topology, AgentRegistry]],
    waiting: int,
    workers: Callable[..., Worker],
    tmp_path: Path,
    address: str,
) -> tuple[OrchestraResult, Worker, Worker]:
    """Worker A runs the session until ``waiting`` steps wait at the gate; worker B is
    started, A is SIGKILLed, the gate opened: B finishes the session."""
    queue = f"kill-{uuid.uuid4().hex}"
    gates = tmp_path / "gates"
    first = await workers("--task-queue", queue, "--module", "temporal_flows").ready()
    running = on_temporal(build, address, queue)
    await until(lambda: len(lines(gates / "starts")) == waiting, "the steps at the gate", first)
    second = await workers("--task-queue", queue, "--module", "temporal_flows").ready()
    first.process.kill()
    first.process.wait()
    (gates / "open").touch()
    result = await asyncio.wait_for(running, WAIT)
    return result, first, second


# ---- a worker killed under a session -----------------------------------------------------------


async def test_a_worker_killed_mid_run_leaves_the_session_to_another(
    workers: Callable[..., Worker], tmp_path: Path, temporal_server: str
) -> None:
    result, first, second = await killed_mid_run(flows.chain, 1, workers, tmp_path, temporal_server)
    expected = await embedded(flows.chain, tmp_path / "embedded")
    assert result.success, result.error
    assert comparable(result) == comparable(expected)
    assert lines(tmp_path / "gates" / "tools") == ["before", "after"]  # each call ran once
    assert lines(tmp_path / "gates" / "starts") == [
        f"Clerk started by {first.pid}",
        f"Clerk started by {second.pid}",
    ]


async def test_a_worker_killed_mid_fan_out_leaves_every_branch_to_another(
    workers: Callable[..., Worker], tmp_path: Path, temporal_server: str
) -> None:
    branches = len(flows.BRANCHES)
    result, first, second = await killed_mid_run(
        flows.fan_out, branches, workers, tmp_path, temporal_server
    )
    expected = await embedded(flows.fan_out, tmp_path / "embedded")
    assert result.success, result.error
    assert comparable(result) == comparable(expected)
    assert sorted(lines(tmp_path / "gates" / "tools")) == list(flows.BRANCHES)
    starts = lines(tmp_path / "gates" / "starts")
    assert sorted(starts[:branches]) == [f"{b} started by {first.pid}" for b in flows.BRANCHES]
    assert sorted(starts[branches:]) == [f"{b} started by {second.pid}" for b in flows.BRANCHES]


# ---- a worker restarted with a changed workflow file -----------------------------------------

V1 = """\
agents:
  - {name: Intake, function: "temporal_flows:intake"}
  - {name: Gate, function: "temporal_flows:gate_node"}
  - {name: Publish, function: "temporal_flows:publish"}
topology:
  nodes: [Intake, Gate, Publish]
  edges: [Intake -> Gate, Gate -> Publish]
"""

V2 = """\
agents:
  - {name: Intake, function: "temporal_flows:intake"}
  - {name: Gate, function: "temporal_flows:gate_node"}
  - {name: Review, function: "temporal_flows:review"}
  - {name: Publish, function: "temporal_flows:publish"}
topology:
  nodes: [Intake, Gate, Review, Publish]
  edges: [Intake -> Gate, Gate -> Review, Review -> Publish]
"""


def submitted(path: Path, address: str, queue: str, session: str) -> asyncio.Task[OrchestraResult]:
    """A session of the workflow file ``path`` submitted from this process, followed."""
    workflow = load_workflow(path)
    executor = TemporalExecutor(address, queue, heartbeat_timeout=HEARTBEAT)
    run = Orchestra.run(
        "go",
        workflow.topology,
        agent_registry=workflow.registry,
        context={"session_id": session},
        execution_config=quiet(),
        executor=executor,
    )
    return asyncio.ensure_future(run)


async def test_a_worker_on_a_changed_file_never_takes_the_old_sessions(
    workers: Callable[..., Worker], tmp_path: Path, temporal_server: str
) -> None:
    """Sessions are routed by version: a worker restarted on a changed file polls its new
    version's queue only. The client following an old session is told at once that no worker
    hosts it now; the session stays running, untouched (no task failed, nothing in the new
    worker's log but its startup note), and a worker hosting the old file finishes it."""
    queue = f"changed-{uuid.uuid4().hex}"
    gates, flow = tmp_path / "gates", tmp_path / "flow.yaml"
    flow.write_text(V1)
    on_v1 = await workers("--task-queue", queue, str(flow)).ready()
    session = f"changed-{uuid.uuid4().hex}"
    running = submitted(flow, temporal_server, queue, session)
    await until(lambda: len(lines(gates / "starts")) == 1, "the step at the gate", on_v1)
    on_v1.stop()
    flow.write_text(V2)
    on_v2 = await workers("--task-queue", queue, str(flow)).ready()
    [v1], [v2] = on_v1.versions(), on_v2.versions()
    assert v1 != v2

    with pytest.raises(WorkflowVersionError) as refused:
        await asyncio.wait_for(running, WAIT)
    message = str(refused.value)
    assert f"session {session!r} runs workflow version {v1}" in message
    assert f"no worker on task queue {queue!r} hosts it now" in message
    assert "it goes on from its last step" in message

    client = await Client.connect(temporal_server)
    handle = client.get_workflow_handle(session)
    assert (await handle.describe()).status is WorkflowExecutionStatus.RUNNING  # kept, not failed
    events = [event.event_type async for event in handle.fetch_history_events()]
    assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in events  # never handed to v2
    [note] = [line for line in on_v2.text().splitlines() if session in line]
    assert f"1 running session(s) of task queue {queue} use workflow version {v1}" in note
    assert "TMPRL1100" not in on_v2.text() and "WorkflowVersionError" not in on_v2.text()

    old = tmp_path / "v1" / "flow.yaml"  # the workflow's name (its file's) is part of its version
    old.parent.mkdir()
    old.write_text(V1)
    (gates / "open").touch()
    await workers("--task-queue", queue, str(old), str(flow)).ready()
    workflow = load_workflow(old)
    instance = OrchestraInstance(
        workflow.topology,
        agent_registry=workflow.registry,
        initial_config=quiet(),
        executor=TemporalExecutor(temporal_server, queue, heartbeat_timeout=HEARTBEAT),
    )
    finished = await asyncio.wait_for(instance.resume_session(session), WAIT)
    assert finished.success, finished.error
    assert finished.final_response == "go+intake+gate+publish"  # v1's path: nothing was lost


async def test_a_worker_hosting_both_files_finishes_the_old_sessions_and_runs_new_ones(
    workers: Callable[..., Worker], tmp_path: Path, temporal_server: str
) -> None:
    """The upgrade: sessions started on v1 finish on workers hosting v1 and v2, while new
    sessions run v2."""
    queue = f"upgrade-{uuid.uuid4().hex}"
    gates, old, new = tmp_path / "gates", tmp_path / "flow-v1.yaml", tmp_path / "flow.yaml"
    old.write_text(V1)
    new.write_text(V2)
    on_v1 = await workers("--task-queue", queue, str(old)).ready()
    started_on_v1 = submitted(old, temporal_server, queue, f"old-{uuid.uuid4().hex}")
    await until(lambda: len(lines(gates / "starts")) == 1, "the step at the gate", on_v1)
    on_v1.stop()
    (gates / "open").touch()
    on_both = await workers("--task-queue", queue, str(old), str(new)).ready()
    assert len(set(on_both.versions())) == 2

    finished = await asyncio.wait_for(started_on_v1, WAIT)
    assert finished.success, finished.error
    assert finished.final_response == "go+intake+gate+publish"
    started_on_v2 = submitted(new, temporal_server, queue, f"new-{uuid.uuid4().hex}")
    assert (await asyncio.wait_for(started_on_v2, WAIT)).final_response == (
        "go+intake+gate+review+publish"
    )


async def test_old_and_new_workers_on_one_queue_each_run_their_own_sessions(
    workers: Callable[..., Worker], tmp_path: Path, temporal_server: str
) -> None:
    """A rolling upgrade: a worker not yet upgraded (v1) and an upgraded one (v1 and v2) poll
    one base queue while sessions of both versions run; each session runs only on workers
    hosting its version, so every one finishes with its own version's result."""
    queue = f"rolling-{uuid.uuid4().hex}"
    gates, old, new = tmp_path / "gates", tmp_path / "flow-v1.yaml", tmp_path / "flow.yaml"
    old.write_text(V1)
    new.write_text(V2)
    (gates / "open").touch()
    on_v1 = await workers("--task-queue", queue, str(old)).ready()
    await workers("--task-queue", queue, str(old), str(new)).ready()
    sessions = [
        submitted(path, temporal_server, queue, f"rolling-{uuid.uuid4().hex}")
        for path in (old, new)
        for _ in range(4)
    ]
    results = await asyncio.wait_for(asyncio.gather(*sessions), WAIT)
    assert all(result.success for result in results), [result.error for result in results]
    assert [result.final_response for result in results] == (
        ["go+intake+gate+publish"] * 4 + ["go+intake+gate+review+publish"] * 4
    )
    assert "WorkflowVersionError" not in on_v1.text()


# ---- the command line --------------------------------------------------------------------------

FLOW = """\
agents:
  - {name: A, function: "flow_nodes:shout"}
topology: {nodes: [A]}
task: hello
"""


async def test_orchestra_run_submits_to_a_worker_and_prints_the_result(
    workers: Callable[..., Worker], tmp_path: Path, temporal_server: str
) -> None:
    queue = f"cli-{uuid.uuid4().hex}"
    flow, output = tmp_path / "flow.yaml", tmp_path / "response.txt"
    flow.write_text(FLOW)
    worker = await workers("--task-queue", queue, str(flow)).ready()
    [line] = _hosting_lines(worker.text())
    assert line.startswith(f"hosting {flow} (version ")
    assert f"worker ready on task queue {queue}" in worker.text()

    result = await asyncio.to_thread(
        run_cli,
        "run",
        str(flow),
        "--temporal",
        temporal_server,
        "--task-queue",
        queue,
        "--output",
        str(output),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "on Temporal" in result.stdout and "HELLO!" in result.stdout
    assert "run succeeded" in result.stderr
    assert output.read_text() == "HELLO!"
    worker.stop()


def answered_on_the_terminal(folder: Path, address: str, queue: str) -> tuple[str, int]:
    """``orchestra run --temporal`` on a pseudo-terminal: the agent's question is asked there
    and answered."""
    child = spawn(
        folder, "run", "flow.yaml", "--quiet", "--temporal", address, "--task-queue", queue
    )
    child.expect(PROMPT)
    assert child.match.groups() == ("Asker", "b0", "q1")
    child.expect("> ")
    child.sendline("Ada Lovelace")
    return ended(child)


async def test_orchestra_run_on_temporal_asks_the_agents_question_on_the_terminal(
    workers: Callable[..., Worker], tmp_path: Path, temporal_server: str
) -> None:
    queue = f"ask-{uuid.uuid4().hex}"
    flow(tmp_path, ASKER_FLOW)
    await workers("--task-queue", queue, str(tmp_path / "flow.yaml")).ready()
    output, code = await asyncio.to_thread(
        answered_on_the_terminal, tmp_path, temporal_server, queue
    )
    assert code == 0, output
    assert "answer='Ada Lovelace'" in output


def test_the_worker_refuses_a_workflow_file_with_a_mistake_as_run_does(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW.replace("flow_nodes:shout", "flow_nodes:nope"))
    result = run_cli("worker", "--temporal", "127.0.0.1:7233", str(flow))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.startswith(f"{flow}:2: agents[0].function:")
    assert "worker ready" not in result.stdout
    missing = run_cli("worker", "--temporal", "127.0.0.1:7233", str(tmp_path / "missing.yaml"))
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "missing.yaml" in missing.stdout and "Traceback" not in missing.stdout + missing.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["worker", "--temporal", "ADDRESS"], "nothing to host"),
        (["worker", "--temporal", "no-port", "FLOW"], "the Temporal address must be 'host:port'"),
        (
            ["worker", "--temporal", "UNREACHABLE", "FLOW"],
            "cannot connect to Temporal at UNREACHABLE",
        ),
        (
            ["worker", "--temporal", "ADDRESS", "--module", "no_such_module"],
            "--module no_such_module: cannot import it",
        ),
        (
            ["worker", "--temporal", "ADDRESS", "--module", "flow_nodes"],
            "--module flow_nodes: it has no `hosting`",
        ),
        (
            ["run", "FLOW", "--temporal", "ADDRESS", "--store", "x.db"],
            "--store does not apply with --temporal",
        ),
        (["run", "FLOW", "--temporal", "UNREACHABLE"], "cannot connect to Temporal at UNREACHABLE"),
        (
            ["run", "FLOW", "--temporal", "ADDRESS", "--task-queue", "nobody"],
            "no worker on task queue 'nobody' hosts",
        ),
    ],
)
def test_the_temporal_commands_refuse_what_they_cannot_do_in_one_line(
    args: list[str], says: str, tmp_path: Path, temporal_server: str
) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW)
    [port] = free_ports(1)
    names = {
        "ADDRESS": temporal_server,
        "UNREACHABLE": f"127.0.0.1:{port}",
        "FLOW": str(flow),
    }
    says = says.replace("UNREACHABLE", names["UNREACHABLE"])
    result = run_cli(*(names.get(arg, arg) for arg in args))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    *before, last = result.stdout.strip().splitlines()
    assert says in last
    assert all(line.startswith("Session ") for line in before)  # `run` names it first
