"""Follow-ups (``allow_follow_ups``): a run that goes on as a conversation, round after round.

After the root's final response the user channel is offered a follow-up; a blank answer or the
timeout ends the conversation, anything else starts a round at the entry agent(s), in the
conversations they already have. Each round is durable: a pause or a crash while a follow-up is
awaited resumes waiting for the same question, and a rebuilt result equals the live one.
Agents' questions with a timeout of their own are here too (they share the channel's path).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers import crash_copy, final, fn, llm, of, quiet, run

from orchestra import Action, AgentRegistry, FunctionModel
from orchestra.communication import (
    CommunicationManager,
    ProgrammaticChannel,
    Question,
    ScriptedUser,
)
from orchestra.coordination.config import Budget, CommunicationConfig, ErrorHandlingConfig
from orchestra.coordination.engine import events as ev
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.monitoring.view import BranchStatus as ViewStatus
from orchestra.coordination.monitoring.view import RunState, RunView
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.results import OrchestraResult
from orchestra.coordination.state import FileStorageBackend, StateManager
from orchestra.coordination.state.records import decode, dumps, encode, loads
from orchestra.coordination.state.values import from_plain, to_plain
from orchestra.models import Message, StepInfo, ToolCall
from orchestra.models.protocol import reply_from_tool_calls

SOLO = {"nodes": ["User", "Tutor"], "edges": ["User -> Tutor", "Tutor -> User"]}
TWO_ENTRIES = {
    "nodes": ["User", "Tech", "Finance"],
    "edges": ["User -> Tech", "User -> Finance", "Tech -> User", "Finance -> User"],
}


def channel_of(user: Any) -> CommunicationConfig:
    return CommunicationConfig(channel=user)


class Tutor:
    """A model that answers each round with its number (counted in the conversation it is
    shown, so a resumed run's model answers as the live one's did), and keeps what it saw."""

    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    def __call__(self, messages: Sequence[Message], info: StepInfo) -> Any:
        shown = [message.content for message in messages]
        self.seen.append(shown)
        rounds = sum(text.startswith(("[Task]", "[Follow-up from the user]")) for text in shown)
        return final(f"answer {rounds}")


async def test_two_follow_ups_go_on_in_the_agents_conversation() -> None:
    tutor = Tutor()
    user = ScriptedUser(["why?", "and then?", "  "])

    result = await run(
        "explain",
        SOLO,
        [llm("Tutor", FunctionModel(tutor))],
        allow_follow_ups=True,
        communication_config=channel_of(user),
    )

    assert result.success, result.error
    assert result.final_response == "answer 3"
    assert [(item.question, item.final_response, item.steps) for item in result.follow_ups] == [
        ("why?", "answer 2", 1),
        ("and then?", "answer 3", 1),
    ]
    assert all(item.success for item in result.follow_ups)
    assert result.get_conversation() == [
        {"round": 1, "question": "explain", "response": "answer 1"},
        {"round": 2, "question": "why?", "response": "answer 2"},
        {"round": 3, "question": "and then?", "response": "answer 3"},
    ]
    # the third round's input shows everything said before, as one conversation
    third = tutor.seen[2]
    assert third[1:] == [
        "[Task]\nexplain",
        json.dumps({"next_action": "final_response", "action_input": {"response": "answer 1"}}),
        "[Follow-up from the user]\nwhy?",
        json.dumps({"next_action": "final_response", "action_input": {"response": "answer 2"}}),
        "[Follow-up from the user]\nand then?",
    ]
    offers = [(q.id.rsplit(":", 1)[-1], q.kind, q.response) for q in user.questions]
    assert offers == [
        ("f1", "follow_up", "answer 1"),
        ("f2", "follow_up", "answer 2"),
        ("f3", "follow_up", "answer 3"),
    ]
    rounds = [(e.round, e.response, e.total_steps) for e in of(result, ev.RoundCompleted)]
    assert rounds == [(1, "answer 1", 1), (2, "answer 2", 2), (3, "answer 3", 3)]
    assert [(e.round, e.question) for e in of(result, ev.RoundStarted)] == [
        (2, "why?"),
        (3, "and then?"),
    ]
    assert result.total_steps == 3
    assert OrchestraResult.from_json(result.to_json()) == result


@pytest.mark.parametrize("answer", [None, "", "\n \t"])
async def test_a_blank_answer_ends_the_conversation(answer: Any) -> None:
    user = ScriptedUser([answer])

    result = await run(
        "explain",
        SOLO,
        [llm("Tutor", FunctionModel(Tutor()))],
        allow_follow_ups=True,
        communication_config=channel_of(user),
    )

    assert result.success, result.error
    assert result.final_response == "answer 1"
    assert result.follow_ups == []
    assert len(user.questions) == 1


async def test_an_unanswered_offer_times_out_and_the_conversation_ends() -> None:
    """Nobody answers: the offer's own timeout ends the conversation, successfully (never the
    channel's on_user_timeout failure). The root's branch_timeout, shorter than the wait, does
    not run during it, and the wait is no working time: the run's and the root's durations
    are their spans less exactly the span from the offer to its end (read from the events'
    times, so no comparison with a real wait)."""
    channel = ProgrammaticChannel()

    result = await run(
        "explain",
        SOLO,
        [llm("Tutor", FunctionModel(Tutor()))],
        config=quiet(branch_timeout=0.1),
        allow_follow_ups=True,
        follow_up_timeout=0.3,
        communication_config=CommunicationConfig(
            channel=channel, user_timeout=0.01, on_user_timeout="fail"
        ),
    )

    assert result.success, result.error
    assert result.final_response == "answer 1"
    assert result.follow_ups == []
    (started,) = of(result, ev.RunStarted)
    (offered,) = of(result, ev.UserInputRequested)
    (ended,) = of(result, ev.UserInputReceived)
    (completed,) = of(result, ev.RunCompleted)
    (created,) = of(result, ev.BranchCreated)
    (finished,) = of(result, ev.BranchCompleted)
    wait = ended.at - offered.at
    assert wait > 0
    assert result.total_duration == pytest.approx(completed.at - started.at - wait, abs=1e-9)
    root = result.branch_results[0].duration
    assert root == pytest.approx(finished.at - created.at - wait, abs=1e-9)


async def test_the_runs_timeout_rule_counts_each_round_and_never_the_wait() -> None:
    """timeout(0.1) and an offer nobody answers for 0.3 s: the rule stops while the user is
    offered a follow-up, so the run ends as the conversation does, successfully."""
    result = await run(
        "explain",
        {**SOLO, "rules": ["timeout(0.1)"]},
        [llm("Tutor", FunctionModel(Tutor()))],
        allow_follow_ups=True,
        follow_up_timeout=0.3,
        communication_config=channel_of(ProgrammaticChannel()),
    )

    assert result.success, result.error
    assert result.final_response == "answer 1"


async def test_the_live_view_shows_the_wait_for_a_follow_up_and_the_new_round() -> None:
    result = await run(
        "markets?",
        TWO_ENTRIES,
        [llm("Tech", FunctionModel(Tutor())), llm("Finance", FunctionModel(Tutor()))],
        allow_follow_ups=True,
        communication_config=channel_of(ScriptedUser(["bonds?"])),
    )
    view = RunView(result.session_id or "")
    offered = next(n for n, e in enumerate(result.events) if isinstance(e, ev.UserInputRequested))
    for event in result.events[: offered + 1]:
        view(event)

    assert view.shown_state is RunState.WAITING_FOR_FOLLOW_UP
    assert view.running_since is None  # the wait is no working time
    for event in result.events[offered + 1 :]:
        if isinstance(event, ev.RoundStarted):
            assert view.shown_state is RunState.RUNNING
        view(event)

    assert view.shown_state is RunState.SUCCEEDED
    assert view.round == 2
    root = view.branches[view.root or ""]
    assert len(root.fan_outs) == 2  # each round's fan-out to the entries
    assert [view.branches[b].status for b in view.fan_outs[root.fan_outs[1]].children] == [
        ViewStatus.DONE,
        ViewStatus.DONE,
    ]


async def test_a_failure_in_a_follow_up_round_fails_the_run_and_keeps_the_rounds_before() -> None:
    def tutor(messages: Sequence[Message], info: StepInfo) -> Any:
        if "[Follow-up from the user]\nbreak it" in messages[-1].content:
            raise RuntimeError("the model fell over")
        return final("answer")

    result = await run(
        "explain",
        SOLO,
        [llm("Tutor", FunctionModel(tutor))],
        allow_follow_ups=True,
        communication_config=channel_of(ScriptedUser(["again", "break it"])),
    )

    assert not result.success
    assert "the model fell over" in (result.error or "")
    assert result.metadata["first_round"]["response"] == "answer"
    first, second = result.follow_ups
    assert (first.question, first.final_response, first.success) == ("again", "answer", True)
    assert (second.question, second.final_response, second.success) == ("break it", None, False)
    assert "the model fell over" in (second.error or "")
    assert [item["response"] for item in result.get_conversation()] == ["answer", "answer", None]


async def test_a_topology_with_several_entries_has_rounds_too() -> None:
    """The root waits at User for its entries' fan-out; each round fans out again, and each
    entry agent goes on in the conversation it had."""
    seen: dict[str, list[list[str]]] = {"Tech": [], "Finance": []}

    def analyst(messages: Sequence[Message], info: StepInfo) -> Any:
        seen[info.agent_name].append([message.content for message in messages])
        return final(f"{info.agent_name} {len(seen[info.agent_name])}")

    result = await run(
        "markets?",
        TWO_ENTRIES,
        [llm("Tech", FunctionModel(analyst)), llm("Finance", FunctionModel(analyst))],
        allow_follow_ups=True,
        communication_config=channel_of(ScriptedUser(["and bonds?"])),
    )

    assert result.success, result.error
    responses = [item["response"] for item in result.final_response]
    assert responses == ["Tech 2", "Finance 2"]
    assert [item["response"] for item in result.metadata["first_round"]["response"]] == [
        "Tech 1",
        "Finance 1",
    ]
    assert seen["Tech"][1][1:] == [
        "[Task]\nmarkets?",
        json.dumps({"next_action": "final_response", "action_input": {"response": "Tech 1"}}),
        "[Follow-up from the user]\nand bonds?",
    ]
    assert result.follow_ups[0].steps == 2


async def test_max_steps_bounds_each_round() -> None:
    """Two steps a round (a hand-over, then the answer), max_steps=2: every round fits, though
    the conversation takes six steps."""
    topology = {
        "nodes": ["User", "Planner", "Writer"],
        "edges": ["User -> Planner", "Planner -> Writer", "Writer -> User"],
    }
    result = await run(
        "plan",
        topology,
        [
            fn("Planner", lambda value, ctx: Action.invoke("Writer", value)),
            fn("Writer", lambda v, c: f"wrote {v}"),
        ],
        max_steps=2,
        allow_follow_ups=True,
        communication_config=channel_of(ScriptedUser(["more", "again"])),
    )

    assert result.success, result.error
    assert result.total_steps == 6
    assert result.final_response == "wrote again"


async def test_a_round_over_max_steps_fails_naming_the_round() -> None:
    topology = {
        "nodes": ["User", "Planner", "Writer"],
        "edges": ["User -> Planner", "Planner -> Writer", "Writer -> User"],
    }

    def planner(value: Any, ctx: Any) -> Any:
        return Action.invoke("Writer", value)

    def writer(value: Any, ctx: Any) -> Any:
        return Action.invoke("Writer", value) if value == "loop" else Action.final(f"wrote {value}")

    result = await run(
        "plan",
        {**topology, "edges": [*topology["edges"], "Writer -> Writer"]},
        [fn("Planner", planner), fn("Writer", writer)],
        max_steps=3,
        allow_follow_ups=True,
        communication_config=channel_of(ScriptedUser(["loop"])),
    )

    assert not result.success
    assert "round 2 of the conversation reached max_steps=3" in (result.error or "")
    assert result.metadata["first_round"]["response"] == "wrote plan"


async def test_a_run_budget_spans_every_round() -> None:
    """A run budget of two steps counts the conversation, not the round: the first two rounds
    take one step each, and the third is stopped before its first (the user does not raise
    the budget), failing the run."""
    tutor = Tutor()

    class User(ScriptedUser):
        async def ask(self, question: Question) -> Any:
            if question.kind == "follow_up":
                return await super().ask(question)
            return "no"  # the budget's question: not raised

    result = await run(
        "explain",
        SOLO,
        [llm("Tutor", FunctionModel(tutor))],
        config=quiet(budget=Budget(max_steps=2)),
        allow_follow_ups=True,
        communication_config=channel_of(User(["why?", "and then?"])),
    )

    assert not result.success
    assert result.metadata["error_type"] == "BudgetExceededError"
    assert len(tutor.seen) == 2
    assert [item.success for item in result.follow_ups] == [True, False]


async def test_no_channel_means_no_follow_ups_and_one_warning() -> None:
    with pytest.warns(UserWarning, match="no user channel") as warned:
        result = await run(
            "explain",
            SOLO,
            [llm("Tutor", FunctionModel(Tutor()))],
            allow_follow_ups=True,
            communication_config=CommunicationConfig(terminal=False),
        )

    assert len([w for w in warned if "follow-ups" in str(w.message)]) == 1
    assert result.success, result.error
    assert result.final_response == "answer 1"
    assert result.metadata["follow_ups"] == "not offered: the run has no user channel"
    assert of(result, ev.RoundCompleted) == []


async def test_a_channel_failing_on_the_offer_ends_the_conversation_successfully() -> None:
    class Broken:
        async def ask(self, question: Question) -> Any:
            raise ConnectionError("api_key=sk-live-123456789012345678901234 refused")

    result = await run(
        "explain",
        SOLO,
        [llm("Tutor", FunctionModel(Tutor()))],
        allow_follow_ups=True,
        communication_config=channel_of(Broken()),
    )

    assert result.success, result.error
    assert result.final_response == "answer 1"
    error = result.metadata["follow_up_error"]
    assert "ConnectionError" in error or "refused" in error
    assert "sk-live-123456789012345678901234" not in error


# ---- durable conversations ---------------------------------------------------------------------


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


async def test_an_agents_question_times_out_on_its_own_timeout() -> None:
    def asker(value: Any, ctx: Any) -> Any:
        if value == "task":
            return Action.ask_user("Which colour?", timeout=0.05)
        return f"got {value}"

    result = await run(
        "task",
        {"nodes": ["User", "Asker"], "edges": ["User -> Asker", "Asker -> User"]},
        [fn("Asker", asker)],
        communication_config=CommunicationConfig(
            channel=ProgrammaticChannel(),
            user_timeout=600,
            on_user_timeout="default",
            default_answer="blue",
        ),
    )

    assert result.success, result.error
    assert "did not answer within 0.05s" in result.final_response
    assert "blue" in result.final_response


async def test_a_models_question_has_the_channels_timeout_whatever_it_writes() -> None:
    """Per-question timeouts are set by code: a model's ask_user carrying a "timeout" (which
    no prompt or schema tells it of) is asked with the channel's, whatever the value."""
    asked: list[Question] = []

    class User:
        async def ask(self, question: Question) -> Any:
            asked.append(question)
            return "yes"

    def model(messages: Sequence[Message], info: StepInfo) -> Any:
        if any(message.content.startswith("[The user answered]") for message in messages):
            return final("done")
        return {"next_action": "ask_user", "action_input": {"question": "ok?", "timeout": -3}}

    result = await run(
        "task",
        {"nodes": ["User", "Asker"], "edges": ["User -> Asker", "Asker -> User"]},
        [llm("Asker", FunctionModel(model))],
        communication_config=channel_of(User()),
    )

    assert result.success, result.error
    assert of(result, ev.ActionRejected) == []
    assert [(q.text, q.timeout, q.kind) for q in asked] == [("ok?", None, "agent")]


def test_a_native_ask_user_call_carries_no_timeout() -> None:
    call = ToolCall("ask_user", {"question": "ok?", "timeout": 10**400}, "call_1")

    reply = reply_from_tool_calls(None, [call], None)

    assert reply.action == {"next_action": "ask_user", "action_input": {"question": "ok?"}}


async def test_code_asking_with_a_bad_timeout_fails_its_branch() -> None:
    result = await run(
        "task",
        {"nodes": ["User", "Asker"], "edges": ["User -> Asker", "Asker -> User"]},
        [fn("Asker", lambda value, ctx: Action.ask_user("ok?", timeout=0))],
        communication_config=channel_of(ScriptedUser(["yes"])),
    )

    assert not result.success
    assert "timeout must be a positive, finite number of seconds, got 0" in (result.error or "")


def test_an_action_keeps_its_timeout_in_the_log() -> None:
    action = Action.ask_user("ok?", timeout=2.5)

    assert from_plain(loads(dumps(to_plain(action)))) == action
    assert action.to_protocol() == {  # the protocol a model writes has no timeout
        "next_action": "ask_user",
        "action_input": {"question": "ok?"},
    }
