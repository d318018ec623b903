"""A worker's graceful stop (SIGTERM on ``orchestra worker``, the ``worker()`` block exiting)
with sessions in flight on several hosted versions: every version stops taking work at once,
and the sessions it drops from its cache end quietly (no "Exception ignored" tracebacks).

An in-process worker on its own task queue, on the session's dev server (the
``temporal_server`` fixture); sessions are started with ``start_input``, as the executor
starts them, and terminated at the end (nothing is left to run them).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import pytest
import pytest_asyncio
from helpers import final, fn, llm, quiet
from temporalio import activity
from temporalio.client import Client, WorkflowHandle

from orchestra import Action, AgentRegistry, ErrorHandlingConfig, FunctionModel, Topology, tool
from orchestra.communication.channels import CommunicationManager
from orchestra.coordination.wiring import prepare
from orchestra.models import Message, StepInfo
from orchestra.temporal import Hosting, start_input, worker
from orchestra.temporal.protocol import WORKFLOW_NAME, version_queue

pytestmark = pytest.mark.asyncio(loop_scope="module")

WAIT = 30.0  # seconds a condition may take before the test fails (only a hang reaches it)
GRACE = 1.0  # the stopping worker's grace: a held call is cancelled at its end
STARTS: list[str] = []  # "<tool> <task queue>", each call as it starts
NEVER = asyncio.Event()


@tool(idempotent=True)
async def hold(n: int) -> str:
    """Wait for an answer that never comes (cancelled at the end of the worker's grace).

    Args:
        n: which
    """
    STARTS.append(f"hold {activity.info().task_queue}")
    await NEVER.wait()
    return "never"


@tool(idempotent=True)
def tick(n: int) -> str:
    """A quick call, made again and again.

    Args:
        n: which
    """
    STARTS.append(f"tick {activity.info().task_queue}")
    return f"tick {n}"


def _calling(name: str, rounds: int) -> Callable[[Sequence[Message], StepInfo], Any]:
    def model(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
        done = [message for message in messages if message.role == "tool"]
        if len(done) >= rounds:
            return final(f"{len(done)} calls")
        call = {"name": name, "arguments": {"n": len(done)}}
        return {"next_action": "call_tool", "action_input": [call]}

    return model


def _flow(label: str) -> tuple[Topology, AgentRegistry]:
    """A hub that sends one branch to call ``hold`` and one to call ``tick`` on and on."""
    hub, held, ticking = f"Hub{label}", f"Held{label}", f"Ticking{label}"

    def route(value: Any, context: Any) -> Any:
        if isinstance(value, list):
            return Action.final("done")
        return Action.invoke_parallel([(held, value), (ticking, value)])

    topology = Topology(
        nodes=[hub, held, ticking],
        edges=[f"{hub} <-> {held}", f"{hub} <-> {ticking}"],
        rules=[f"parallel({held}, {ticking})"],
        entry_point=hub,
    )
    agents = [
        fn(hub, route),
        llm(held, FunctionModel(_calling("hold", 1)), tools=[hold]),
        llm(ticking, FunctionModel(_calling("tick", 100_000)), tools=[tick]),
    ]
    return topology, AgentRegistry(agents)


FLOWS = [_flow("A"), _flow("B")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(temporal_server: str) -> AsyncIterator[Client]:
    yield await Client.connect(temporal_server)


@pytest.fixture
def unraisable() -> Iterator[list[str]]:
    """What Python reports as "Exception ignored" meanwhile (a coroutine closed outside its
    loop, say), collected instead of printed."""
    found: list[str] = []
    before = sys.unraisablehook

    def hook(report: Any) -> None:
        found.append(f"{report.err_msg}: {report.object!r}: {report.exc_type.__name__}")

    sys.unraisablehook = hook
    try:
        yield found
    finally:
        gc.collect()
        sys.unraisablehook = before


async def _start(client: Client, queue: str) -> list[WorkflowHandle[Any, Any]]:
    handles = []
    for topology, registry in FLOWS:
        setup = prepare(
            topology, registry, quiet(), ErrorHandlingConfig(), CommunicationManager(), 100_000
        )
        session_id = f"stop-{uuid.uuid4().hex[:8]}"
        start = start_input(setup, "go", {"session_id": session_id}, session_id, 5.0)
        handles.append(
            await client.start_workflow(
                WORKFLOW_NAME, start, id=session_id, task_queue=version_queue(queue, start.version)
            )
        )
    return handles


async def _until(check: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _busy(queues: list[str]) -> Callable[[], bool]:
    """Whether each version's sessions hold a call and have ticked a few times."""
    return lambda: all(
        f"hold {queue}" in STARTS and STARTS.count(f"tick {queue}") >= 3 for queue in queues
    )


async def _stopped_while_busy(client: Client) -> tuple[list[str], list[str]]:
    """Run both flows on one worker (a version each), stop it while they are busy: the calls
    that started after the stop began, and the version queues."""
    STARTS.clear()
    queue = f"stop-{uuid.uuid4().hex[:8]}"
    hosting = Hosting()
    for topology, registry in FLOWS:
        hosting.add(topology, registry)
    handles: list[WorkflowHandle[Any, Any]] = []
    try:
        async with worker(client, queue, hosting, shutdown_grace=GRACE):
            handles = await _start(client, queue)
            queues = [version_queue(queue, version) for version in hosting.versions]
            await _until(_busy(queues), "both versions' calls")
            stopping = len(STARTS)
        return STARTS[stopping:], queues
    finally:
        for handle in handles:
            await handle.terminate("the test is over")


async def test_a_stopping_worker_stops_every_version_at_once(client: Client) -> None:
    """While one version's held call has its grace, the other version takes no new call: no
    call starts once the stop began, but one each version may have had on its way then."""
    after, queues = await _stopped_while_busy(client)
    for queue in queues:
        assert after.count(f"tick {queue}") <= 1, after


async def test_a_stopping_worker_drops_its_sessions_quietly(
    client: Client, unraisable: list[str]
) -> None:
    """The sessions the stop drops from the worker's cache (a step and a tool call in flight)
    end there without a word: no "Exception ignored ... Not in workflow event loop"."""
    await _stopped_while_busy(client)
    gc.collect()
    assert unraisable == []
