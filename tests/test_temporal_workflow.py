"""A session as a Temporal workflow (``orchestra.temporal``): the workflow side.

One in-process worker per module, on the session's dev server (the ``temporal_server``
fixture); a raw temporalio client starts each session with ``start_input``, as the executor
does. The records the workflow journals, applied to a fresh engine, give the result an
embedded run of the same workflow gives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from helpers import FAST, final, fn, llm, quiet
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError

from orchestra import (
    Action,
    AgentRegistry,
    CommunicationConfig,
    ErrorHandlingConfig,
    ExecutionConfig,
    FunctionModel,
    Orchestra,
    Topology,
    tool,
)
from orchestra.communication.channels import CommunicationManager
from orchestra.coordination.config import StatusConfig
from orchestra.coordination.engine import events as ev
from orchestra.coordination.execution import stored_result
from orchestra.coordination.results import OrchestraResult, result_of
from orchestra.coordination.state import SQLiteStorageBackend, StateManager, records
from orchestra.coordination.wiring import Setup, build, prepare
from orchestra.errors import ModelAPIError
from orchestra.models import Message, StepInfo
from orchestra.temporal import Hosting, run_worker, start_input, worker
from orchestra.temporal.protocol import WORKFLOW_NAME, Outcome, RecordsPage, version_queue
from orchestra.temporal.worker import replayer

pytestmark = pytest.mark.asyncio(loop_scope="module")

QUEUE = "orchestra-workflow-tests"
WAIT = 20.0  # seconds a session may take before the test fails (only a hang reaches it)
HEARTBEAT = 1.0  # the heartbeat timeout of the session whose tool stops its worker

GATE: dict[str, asyncio.Event] = {}  # the paused test's step waits on these
RAN: list[str] = []  # tool calls, as they ran
STARTED: list[WorkflowHandle[Any, Any]] = []  # every session the module started: replayed last


# ---- the workflows the worker hosts ---------------------------------------------------------


def _chain() -> tuple[Topology, list[Any]]:
    return Topology(nodes=["A", "B", "C"], edges=["A -> B", "B -> C"]), [
        fn("A", lambda value, context: f"{value}+a"),
        fn("B", lambda value, context: f"{value}+b"),
        fn("C", lambda value, context: Action.final(f"{value}+c")),
    ]


def _fan_out() -> tuple[Topology, list[Any]]:
    def hub(value: Any, context: Any) -> Any:
        if isinstance(value, list):
            return Action.final(sorted(item["response"] for item in value))
        return Action.invoke_parallel([("S1", value), ("S2", value), ("S3", value)])

    def spoke(name: str) -> Any:
        return fn(name, lambda value, context: Action.final(f"{name}:{value}"))

    topology = Topology(
        nodes=["Hub", "S1", "S2", "S3"],
        edges=["Hub <-> S1", "Hub <-> S2", "Hub <-> S3"],
        rules=["parallel(S1, S2, S3)"],
        entry_point="Hub",
    )
    return topology, [fn("Hub", hub), spoke("S1"), spoke("S2"), spoke("S3")]


@tool(idempotent=True)
def look_up(key: str) -> str:
    """Look a key up.

    Args:
        key: what to look up
    """
    RAN.append(f"look_up {key}")
    return f"value of {key}"


@tool
def charge(amount: int) -> str:
    """Charge a card (not idempotent).

    Args:
        amount: how much
    """
    RAN.append(f"charge {amount}")
    if amount < 0:
        raise ValueError(f"cannot charge {amount}")
    return f"charged {amount}"


def _cashier(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
    if messages[-1].role == "tool":
        return final(" | ".join(m.content for m in messages if m.role == "tool"))
    return {
        "next_action": "call_tool",
        "action_input": [
            {"name": "look_up", "arguments": {"key": "price"}},
            {"name": "charge", "arguments": {"amount": 5}},
            {"name": "charge", "arguments": {"amount": -1}},
        ],
    }


def _tools() -> tuple[Topology, list[Any]]:
    return Topology(nodes=["Cashier"], edges=[]), [
        llm("Cashier", FunctionModel(_cashier), tools=[look_up, charge])
    ]


@tool
async def stall(seconds: float) -> str:
    """Hold the worker's event loop (not idempotent): a worker that stopped answering.

    Args:
        seconds: how long
    """
    RAN.append("stall")
    time.sleep(seconds)  # blocks the loop: no heartbeat goes out, as if the worker were lost
    return "stalled"


def _staller(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
    if messages[-1].role == "tool":
        return final(messages[-1].content)
    call = {"name": "stall", "arguments": {"seconds": 2 * HEARTBEAT}}
    return {"next_action": "call_tool", "action_input": [call]}


def _stalling() -> tuple[Topology, list[Any]]:
    return Topology(nodes=["Staller"], edges=[]), [
        llm("Staller", FunctionModel(_staller), tools=[stall])
    ]


FLAKY: list[int] = []  # the flaky model's calls: every first one of a step fails in passing


def _flaky(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
    FLAKY.append(len(FLAKY))
    if len(FLAKY) % 2:
        raise ModelAPIError("busy", provider="test", model="m", status=503, retryable=True)
    return final("after a retry")


def _retrying() -> tuple[Topology, list[Any]]:
    return Topology(nodes=["Flaky"], edges=[]), [llm("Flaky", FunctionModel(_flaky))]


def _failing() -> tuple[Topology, list[Any]]:
    def breaks(value: Any, context: Any) -> Any:
        raise RuntimeError(f"cannot handle {value}")

    def fixer(value: Any, context: Any) -> Any:
        return Action.final(f"fixed: {value['failed_agent']} said {value['error']}")

    return Topology(nodes=["Breaks", "Fixer"], edges=["Breaks -> Fixer"]), [
        fn("Breaks", breaks),
        fn("Fixer", fixer),
    ]


def _asking() -> tuple[Topology, list[Any]]:
    def asker(value: Any, context: Any) -> Any:
        if isinstance(value, str) and value.startswith("task"):
            return Action.ask_user("which colour?")
        return Action.final(f"colour {value}")

    return Topology(nodes=["User", "Asker"], edges=["User -> Asker", "Asker -> User"]), [
        fn("Asker", asker)
    ]


def _pausing() -> tuple[Topology, list[Any]]:
    async def slow(value: Any, context: Any) -> Any:
        GATE["entered"].set()
        await GATE["go"].wait()
        return f"{value}+slow"

    def after(value: Any, context: Any) -> Any:
        return Action.final(f"{value}+after({context.get('extra')})")

    return Topology(nodes=["Slow", "After"], edges=["Slow -> After"]), [
        fn("Slow", slow),
        fn("After", after),
    ]


def _hanging() -> tuple[Topology, list[Any]]:
    async def hang(value: Any, context: Any) -> Any:
        await asyncio.Event().wait()

    return Topology(nodes=["Hang"], edges=[]), [fn("Hang", hang)]


WORKFLOWS: dict[str, Callable[[], tuple[Topology, list[Any]]]] = {
    "chain": _chain,
    "fan_out": _fan_out,
    "tools": _tools,
    "stalling": _stalling,
    "retrying": _retrying,
    "failing": _failing,
    "asking": _asking,
    "pausing": _pausing,
    "hanging": _hanging,
}
ROUTED = ErrorHandlingConfig(enable_error_routing=True)


@dataclasses.dataclass
class Hosted:
    client: Client
    hosting: Hosting
    setups: dict[str, tuple[Topology, AgentRegistry]]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hosted(temporal_server: str) -> AsyncIterator[Hosted]:
    client = await Client.connect(temporal_server)
    hosting = Hosting()
    setups = {}
    for name, make in WORKFLOWS.items():
        topology, agents = make()
        registry = AgentRegistry(agents)
        hosting.add(topology, registry)
        setups[name] = (topology, registry)
    async with worker(client, QUEUE, hosting):
        yield Hosted(client, hosting, setups)


# ---- helpers ------------------------------------------------------------------------------


def _setup(
    hosted: Hosted,
    name: str,
    errors: ErrorHandlingConfig | None = None,
    communication: CommunicationManager | None = None,
    config: ExecutionConfig | None = None,
) -> Setup:
    topology, registry = hosted.setups[name]
    return prepare(
        topology,
        registry,
        config or quiet(),
        errors or ErrorHandlingConfig(),
        communication or CommunicationManager(),
        100,
    )


async def _start(
    hosted: Hosted,
    setup: Setup,
    task: Any,
    session_id: str,
    heartbeat: float = 10.0,
    version: str | None = None,
) -> WorkflowHandle[Any, Outcome]:
    """The session started on the queue of its version (or of ``version``: misrouted)."""
    start = start_input(setup, task, {"session_id": session_id}, session_id, heartbeat)
    handle: WorkflowHandle[Any, Outcome] = await hosted.client.start_workflow(
        WORKFLOW_NAME,
        start,
        id=session_id,
        task_queue=version_queue(QUEUE, version or start.version),
        result_type=dict,
    )
    STARTED.append(handle)
    return handle


def _session(label: str) -> str:
    return f"wf-{label}-{uuid.uuid4().hex[:8]}"


async def _lines(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """Every record the workflow journaled, page by page."""
    lines: list[str] = []
    while True:
        page: RecordsPage = await handle.query("records", len(lines), result_type=dict)
        lines += page["lines"]
        if not page["lines"]:
            return lines


def _replica(setup: Setup, session_id: str, lines: list[str]) -> OrchestraResult:
    """The result of the records applied to a fresh engine, as the client's replica does."""
    engine, _ = build(setup, session_id, StatusConfig.from_verbosity(0))
    for line in lines:
        engine.apply(records.decode(records.loads(line)))  # type: ignore[arg-type]
    return result_of(engine, session_id)


def _comparable(result: OrchestraResult) -> dict[str, Any]:
    """What two runs of one workflow share (not their times)."""
    return {
        "success": result.success,
        "final_response": result.final_response,
        "error": result.error,
        "steps": result.total_steps,
        "metadata": result.metadata,
        "branches": [dataclasses.replace(branch, duration=0.0) for branch in result.branch_results],
    }


async def _embedded(
    hosted: Hosted, name: str, task: Any, config: ExecutionConfig, **options: Any
) -> OrchestraResult:
    topology, registry = hosted.setups[name]
    return await asyncio.wait_for(
        Orchestra.run(
            task,
            topology,
            agent_registry=registry,
            execution_config=config,
            context={"session_id": "embedded"},
            **options,
        ),
        WAIT,
    )


async def _poll(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``check()`` holds (the workflow runs in its own time)."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _same_as_embedded(
    hosted: Hosted,
    name: str,
    task: Any,
    errors: ErrorHandlingConfig | None = None,
    communication: CommunicationConfig | None = None,
    config: ExecutionConfig | None = None,
) -> tuple[OrchestraResult, list[str]]:
    session_id = _session(name)
    manager = None if communication is None else communication.manager()
    setup = _setup(hosted, name, errors, manager, config)
    handle = await _start(hosted, setup, task, session_id)
    outcome = await asyncio.wait_for(handle.result(), WAIT)
    lines = await _lines(handle)
    assert outcome == {"records": len(lines), "state": "finished"}
    on_temporal = _replica(setup, session_id, lines)
    options: dict[str, Any] = {} if errors is None else {"error_config": errors}
    if communication is not None:
        options["communication_config"] = communication
    embedded = await _embedded(hosted, name, task, config or quiet(), **options)
    on_temporal.session_id = embedded.session_id
    assert _comparable(on_temporal) == _comparable(embedded)
    return on_temporal, lines


# ---- the tests ------------------------------------------------------------------------------


async def test_a_chain_on_temporal_gives_the_embedded_result(hosted: Hosted) -> None:
    result, lines = await _same_as_embedded(hosted, "chain", "task")
    assert result.success, result.error
    assert result.final_response == "task+a+b+c"
    assert [records.loads(line)["t"] for line in lines][:2] == ["run", "begin"]
    assert records.loads(lines[-1])["t"] == "end"


async def test_a_fan_out_converges_on_temporal_as_embedded(hosted: Hosted) -> None:
    result, _ = await _same_as_embedded(hosted, "fan_out", "go")
    assert result.final_response == ["S1:go", "S2:go", "S3:go"]


async def test_tool_calls_run_as_activities_once_each(hosted: Hosted) -> None:
    RAN.clear()
    result, lines = await _same_as_embedded(hosted, "tools", "buy")
    assert result.success, result.error
    assert result.final_response == (
        "ok: value of price | ok: charged 5 | error: ValueError: cannot charge -1"
    )
    # each call ran once on Temporal and once embedded
    assert sorted(RAN) == sorted(["look_up price", "charge 5", "charge -1"] * 2)
    assert [records.loads(line)["t"] for line in lines].count("tool_done") == 3


async def test_a_lost_non_idempotent_tool_call_is_in_doubt_not_run_again(hosted: Hosted) -> None:
    """The tool's worker stops heartbeating: its attempt times out on the server and is not
    retried (the tool is not idempotent); its branch fails as an embedded resume fails it."""
    RAN.clear()
    session_id = _session("stalling")
    setup = _setup(hosted, "stalling")
    handle = await _start(hosted, setup, "go", session_id, heartbeat=HEARTBEAT)
    await asyncio.wait_for(handle.result(), WAIT)
    result = _replica(setup, session_id, await _lines(handle))
    assert not result.success
    assert result.metadata["error_type"] == "ToolInDoubtError"
    assert "tool 'stall'" in (result.error or "")
    assert "it is not idempotent, so it is not run again" in (result.error or "")
    assert RAN == ["stall"]


async def test_a_model_retry_in_the_activity_is_recorded_as_embedded(hosted: Hosted) -> None:
    """A model call retried inside the step activity (the agent's own retry, not Temporal's)
    is reported back and recorded after the step, its status as its type."""
    FLAKY.clear()
    result, lines = await _same_as_embedded(hosted, "retrying", "try", FAST)
    assert result.final_response == "after a retry"
    [retried] = [event for event in result.events if isinstance(event, ev.ModelCallRetried)]
    assert (retried.agent, retried.attempt, retried.error_type) == ("Flaky", 1, "503")
    assert "busy" in retried.error
    kinds = [records.loads(line)["t"] for line in lines]
    assert kinds.index("retry") < kinds.index("step")


async def test_an_agent_failure_is_routed_on_error_as_embedded(hosted: Hosted) -> None:
    result, _ = await _same_as_embedded(hosted, "failing", "job", ROUTED)
    assert result.success, result.error
    assert result.final_response == (
        "fixed: Breaks said agent 'Breaks' raised RuntimeError: cannot handle job"
    )


async def test_a_question_is_answered_by_update(hosted: Hosted) -> None:
    session_id = _session("asking")
    setup = _setup(hosted, "asking", communication=CommunicationManager(_NeverAsked()))
    handle = await _start(hosted, setup, "task", session_id)
    asked: list[dict[str, Any]] = []

    async def question_open() -> bool:
        asked[:] = await handle.query("questions", result_type=list)
        return bool(asked)

    await _poll(question_open, "the question")
    [question] = asked
    assert (question["agent"], question["text"], question["kind"]) == (
        "Asker",
        "which colour?",
        "agent",
    )
    unreadable = {"question_id": question["id"], "answer": {"__o__": "nothing"}, "error": None}
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update("answer", unreadable, result_type=bool)
    assert "an answer that cannot be read" in str(refused.value.cause)
    answer = {"question_id": question["id"], "answer": "blue", "error": None}
    assert await handle.execute_update("answer", answer, result_type=bool) is True
    assert await handle.execute_update("answer", answer, result_type=bool) is False
    await asyncio.wait_for(handle.result(), WAIT)
    result = _replica(setup, session_id, await _lines(handle))
    assert result.final_response == "colour blue"


async def test_an_unanswered_question_times_out_in_the_workflow_as_embedded(
    hosted: Hosted,
) -> None:
    """The client's user_timeout and on_user_timeout apply inside the workflow (a workflow
    timer): nobody answers, the default answer is taken, as embedded."""
    silent = CommunicationConfig(
        channel=_Silent(), user_timeout=0.2, on_user_timeout="default", default_answer="grey"
    )
    result, _ = await _same_as_embedded(hosted, "asking", "task", communication=silent)
    assert result.success, result.error
    assert "grey" in result.final_response


async def test_a_step_over_its_timeout_fails_in_the_workflow_as_embedded(hosted: Hosted) -> None:
    """The run's step_timeout is a workflow timer: the step's activity is cancelled and the
    branch fails with the StepTimeoutError an embedded run records."""
    result, _ = await _same_as_embedded(hosted, "hanging", "x", config=quiet(step_timeout=0.3))
    assert not result.success
    assert result.metadata["error_type"] == "StepTimeoutError"


async def test_pause_then_resume_by_signal(hosted: Hosted) -> None:
    GATE["entered"], GATE["go"] = asyncio.Event(), asyncio.Event()
    session_id = _session("pausing")
    setup = _setup(hosted, "pausing")
    handle = await _start(hosted, setup, "t", session_id)
    await asyncio.wait_for(GATE["entered"].wait(), WAIT)
    await handle.signal("pause", "lunch")
    GATE["go"].set()  # the step in flight finishes; no new step starts

    async def paused() -> bool:
        page = await handle.query("records", 0, result_type=dict)
        return bool(page["state"] == "paused")

    await _poll(paused, "the pause")
    lines = await _lines(handle)
    kinds = [records.loads(line)["t"] for line in lines]
    assert kinds[-1] == "end" and records.loads(lines[-1])["paused"] is True
    assert "pause" in kinds
    assert _replica(setup, session_id, lines).metadata["pause_reason"] == "lunch"
    await handle.signal("resume", {"extra": 7})
    assert await asyncio.wait_for(handle.result(), WAIT) == {
        "records": len(await _lines(handle)),
        "state": "finished",
    }
    result = _replica(setup, session_id, await _lines(handle))
    assert result.success, result.error
    assert result.final_response == "t+slow+after(7)"


async def test_a_version_not_hosted_fails_the_workflow_naming_it(hosted: Hosted) -> None:
    """The chain's topology with one more edge: a changed workflow file, its session started
    by hand on the queue of another version (the executor routes each session to its own
    version's queue: this is the safety net). The workflow fails at once (no task retried
    forever), its error naming the session, both versions and the edge that changed."""
    _, registry = hosted.setups["chain"]
    changed = Topology(nodes=["A", "B", "C"], edges=["A -> B", "B -> C", "A -> C"])
    setup = prepare(changed, registry, quiet(), ErrorHandlingConfig(), CommunicationManager(), 100)
    session_id = _session("changed")
    chain = start_input(_setup(hosted, "chain"), "task", {}, "chain", 10.0).version
    handle = await _start(hosted, setup, "task", session_id, version=chain)
    STARTED.remove(handle)  # a replayer not hosting its version refuses it, as a worker does
    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(handle.result(), WAIT)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "WorkflowVersionError"
    started = start_input(setup, "task", {}, session_id, 10.0).version
    assert f"session {session_id!r}" in cause.message
    assert f"workflow version {started}" in cause.message
    assert all(version in cause.message for version in hosted.hosting.versions)
    assert "edges A -> B, C" in cause.message
    assert "start the session again" in cause.message
    assert (await handle.describe()).status == WorkflowExecutionStatus.FAILED


async def test_run_worker_serves_until_cancelled(hosted: Hosted) -> None:
    queue = f"{QUEUE}-run-worker"
    serving = asyncio.create_task(run_worker(hosted.client, queue, hosted.hosting))
    session_id = _session("run-worker")
    setup = _setup(hosted, "chain")
    start = start_input(setup, "task", {"session_id": session_id}, session_id, 10.0)
    outcome = await hosted.client.execute_workflow(
        WORKFLOW_NAME,
        start,
        id=session_id,
        task_queue=version_queue(queue, start.version),
        result_type=dict,
    )
    assert outcome["state"] == "finished"
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(serving, WAIT)


async def test_a_replay_of_the_history_is_deterministic(hosted: Hosted) -> None:
    """Each session's history, replayed by a fresh worker, makes the same commands (no
    non-determinism error): the runner reads workflow time and nothing else of the world."""
    session_id = _session("replayed")
    setup = _setup(hosted, "fan_out")
    handle = await _start(hosted, setup, "again", session_id)
    await asyncio.wait_for(handle.result(), WAIT)
    check = replayer(hosted.hosting)
    for started in STARTED:  # with the sessions the other tests ran: questions, pauses, timers
        history = await started.fetch_history()
        replayed = await check.replay_workflow(history, raise_on_replay_failure=False)
        assert replayed.replay_failure is None, started.id


class _Silent:
    """A user who never answers."""

    async def ask(self, question: Any) -> Any:
        await asyncio.Event().wait()


class _NeverAsked:
    """A channel for the client's setup: on Temporal the workflow asks through updates."""

    async def ask(self, question: Any) -> Any:
        raise AssertionError("asked on the client")


async def test_a_worker_with_a_store_copies_each_session_log_into_it(
    hosted: Hosted, tmp_path: Path
) -> None:
    """A worker given a store mirrors every session's journal there as it runs: the stored
    log is the workflow's journal, record for record, and reads back as the same result (so
    the inspector, ``orchestra sessions`` and ``get_result`` see it); a session paused on
    the way is copied through its pause and resume, and its history replays with the mirror's
    calls in it."""
    GATE["entered"], GATE["go"] = asyncio.Event(), asyncio.Event()
    queue = f"{QUEUE}-mirrored"
    store = StateManager(SQLiteStorageBackend(tmp_path / "sessions.db"))
    session_id = _session("mirrored")
    setup = _setup(hosted, "pausing")
    async with worker(hosted.client, queue, hosted.hosting, store=store):
        start = start_input(setup, "copied", {"session_id": session_id}, session_id, 10.0)
        handle = await hosted.client.start_workflow(
            WORKFLOW_NAME,
            start,
            id=session_id,
            task_queue=version_queue(queue, start.version),
            result_type=dict,
        )
        await asyncio.wait_for(GATE["entered"].wait(), WAIT)
        await handle.signal("pause", "to be resumed")
        GATE["go"].set()

        async def paused() -> bool:
            page: RecordsPage = await handle.query("records", 0, result_type=dict)
            return page["state"] == "paused"

        await _poll(paused, "the pause")
        await handle.signal("resume", {})
        await asyncio.wait_for(handle.result(), WAIT)
        lines = await _lines(handle)
        log, entries = await store.load_all(session_id)
        assert [entry.kind for entry in entries] == [records.loads(line)["t"] for line in lines]
        stored = await stored_result(setup, log, store)
        assert stored is not None
        assert _comparable(stored) == _comparable(_replica(setup, session_id, lines))
        assert stored.success
        history = await handle.fetch_history()
    replayed = await replayer(hosted.hosting).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert replayed.replay_failure is None
