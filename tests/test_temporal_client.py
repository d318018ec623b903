"""The client side of sessions on Temporal at its edges: records pages that cross as bytes,
a follower that gives up on a finished session no worker answers for, resumes that carry the
resumer's channel (or arrive while the run is still pausing), pauses that withdraw the
questions relayed, answers sent again when the update got no answer, one query a round.

Against the dev server (the ``temporal_server`` fixture) and an in-process worker.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
import test_engine_scenarios as scenarios
from helpers import ask, final, fn, llm, quiet, run
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from test_temporal_executor import ON_TEMPORAL, PAIR, hosted, waiting_pair

from orchestra import (
    AgentRegistry,
    CommunicationConfig,
    ErrorHandlingConfig,
    FunctionModel,
    ProgrammaticChannel,
    Topology,
)
from orchestra.communication.channels import CommunicationManager
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.wiring import build, prepare
from orchestra.errors import SessionError, UserInputError
from orchestra.models import Message, StepInfo
from orchestra.temporal import follow
from orchestra.temporal.follow import Follower


@pytest.fixture
async def client(temporal_server: str) -> Client:
    return await Client.connect(temporal_server)


ASKER = {"nodes": ["Asker"], "edges": ["User -> Asker", "Asker -> User"]}


def instance(topology: Any, agents: list[Any], executor: Any, channel: Any = None) -> Any:
    return OrchestraInstance(
        topology, AgentRegistry(agents), quiet(), CommunicationManager(channel), executor=executor
    )


async def test_records_pages_are_sized_by_the_bytes_that_cross(client: Client) -> None:
    """Non-ASCII text takes 6 bytes a character once temporalio escapes it: a catch-up of
    lines that are each far under the page but together over gRPC's 4 MB still crosses."""
    names = ["A", "B", "C", "D", "E"]
    chain = Topology(nodes=names, edges=[f"{a} -> {b}" for a, b in itertools.pairwise(names)])

    def wide(name: str) -> Any:
        return fn(name, lambda value, context: name + "漢" * 200_000)

    agents = [wide(name) for name in names]
    async with hosted(client, chain, agents) as executor:
        runs = instance(chain, agents, executor)
        session_id = f"wide-{uuid.uuid4().hex[:8]}"
        result = await asyncio.wait_for(runs.execute("go", {"session_id": session_id}), 60)
        assert result.success, result.error
        stored = await asyncio.wait_for(runs.get_result(session_id), ON_TEMPORAL)
    assert stored is not None and stored.final_response == result.final_response


async def test_a_follower_gives_up_on_a_finished_session_no_worker_answers_for(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follow, "_QUERY_TIMEOUT", timedelta(seconds=1))
    agents = [fn("First", lambda x, c: f"{x} first"), fn("Second", lambda x, c: f"{x} second")]
    session_id = f"gone-{uuid.uuid4().hex[:8]}"
    async with hosted(client, PAIR, agents) as executor:
        runs = instance(PAIR, agents, executor)
        result = await asyncio.wait_for(runs.execute("job", {"session_id": session_id}), 60)
        assert result.success, result.error
    registry = AgentRegistry(agents)
    setup = prepare(PAIR, registry, quiet(), ErrorHandlingConfig(), CommunicationManager(), 100)
    engine, _ = build(setup, session_id, quiet().status)
    follower = Follower(client.get_workflow_handle(session_id), engine, None, client)
    with pytest.raises(SessionError, match=f"{session_id}.*finished, but no worker answered"):
        await asyncio.wait_for(follower.follow(), ON_TEMPORAL)


def asks_after(started: asyncio.Event, go_on: asyncio.Event) -> Any:
    """A model that, once ``go_on`` is set, asks the user's name and greets them."""

    async def greeter(messages: list[Message], info: StepInfo) -> dict[str, Any]:
        heading, body = scenarios.heading_and_body(messages[-1])
        if heading == "[The user answered]":
            return final(f"Hello, {body}")
        started.set()
        await asyncio.wait_for(go_on.wait(), ON_TEMPORAL)
        return ask("What is your name?")

    return greeter


async def test_a_resume_uses_the_resuming_clients_channel(client: Client) -> None:
    """Started by a client with no channel, paused, resumed by one with a channel: the
    question goes to the resumer's channel (as an embedded resume uses the instance's)."""
    started, go_on = asyncio.Event(), asyncio.Event()
    agents = [llm("Asker", FunctionModel(asks_after(started, go_on)))]
    channel = ProgrammaticChannel()
    async with hosted(client, ASKER, agents) as executor:
        starter = instance(ASKER, agents, executor)
        resumer = instance(ASKER, agents, executor, channel)
        session_id = f"handover-{uuid.uuid4().hex[:8]}"
        running = asyncio.create_task(starter.execute("greet", {"session_id": session_id}))
        await asyncio.wait_for(started.wait(), ON_TEMPORAL)
        assert await starter.pause_session(session_id, "handover")
        go_on.set()
        paused = await asyncio.wait_for(running, ON_TEMPORAL)
        assert paused.metadata["paused"] is True
        resuming = asyncio.create_task(resumer.resume_session(session_id))
        question = await asyncio.wait_for(channel.next_question(), ON_TEMPORAL)
        assert question.text == "What is your name?"
        channel.answer(question.id, "Ada")
        resumed = await asyncio.wait_for(resuming, ON_TEMPORAL)
    assert resumed.success, resumed.error
    assert resumed.final_response == "Hello, Ada"


async def test_a_resume_sent_while_the_run_pauses_is_applied_once_it_paused(
    client: Client,
) -> None:
    started, go_on = asyncio.Event(), asyncio.Event()
    agents = waiting_pair(started, go_on)
    async with hosted(client, PAIR, agents) as executor:
        runs = instance(PAIR, agents, executor)
        session_id = f"racing-{uuid.uuid4().hex[:8]}"
        running = asyncio.create_task(runs.execute("job", {"session_id": session_id}))
        await asyncio.wait_for(started.wait(), ON_TEMPORAL)
        assert await runs.pause_session(session_id, "lunch")
        resuming = asyncio.create_task(runs.resume_session(session_id, {"extra": "more"}))
        await _signalled(client, session_id, "resume")
        go_on.set()  # the step in flight ends: the run pauses, then goes on with the resume
        resumed = await asyncio.wait_for(resuming, ON_TEMPORAL)
        await asyncio.wait_for(running, ON_TEMPORAL)  # its run paused, or went on to its end
    assert resumed.success, resumed.error
    assert resumed.final_response == "job first second more"


async def test_a_pause_sent_while_a_resume_waits_is_for_the_resumed_run(client: Client) -> None:
    started, go_on = asyncio.Event(), asyncio.Event()
    agents = waiting_pair(started, go_on)
    async with hosted(client, PAIR, agents) as executor:
        runs = instance(PAIR, agents, executor)
        session_id = f"again-{uuid.uuid4().hex[:8]}"
        running = asyncio.create_task(runs.execute("job", {"session_id": session_id}))
        await asyncio.wait_for(started.wait(), ON_TEMPORAL)
        assert await runs.pause_session(session_id, "lunch")
        resuming = asyncio.create_task(runs.resume_session(session_id))
        await _signalled(client, session_id, "resume")
        assert await runs.pause_session(session_id, "again")
        await _signalled(client, session_id, "pause", times=2)
        go_on.set()
        paused = await asyncio.wait_for(resuming, ON_TEMPORAL)
        await asyncio.wait_for(running, ON_TEMPORAL)
        assert paused.metadata["paused"] is True
        assert paused.metadata["pause_reason"] == "again"
        resumed = await asyncio.wait_for(
            runs.resume_session(session_id, {"extra": "more"}), ON_TEMPORAL
        )
    assert resumed.final_response == "job first second more"


async def _signalled(client: Client, session_id: str, name: str, times: int = 1) -> None:
    """Wait until the workflow's history holds ``times`` signals (or accepted updates)
    ``name`` (a resume with context for a run not yet paused is the ``resume_kept`` update)."""
    handle = client.get_workflow_handle(session_id)
    names = {name, "resume_kept"} if name == "resume" else {name}
    async with asyncio.timeout(ON_TEMPORAL):
        while True:
            history = await handle.fetch_history()
            signals = [
                event.workflow_execution_signaled_event_attributes.signal_name
                for event in history.events
                if event.HasField("workflow_execution_signaled_event_attributes")
            ] + [
                event.workflow_execution_update_accepted_event_attributes.accepted_request.input.name
                for event in history.events
                if event.HasField("workflow_execution_update_accepted_event_attributes")
            ]
            if sum(signals.count(each) for each in names) >= times:
                return
            await asyncio.sleep(0.05)


async def test_pausing_a_paused_session_says_false(client: Client) -> None:
    started, go_on = asyncio.Event(), asyncio.Event()
    agents = waiting_pair(started, go_on)
    async with hosted(client, PAIR, agents) as executor:
        runs = instance(PAIR, agents, executor)
        session_id = f"twice-{uuid.uuid4().hex[:8]}"
        running = asyncio.create_task(runs.execute("job", {"session_id": session_id}))
        await asyncio.wait_for(started.wait(), ON_TEMPORAL)
        assert await runs.pause_session(session_id)
        go_on.set()
        paused = await asyncio.wait_for(running, ON_TEMPORAL)
        assert paused.metadata["paused"] is True
        assert not await runs.pause_session(session_id)
        resumed = await asyncio.wait_for(runs.resume_session(session_id), ON_TEMPORAL)
    assert resumed.success, resumed.error


async def test_a_pause_withdraws_the_questions_relayed_to_the_channel(client: Client) -> None:
    started, go_on = asyncio.Event(), asyncio.Event()
    go_on.set()
    agents = [llm("Asker", FunctionModel(asks_after(started, go_on)))]
    channel = ProgrammaticChannel()
    async with hosted(client, ASKER, agents) as executor:
        runs = instance(ASKER, agents, executor, channel)
        session_id = f"withdrawn-{uuid.uuid4().hex[:8]}"
        running = asyncio.create_task(runs.execute("greet", {"session_id": session_id}))
        question = await asyncio.wait_for(channel.next_question(), ON_TEMPORAL)
        assert await runs.pause_session(session_id, "later")
        with pytest.raises(UserInputError, match="no pending question"):
            channel.answer(question.id, "Late")
        paused = await asyncio.wait_for(running, ON_TEMPORAL)
        assert paused.metadata["paused"] is True
        resuming = asyncio.create_task(runs.resume_session(session_id))
        again = await asyncio.wait_for(channel.next_question(), ON_TEMPORAL)
        assert again.id == question.id
        channel.answer(again.id, "Ada")
        resumed = await asyncio.wait_for(resuming, ON_TEMPORAL)
    assert resumed.final_response == "Hello, Ada"


async def test_an_answer_whose_update_fails_once_is_sent_again_not_asked_again(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One query a round follows the session (the open questions come with the records),
    and an answer whose update got no answer is sent again, not asked of the user again."""
    real_update = WorkflowHandle.execute_update
    real_query = WorkflowHandle.query
    failures = [RPCError("unavailable", RPCStatusCode.UNAVAILABLE, b"")]
    queried: set[str] = set()

    async def flaky_update(self: WorkflowHandle[Any, Any], *args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real_update(self, *args, **kwargs)

    async def counted_query(
        self: WorkflowHandle[Any, Any], name: Any, *args: Any, **kw: Any
    ) -> Any:
        queried.add(name)
        return await real_query(self, name, *args, **kw)

    monkeypatch.setattr(WorkflowHandle, "execute_update", flaky_update)
    monkeypatch.setattr(WorkflowHandle, "query", counted_query)
    started, go_on = asyncio.Event(), asyncio.Event()
    go_on.set()
    agents = [llm("Asker", FunctionModel(asks_after(started, go_on)))]
    channel = ProgrammaticChannel()
    asked = []
    async with hosted(client, ASKER, agents) as executor:
        runs = instance(ASKER, agents, executor, channel)
        session_id = f"flaky-{uuid.uuid4().hex[:8]}"
        running = asyncio.create_task(runs.execute("greet", {"session_id": session_id}))
        question = await asyncio.wait_for(channel.next_question(), ON_TEMPORAL)
        asked.append(question.text)
        channel.answer(question.id, "Ada")
        result = await asyncio.wait_for(running, ON_TEMPORAL)
    assert asked == ["What is your name?"] and failures == []
    assert channel.pending == []
    assert result.final_response == "Hello, Ada"
    assert queried == {"records"}


class Timed:
    """A TimedChannel (as the terminal is) that answers at once, noting how it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def ask(self, question: Any) -> str:
        self.calls.append(("ask",))
        return "Ada"

    async def ask_within(self, question: Any, seconds: float | None, outcome: str) -> str:
        self.calls.append(("ask_within", seconds, outcome))
        return "Ada"


class Silent:
    """A channel with a time limit of its own that never answers."""

    user_timeout = 0.5

    async def ask(self, question: Any) -> str:
        await asyncio.Event().wait()
        raise AssertionError("never answered")


@pytest.mark.parametrize("kind", ["timed", "silent"])
async def test_the_clients_channel_keeps_its_timing_contract(client: Client, kind: str) -> None:
    """A TimedChannel is asked with its limit and what happens at its end, and a timed-out
    question's error names the limit as embedded (the channel's own user_timeout)."""
    outcomes, calls = [], []
    for on_temporal in (False, True):
        channel = Timed() if kind == "timed" else Silent()
        config = CommunicationConfig(
            channel=channel, user_timeout=30, on_user_timeout="default", default_answer="Bob"
        )
        if kind == "silent":
            config = CommunicationConfig(channel=channel)
        agents = [llm("Asker", FunctionModel(scenarios.greeter))]
        options: dict[str, Any] = {"communication_config": config}
        if on_temporal:
            async with hosted(client, ASKER, agents) as executor:
                result = await run(
                    "greet", ASKER, agents, wait=ON_TEMPORAL, executor=executor, **options
                )
        else:
            result = await run("greet", ASKER, agents, **options)
        error = re.sub(r"question \S+,", "question ?,", result.error or "")
        outcomes.append((result.final_response, error))
        calls.append(getattr(channel, "calls", None))
    assert outcomes[1] == outcomes[0]
    assert calls[1] == calls[0]
    if kind == "silent":
        assert "Silent user_timeout" in str(outcomes[0][1])
    else:
        assert calls[0] == [("ask_within", 30, "the agent goes on with the default answer ('Bob')")]
