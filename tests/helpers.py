"""Helpers shared by the tests that drive whole runs: engine, results, agents, model adapters,
and durable sessions.

They all need the same few things: a config that prints nothing, agents kept out of the global
registry (so one test never sees another's agents), runs bounded in time (so a broken engine
fails a test instead of hanging the suite), the action dicts a scripted model replies with,
and ways to read a result. Test modules import this as a sibling module, like ``servers``:
``from helpers import final, run``. What is specific to one protocol (Chat Completions bodies,
Anthropic blocks) stays in its test module.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from orchestra import (
    Agent,
    AgentPool,
    AgentRegistry,
    BaseAgent,
    ErrorHandlingConfig,
    ExecutionConfig,
    FunctionAgent,
    FunctionModel,
    Orchestra,
    OrchestraResult,
    PatternConfig,
    StatusConfig,
    Topology,
    tool,
)
from orchestra.coordination.engine import events as ev
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import StateManager
from orchestra.coordination.streaming import RunStream
from orchestra.models import Message, StepInfo
from orchestra.models.config import ModelConfig

E = TypeVar("E", bound=ev.Event)

# Seconds a run (or an event a test awaits) may take before the test fails: the engine's runs
# take well under a second, so only a hang reaches it. A module whose runs need another bound
# (a real model, a tighter check) passes its own ``wait``.
WAIT = 5.0

# Model calls retried at once: the adapter tests check retries, not the backoff between them.
FAST = ErrorHandlingConfig(max_retries=2, retry_initial_delay=0, retry_max_delay=0)

# The smallest topologies a model adapter is tried on: one agent, a handoff, a call.
SOLO = Topology(nodes=["Solo"], edges=[])
HANDOFF = Topology(nodes=["Hub", "Worker"], edges=["Hub -> Worker"])
CALL = Topology(nodes=["Hub", "Worker"], edges=["Hub <-> Worker"], entry_point="Hub")


def quiet(**settings: Any) -> ExecutionConfig:
    """An ExecutionConfig with ``settings`` that prints nothing, so test output stays readable."""
    return ExecutionConfig(status=StatusConfig.from_verbosity(0), **settings)


def fn(name: str, function: Callable[..., Any]) -> FunctionAgent:
    """A code agent kept out of the global registry, run on the event loop.

    A plain function given to ``FunctionAgent`` runs on a thread, and parallel branches then
    finish in whatever order the threads do: the tests that check what a run does when one
    branch fails while its siblings work need the order they ran in, so here a plain function
    is wrapped in a coroutine function. Sync code on threads has tests of its own
    (``test_sync_code.py``)."""
    if inspect.iscoroutinefunction(function):
        return FunctionAgent(name, function, register=False)

    @functools.wraps(function)
    async def on_the_loop(value: Any, context: Any) -> Any:
        result = function(value, context)
        return await result if inspect.isawaitable(result) else result

    return FunctionAgent(name, on_the_loop, register=False)


def llm(name: str, model: Any, tools: Iterable[Any] | None = None) -> Agent:
    """A model agent kept out of the global registry."""
    return Agent(name, model, tools=tools, register=False)


async def run(
    task: Any,
    topology: dict[str, Any] | Topology,
    agents: Iterable[BaseAgent | AgentPool],
    *,
    config: ExecutionConfig | None = None,
    wait: float = WAIT,
    heard: Heard | None = None,
    **options: Any,
) -> OrchestraResult:
    """Orchestra.run with only ``agents`` registered and ``config`` (by default quiet).

    ``options`` go to Orchestra.run as they are. The run is bounded by ``wait`` seconds, so a
    broken engine fails the test with a TimeoutError instead of hanging it. With ``heard`` the
    run is made as ``Orchestra.stream`` makes it, and ``heard`` hears its events (its gates
    open as they come).
    """
    arguments = (task, topology, AgentRegistry(agents))
    execution_config = quiet() if config is None else config
    if heard is None:
        running = Orchestra.run(*arguments, execution_config=execution_config, **options)
        return await asyncio.wait_for(running, wait)
    stream = Orchestra.stream(*arguments, execution_config=execution_config, **options)
    return await asyncio.wait_for(heard.follow(stream), wait)


class Heard:
    """A run's events as the engine whose result it is hears them, to order concurrent
    branches explicitly: a branch that must end after another waits, in its agent, until the
    run has heard of the other's result (:meth:`until`).

    Waiting for the other agent's code to return would not do: on Temporal a step is an
    activity, and its result reaches the workflow some time after the code returned, in any
    order with its siblings'. The engine heard here is the run's own when embedded, and the
    client's replica on Temporal, which hears an event only once the workflow has journaled
    the input it came from — so a branch let go by it ends after the workflow applied what it
    waited for, on either executor. Given to :func:`run` as ``heard=``; one run each."""

    def __init__(self) -> None:
        self._events: list[ev.Event] = []
        self._waiting: list[tuple[Callable[[ev.Event], bool], str, asyncio.Future[None]]] = []
        self._ended = False

    async def until(self, kind: type[ev.Event] | tuple[type[ev.Event], ...], **fields: Any) -> None:
        """Return once the run has heard an event of ``kind`` (a type, or any of a tuple)
        whose attributes match ``fields``; raise AssertionError when it ends without (a gate
        never outlives its run)."""

        def matches(event: ev.Event) -> bool:
            return isinstance(event, kind) and all(
                getattr(event, name, None) == value for name, value in fields.items()
            )

        awaited = f"{kind} with {fields}"
        if any(matches(event) for event in self._events):
            return
        if self._ended:
            raise AssertionError(f"the run ended without {awaited}")
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((matches, awaited, future))
        await future

    async def ended(self, *agents: str) -> None:
        """Return once the run has heard the branch of each of ``agents`` end (completed or
        failed)."""
        for agent in agents:
            await self.until((ev.BranchCompleted, ev.BranchFailed), agent=agent)

    async def follow(self, stream: RunStream) -> OrchestraResult:
        """Hear the events of ``stream``'s run until it ends; its result."""
        try:
            async with stream as events:
                async for event in events:
                    self._hear(event)
        finally:
            self._ended = True
            for _, awaited, future in self._waiting:
                if not future.done():
                    future.set_exception(AssertionError(f"the run ended without {awaited}"))
        assert events.result is not None
        return events.result

    def _hear(self, event: ev.Event) -> None:
        self._events.append(event)
        for matches, _, future in self._waiting:
            if not future.done() and matches(event):
                future.set_result(None)


def invoke(*items: tuple[str, Any], label: str | None = None) -> dict[str, Any]:
    """An invoke_agent reply calling each ``(agent, request)``; ``label`` tags every item."""
    labelled = {} if label is None else {"label": label}
    return {
        "next_action": "invoke_agent",
        "action_input": [
            {"agent_name": agent, "request": request, **labelled} for agent, request in items
        ],
    }


def final(response: Any) -> dict[str, Any]:
    """A final_response reply."""
    return {"next_action": "final_response", "action_input": {"response": response}}


def ask(question: str) -> dict[str, Any]:
    """An ask_user reply."""
    return {"next_action": "ask_user", "action_input": {"question": question}}


def spokes(*names: str) -> Topology:
    """Hub calling ``names`` in parallel: the smallest topology with a fan-out."""
    return PatternConfig.hub_and_spoke("Hub", list(names), parallel_spokes=True)


def statuses(result: OrchestraResult) -> dict[str, str]:
    """Every branch's status by branch id: one comparison checks the whole run's outcome."""
    return {branch.branch_id: branch.status for branch in result.branch_results}


def of(result: OrchestraResult, kind: type[E]) -> list[E]:
    """The run's events of ``kind``, in order."""
    return [event for event in result.events if isinstance(event, kind)]


async def run_forced_handoff(
    hub_model: ModelConfig, **options: Any
) -> tuple[ev.StepCompleted, list[Any]]:
    """Run a real model as a hub whose only peer is Worker, and check that it handed over.

    The action schema leaves the model one legal action, so the run is deterministic whatever
    the model is. Returns the hub's step and what Worker received, for the caller's own checks;
    ``options`` go to :func:`run`.
    """
    received: list[Any] = []

    def worker(value: Any, context: Any) -> str:
        received.append(value)
        return "worker finished"

    result = await run(
        "Summarise the latest sales report.",
        HANDOFF,
        [llm("Hub", hub_model), fn("Worker", worker)],
        **options,
    )
    assert result.success, result.error
    assert result.final_response == "worker finished"
    handoffs = [(e.source, e.target, e.kind) for e in of(result, ev.WorkHandedOver)]
    assert handoffs == [("Hub", "Worker", "handoff")]
    hub_step = next(e for e in of(result, ev.StepCompleted) if e.agent == "Hub")
    assert hub_step.action.targets == ("Worker",)
    assert received == [hub_step.action.invocations[0].request]
    return hub_step, received


TESTS = Path(__file__).resolve().parent


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``orchestra ARGS`` as a user runs it: a real subprocess, which finds the function nodes
    of ``flow_nodes``. It runs in ``cwd`` (default: an empty folder of its own), where the
    command line keeps its sessions (``.orchestra/sessions.db``)."""
    with tempfile.TemporaryDirectory() as empty:
        return subprocess.run(
            _cli(args),
            capture_output=True,
            text=True,
            timeout=600,  # a hang guard: `demo --topologies` took 123 s on a loaded 2-CPU machine
            cwd=cwd or empty,
            env=_CLI_ENV,
        )


def timing_free(result: OrchestraResult) -> dict[str, Any]:
    """What a run did, in a form that does not depend on timing: its steps, steps and
    invocations per agent, each branch's outcome, and each branch's decisions (branches
    interleave, so the trace is compared per branch): what the crash tests compare."""
    metrics = result.get_metrics()
    trace = [(t["branch_id"], t["agent"], t["action"]) for t in result.get_execution_trace()]
    return {
        "steps": result.total_steps,
        "agents": {
            name: [row["steps"], row["invocations"]] for name, row in metrics["agents"].items()
        },
        "branches": sorted(
            [b.branch_id, b.status, b.step_count, b.agents, b.parent_branch_id]
            for b in result.branch_results
        ),
        "trace": sorted(trace),
    }


def quick_bench_rows(script: str, *args: str) -> list[str]:
    """The rows of the table ``bench/<script> --quick ARGS`` prints, once it exited 0 and
    left bench/results.md as it was (a quick run writes nothing)."""
    root = TESTS.parent
    results = root / "bench" / "results.md"
    written = results.read_bytes()
    done = subprocess.run(
        [sys.executable, str(root / "bench" / script), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard: the smoke runs take seconds
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert results.read_bytes() == written
    return [line.strip() for line in done.stdout.splitlines() if line.startswith("  ")]


def start_cli(*args: str, cwd: Path, stderr: bool = False) -> subprocess.Popen[str]:
    """``orchestra ARGS`` started, with pipes to its stdin and stdout, and to its stderr when
    ``stderr`` is true (else it is discarded)."""
    return subprocess.Popen(
        _cli(args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if stderr else subprocess.DEVNULL,
        text=True,
        cwd=cwd,
        env=_CLI_ENV,
    )


def _cli(args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "orchestra", *args]


_CLI_ENV = {
    "COLUMNS": "150",
    "PATH": "/usr/bin:/bin",
    # this checkout's orchestra, not whichever one the environment has installed
    "PYTHONPATH": os.pathsep.join((str(TESTS.parent), str(TESTS))),
    "HOME": str(Path.home()),
}


# ---- durable sessions seen from the storage side ----------------------------------------------


class Watched:
    """A storage backend seen from the outside: which records are durable, how many appends
    are in flight at once, and (``hold_when``) an append held until ``let_go`` is set;
    (``fail_when``) one append that fails as a dropped connection does; (``keep_snapshot``)
    the snapshots stored, each with the log as it stood then."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.durable: list[dict[str, Any]] = []
        self.appended = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0
        self.hold_when: Callable[[list[dict[str, Any]]], bool] | None = None
        self.held = asyncio.Event()
        self.let_go = asyncio.Event()
        self.fail_when: Callable[[list[dict[str, Any]]], bool] | None = None
        self.snapshots: list[tuple[list[str], bytes]] = []
        self.keep_snapshot: Callable[[], bool] = lambda: False
        self.snapshot_kept = asyncio.Event()
        self.released_while_writing: list[int] = []  # appends in flight at each release

    async def append(
        self, session_id: str, records: Sequence[str], durable: bool, after: int
    ) -> None:
        parsed = [json.loads(record) for record in records]
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.fail_when is not None and self.fail_when(parsed):
                self.fail_when = None
                raise ConnectionError("the storage server went away for a moment")
            if self.hold_when is not None and self.hold_when(parsed):
                self.hold_when = None
                self.held.set()
                await self.let_go.wait()
            await self.inner.append(session_id, records, durable, after)
            self.durable.extend(parsed)
            self.appended.set()
        finally:
            self.in_flight -= 1

    async def release(self, session_id: str) -> None:
        self.released_while_writing.append(self.in_flight)
        await self.inner.release(session_id)

    async def read(self, session_id: str) -> list[str]:
        return await self.inner.read(session_id)

    async def exists(self, session_id: str) -> bool:
        return await self.inner.exists(session_id)

    async def list_sessions(self) -> list[str]:
        return await self.inner.list_sessions()

    async def delete(self, session_id: str) -> bool:
        return await self.inner.delete(session_id)

    async def write_snapshot(self, session_id: str, data: bytes) -> None:
        await self.inner.write_snapshot(session_id, data)
        if self.keep_snapshot():
            self.snapshots.append((await self.inner.read(session_id), data))
            self.snapshot_kept.set()

    async def read_snapshot(self, session_id: str) -> bytes | None:
        return await self.inner.read_snapshot(session_id)


class Down(Watched):
    """Storage that cannot take records of one kind: it is down whenever they come."""

    def __init__(self, inner: Any, kind: str) -> None:
        super().__init__(inner)
        self.kind = kind

    async def append(
        self, session_id: str, records: Sequence[str], durable: bool, after: int
    ) -> None:
        if any(json.loads(record)["t"] == self.kind for record in records):
            raise ConnectionError("the storage server is down")
        await super().append(session_id, records, durable, after)


async def crash_copy(storage: Any, source: str, target: str, keep: int) -> None:
    """``target`` as ``source`` would have been left by a crash after its ``keep``-th record
    (with ``auto_save_interval=0`` the stored log is, at every moment, a prefix of the final
    one)."""
    await storage.append(target, (await storage.read(source))[:keep], durable=True, after=0)


def kinds(lines: list[str]) -> list[str]:
    """The kind (``"t"``) of each stored record."""
    return [json.loads(line)["t"] for line in lines]


def stamping_instance(
    storage: Any, tools: int, executed: list[str], check: Callable[[], None]
) -> OrchestraInstance:
    """Clerk calls ``tools`` (non-idempotent) tools at once, then answers. Each call appends
    its key to ``executed``, then calls ``check``."""

    @tool
    async def stamp(key: str) -> str:
        """Stamp a document.

        Args:
            key: which document
        """
        executed.append(key)
        check()
        return f"stamped {key}"

    def clerk(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
        if messages[-1].role == "tool":
            return final("done")
        return {
            "next_action": "call_tool",
            "action_input": [
                {"name": "stamp", "arguments": {"key": f"d{n}"}} for n in range(tools)
            ],
        }

    return OrchestraInstance(
        {"nodes": ["User", "Clerk"], "edges": ["User -> Clerk", "Clerk -> User"]},
        agent_registry=AgentRegistry(
            [Agent("Clerk", FunctionModel(clerk), tools=[stamp], register=False)]
        ),
        initial_config=quiet(),
        state_manager=StateManager(storage, auto_save_interval=0),
    )
