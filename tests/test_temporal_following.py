"""Following a session on Temporal with the wrong file, the wrong moment or the wrong channel:
a file of another version is refused before anything is sent; context for a running run is
refused, not dropped; a terminated workflow says so; a session no live worker takes is
terminated and refused; a timed channel's limit is the one that applies; Ctrl-C says what is
left behind.

Against the dev server (the ``temporal_server`` fixture) and in-process workers.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import pytest
import typer
from helpers import ask, final, fn, invoke, llm, quiet, run
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError
from test_temporal_executor import ON_TEMPORAL, PAIR, hosted, waiting_pair

from orchestra import (
    AgentRegistry,
    CommunicationConfig,
    ErrorHandlingConfig,
    FunctionModel,
    Topology,
)
from orchestra.cli import ending
from orchestra.cli.temporal import terminate_command
from orchestra.communication.channels import CommunicationManager
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.results import OrchestraResult
from orchestra.coordination.wiring import prepare
from orchestra.errors import SessionError, SessionRunningError, WorkflowVersionError
from orchestra.models import Message, StepInfo
from orchestra.temporal import Hosting, TemporalExecutor, routing, worker
from orchestra.temporal.hosting import version_of


@pytest.fixture
async def client(temporal_server: str) -> Client:
    return await Client.connect(temporal_server)


def instance(topology: Any, agents: list[Any], executor: Any, channel: Any = None) -> Any:
    return OrchestraInstance(
        topology, AgentRegistry(agents), quiet(), CommunicationManager(channel), executor=executor
    )


OTHER = Topology(nodes=["X", "Y"], edges=["X -> Y"])


def version(topology: Any, agents: list[Any]) -> str:
    registry = AgentRegistry(agents)
    return version_of(
        prepare(topology, registry, quiet(), ErrorHandlingConfig(), CommunicationManager(), 100)
    )


async def signals(client: Client, session_id: str) -> int:
    """How many signals the session's workflow was sent."""
    handle = client.get_workflow_handle(session_id)
    return len(
        [
            event
            async for event in handle.fetch_history_events()
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        ]
    )


async def test_a_file_of_another_version_is_refused_before_anything_is_sent(
    client: Client,
) -> None:
    """A paused session followed with another workflow file: refused, naming the session and
    both versions; it stays paused (no resume sent) and its own file resumes it."""
    started, go_on = asyncio.Event(), asyncio.Event()
    agents = waiting_pair(started, go_on)
    others = [fn("X", lambda x, c: f"{x} x"), fn("Y", lambda x, c: f"{x} y")]
    async with hosted(client, PAIR, agents) as executor:
        runs = instance(PAIR, agents, executor)
        session_id = f"wrong-{uuid.uuid4().hex[:8]}"
        running = asyncio.create_task(runs.execute("job", {"session_id": session_id}))
        await asyncio.wait_for(started.wait(), ON_TEMPORAL)
        assert await runs.pause_session(session_id, "check")
        go_on.set()
        paused = await asyncio.wait_for(running, ON_TEMPORAL)
        assert paused.metadata["paused"] is True

        sent = await signals(client, session_id)
        wrong = instance(OTHER, others, executor)
        mine, theirs = version(PAIR, agents), version(OTHER, others)
        named = (
            rf"'{session_id}' runs workflow version {mine}.*this workflow is version {theirs} "
            r"\(its name, the file's stem or metadata 'workflow', or its topology"
        )  # a renamed copy of the file is another version too: the message says it may be that
        with pytest.raises(WorkflowVersionError, match=named):
            await wrong.resume_session(session_id)
        with pytest.raises(WorkflowVersionError, match=named):
            await wrong.get_result(session_id)
        assert await signals(client, session_id) == sent  # no resume was sent

        resumed = await asyncio.wait_for(runs.resume_session(session_id), ON_TEMPORAL)
    assert resumed.final_response == "job first second None"


async def test_context_for_a_running_session_is_refused_not_dropped(client: Client) -> None:
    started, go_on = asyncio.Event(), asyncio.Event()
    agents = waiting_pair(started, go_on)
    async with hosted(client, PAIR, agents) as executor:
        runs = instance(PAIR, agents, executor)
        session_id = f"busy-{uuid.uuid4().hex[:8]}"
        running = asyncio.create_task(runs.execute("job", {"session_id": session_id}))
        await asyncio.wait_for(started.wait(), ON_TEMPORAL)
        with pytest.raises(SessionRunningError, match=rf"'{session_id}' is running.*pause it"):
            await runs.resume_session(session_id, {"extra": "more"})
        go_on.set()
        result = await asyncio.wait_for(running, ON_TEMPORAL)
    assert result.final_response == "job first second None"


async def test_a_terminated_session_says_so_and_the_way_out(client: Client) -> None:
    started, go_on = asyncio.Event(), asyncio.Event()
    agents = waiting_pair(started, go_on)
    async with hosted(client, PAIR, agents) as executor:
        runs = instance(PAIR, agents, executor)
        session_id = f"ended-{uuid.uuid4().hex[:8]}"
        running = asyncio.create_task(runs.execute("job", {"session_id": session_id}))
        await asyncio.wait_for(started.wait(), ON_TEMPORAL)
        await client.get_workflow_handle(session_id).terminate(reason="by hand")
        way_out = rf"'{session_id}' was terminated on Temporal.*by hand.*run --temporal.*delete"
        with pytest.raises(SessionError, match=way_out):
            await asyncio.wait_for(running, ON_TEMPORAL)
        with pytest.raises(SessionError, match=way_out):
            await runs.resume_session(session_id)
        go_on.set()


async def test_a_session_no_live_worker_takes_is_terminated_and_refused(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its version's only worker just stopped (Temporal lists it polling for a while): the
    session is started, no worker takes its first task, so it is terminated and refused."""
    monkeypatch.setattr(routing, "FIRST_TASK_WAIT", 3.0)
    agents = [fn("First", lambda x, c: x), fn("Second", lambda x, c: x)]
    queue = f"test-{uuid.uuid4().hex}"
    hosting = Hosting()
    hosting.add(PAIR, AgentRegistry(agents))
    executor = TemporalExecutor(client, queue)
    runs = instance(PAIR, agents, executor)
    async with worker(client, queue, hosting):
        done = await asyncio.wait_for(runs.execute("job", {"session_id": "x"}), ON_TEMPORAL)
        assert done.success
    session_id = f"orphan-{uuid.uuid4().hex[:8]}"
    with pytest.raises(WorkflowVersionError, match="no worker took its first task within 3 s"):
        await asyncio.wait_for(runs.execute("job", {"session_id": session_id}), ON_TEMPORAL)
    described = await client.get_workflow_handle(session_id).describe()
    assert described.status is WorkflowExecutionStatus.TERMINATED
    assert session_id not in executor.on_temporal


async def test_a_session_interrupted_in_the_first_task_wait_is_terminated(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while no worker takes the new session's first task (its version's only worker
    just stopped): the workflow is terminated, and the session is not said to go on."""
    monkeypatch.setattr(routing, "FIRST_TASK_WAIT", 600.0)
    agents = [fn("First", lambda x, c: x), fn("Second", lambda x, c: x)]
    queue = f"test-{uuid.uuid4().hex}"
    hosting = Hosting()
    hosting.add(PAIR, AgentRegistry(agents))
    executor = TemporalExecutor(client, queue)
    runs = instance(PAIR, agents, executor)
    async with worker(client, queue, hosting):
        done = await asyncio.wait_for(runs.execute("job", {"session_id": "x"}), ON_TEMPORAL)
        assert done.success
    session_id = f"cut-{uuid.uuid4().hex[:8]}"
    waiting = asyncio.create_task(runs.execute("job", {"session_id": session_id}))
    handle = client.get_workflow_handle(session_id)
    deadline = asyncio.get_running_loop().time() + ON_TEMPORAL
    while not await started(handle):
        assert asyncio.get_running_loop().time() < deadline, "the workflow was never started"
        await asyncio.sleep(0.1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (await handle.describe()).status is WorkflowExecutionStatus.TERMINATED
    assert session_id not in executor.on_temporal


async def started(handle: Any) -> bool:
    """Whether the workflow exists (its start was accepted)."""
    try:
        await handle.describe()
    except RPCError:
        return False
    return True


async def test_a_session_interrupted_before_it_started_is_not_said_to_go_on(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routing, "POLLER_WAIT", 600.0)
    agents = [fn("First", lambda x, c: x), fn("Second", lambda x, c: x)]
    executor = TemporalExecutor(client, f"test-{uuid.uuid4().hex}")
    runs = instance(PAIR, agents, executor)
    session_id = f"early-{uuid.uuid4().hex[:8]}"
    waiting = asyncio.create_task(runs.execute("job", {"session_id": session_id}))
    await asyncio.sleep(0.5)  # in the wait for a poller (it lasts 600 s)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert session_id not in executor.on_temporal


@pytest.mark.parametrize(
    ("goes_on", "resuming", "said"),
    [
        (True, False, "Interrupted: session s1 goes on on Temporal. Follow it again with: F"),
        (False, False, "Interrupted before session s1 started on Temporal: nothing runs."),
        (False, True, "Interrupted before session s1 was resumed on Temporal: it stays as it"),
    ],
)
def test_ctrl_c_says_what_is_left_on_temporal(
    capsys: pytest.CaptureFixture[str], goes_on: bool, resuming: bool, said: str
) -> None:
    stop = terminate_command("s1", ["--temporal", "h:1", "--task-queue", "q", "--tls"])
    followed = ending.Followed("s1", "F", stop, lambda: goes_on, resuming)
    with pytest.raises(typer.Exit):
        ending.left_on_temporal(followed)
    out = " ".join(capsys.readouterr().out.split())
    assert said in out
    assert ("temporal workflow terminate" in out) is goes_on


def test_the_terminate_hint_reaches_the_same_cluster() -> None:
    connect = ["--temporal", "h:7", "--task-queue", "q", "--namespace", "ns", "--tls"]
    assert terminate_command("s 1", [*connect, "--api-key-env", "KEY"]) == (
        "temporal workflow terminate -w 's 1' --namespace ns --address h:7 --tls --api-key \"$KEY\""
    )
    assert terminate_command("s1", ["--temporal", "h:7", "--task-queue", "q"]) == (
        "temporal workflow terminate -w s1 --namespace default --address h:7"
    )


# ---- a timed channel's limit is the one that applies --------------------------------------------

TWO_ASK = Topology(
    nodes=["Hub", "A", "B"],
    edges=["Hub -> A", "Hub -> B", "A -> Hub", "B -> Hub", "A <-> User", "B <-> User"],
)


def hub(messages: list[Message], info: StepInfo) -> dict[str, Any]:
    if len(messages) > 3:
        return final("done")
    return invoke(("A", "go"), ("B", "go"))


def asker(messages: list[Message], info: StepInfo) -> dict[str, Any]:
    if "answered" in str(messages[-1].content):
        return final("thanks")
    return ask(f"name for {info.agent_name}?")


class OneAtATime:
    """A TimedChannel that shows one question at a time (as the terminal does), each answered
    ``after`` seconds once shown, its limit counted from then."""

    def __init__(self, after: float) -> None:
        self.after = after
        self.lock = asyncio.Lock()
        self.calls: list[tuple[str, float | None]] = []

    async def ask(self, question: Any) -> str:
        raise AssertionError("a timed channel is asked within its limit")

    async def ask_within(self, question: Any, seconds: float | None, outcome: str) -> str:
        async with self.lock:
            self.calls.append((question.text, seconds))
            async with asyncio.timeout(seconds):
                await asyncio.sleep(self.after)  # the user reading, then typing
            return "Ada"


async def _two_askers_both_ways(
    client: Client, answer_after: float, limit: float
) -> list[tuple[OrchestraResult, OneAtATime]]:
    """``TWO_ASK`` run embedded, then on Temporal, each with a channel of its own that answers
    ``answer_after`` seconds after a question is shown, and a ``limit`` on every question."""
    runs = []
    for on_temporal in (False, True):
        agents = [
            llm("Hub", FunctionModel(hub)),
            llm("A", FunctionModel(asker)),
            llm("B", FunctionModel(asker)),
        ]
        channel = OneAtATime(answer_after)
        config = CommunicationConfig(channel=channel, user_timeout=limit)
        if on_temporal:
            async with hosted(client, TWO_ASK, agents) as executor:
                result = await run(
                    "x",
                    TWO_ASK,
                    agents,
                    wait=ON_TEMPORAL,
                    executor=executor,
                    communication_config=config,
                )
        else:
            result = await run("x", TWO_ASK, agents, wait=ON_TEMPORAL, communication_config=config)
        runs.append((result, channel))
    return runs


async def test_a_question_queued_behind_another_keeps_its_limit_on_temporal(
    client: Client,
) -> None:
    """Two branches ask at once; each is answered 1.5 s after it is shown, within its 2 s
    limit: embedded, both go on. The second one was asked 3 s before its answer: on Temporal
    too it goes on, as the client's channel owns the limit."""
    outcomes = [
        (result.success, result.error, sorted(channel.calls))
        for result, channel in await _two_askers_both_ways(client, answer_after=1.5, limit=2)
    ]
    assert outcomes[0][0], outcomes[0]
    assert outcomes[1] == outcomes[0]


def _either_asker(error: str) -> str:
    """An error with the question's id, and which of the two askers it names, left out: A and B
    ask at the same moment, so which question the channel shows (and times out) first, failing
    its branch and the fan-out while the other is cancelled, is a race, on Temporal as embedded
    with real models."""
    error = re.sub(r"question \S+,", "question ?,", error)
    error = re.sub(r"\bb\d\b", "b?", re.sub(r"\((A|B)\)", "(?)", error))
    return re.sub(r"(agent |name for )'?(A|B)\b'?", r"\1?", error)


async def test_a_timed_channels_timeout_gives_the_embedded_outcome(client: Client) -> None:
    """The client's channel times the question out (its user never answers): the branch
    fails with the error an embedded run gives, and no sooner than the channel said."""
    errors = [
        sorted(_either_asker(str(b.error)) for b in result.branch_results)
        for result, _ in await _two_askers_both_ways(client, answer_after=60, limit=0.5)
    ]
    assert errors[1] == errors[0]
    assert any("did not answer the question of agent" in error for error in errors[0])


class GoneTerminal:
    """A TimedChannel whose user never answers (``shown`` once it shows the question)."""

    def __init__(self) -> None:
        self.shown = asyncio.Event()

    async def ask(self, question: Any) -> str:
        raise AssertionError("a timed channel is asked within its limit")

    async def ask_within(self, question: Any, seconds: float | None, outcome: str) -> str:
        self.shown.set()
        await asyncio.Event().wait()
        raise AssertionError("never answered")


class Silent:
    """A plain channel whose user never answers."""

    async def ask(self, question: Any) -> str:
        await asyncio.Event().wait()
        raise AssertionError("never answered")


async def test_a_timed_client_that_went_away_leaves_the_limit_to_the_workflow(
    client: Client,
) -> None:
    """The session's first client (the terminal: its channel owns the limit) shows the
    question and is interrupted; a plain-channel client follows it. The question times out
    at its 1 s limit, with the outcome an embedded run gives, not an hour later."""
    topology = Topology(nodes=["A"], edges=["A -> User", "User -> A"])
    agents = [llm("A", FunctionModel(asker))]
    config = CommunicationConfig(channel=Silent(), user_timeout=1, on_user_timeout="fail")
    embedded = await run("x", topology, agents, wait=ON_TEMPORAL, communication_config=config)
    async with hosted(client, topology, agents) as executor:
        session_id = f"gone-{uuid.uuid4().hex[:8]}"
        terminal = GoneTerminal()
        first = OrchestraInstance(
            topology,
            AgentRegistry(agents),
            quiet(),
            CommunicationManager(terminal, user_timeout=1, on_user_timeout="fail"),
            executor=executor,
        )
        running = asyncio.create_task(first.execute("x", {"session_id": session_id}))
        await asyncio.wait_for(terminal.shown.wait(), ON_TEMPORAL)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        second = OrchestraInstance(
            topology,
            AgentRegistry(agents),
            quiet(),
            CommunicationManager(Silent(), user_timeout=1, on_user_timeout="fail"),
            executor=executor,
        )
        followed = await asyncio.wait_for(second.resume_session(session_id), ON_TEMPORAL)
    said = [
        (result.success, re.sub(r"question \S+,", "question ?,", str(result.error)))
        for result in (embedded, followed)
    ]
    assert said[1] == said[0] and not said[0][0], said
