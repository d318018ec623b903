"""A person's answer, and the work a question stands on, survive a crash whatever the
session's ``auto_save_interval``; question ids survive a resume and stay unique across runs.

With the spec's default interval (30 s) a kill -9 while a question waited used to leave only
the run's header in the log: the resume called the model again for every completed step and
asked again what the user had already answered. And each process named its questions with a
random token, so a client holding a question's id could not answer it after a resume.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from follow_up_kit import SOLO, Tutor
from helpers import ask, final, llm, quiet
from services import output_of

from orchestra import AgentRegistry, FunctionModel, ScriptedModel
from orchestra.communication import CommunicationManager, ProgrammaticChannel
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import FileStorageBackend, StateManager
from orchestra.errors import UserInputError

WORKFLOW = Path(__file__).with_name("question_crash_workflow.py")
WAIT = 5.0  # each run here takes well under a second; a hang fails after WAIT


async def run_workflow(folder: Path, scenario: str, mode: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKFLOW),
        str(folder / "state"),
        str(folder / "notes"),
        scenario,
        mode,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = await output_of(process, 60)
    return process.returncode or 0, output


async def killed_then_resumed(folder: Path, scenario: str) -> tuple[dict[str, Any], list[str]]:
    """The run killed at its scenario's point, then resumed: the resume's result, and what
    the resuming process did (its model calls and the questions it asked)."""
    code, output = await run_workflow(folder, scenario, "run")
    assert code == -signal.SIGKILL, f"the run was not killed: {output}"
    code, output = await run_workflow(folder, scenario, "resume")
    assert code == 0, output
    notes = (folder / "notes").read_text().splitlines()
    return json.loads(output.strip().splitlines()[-1]), notes


def done_in(notes: list[str], mode: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in notes if line.startswith(f"{mode} ")]


async def test_a_kill_while_a_follow_up_waits_resumes_that_wait(tmp_path: Path) -> None:
    result, notes = await killed_then_resumed(tmp_path, "follow_up")

    assert done_in(notes, "run") == [
        "call round 1",
        "asked talk:r1:f1 answer 1",
        "call round 2",
        "asked talk:r1:f2 answer 2",
    ]
    # no model call again, f1 not offered again; f2 offered again, under the id it had
    assert done_in(notes, "resume") == ["asked talk:r1:f2 answer 2"]
    assert result["success"], result["error"]
    assert (result["final"], result["follow_ups"]) == ("answer 2", ["what about X?"])


@pytest.mark.parametrize(
    ("scenario", "resumed"),
    [
        # killed while q2 waits: q2 asked again, the model called only once q2 is answered
        ("question", ["asked talk:r1:q2 Which day?", "call after 2 answers"]),
        # killed in the step right after q1's answer: that step is taken again, with the answer
        (
            "answered",
            ["call after 1 answers", "asked talk:r1:q2 Which day?", "call after 2 answers"],
        ),
    ],
)
async def test_a_kill_after_an_answer_keeps_the_answer(
    tmp_path: Path, scenario: str, resumed: list[str]
) -> None:
    result, notes = await killed_then_resumed(tmp_path, scenario)

    assert done_in(notes, "run")[:3] == [
        "call after 0 answers",
        "asked talk:r1:q1 Which city?",
        "call after 1 answers",
    ]
    assert done_in(notes, "resume") == resumed  # q1 is never asked again
    assert result["success"], result["error"]
    assert result["final"] == "done"


def tutor_instance(state: Path, channel: ProgrammaticChannel, tutor: Tutor) -> OrchestraInstance:
    return OrchestraInstance(
        SOLO,
        agent_registry=AgentRegistry([llm("Tutor", FunctionModel(tutor))]),
        initial_config=quiet(),
        communication_manager=CommunicationManager(channel),
        state_manager=StateManager(FileStorageBackend(str(state)), auto_save_interval=30),
    )


async def test_a_question_asked_again_after_a_pause_has_the_id_it_had(tmp_path: Path) -> None:
    """A client that kept the question's id before the pause answers it after the resume."""
    channel = ProgrammaticChannel()
    instance = tutor_instance(tmp_path, channel, Tutor())
    running = asyncio.create_task(
        instance.execute("explain", {"session_id": "talk"}, allow_follow_ups=True)
    )
    offered = await asyncio.wait_for(channel.next_question(), WAIT)
    assert await instance.pause_session("talk")
    await asyncio.wait_for(running, WAIT)

    resuming = asyncio.create_task(instance.resume_session("talk"))
    again = await asyncio.wait_for(channel.next_question(), WAIT)
    assert again.id == offered.id
    channel.answer(offered.id, "")
    result = await asyncio.wait_for(resuming, WAIT)
    assert result.success, result.error


def trip_planner(message_text: str) -> Any:
    """Asks for a city, then for a hotel in it, then is done."""
    if "Paris" in message_text:
        return final("done") if "Ritz" in message_text else ask("Which Paris hotel?")
    if "Rome" in message_text:
        return final("done") if "Hassler" in message_text else ask("Which Rome hotel?")
    return ask("Which city?")


async def test_a_question_asked_after_a_restore_never_has_an_abandoned_questions_id(
    tmp_path: Path,
) -> None:
    """The restore rewound the engine's question counter but not the run's name, so the
    question asked after it ('Which Rome hotel?') had the abandoned one's id ('Which Paris
    hotel?'), and a client's late answer to the abandoned question landed on it."""
    channel = ProgrammaticChannel()
    model = FunctionModel(lambda messages, _: trip_planner(" ".join(map(str, messages))))
    instance = OrchestraInstance(
        {"nodes": ["A"], "edges": ["A -> User"]},
        agent_registry=AgentRegistry([llm("A", model)]),
        initial_config=quiet(),
        communication_manager=CommunicationManager(channel),
        state_manager=StateManager(FileStorageBackend(str(tmp_path)), auto_save_interval=30),
    )
    running = asyncio.create_task(instance.execute("plan a trip", {"session_id": "trip"}))
    city = await asyncio.wait_for(channel.next_question(), WAIT)
    checkpoint = await instance.create_checkpoint("trip", "before-city")
    channel.answer(city.id, "Paris")
    abandoned = await asyncio.wait_for(channel.next_question(), WAIT)
    assert await instance.pause_session("trip")
    await asyncio.wait_for(running, WAIT)
    assert await instance.restore_checkpoint(checkpoint)

    resuming = asyncio.create_task(instance.resume_session("trip"))
    city_again = await asyncio.wait_for(channel.next_question(), WAIT)
    assert city_again.id != city.id
    channel.answer(city_again.id, "Rome")
    hotel = await asyncio.wait_for(channel.next_question(), WAIT)
    assert hotel.text == "Which Rome hotel?"
    assert hotel.id != abandoned.id
    with pytest.raises(UserInputError, match=f"no pending question '{abandoned.id}'"):
        channel.answer(abandoned.id, "Ritz")
    assert await instance.pause_session("trip")  # a pause after the restore keeps the name
    await asyncio.wait_for(resuming, WAIT)
    resuming = asyncio.create_task(instance.resume_session("trip"))
    assert (await asyncio.wait_for(channel.next_question(), WAIT)).id == hotel.id
    channel.answer(hotel.id, "Hassler")
    result = await asyncio.wait_for(resuming, WAIT)
    assert result.success, result.error


async def test_runs_on_one_channel_never_share_a_question_id(tmp_path: Path) -> None:
    """Two runs of one session, and a run of another session, each asking its first question
    through the same channel: three ids."""
    channel = ProgrammaticChannel()
    ids: list[str] = []

    def instance() -> OrchestraInstance:
        model = ScriptedModel([ask("name?"), final("done")])
        return OrchestraInstance(
            {"nodes": ["A"], "edges": ["A -> User"]},
            agent_registry=AgentRegistry([llm("A", model)]),
            initial_config=quiet(),
            communication_manager=CommunicationManager(channel),
            state_manager=StateManager(FileStorageBackend(str(tmp_path)), auto_save_interval=30),
        )

    for session in ("one", "one", "two"):
        running = asyncio.create_task(instance().execute("task", {"session_id": session}))
        question = await asyncio.wait_for(channel.next_question(), WAIT)
        ids.append(question.id)
        channel.answer(question.id, "Ada")
        result = await asyncio.wait_for(running, WAIT)
        assert result.success, result.error

    assert len(set(ids)) == 3, ids
    assert [question_id.rsplit(":", 1)[-1] for question_id in ids] == ["q1", "q1", "q1"]
