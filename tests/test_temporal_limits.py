"""A session workflow at the edges of what Temporal carries: a worker lost or stopped mid-call,
payloads over Temporal's payload limit, a history near its limits, a store that refuses the
log's copy. Each session ends as the docs say (docs/scale-out.md), never wedged or wrong.

One in-process worker per test, on its own task queue, on the session's dev server (the
``temporal_server`` fixture); a raw temporalio client starts each session with
``start_input``, as the executor does.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from helpers import ask, final, fn, llm, quiet
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from test_temporal_executor import hosted

from orchestra import Action, AgentRegistry, ErrorHandlingConfig, FunctionModel, Topology, tool
from orchestra.communication.channels import CommunicationManager
from orchestra.coordination.config import StatusConfig
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.results import OrchestraResult, result_of
from orchestra.coordination.state import SQLiteStorageBackend, StateManager, records
from orchestra.coordination.wiring import build, prepare
from orchestra.errors import SessionCorruptedError
from orchestra.models import Message, StepInfo
from orchestra.temporal import Hosting, protocol, seams, start_input, worker
from orchestra.temporal.mirror import StoreMirror
from orchestra.temporal.protocol import WORKFLOW_NAME, RecordsPage, version_queue

pytestmark = pytest.mark.asyncio(loop_scope="module")

WAIT = 30.0  # seconds a session may take before the test fails (only a hang reaches it)
HEARTBEAT = 1.0  # the heartbeat timeout of the sessions whose worker is lost
HISTORY_PACKED = 1_000_000
LIMIT = 20_000  # the payload limit the payload tests set (bytes packed)
CALLS: list[str] = []  # what ran, in order
NEVER = asyncio.Event()  # what a call cut by its worker's stop waits for


def _noise(seed: int, chars: int) -> str:
    """Text that does not compress (so its packed size is about its length)."""
    return base64.b64encode(random.Random(seed).randbytes(chars * 3 // 4)).decode()


@tool
async def send(n: int) -> str:
    """Send a payment (not idempotent): it finishes only once its worker is stopping.

    Args:
        n: how much
    """
    CALLS.append(f"send {n}")
    await activity.wait_for_worker_shutdown()
    await asyncio.sleep(0.2)  # the call's last moment of work, past the stop
    return f"sent {n}"


@tool
async def hang(n: int) -> str:
    """Send a payment (not idempotent) that never finishes.

    Args:
        n: how much
    """
    CALLS.append(f"hang {n}")
    await NEVER.wait()
    return "never"


@tool(idempotent=True)
def bulky(n: int) -> str:
    """Fetch a page too large to return.

    Args:
        n: which
    """
    CALLS.append(f"bulky {n}")
    return _noise(n, 2 * LIMIT)


@tool
def bulky_once(n: int) -> str:
    """Fetch a page too large to return (not idempotent).

    Args:
        n: which
    """
    CALLS.append(f"bulky_once {n}")
    return _noise(n, 2 * LIMIT)


WORDS = [f"w{index}" for index in range(300)]


@tool(idempotent=True)
def page(n: int) -> str:
    """Fetch a page of prose-like text (20 KB of words).

    Args:
        n: which
    """
    chooser = random.Random(n)
    return " ".join(chooser.choice(WORDS) for _ in range(5000))[:20_000]


@tool(idempotent=True)
def chunk(n: int) -> str:
    """Fetch a part, under the limit alone.

    Args:
        n: which
    """
    CALLS.append(f"chunk {n}")
    return _noise(n, LIMIT // 3)


def _caller(name: str, rounds: int = 1) -> Callable[[Sequence[Message], StepInfo], Any]:
    """A model that calls ``name`` ``rounds`` times, then says what the last call gave."""

    def model(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
        done = [message for message in messages if message.role == "tool"]
        if len(done) >= rounds:
            return final(done[-1].content[:80])
        call = {"name": name, "arguments": {"n": len(done)}}
        return {"next_action": "call_tool", "action_input": [call]}

    return model


LOST: list[int] = []  # the lost step's attempts


def _lost_once(value: Any, context: Any) -> Any:
    LOST.append(len(LOST))
    if len(LOST) == 1:
        time.sleep(3 * HEARTBEAT)  # blocks the loop: no heartbeat goes out, the worker is lost
    return Action.final("done")


def _flows() -> dict[str, tuple[Topology, list[Any]]]:
    def solo(name: str, tools: list[Any], rounds: int = 1) -> tuple[Topology, list[Any]]:
        agent = f"{name.title()}Agent"
        tool_name = tools[0].name
        return Topology(nodes=[agent], edges=[]), [
            llm(agent, FunctionModel(_caller(tool_name, rounds)), tools=tools)
        ]

    return {
        "send": solo("send", [send]),
        "hang": solo("hang", [hang]),
        "bulky": solo("bulky", [bulky]),
        "bulky_once": solo("bulkyonce", [bulky_once]),
        "chunks": solo("chunks", [chunk], rounds=5),
        "pages": solo("pages", [page], rounds=10),
        "lost": (Topology(nodes=["Lost"], edges=[]), [fn("Lost", _lost_once)]),
        "chain": (
            Topology(nodes=["A", "B"], edges=["A -> B"]),
            [
                fn("A", lambda value, context: f"{value}+a"),
                fn("B", lambda value, context: Action.final(f"{value}+b")),
            ],
        ),
    }


FLOWS = _flows()


@pytest.fixture(scope="module")
def hosting() -> Hosting:
    hosting = Hosting()
    for topology, agents in FLOWS.values():
        hosting.add(topology, AgentRegistry(agents))
    return hosting


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(temporal_server: str) -> AsyncIterator[Client]:
    yield await Client.connect(temporal_server)


async def _start(
    client: Client, name: str, queue: str, errors: ErrorHandlingConfig | None = None
) -> tuple[WorkflowHandle[Any, Any], Callable[[list[str]], OrchestraResult]]:
    """Start flow ``name`` on ``queue``; with the function that reads its records as a result."""
    topology, agents = FLOWS[name]
    setup = prepare(
        topology,
        AgentRegistry(agents),
        quiet(),
        errors or ErrorHandlingConfig(),
        CommunicationManager(),
        100,
    )
    session_id = f"lim-{name}-{uuid.uuid4().hex[:8]}"
    start = start_input(setup, "go", {"session_id": session_id}, session_id, HEARTBEAT)
    handle = await client.start_workflow(
        WORKFLOW_NAME,
        start,
        id=session_id,
        task_queue=version_queue(queue, start.version),
        result_type=dict,
    )

    def replica(lines: list[str]) -> OrchestraResult:
        engine, _ = build(setup, session_id, StatusConfig.from_verbosity(0))
        for line in lines:
            engine.apply(records.decode(records.loads(line)))  # type: ignore[arg-type]
        return result_of(engine, session_id)

    return handle, replica


async def _lines(handle: WorkflowHandle[Any, Any]) -> list[str]:
    lines: list[str] = []
    while True:
        page: RecordsPage = await handle.query("records", len(lines), result_type=dict)
        lines += page["lines"]
        if not page["lines"]:
            return lines


async def _finished(
    handle: WorkflowHandle[Any, Any], replica: Callable[[list[str]], OrchestraResult]
) -> tuple[OrchestraResult, list[dict[str, Any]]]:
    await asyncio.wait_for(handle.result(), WAIT)
    lines = await _lines(handle)
    return replica(lines), [records.loads(line) for line in lines]


async def _until(check: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _queue(label: str) -> str:
    return f"limits-{label}-{uuid.uuid4().hex[:8]}"


def _tool_done(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for item in items if item["t"] == "tool_done"]


# ---- a worker lost or stopped mid-call ------------------------------------------------------


async def test_a_step_lost_with_its_worker_runs_again_whatever_max_retries(
    client: Client, hosting: Hosting
) -> None:
    """max_retries counts the model's retries, inside a step: a step whose worker was lost
    (its heartbeat timed out) is run again by Temporal even with max_retries=0."""
    LOST.clear()
    queue = _queue("lost")
    async with worker(client, queue, hosting):
        errors = ErrorHandlingConfig(max_retries=0, retry_initial_delay=0, retry_max_delay=0)
        handle, replica = await _start(client, "lost", queue, errors)
        result, _ = await _finished(handle, replica)
    assert result.success, result.error
    assert result.final_response == "done"
    assert len(LOST) >= 2  # the blocked loop may lose the next attempt too


async def test_a_stopping_worker_lets_a_running_tool_call_finish(
    client: Client, hosting: Hosting
) -> None:
    """The worker's block exits (SIGTERM on ``orchestra worker``) while a non-idempotent tool
    runs: the call finishes within the worker's shutdown grace and its result is recorded;
    another worker goes on with the session, and the tool ran once."""
    CALLS.clear()
    queue = _queue("graceful")
    handle, replica = await _start(client, "send", queue)
    async with worker(client, queue, hosting):
        await _until(lambda: CALLS == ["send 0"], "the tool call")
    async with worker(client, queue, hosting):
        result, items = await _finished(handle, replica)
    assert result.success, result.error
    assert [item["ok"] for item in _tool_done(items)] == [True]
    assert result.final_response == "ok: sent 0"
    assert CALLS == ["send 0"]


async def test_a_non_idempotent_tool_cut_by_its_workers_stop_is_in_doubt(
    client: Client, hosting: Hosting
) -> None:
    """A worker stopping with no grace cancels the call it runs: the tool may have done its
    work, so its branch fails in doubt (as an embedded resume fails it), and the model is not
    told that it failed (it would call it again)."""
    CALLS.clear()
    queue = _queue("cut")
    handle, replica = await _start(client, "hang", queue)
    async with worker(client, queue, hosting, shutdown_grace=0):
        await _until(lambda: CALLS == ["hang 0"], "the tool call")
    async with worker(client, queue, hosting):
        result, items = await _finished(handle, replica)
    assert not result.success
    assert result.metadata["error_type"] == "ToolInDoubtError"
    assert "tool 'hang'" in (result.error or "")
    assert _tool_done(items) == []
    assert CALLS == ["hang 0"]


# ---- payloads over Temporal's limit ---------------------------------------------------------


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "PAYLOAD_LIMIT", LIMIT)


@pytest.mark.usefixtures("small_limit")
async def test_an_idempotent_tools_result_over_the_payload_limit_is_a_clear_tool_error(
    client: Client, hosting: Hosting
) -> None:
    """The tool ran; its result cannot cross: the model is told so (once: it is not re-run)."""
    CALLS.clear()
    queue = _queue("bulky")
    async with worker(client, queue, hosting):
        handle, replica = await _start(client, "bulky", queue)
        result, items = await _finished(handle, replica)
    assert result.success, result.error
    (done,) = _tool_done(items)
    assert not done["ok"]
    assert "tool 'bulky' (agent 'BulkyAgent') ran, but its result is" in done["result"]
    assert f"payload limit of {LIMIT} bytes: too large to return" in done["result"]
    assert CALLS == ["bulky 0"]


@pytest.mark.usefixtures("small_limit")
async def test_a_non_idempotent_tools_result_over_the_payload_limit_is_in_doubt(
    client: Client, hosting: Hosting
) -> None:
    CALLS.clear()
    queue = _queue("bulky-once")
    async with worker(client, queue, hosting):
        handle, replica = await _start(client, "bulky_once", queue)
        result, items = await _finished(handle, replica)
    assert not result.success
    assert result.metadata["error_type"] == "ToolInDoubtError"
    assert _tool_done(items) == []
    assert CALLS == ["bulky_once 0"]


@pytest.mark.usefixtures("small_limit")
async def test_a_step_whose_input_is_over_the_payload_limit_fails_naming_it(
    client: Client, hosting: Hosting
) -> None:
    """Each part is under the limit; the conversation they make is not: the step that would
    carry it fails with an error naming session, agent, branch, size and limit (instead of a
    workflow task failing forever)."""
    CALLS.clear()
    queue = _queue("chunks")
    async with worker(client, queue, hosting):
        handle, replica = await _start(client, "chunks", queue)
        result, _ = await _finished(handle, replica)
    assert not result.success
    error = result.error or ""
    assert f"session {handle.id!r}: agent 'ChunksAgent' (branch " in error
    assert f"bytes packed, over Temporal's payload limit of {LIMIT} bytes" in error
    assert 2 <= len(CALLS) < 5


async def test_history_grows_by_a_fraction_of_the_conversation_per_step(
    client: Client, hosting: Hosting
) -> None:
    """Every step carries the conversation, packed: ten rounds of 20 KB of prose-like text
    leave a history of HISTORY_PACKED bytes at most (unpacked: over a megabyte)."""
    queue = _queue("growth")
    async with worker(client, queue, hosting):
        handle, replica = await _start(client, "pages", queue)
        result, _ = await _finished(handle, replica)
    assert result.success, result.error
    described = await handle.describe()
    size = described.raw_description.workflow_execution_info.history_size_bytes
    assert size < HISTORY_PACKED


# ---- the history near Temporal's limits -----------------------------------------------------


async def test_a_history_near_temporals_limit_ends_the_run_naming_the_session(
    client: Client, hosting: Hosting, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(seams, "HISTORY_BYTES", 1)
    queue = _queue("history")
    async with worker(client, queue, hosting):
        handle, replica = await _start(client, "chain", queue)
        result, _ = await _finished(handle, replica)
    assert not result.success
    error = result.error or ""
    assert f"session {handle.id!r}: agent 'A' (branch " in error
    assert "near Temporal's limits" in error


# ---- the store copy -------------------------------------------------------------------------


async def test_a_store_that_refuses_the_copy_does_not_fail_the_session(
    client: Client,
    hosting: Hosting,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The mirror's local activity fails for good: the copy stops, the worker's log says so,
    the session succeeds."""

    async def refuse(self: StoreMirror, session_id: str, *args: Any) -> None:
        raise SessionCorruptedError(f"session {session_id!r}: foreign records there")

    monkeypatch.setattr(StoreMirror, "append", refuse)
    store = StateManager(SQLiteStorageBackend(tmp_path / "sessions.db"))
    queue = _queue("refused")
    with caplog.at_level(logging.WARNING):
        async with worker(client, queue, hosting, store=store):
            handle, replica = await _start(client, "chain", queue)
            result, _ = await _finished(handle, replica)
    assert result.success, result.error
    assert result.final_response == "go+a+b"
    assert any(
        f"session {handle.id!r}: its log is no longer copied into the store" in record.message
        for record in caplog.records
    )


# ---- open questions too large for a records page ---------------------------------------------


class _Approver:
    """A plain channel that answers yes, keeping each question's text."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def ask(self, question: Any) -> str:
        self.asked.append(question.text)
        return "yes"


@pytest.mark.parametrize(("count", "char"), [(2_100_000, "a"), (400_000, "\u6f22")])
async def test_a_question_too_large_for_a_records_page_is_shown_and_answered_as_embedded(
    client: Client, count: int, char: str
) -> None:
    """The question crosses as more than a query may answer (2.1 MB, or 400 K characters that
    take 6 bytes each as JSON): a records page lists it without its text, which the follower
    reads in parts; the channel is asked the whole question, and the run ends as embedded."""
    draft = "Approve this draft? " + char * count

    def asker(messages: Sequence[Message], info: StepInfo) -> Any:
        if len(messages) > 2:
            return final(f"got: {messages[-1].content}"[-40:])
        return ask(draft)

    topology = Topology(nodes=["A"], edges=["A -> User", "User -> A"])
    agents = [llm("A", FunctionModel(asker))]
    said = []
    for executor in (None, "temporal"):
        channel = _Approver()
        if executor is None:
            here = OrchestraInstance(
                topology, AgentRegistry(agents), quiet(), CommunicationManager(channel)
            )
            said.append((await here.execute("x", {})).final_response)
        else:
            async with hosted(client, topology, agents) as on_temporal:
                there = OrchestraInstance(
                    topology,
                    AgentRegistry(agents),
                    quiet(),
                    CommunicationManager(channel),
                    executor=on_temporal,
                )
                said.append((await asyncio.wait_for(there.execute("x", {}), 120)).final_response)
        assert channel.asked == [draft]
    assert said[0] == said[1] and said[0].endswith("yes")


async def test_open_questions_take_a_bounded_share_of_every_records_page() -> None:
    """Eight branches each asking with 300 KB: every page fits, whatever the questions; those
    past their share are listed without their text, and read whole in parts."""
    questions = [
        protocol.OpenQuestion(
            id=f"q{n}",
            branch_id=f"b{n}",
            agent="Reviewer",
            text=f"Review {n}: " + "d" * 300_000,
            kind="agent",
            timeout=None,
            response_line=None,
        )
        for n in range(8)
    ]
    page = protocol.records_page(["x" * 3_000_000], 0, 0, "running", questions)
    assert protocol.encoded_size(page) <= protocol.PAGE_BYTES + 1000
    listed = page["questions"]
    assert [item["id"] for item in listed] == [item["id"] for item in questions]
    parted = [item for item in listed if item.get("parted")]
    assert parted and all(item["text"] == "" for item in parted)
    assert "part" in page and len(page["part"]) > 500_000  # the line still moves on
    for item in parted:
        text, offset = "", 0
        while True:
            part = protocol.question_part(questions, item["id"], offset)
            assert part["open"] and protocol.encoded_size(part) <= protocol.PAGE_BYTES + 100
            text, offset = text + part["part"], part["offset"]
            if offset == 0:
                break
        assert records.loads(text) == next(q for q in questions if q["id"] == item["id"])
    assert protocol.question_part(questions, "gone", 0) == {"open": False, "part": "", "offset": 0}
