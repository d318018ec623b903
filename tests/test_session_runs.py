"""Several runs in one session (the API page's Pattern 3): runs sharing ``context["session_id"]``
are separate conversations. An agent remembers nothing from an earlier run of the session (its
conversation starts empty); what carries over is what the caller passes in the context. With a
state manager the session's log keeps every run, ``get_result`` gives the latest run's result,
and a new run supersedes one that did not finish.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from helpers import final, fn, llm, quiet
from services import output_of
from storage_backends import close_backend, open_backend

from orchestra import AgentRegistry, FunctionModel, Orchestra, ScriptedUser
from orchestra.communication import CommunicationManager
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import StateManager
from orchestra.coordination.state.backends import another_writer
from orchestra.errors import SessionError
from orchestra.models import Message, StepInfo
from orchestra.models.base import ModelReply

SESSION = "project_123"


def topology(*agents: str) -> dict[str, Any]:
    """User hands the task to the first agent, each hands on to the next, the last answers."""
    chain = ["User", *agents, "User"]
    return {"nodes": ["User", *agents], "edges": [f"{a} -> {b}" for a, b in pairwise(chain)]}


# Writer works in every phase: the same agent name, three separate conversations
RESEARCH = topology("Researcher", "Writer")
ANALYSIS = topology("Analyst", "Writer")
REPORT = topology("Writer")


@dataclass
class Seen:
    agent: str
    messages: list[str]
    context: dict[str, Any]


def recording(seen: list[Seen]) -> FunctionModel:
    """Each agent notes what it was shown; a non-final agent hands on to the next of its
    topology, Writer answers with the phase and how many messages it was shown."""

    def reply(messages: Sequence[Message], info: StepInfo) -> ModelReply:
        context = dict(info.context or {})
        seen.append(Seen(info.agent_name, [m.content or "" for m in messages], context))
        if info.agent_name == "Writer":
            return ModelReply(action=final(f"{context['phase']} by Writer ({len(messages)})"))
        return ModelReply(
            action={"next_action": "invoke_agent", "action_input": {"agent_name": "Writer"}}
        )

    return FunctionModel(reply)


def registry(model: FunctionModel) -> AgentRegistry:
    names = ("Researcher", "Analyst", "Writer")
    return AgentRegistry([llm(name, model) for name in names])


async def three_phases(model: FunctionModel, state_manager: StateManager | None) -> list[Any]:
    """The page's Pattern 3 as written (its topologies ours)."""
    agents = registry(model)
    run = Orchestra.run
    research_result = await run(
        task="Research the topic",
        topology=RESEARCH,
        agent_registry=agents,
        execution_config=quiet(),
        state_manager=state_manager,
        context={"session_id": SESSION, "phase": "research"},
    )
    analysis_result = await run(
        task="Analyze the research findings",
        topology=ANALYSIS,
        agent_registry=agents,
        execution_config=quiet(),
        state_manager=state_manager,
        context={
            "session_id": SESSION,
            "phase": "analysis",
            "research_data": research_result.final_response,
        },
    )
    report_result = await run(
        task="Generate final report",
        topology=REPORT,
        agent_registry=agents,
        execution_config=quiet(),
        state_manager=state_manager,
        context={
            "session_id": SESSION,
            "phase": "report",
            "analysis_data": analysis_result.final_response,
        },
    )
    return [research_result, analysis_result, report_result]


@pytest.fixture(params=["none", "file", "sqlite"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateManager | None]:
    """No state manager, or one on a file store or SQLite."""
    if request.param == "none":
        yield None
        return
    storage = open_backend(request.param, tmp_path)
    yield StateManager(storage)
    close_backend(storage)


@pytest.fixture(params=["file", "sqlite"])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateManager]:
    storage = open_backend(request.param, tmp_path)
    yield StateManager(storage)
    close_backend(storage)


async def test_each_run_of_a_session_is_a_conversation_of_its_own(
    sessions: StateManager | None,
) -> None:
    seen: list[Seen] = []
    results = await three_phases(recording(seen), sessions)
    assert [r.success for r in results] == [True, True, True]
    assert {r.session_id for r in results} == {SESSION}
    # Writer is shown the system prompt and what it was handed in this run, nothing earlier
    assert [r.final_response for r in results] == [
        "research by Writer (2)",
        "analysis by Writer (2)",
        "report by Writer (2)",
    ]
    writers = [s for s in seen if s.agent == "Writer"]
    assert len(writers) == 3
    tasks = ("Research the topic", "Analyze the research findings", "Generate final report")
    for shown, task in zip(writers, tasks, strict=True):
        earlier = [t for t in tasks if t != task]
        assert not any(t in text for t in earlier for text in shown.messages)
    # the context each run was given, and no key of an earlier run's
    assert [sorted(s.context) for s in seen] == [
        ["phase", "session_id"],
        ["phase", "session_id"],
        ["phase", "research_data", "session_id"],
        ["phase", "research_data", "session_id"],
        ["analysis_data", "phase", "session_id"],
    ]
    assert seen[2].context["research_data"] == "research by Writer (2)"
    assert seen[4].context["analysis_data"] == "analysis by Writer (2)"
    assert "research by Writer (2)" in seen[2].messages[0]  # the shared context in the prompt


async def test_the_session_log_keeps_every_run_and_the_result_is_the_latest(
    durable: StateManager,
) -> None:
    sessions = durable
    model = recording([])
    results = await three_phases(model, sessions)
    log = await sessions.load(SESSION)
    assert [run.start.task for run in log.runs] == [
        "Research the topic",
        "Analyze the research findings",
        "Generate final report",
    ]
    assert [run.finished for run in log.runs] == [True, True, True]
    assert log.runs[1].start.context["research_data"] == results[0].final_response
    assert await sessions.list_sessions() == [SESSION]
    report = OrchestraInstance(REPORT, registry(model), state_manager=sessions)
    stored = await report.get_result(SESSION)
    assert stored is not None and stored.final_response == results[2].final_response
    calls = model.call_count
    resumed = await report.resume_session(SESSION)  # finished: returned as it was, not run
    assert resumed.final_response == results[2].final_response and model.call_count == calls
    research = OrchestraInstance(RESEARCH, registry(model), state_manager=sessions)
    with pytest.raises(SessionError, match="recorded with a different topology"):
        await research.get_result(SESSION)  # the latest run's, with the topology it ran with


async def test_a_checkpoint_between_runs_sends_the_session_back_to_an_earlier_run(
    tmp_path: Path,
) -> None:
    """A checkpoint taken after the research run: restoring it after the report run makes the
    research run the session's latest again (the later runs stay in the log, abandoned)."""
    storage = open_backend("sqlite", tmp_path)
    sessions = StateManager(storage)
    try:
        model = recording([])
        agents = registry(model)
        research = OrchestraInstance(RESEARCH, agents, quiet(), state_manager=sessions)
        first = await research.execute("Research the topic", {"session_id": SESSION, "phase": "r"})
        checkpoint = await research.create_checkpoint(SESSION, "after research")
        report = OrchestraInstance(REPORT, agents, quiet(), state_manager=sessions)
        await report.execute("Generate final report", {"session_id": SESSION, "phase": "p"})
        assert len((await sessions.load(SESSION)).runs) == 2
        assert await report.restore_checkpoint(checkpoint)
        log = await sessions.load(SESSION)
        assert [run.start.task for run in log.runs] == ["Research the topic"]
        stored = await research.get_result(SESSION)
        assert stored is not None and stored.final_response == first.final_response
    finally:
        close_backend(storage)


ASKING = {"nodes": ["User", "Asker"], "edges": ["User -> Asker", "Asker -> User"]}


def asking() -> FunctionModel:
    def reply(messages: Sequence[Message], info: StepInfo) -> ModelReply:
        if len(messages) == 2:
            return ModelReply(action={"next_action": "ask_user", "action_input": {"question": "?"}})
        return ModelReply(action=final("answered"))

    return FunctionModel(reply)


class Unanswering:
    """A user who never answers, and says when asked."""

    def __init__(self, asked: asyncio.Event) -> None:
        self.asked = asked

    async def ask(self, question: Any) -> Any:
        self.asked.set()
        await asyncio.Event().wait()


def solo(step: Callable[[Any, Any], Awaitable[str]], sessions: StateManager) -> OrchestraInstance:
    """A one-agent workflow whose agent's step is ``step``, its runs kept in ``sessions``."""
    agents = AgentRegistry([fn("Solo", step)])
    return OrchestraInstance({"nodes": ["Solo"], "edges": []}, agents, quiet(), None, sessions)


async def test_a_new_run_supersedes_a_paused_one(tmp_path: Path) -> None:
    """The session's last run is paused: a new run with its session_id runs, and its result
    names the run it superseded (a new run used to be refused, and before that to bury the
    paused run unsaid). The earlier run stays in the log; resume_session and get_result act
    on the new one."""
    storage = open_backend("file", tmp_path)
    sessions = StateManager(storage)
    try:
        agents = AgentRegistry([llm("Asker", asking())])
        asked = asyncio.Event()
        channel = CommunicationManager(Unanswering(asked))
        instance = OrchestraInstance(ASKING, agents, quiet(), channel, sessions)
        running = asyncio.ensure_future(instance.execute("first", {"session_id": SESSION}))
        await asyncio.wait_for(asked.wait(), 5)
        assert await instance.pause_session(SESSION)
        assert (await running).metadata["paused"]
        answering = CommunicationManager(ScriptedUser(["yes"]))
        again = OrchestraInstance(ASKING, agents, quiet(), answering, sessions)
        second = await asyncio.wait_for(again.execute("second", {"session_id": SESSION}), 5)
        assert second.success and second.final_response == "answered", second.error
        earlier = {"run": 1, "steps": 1, "paused": True}
        assert second.metadata["superseded_run"] == earlier
        log = await sessions.load(SESSION)
        assert [run.start.task for run in log.runs] == ["first", "second"]
        assert log.runs[0].end is not None and log.runs[0].end.paused  # kept as it was
        resumed = await again.resume_session(SESSION)  # the new run: finished, returned
        stored = await again.get_result(SESSION)
        for result in (resumed, stored):
            assert result is not None and result.final_response == "answered"
            assert result.metadata["superseded_run"] == earlier
        assert len((await sessions.load(SESSION)).runs) == 2  # neither ran anything again
    finally:
        close_backend(storage)


async def test_a_new_run_after_a_cancelled_one_runs(durable: StateManager) -> None:
    """A chat app's request cancelled mid-run (a dropped connection, a wait_for timing out):
    the next request on the conversation's session_id runs (it used to be refused for good,
    the cancelled run taken for one cut off by a crash)."""
    started = asyncio.Event()

    async def endless(task: Any, context: Any) -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    first = solo(endless, durable)
    running = asyncio.ensure_future(first.execute("first", {"session_id": SESSION}))
    await asyncio.wait_for(started.wait(), 5)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    second = solo(quick, durable)
    result = await asyncio.wait_for(second.execute("second", {"session_id": SESSION}), 5)
    assert result.success and result.final_response == "done second", result.error
    assert result.metadata["superseded_run"] == {"run": 1, "steps": 0, "paused": False}
    resumed = await asyncio.wait_for(second.resume_session(SESSION), 5)
    assert resumed.final_response == "done second"


async def quick(task: Any, context: Any) -> str:
    return f"done {task}"


# ---- a run in progress in another process ----

TESTS = Path(__file__).parent


async def other_process_writer(root: str) -> None:
    """Run SESSION on SQLite under ``root``, saying so once its step is in flight (its header
    is durable by then: the session's writer lock is held) and ending it at a line on stdin."""

    async def held(task: Any, context: Any) -> str:
        print("working", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        return "finished there"

    storage = open_backend("sqlite", Path(root))
    instance = solo(held, StateManager(storage, auto_save_interval=0))
    result = await instance.execute("there", {"session_id": SESSION})
    print(result.final_response, flush=True)
    close_backend(storage)


async def test_a_run_in_progress_in_another_process_is_refused_by_its_writer_lock(
    tmp_path: Path,
) -> None:
    """The run that process holds is not taken for one cut off by a crash (the error said so,
    and sent the user to a resume that was refused): a new run here meets the storage's
    refusal of a second writer, and the run there finishes undisturbed."""
    code = (
        f"import asyncio, sys; sys.path.insert(0, {str(TESTS)!r}); import test_session_runs "
        f"as t; asyncio.run(t.other_process_writer({str(tmp_path)!r}))"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdin is not None and process.stdout is not None
    storage = open_backend("sqlite", tmp_path)
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line == b"working\n", line
        here = solo(quick, StateManager(storage, auto_save_interval=0))
        with pytest.raises(SessionError) as refused:
            await asyncio.wait_for(here.execute("here", {"session_id": SESSION}), 10)
        assert str(refused.value) == str(another_writer(SESSION))
        process.stdin.write(b"\n")
        output = await output_of(process, 30)
        assert process.returncode == 0 and output == "finished there\n", output
        log = await StateManager(storage).load(SESSION)
        assert [run.start.task for run in log.runs] == ["there"] and log.runs[0].finished
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        close_backend(storage)
