"""Follow-ups in durable sessions: a rebuilt result equals the live one; a pause or a crash
while a follow-up is awaited resumes waiting for the same question; a header written before
follow-ups existed still reads."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from follow_up_kit import SOLO, TWO_ENTRIES, Tutor
from helpers import crash_copy, final, llm, quiet

from orchestra import AgentRegistry, FunctionModel
from orchestra.communication import (
    CommunicationManager,
    ProgrammaticChannel,
    ScriptedUser,
)
from orchestra.coordination.config import ErrorHandlingConfig
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import FileStorageBackend, StateManager
from orchestra.coordination.state.records import decode, encode, loads
from orchestra.models import Message, StepInfo


def tutor_instance(storage: FileStorageBackend, user: Any, tutor: Tutor) -> OrchestraInstance:
    return OrchestraInstance(
        SOLO,
        agent_registry=AgentRegistry([llm("Tutor", FunctionModel(tutor))]),
        initial_config=quiet(),
        communication_manager=CommunicationManager(user),
        state_manager=StateManager(storage, auto_save_interval=0),
    )


async def test_a_rebuilt_result_equals_the_live_one(tmp_path: Path) -> None:
    instance = tutor_instance(
        FileStorageBackend(str(tmp_path)), ScriptedUser(["why?", ""]), Tutor()
    )

    live = await instance.execute("explain", {"session_id": "talk"}, allow_follow_ups=True)
    rebuilt = await instance.get_result("talk")
    again = await instance.resume_session("talk")  # finished: returned as it was

    assert live.success, live.error
    assert len(live.follow_ups) == 1
    assert rebuilt == live
    assert again == live


async def test_a_pause_during_the_wait_asks_the_same_question_again(tmp_path: Path) -> None:
    channel = ProgrammaticChannel()
    tutor = Tutor()
    instance = tutor_instance(FileStorageBackend(str(tmp_path)), channel, tutor)
    running = asyncio.create_task(
        instance.execute("explain", {"session_id": "talk"}, allow_follow_ups=True)
    )
    offered = await asyncio.wait_for(channel.next_question(), 5)
    assert await instance.pause_session("talk", "lunch")
    paused = await asyncio.wait_for(running, 5)
    assert paused.metadata["paused"] is True
    assert paused.metadata["first_round"]["response"] == "answer 1"

    resuming = asyncio.create_task(instance.resume_session("talk"))
    again = await asyncio.wait_for(channel.next_question(), 5)
    assert again.id.rsplit(":", 1)[-1] == offered.id.rsplit(":", 1)[-1] == "f1"
    assert (again.kind, again.response) == ("follow_up", "answer 1")
    channel.answer(again.id, "why?")
    last = await asyncio.wait_for(channel.next_question(), 5)
    channel.answer(last.id, "")
    result = await asyncio.wait_for(resuming, 5)

    assert result.success, result.error
    assert [item.question for item in result.follow_ups] == ["why?"]
    assert len(tutor.seen) == 2  # the answer was applied once: one more round, one more step
    assert await instance.get_result("talk") == result
    # the pause lay inside the wait: its time is left out of the run's once, not twice
    rounds = result.metadata["first_round"]["duration"] + result.follow_ups[0].duration
    assert result.total_duration >= rounds - 1e-9


async def test_a_crash_during_the_wait_resumes_waiting(tmp_path: Path) -> None:
    """The log as a kill -9 leaves it while the user is offered a follow-up: a resume offers
    the same question again, and the conversation ends as the uninterrupted one did."""
    storage = FileStorageBackend(str(tmp_path))
    instance = tutor_instance(storage, ScriptedUser(["why?", ""]), Tutor())
    whole = await instance.execute("explain", {"session_id": "whole"}, allow_follow_ups=True)
    lines = await storage.read("whole")
    records = [loads(line) for line in lines]
    first_answer = next(n for n, record in enumerate(records) if record["t"] == "answer")
    await crash_copy(storage, "whole", "cut", first_answer)

    user = ScriptedUser(["why?", ""])
    resumed = await tutor_instance(storage, user, Tutor()).resume_session("cut")

    assert resumed.success, resumed.error
    assert [q.id.rsplit(":", 1)[-1] for q in user.questions] == ["f1", "f2"]
    assert resumed.follow_ups[0].final_response == whole.follow_ups[0].final_response
    assert resumed.get_conversation() == whole.get_conversation()


async def test_a_crash_while_a_several_entry_run_waits_resumes_waiting(tmp_path: Path) -> None:
    """The root of a run with several entries waits at User, with no agent of its own: a
    resume still asks its follow-up again, and the next round fans out to the entries."""

    def analyst(messages: Sequence[Message], info: StepInfo) -> Any:
        rounds = sum(m.content.startswith(("[Task]", "[Follow-up")) for m in messages)
        return final(f"{info.agent_name} {rounds}")

    def instance(user: Any) -> OrchestraInstance:
        return OrchestraInstance(
            TWO_ENTRIES,
            agent_registry=AgentRegistry(
                [llm("Tech", FunctionModel(analyst)), llm("Finance", FunctionModel(analyst))]
            ),
            initial_config=quiet(),
            communication_manager=CommunicationManager(user),
            state_manager=StateManager(storage, auto_save_interval=0),
        )

    storage = FileStorageBackend(str(tmp_path))
    whole = await instance(ScriptedUser(["bonds?", ""])).execute(
        "markets?", {"session_id": "whole"}, allow_follow_ups=True
    )
    records = [loads(line) for line in await storage.read("whole")]
    first_answer = next(n for n, record in enumerate(records) if record["t"] == "answer")
    await crash_copy(storage, "whole", "cut", first_answer)

    user = ScriptedUser(["bonds?", ""])
    resumed = await instance(user).resume_session("cut")

    assert resumed.success, resumed.error
    assert [q.id.rsplit(":", 1)[-1] for q in user.questions] == ["f1", "f2"]
    assert [item["response"] for item in resumed.final_response] == ["Tech 2", "Finance 2"]
    assert resumed.get_conversation() == whole.get_conversation()


def test_a_run_header_written_before_follow_ups_reads() -> None:
    """Records of releases before follow-ups lack their fields: they read as "off"; and a run
    without follow-ups writes its header and answers as those releases did."""
    old = {
        "t": "run",
        "s": 1,
        "format": 2,
        "at": 1.0,
        "task": "t",
        "context": {},
        "max_steps": 5,
        "config": loads(encode(_header(), 1))["config"],
        "error_config": {},
        "topology": ["fingerprint 2"],
    }

    read = decode(old)

    assert isinstance(read, inp.RunStart)
    assert (read.follow_up_timeout, read.follow_ups_note) == (None, None)
    assert read == _header()
    assert "follow_up_timeout" not in loads(encode(_header(), 1))
    on = msgspec.structs.replace(_header(), follow_up_timeout=30.0)
    assert decode(loads(encode(on, 1))) == on
    answer = {"t": "answer", "s": 2, "at": 2.0, "branch_id": "b0", "answer": "x"}
    assert decode(answer) == inp.UserAnswer(at=2.0, branch_id="b0", answer="x")


def _header() -> inp.RunStart:
    return inp.RunStart(
        at=1.0,
        task="t",
        context={},
        max_steps=5,
        config=quiet(),
        error_config=ErrorHandlingConfig(),
        topology=("fingerprint 2",),
    )


# ---- an agent's question with a timeout of its own ----------------------------------------------
