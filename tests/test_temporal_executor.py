"""Sessions on Temporal, from the client's side: ``Orchestra.run(..., executor=...)`` and
``OrchestraInstance(..., executor=...)`` against a real dev server (the ``temporal_server``
fixture) and an in-process worker hosting the same topology and agents.

The engine's scenario tests (test_engine_scenarios.py) are run twice each, embedded and on
Temporal, and must give equal results: their own checks hold on both, and the results agree
in everything but timing. A scenario whose outcome depends on which of concurrent branches
ends first orders them explicitly (``helpers.Heard``: a branch waits, in its agent, until the
run has heard the earlier one's result); the in-process worker runs its activities on this
test's event loop, so such a gate hears the client's replica, which hears a result only once
the workflow has journaled it.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import test_engine_scenarios as scenarios
from follow_up_kit import SOLO, Tutor
from helpers import WAIT, fn, llm, quiet, run
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from orchestra import (
    AgentRegistry,
    CommunicationConfig,
    FunctionModel,
    Orchestra,
    OrchestraResult,
    ProgrammaticChannel,
    ScriptedUser,
    Topology,
)
from orchestra.agents.base import BaseAgent
from orchestra.communication.channels import CommunicationManager
from orchestra.coordination.engine import events as ev
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import FileStorageBackend, StateManager
from orchestra.errors import (
    ConfigurationError,
    SessionError,
    SessionNotFoundError,
    WorkflowVersionError,
)
from orchestra.temporal import Hosting, TemporalExecutor, worker

ON_TEMPORAL = 60.0
"""Seconds a run on Temporal may take before the test fails (only a hang reaches it)."""

HEARTBEAT = 3.0
"""The executor's heartbeat timeout: a cancelled step's activity hears of it within a second."""

LEFT_OUT = {
    # a thousand activities: the wide fan-out on Temporal is measured by bench/temporal.py
    "test_fan_out_of_a_thousand_children_delivers_every_result",
}


@pytest.fixture
async def client(temporal_server: str) -> Client:
    return await Client.connect(temporal_server)


@asynccontextmanager
async def hosted(
    client: Client, topology: Any, agents: Iterable[BaseAgent]
) -> AsyncIterator[TemporalExecutor]:
    """A worker on a task queue of its own hosting ``topology`` with ``agents``, and an
    executor submitting to it."""
    queue = f"test-{uuid.uuid4().hex}"
    hosting = Hosting()
    hosting.add(topology, AgentRegistry(list(agents)))
    async with worker(client, queue, hosting):
        yield TemporalExecutor(client, queue, heartbeat_timeout=HEARTBEAT)


# ---- the engine scenarios, embedded and on Temporal -------------------------------------------


def scenario_cases() -> Iterator[Any]:
    """Every scenario of test_engine_scenarios.py (each parameter set of a parametrized one)."""
    for name, function in sorted(vars(scenarios).items()):
        if not name.startswith("test_") or name in LEFT_OUT:
            continue
        marks = [m for m in getattr(function, "pytestmark", []) if m.name == "parametrize"]
        if not marks:
            yield pytest.param(function, {}, id=name)
            continue
        [mark] = marks
        names = mark.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        for index, values in enumerate(mark.args[1]):
            yield pytest.param(
                function, dict(zip(names, values, strict=True)), id=f"{name}-{index}"
            )


def comparable(result: OrchestraResult) -> dict[str, Any]:
    """What two runs of one scenario must agree on: everything but timing."""
    return {
        "success": result.success,
        "final_response": result.final_response,
        "error": result.error,
        "total_steps": result.total_steps,
        "branch_results": [_timeless(asdict(branch)) for branch in result.branch_results],
        "follow_ups": [_timeless(asdict(round_)) for round_ in result.follow_ups],
        "metadata": _timeless(result.metadata),
        "checkpoint_ids": result.checkpoint_ids,
    }


def _timeless(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if "duration" not in k}
    if isinstance(value, list):
        return [_timeless(item) for item in value]
    return value


def recording(
    results: list[OrchestraResult], client: Client | None
) -> Callable[..., Awaitable[OrchestraResult]]:
    """The scenarios' ``run``, embedded (``client`` None) or on Temporal, keeping each
    result."""

    async def run_it(
        task: Any, topology: Any, agents: Iterable[BaseAgent], **options: Any
    ) -> OrchestraResult:
        agents = list(agents)
        if client is None:
            result = await run(task, topology, agents, **options)
        else:
            async with hosted(client, topology, agents) as executor:
                result = await run(
                    task, topology, agents, wait=ON_TEMPORAL, executor=executor, **options
                )
        results.append(result)
        return result

    return run_it


@pytest.mark.parametrize(("scenario", "arguments"), list(scenario_cases()))
async def test_an_engine_scenario_gives_the_embedded_result_on_temporal(
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    scenario: Callable[..., Awaitable[None]],
    arguments: dict[str, Any],
) -> None:
    assert inspect.iscoroutinefunction(scenario)
    embedded: list[OrchestraResult] = []
    monkeypatch.setattr(scenarios, "run", recording(embedded, None))
    await scenario(**arguments)
    on_temporal: list[OrchestraResult] = []
    monkeypatch.setattr(scenarios, "run", recording(on_temporal, client))
    await scenario(**arguments)  # the scenario's own checks hold on Temporal too
    assert embedded and len(on_temporal) == len(embedded)
    assert [comparable(r) for r in on_temporal] == [comparable(r) for r in embedded]


# ---- questions, pause and resume, events, versions ---------------------------------------------

ASKER = {"nodes": ["Asker"], "edges": ["User -> Asker", "Asker -> User"]}


async def test_a_question_is_answered_through_the_clients_programmatic_channel(
    client: Client,
) -> None:
    channel = ProgrammaticChannel()
    agents = [llm("Asker", FunctionModel(scenarios.greeter))]
    async with hosted(client, ASKER, agents) as executor:
        running = asyncio.create_task(
            run(
                "greet",
                ASKER,
                agents,
                wait=ON_TEMPORAL,
                executor=executor,
                context={"session_id": "asks-ada"},
                communication_config=CommunicationConfig(channel=channel),
            )
        )
        question = await asyncio.wait_for(channel.next_question(), ON_TEMPORAL)
        assert (question.agent, question.branch_id, question.kind) == ("Asker", "b0", "agent")
        assert (question.run_id, question.text) == ("asks-ada", "What is your name?")
        channel.answer(question.id, "Ada")
        result = await running
    assert result.success, result.error
    assert result.final_response == "Hello, Ada"
    assert channel.pending == []
    received = [e for e in result.events if isinstance(e, ev.UserInputReceived)]
    assert [(e.branch_id, e.answer) for e in received] == [("b0", "Ada")]


async def test_a_conversation_on_temporal_gives_the_embedded_result(client: Client) -> None:
    """Follow-up offers, each relayed with its round's response, until the user has nothing
    more to ask (None ends the conversation): the same conversation, the same result."""
    results, offers = [], []
    for on_temporal in (False, True):
        user = ScriptedUser(["and then?", "and after that?"])  # then None: no more
        agents = [llm("Tutor", FunctionModel(Tutor()))]
        options: dict[str, Any] = {
            "allow_follow_ups": True,
            "communication_config": CommunicationConfig(channel=user),
        }
        if on_temporal:
            async with hosted(client, SOLO, agents) as executor:
                result = await run(
                    "explain", SOLO, agents, wait=ON_TEMPORAL, executor=executor, **options
                )
        else:
            result = await run("explain", SOLO, agents, **options)
        results.append(result)
        offers.append([(q.kind, q.agent, q.response) for q in user.questions])
    embedded, on_temporal = results
    assert len(embedded.follow_ups) == 2
    assert comparable(on_temporal) == comparable(embedded)
    assert (
        offers[1]
        == offers[0]
        == [
            ("follow_up", "Tutor", "answer 1"),
            ("follow_up", "Tutor", "answer 2"),
            ("follow_up", "Tutor", "answer 3"),
        ]
    )


PAIR = Topology(nodes=["First", "Second"], edges=["First -> Second"])


def waiting_pair(started: asyncio.Event, go_on: asyncio.Event) -> list[BaseAgent]:
    """First tells ``started`` it runs and waits for ``go_on``; Second answers with what it
    got and the context's ``extra``."""

    async def first(value: Any, context: Any) -> Any:
        started.set()
        await asyncio.wait_for(go_on.wait(), ON_TEMPORAL)
        return f"{value} first"

    def second(value: Any, context: Any) -> Any:
        return f"{value} second {context.get('extra')}"

    return [fn("First", first), fn("Second", second)]


async def test_a_session_on_temporal_pauses_and_resumes_through_the_instance(
    client: Client,
) -> None:
    started, go_on = asyncio.Event(), asyncio.Event()
    agents = waiting_pair(started, go_on)
    async with hosted(client, PAIR, agents) as executor:
        instance = OrchestraInstance(
            PAIR, AgentRegistry(agents), quiet(), CommunicationManager(), executor=executor
        )
        session_id = f"pausing-{uuid.uuid4().hex[:8]}"
        running = asyncio.create_task(instance.execute("job", {"session_id": session_id}))
        await asyncio.wait_for(started.wait(), ON_TEMPORAL)
        assert await instance.pause_session(session_id, "lunch")
        go_on.set()  # the step in flight finishes and is kept
        paused = await asyncio.wait_for(running, ON_TEMPORAL)
        assert paused.metadata["paused"] is True
        assert paused.metadata["pause_reason"] == "lunch"
        assert paused.get_branch_by_id("b0") is not None
        stored = await instance.get_result(session_id)
        assert stored is not None and comparable(stored) == comparable(paused)

        resumed = await asyncio.wait_for(
            instance.resume_session(session_id, {"extra": "more"}), ON_TEMPORAL
        )
        assert resumed.success, resumed.error
        assert resumed.final_response == "job first second more"
        assert "paused" not in resumed.metadata
        finished = await instance.get_result(session_id)
        assert finished is not None and comparable(finished) == comparable(resumed)
        assert not await instance.pause_session(session_id)  # nothing runs any more
        again = await instance.resume_session(session_id)  # a finished run is not run again
        assert comparable(again) == comparable(resumed)


async def test_a_cancelled_client_leaves_the_session_running_and_resume_follows_it(
    client: Client,
) -> None:
    started, go_on = asyncio.Event(), asyncio.Event()
    agents = waiting_pair(started, go_on)
    async with hosted(client, PAIR, agents) as executor:
        instance = OrchestraInstance(
            PAIR, AgentRegistry(agents), quiet(), CommunicationManager(), executor=executor
        )
        session_id = f"cancelled-{uuid.uuid4().hex[:8]}"
        running = asyncio.create_task(instance.execute("job", {"session_id": session_id}))
        await asyncio.wait_for(started.wait(), ON_TEMPORAL)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert await instance.get_result(session_id) is None  # still running on Temporal
        go_on.set()
        result = await asyncio.wait_for(instance.resume_session(session_id), ON_TEMPORAL)
    assert result.success, result.error
    assert result.final_response == "job first second None"


async def test_unknown_sessions_on_temporal(client: Client) -> None:
    executor = TemporalExecutor(client, f"test-{uuid.uuid4().hex}")
    agents = [fn("First", lambda x, c: x), fn("Second", lambda x, c: x)]
    instance = OrchestraInstance(PAIR, AgentRegistry(agents), executor=executor)
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    assert await instance.get_result(missing) is None
    assert not await instance.pause_session(missing)
    with pytest.raises(SessionNotFoundError, match=missing):
        await instance.resume_session(missing)


async def test_a_stream_on_temporal_hears_the_runs_events(client: Client) -> None:
    agents = [fn("First", lambda x, c: f"{x} first"), fn("Second", lambda x, c: f"{x} second")]
    heard: list[ev.Event] = []
    async with (
        hosted(client, PAIR, agents) as executor,
        Orchestra.stream(
            "job",
            PAIR,
            AgentRegistry(agents),
            execution_config=quiet(),
            executor=executor,
        ) as events,
    ):
        async for event in events:
            heard.append(event)
    assert events.result is not None and events.result.final_response == "job first second"
    kinds = [type(event).__name__ for event in heard]
    assert kinds[0] == "RunStarted" and kinds[-1] == "RunCompleted"
    steps = [(e.agent, e.branch_id) for e in heard if isinstance(e, ev.StepCompleted)]
    assert steps == [("First", "b0"), ("Second", "b0")]
    assert [type(e) for e in heard] == [type(e) for e in events.result.events]


async def test_a_changed_workflow_is_refused_with_a_version_error(client: Client) -> None:
    agents = [fn("First", lambda x, c: x), fn("Second", lambda x, c: x)]
    changed = {
        "nodes": ["First", "Second"],
        "edges": ["First -> Second"],
        "rules": ["max_steps(7)"],
    }
    async with hosted(client, PAIR, agents) as executor:
        session_id = f"versioned-{uuid.uuid4().hex[:8]}"
        with pytest.raises(WorkflowVersionError, match=session_id) as refused:
            await run(
                "job",
                changed,
                agents,
                wait=ON_TEMPORAL,
                executor=executor,
                context={"session_id": session_id},
            )
        assert f"no worker on task queue {executor.task_queue!r} hosts" in str(refused.value)
        assert "nothing was started" in str(refused.value)
        with pytest.raises(RPCError) as missing:  # refused before anything started
            await client.get_workflow_handle(session_id).describe()
        assert missing.value.status is RPCStatusCode.NOT_FOUND


# ---- arguments -------------------------------------------------------------------------------


async def test_executor_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="executor"):
        await Orchestra.run("t", PAIR, executor="127.0.0.1:7233")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="executor"):
        Orchestra.stream("t", PAIR, executor=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="executor"):
        OrchestraInstance(PAIR, executor=42)  # type: ignore[arg-type]
    executor = TemporalExecutor("127.0.0.1:7233")
    store = StateManager(FileStorageBackend(str(tmp_path)))
    with pytest.raises(ConfigurationError, match=r"worker\(\.\.\., store=\)"):
        await Orchestra.run("t", PAIR, state_manager=store, executor=executor)
    with pytest.raises(ConfigurationError, match="kept by the workers"):
        OrchestraInstance(PAIR, state_manager=store, executor=executor)


def test_temporal_executor_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="client"):
        TemporalExecutor(7233)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="host:port"):
        TemporalExecutor("localhost")
    with pytest.raises(TypeError, match="task_queue"):
        TemporalExecutor("127.0.0.1:7233", 5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="task_queue"):
        TemporalExecutor("127.0.0.1:7233", " ")
    with pytest.raises(ConfigurationError, match="heartbeat_timeout"):
        TemporalExecutor("127.0.0.1:7233", heartbeat_timeout=0)
    executor = TemporalExecutor("127.0.0.1:7233", "q", namespace="ns")
    assert (executor.address, executor.task_queue, executor.namespace) == (
        "127.0.0.1:7233",
        "q",
        "ns",
    )


async def test_listings_are_refused_on_temporal() -> None:
    instance = OrchestraInstance(PAIR, executor=TemporalExecutor("127.0.0.1:7233"))
    with pytest.raises(ConfigurationError, match="workers' store"):
        await instance.list_sessions()


async def test_an_address_is_connected_to_once_per_event_loop(temporal_server: str) -> None:
    executor = TemporalExecutor(temporal_server)
    first, second = await asyncio.gather(executor.client(), executor.client())
    assert first is second is await executor.client()


async def test_an_unreachable_cluster_is_a_session_error() -> None:
    executor = TemporalExecutor("127.0.0.1:1")
    with pytest.raises(SessionError, match=r"cannot connect to Temporal at 127\.0\.0\.1:1\b"):
        await asyncio.wait_for(executor.client(), WAIT * 6)
