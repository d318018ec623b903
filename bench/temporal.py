"""Sessions on Temporal (``orchestra.temporal``) against the embedded engine: the time a step
costs, where it goes, how many concurrent sessions 1, 2 and 4 worker processes carry, and a
1000-way fan-out.

Run: ``.venv/bin/python bench/temporal.py``. It starts Temporal dev servers as the tests do
(one in memory, one on a SQLite file; ``--temporal HOST:PORT`` uses a running server instead)
and worker processes (``orchestra worker --module temporal_worker``, hosting the workflows of
``bench/temporal_worker.py``). Prints a table and rewrites the "Temporal" section of
``bench/results.md``. ``--quick``: a smoke run with small numbers that writes nothing (the test
suite runs it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from engine import QUIET, report  # type: ignore[import-not-found]
from services import ready_then_drained, start_temporal, stop  # type: ignore[import-not-found]
from temporal_worker import READY, chain, fan_out  # type: ignore[import-not-found]
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from orchestra.agents import AgentRegistry
from orchestra.communication.channels import CommunicationManager
from orchestra.coordination.config import ErrorHandlingConfig
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.orchestra import Orchestra
from orchestra.coordination.state import records
from orchestra.coordination.topology import Topology
from orchestra.coordination.wiring import Setup, prepare
from orchestra.temporal import TemporalExecutor, start_input
from orchestra.temporal.protocol import RECORDS_QUERY, WORKFLOW_NAME, version_queue

WORKER = Path(__file__).resolve().with_name("temporal_worker.py")
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is."""

    chain: int = 50
    chain_runs: int = 3
    sessions: dict[int, int] = field(default_factory=lambda: {1: 1000, 2: 1000, 4: 1000})
    session_steps: int = 5
    fan_out: int = 1000
    fan_out_runs: int = 3
    fan_out_workers: tuple[int, ...] = (1, 2)


ON_FILE = Sizes(sessions={1: 200}, fan_out_runs=1, fan_out_workers=(1,))
"""On a server that writes its SQLite file (as the tests' server does) each write waits for the
disk: a fifth of the sessions, one fan-out."""

QUICK = Sizes(
    chain=5,
    chain_runs=1,
    sessions={1: 10, 2: 10},
    session_steps=3,
    fan_out=20,
    fan_out_runs=1,
    fan_out_workers=(1,),
)
"""``--quick``: a smoke run (the test suite's)."""


@dataclass(frozen=True)
class Server:
    """A Temporal server the bench runs against: what the rows call it, its frontend address,
    its pid (None when it was given: its CPU is not measured)."""

    label: str
    address: str
    pid: int | None


# ---- processes ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class CpuMeter:
    """CPU used by named processes over a window, as a share of one CPU."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.started = time.perf_counter()

    def shares(self) -> dict[str, float]:
        wall = time.perf_counter() - self.started
        return {
            name: (cpu_seconds(pid) - self.before[name]) / wall for name, pid in self.pids.items()
        }


def watched(server: int | None, processes: list[subprocess.Popen[str]]) -> dict[str, int]:
    """The processes whose CPU a measurement reports: the server (when its pid is known), the
    workers and this client."""
    pids = {} if server is None else {"server": server}
    if len(processes) == 1:
        pids["worker"] = processes[0].pid
    else:
        pids |= {f"worker {n + 1}": process.pid for n, process in enumerate(processes)}
    return pids | {"client": os.getpid()}


def cpu_text(shares: dict[str, float]) -> str:
    parts = [f"{name} {share * 100:.0f}%" for name, share in shares.items()]
    return f"CPU: {', '.join(parts)} (of {(os.cpu_count() or 1) * 100}%)"


@contextlib.contextmanager
def workers(
    address: str, queue: str, count: int, counters: Path | None = None
) -> Iterator[list[subprocess.Popen[str]]]:
    """``count`` worker processes polling ``queue``, hosting the bench's workflows:
    ``orchestra worker`` processes, or (``counters``) one of ``temporal_worker.py`` that counts
    and writes its counters there. Stopped on exit (SIGTERM: they finish what they run)."""
    if counters is None:
        command = [sys.executable, "-m", "orchestra", "worker", "--temporal", address]
        command += ["--task-queue", queue, "--module", "temporal_worker"]
        ready = "worker ready on task queue"
    else:
        command = [sys.executable, str(WORKER), address, queue, str(counters)]
        ready = READY
    path = os.pathsep.join(filter(None, (str(WORKER.parent), os.environ.get("PYTHONPATH"))))
    processes = [
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONPATH": path, "COLUMNS": "200"},
        )
        for _ in range(count)
    ]
    try:
        for process in processes:
            ready_then_drained(process, ready, "a bench worker")
        yield processes
    finally:
        for process in processes:
            stop(process)


# ---- sessions -------------------------------------------------------------------------------


def setup_of(workflow: tuple[Topology, AgentRegistry], max_steps: int) -> Setup:
    topology, registry = workflow
    return prepare(
        topology, registry, QUIET, ErrorHandlingConfig(), CommunicationManager(), max_steps
    )


async def started(
    client: Client, queue: str, setup: Setup, task: Any, label: str
) -> WorkflowHandle[Any, Any]:
    """A session started as the executor starts one, but not followed: its handle."""
    session_id = f"{label}-{uuid.uuid4().hex[:12]}"
    start = start_input(setup, task, {"session_id": session_id}, session_id, 30.0)
    return await client.start_workflow(
        WORKFLOW_NAME,
        start,
        id=session_id,
        task_queue=version_queue(queue, start.version),
        result_type=dict,
    )


async def journal(handle: WorkflowHandle[Any, Any]) -> list[inp.Record]:
    """Every record the session's workflow journaled."""
    lines: list[str] = []
    while True:
        page = await handle.query(RECORDS_QUERY, len(lines), result_type=dict)
        lines += page["lines"]
        if not page["lines"]:
            return [records.decode(records.loads(line)) for line in lines]


def step_latencies(found: list[inp.Record]) -> list[float]:
    """Seconds from each StepBegin to its branch's StepResult (records' times: workflow time,
    that is the start of the workflow task that recorded each)."""
    begun: dict[str, float] = {}
    latencies = []
    for record in found:
        if isinstance(record, inp.StepBegin):
            begun[record.branch_id] = record.at
        elif isinstance(record, inp.StepResult):
            latencies.append(record.at - begun.pop(record.branch_id))
    return latencies


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# ---- 1: one chain, step by step --------------------------------------------------------------


async def embedded_chain(length: int) -> float:
    """Seconds per step of an embedded run of the chain."""
    topology, registry = chain(length)
    began = time.perf_counter()
    result = await Orchestra.run(
        "bench", topology, agent_registry=registry, execution_config=QUIET, max_steps=length
    )
    elapsed = time.perf_counter() - began
    assert result.success and result.total_steps == length, result.error
    return elapsed / length


class QueryCount:
    """Counts the ``records`` and ``questions`` queries the client makes (the follower's
    polling) while installed."""

    def __init__(self) -> None:
        self.count = 0
        self._original = WorkflowHandle.query

    def __enter__(self) -> QueryCount:
        original = self._original

        async def counted(handle: Any, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await original(handle, *args, **kwargs)

        WorkflowHandle.query = counted  # type: ignore[method-assign, assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        WorkflowHandle.query = self._original  # type: ignore[method-assign]


async def followed_chain(executor: TemporalExecutor, length: int) -> float:
    """Seconds per step of the chain run on Temporal as users run it (the client follows)."""
    topology, registry = chain(length)
    began = time.perf_counter()
    result = await Orchestra.run(
        "bench",
        topology,
        agent_registry=registry,
        execution_config=QUIET,
        max_steps=length,
        executor=executor,
    )
    elapsed = time.perf_counter() - began
    assert result.success and result.total_steps == length, result.error
    return elapsed / length


async def awaited_chain(
    client: Client, queue: str, length: int
) -> tuple[float, WorkflowHandle[Any, Any]]:
    """Seconds per step of the chain's workflow, started and its result awaited (no follow)."""
    setup = setup_of(chain(length), length)
    began = time.perf_counter()
    handle = await started(client, queue, setup, "go", "chain")
    await handle.result()
    return (time.perf_counter() - began) / length, handle


def _seconds(event: Any) -> float:
    return float(event.event_time.ToMicroseconds()) / 1e6


async def history_split(handle: WorkflowHandle[Any, Any], steps: int) -> dict[str, float]:
    """Where a sequential run's time goes, per step, from the server's event times: activity
    tasks queued (scheduled → started) and running (started → completed: our activity and its
    round trip), workflow tasks queued (scheduled → started) and processed by the worker
    (started → completed: the SDK and our workflow code, and its round trip)."""
    history = await handle.fetch_history()
    scheduled: dict[int, float] = {}
    begun: dict[int, float] = {}
    totals = dict.fromkeys(
        ("activity queued", "activity running", "workflow task queued", "workflow task"), 0.0
    )
    for event in history.events:
        kind, at = event.event_type, _seconds(event)
        if kind in (
            EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
            EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
        ):
            scheduled[event.event_id] = at
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            origin = event.activity_task_started_event_attributes.scheduled_event_id
            totals["activity queued"] += at - scheduled[origin]
            begun[event.event_id] = at
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            origin = event.activity_task_completed_event_attributes.started_event_id
            totals["activity running"] += at - begun[origin]
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            origin = event.workflow_task_started_event_attributes.scheduled_event_id
            totals["workflow task queued"] += at - scheduled[origin]
            begun[event.event_id] = at
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            origin = event.workflow_task_completed_event_attributes.started_event_id
            totals["workflow task"] += at - begun[origin]
    return {name: seconds / steps for name, seconds in totals.items()}


def per_step_in_worker(counters: dict[str, list[float]], steps: int) -> str:
    """The worker's timed parts per step (from ``temporal_worker.py --counters``)."""

    def ms(key: str) -> float:
        return counters.get(key, [0, 0.0])[1] / steps * 1e3

    activations = counters.get("activation", [0, 0.0])[0] / steps
    ours = ms("engine_apply") + ms("journal_record")
    return (
        f"activation (thread CPU) {ms('activation'):.2f} ms ({activations:.1f} a step), of which "
        f"Engine.apply {ms('engine_apply'):.3f} ms and journal {ms('journal_record'):.3f} ms "
        f"({ours:.3f} ms); step activity {ms('step_activity'):.2f} ms"
    )


async def chain_rows(server: Server, sizes: Sizes, embedded: float) -> list[tuple[str, str]]:
    """Part 1: the chain on Temporal (one worker) against ``embedded`` (seconds a step), and
    where a step's time goes."""
    length, address = sizes.chain, server.address
    queue = f"bench-chain-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as folder:
        counted = Path(folder) / "counters.json"
        with workers(address, queue, 1, counters=counted) as processes:
            client = await Client.connect(address)
            await awaited_chain(client, queue, length)  # warm: connections, caches
            meter = CpuMeter(watched(server.pid, processes))
            awaited = [await awaited_chain(client, queue, length) for _ in range(sizes.chain_runs)]
            shares = meter.shares()
            split = await history_split(awaited[-1][1], length)
        totals = json.loads(counted.read_text())  # written as the worker stopped
    # a worker of its own: each query is a workflow activation in the worker
    with workers(address, queue, 1), QueryCount() as queries:
        executor = TemporalExecutor(client, queue)
        followed = [await followed_chain(executor, length) for _ in range(sizes.chain_runs)]
    best_awaited = min(seconds for seconds, _ in awaited)
    best_followed = min(followed)
    runs = 1 + sizes.chain_runs  # the chains the counting worker ran, the warm one included
    return [
        (
            f"{length}-step function chain, 1 worker, started and awaited ({cpu_text(shares)})",
            f"{best_awaited * 1e3:.2f} ms/step (+{(best_awaited - embedded) * 1e3:.2f} ms)",
        ),
        (
            "the same through Orchestra.run(executor=...), the client following its records "
            f"({queries.count / (sizes.chain_runs * length):.1f} queries a step)",
            f"{best_followed * 1e3:.2f} ms/step (+{(best_followed - embedded) * 1e3:.2f} ms)",
        ),
        (
            "a Temporal step, by the server's event times",
            ", ".join(f"{name} {seconds * 1e3:.2f} ms" for name, seconds in split.items()),
        ),
        ("a Temporal step, in the worker", per_step_in_worker(totals, runs * length)),
    ]


# ---- 2: many concurrent sessions -------------------------------------------------------------


async def concurrent_sessions(
    client: Client, queue: str, sessions: int, steps: int, pids: dict[str, int]
) -> tuple[str, str]:
    workers = sum(name.startswith("worker") for name in pids)
    """``sessions`` chains of ``steps`` started at once and awaited: sessions/s, steps/s, the
    step latency from the records, and the CPU each process used meanwhile."""
    setup = setup_of(chain(steps), steps)
    meter = CpuMeter(pids)
    began = time.perf_counter()
    handles = await asyncio.gather(
        *(started(client, queue, setup, "go", "many") for _ in range(sessions))
    )
    outcomes = await asyncio.gather(*(handle.result() for handle in handles))
    elapsed = time.perf_counter() - began
    shares = meter.shares()
    assert all(outcome["state"] == "finished" for outcome in outcomes)
    latencies = await _latencies(handles)
    assert len(latencies) == sessions * steps, len(latencies)
    return (
        f"{sessions} concurrent sessions of {steps} steps, {workers} worker(s) "
        f"({cpu_text(shares)})",
        f"{sessions / elapsed:.1f} sessions/s, {sessions * steps / elapsed:.0f} steps/s, "
        f"step (StepBegin to StepResult) p50 {percentile(latencies, 0.5) * 1e3:.0f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1e3:.0f} ms; {elapsed:.1f} s in all",
    )


async def _latencies(handles: list[WorkflowHandle[Any, Any]]) -> list[float]:
    """Every step's latency, from each session's records (a few queries at a time)."""
    gate = asyncio.Semaphore(16)

    async def one(handle: WorkflowHandle[Any, Any]) -> list[float]:
        async with gate:
            return step_latencies(await journal(handle))

    found = await asyncio.gather(*(one(handle) for handle in handles))
    return [latency for latencies in found for latency in latencies]


async def sessions_rows(server: Server, sizes: Sizes) -> list[tuple[str, str]]:
    """Part 2: many concurrent sessions on 1, 2 and 4 worker processes."""
    address = server.address
    rows = []
    for count, sessions in sizes.sessions.items():
        queue = f"bench-many-{uuid.uuid4().hex[:8]}"
        with workers(address, queue, count) as processes:
            client = await Client.connect(address)
            pids = watched(server.pid, processes)
            rows.append(
                await concurrent_sessions(client, queue, sessions, sizes.session_steps, pids)
            )
        gc.collect()
    return rows


# ---- 3: a wide fan-out -----------------------------------------------------------------------


async def fan_out_wall(children: int, executor: TemporalExecutor | None) -> float:
    """Wall seconds of the hub fanning out to ``children`` workers (embedded without an
    executor)."""
    topology, registry = fan_out()
    began = time.perf_counter()
    result = await Orchestra.run(
        str(children),
        topology,
        agent_registry=registry,
        execution_config=QUIET,
        max_steps=children + 2,
        executor=executor,
    )
    elapsed = time.perf_counter() - began
    assert result.success and result.final_response == children, result.error
    return elapsed


async def fan_out_rows(server: Server, sizes: Sizes, embedded: float) -> list[tuple[str, str]]:
    """Part 3: the fan-out on Temporal through ``Orchestra.run`` against ``embedded`` (its
    wall seconds)."""
    children, rows = sizes.fan_out, []
    for count in sizes.fan_out_workers:
        queue = f"bench-fan-{uuid.uuid4().hex[:8]}"
        with workers(server.address, queue, count) as processes:
            executor = TemporalExecutor(await Client.connect(server.address), queue)
            meter = CpuMeter(watched(server.pid, processes))
            walls = [await fan_out_wall(children, executor) for _ in range(sizes.fan_out_runs)]
            shares = meter.shares()
        best = min(walls)
        rows.append(
            (
                f"{children}-way fan-out, {count} worker(s), through Orchestra.run (wall; "
                f"{cpu_text(shares)})",
                f"{best:.2f} s (median {statistics.median(walls):.2f} s; "
                f"{best / embedded:.0f}x embedded)",
            )
        )
    return rows


# ---- the run ---------------------------------------------------------------------------------


async def embedded_rows(sizes: Sizes) -> tuple[list[tuple[str, str]], float, float]:
    """The chain and the fan-out embedded (best of 5): the rows, seconds a step, fan-out wall."""
    step = min([await embedded_chain(sizes.chain) for _ in range(5)])
    wall = min([await fan_out_wall(sizes.fan_out, None) for _ in range(5)])
    rows = [
        (f"embedded: {sizes.chain}-step function chain", f"{step * 1e3:.3f} ms/step"),
        (f"embedded: {sizes.fan_out}-way fan-out of function steps (wall)", f"{wall:.3f} s"),
    ]
    return rows, step, wall


async def on(server: Server, sizes: Sizes, step: float, wall: float) -> list[tuple[str, str]]:
    """Every measurement on one server, each row named after it."""
    rows = await chain_rows(server, sizes, step)
    rows += await sessions_rows(server, sizes)
    rows += await fan_out_rows(server, sizes, wall)
    return [(f"{server.label}: {name}", value) for name, value in rows]


@contextlib.contextmanager
def dev_server(label: str, in_memory: bool) -> Iterator[Server]:
    """A dev server of our own, started as the tests start theirs, stopped after."""
    process, address, folder = start_temporal(in_memory=in_memory)
    try:
        yield Server(label, address, process.pid)
    finally:
        stop(process, folder)


async def measure(address: str | None, quick: bool) -> list[tuple[str, str]]:
    """On the server given (``--temporal``), else on a dev server in memory and one that
    writes its SQLite file."""
    sizes = QUICK if quick else Sizes()
    rows, step, wall = await embedded_rows(sizes)
    if address is not None:
        return rows + await on(Server("given server", address, None), sizes, step, wall)
    with dev_server("dev server in memory", in_memory=True) as server:
        rows += await on(server, sizes, step, wall)
    with dev_server("dev server on a SQLite file", in_memory=False) as server:
        rows += await on(server, QUICK if quick else ON_FILE, step, wall)
    return rows


def remarks(before: str, after: str) -> str:
    """How to read the table: where the time goes and what bounds each measurement, as seen
    on the machine measured (``before`` and ``after``: its load average)."""
    return (
        f"Server, workers and client share this machine's {os.cpu_count()} CPUs, with whatever "
        f"else runs there (load average {before} before, {after} after: above the CPU count, "
        "every time here includes waiting for a CPU). A step on Temporal is two trips through "
        "the server, each written to the workflow's history before the next begins: an "
        "activity task (the step runs on a worker) and a workflow task (the workflow hears the "
        "result and schedules the next step). Our code in the workflow (Engine.apply and the "
        "journal) is about a quarter of a millisecond of it, the whole workflow activation (the "
        "SDK's and ours) about 1 ms of worker CPU: the rest is the server and the waits between "
        "the processes. Following a session (Orchestra.run with an executor) costs about one "
        "records query a step (the client polls every 20 ms while records come, backing off to "
        "1 s when the session is quiet). Concurrent sessions are bounded by the server: it uses the most CPU of the "
        "processes measured (the CPUs being all busy), and 2 or 4 workers carry no more than "
        "1; on a SQLite file every history write also waits for the "
        "disk (compare its rows with the in-memory ones). A fan-out is one workflow: each "
        "branch's result is a workflow task of that one workflow, one after another, so its "
        "wall time grows with its branches, and more workers do not shorten it."
    )


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small numbers; write nothing")
    parser.add_argument("--temporal", metavar="HOST:PORT", help="a running server to use")
    arguments = parser.parse_args(argv)
    before = load()
    rows = asyncio.run(measure(arguments.temporal, arguments.quick))
    note = ", server, workers and client on this machine"
    report("Temporal", note, rows, write=not arguments.quick, remarks=remarks(before, load()))


if __name__ == "__main__":
    sys.exit(main())
