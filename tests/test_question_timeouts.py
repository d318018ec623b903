"""A question with a time limit of its own: set by code (``Action.ask_user(q, timeout=...)``),
kept in the journaled action, never read from what a model writes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from follow_up_kit import channel_of
from helpers import final, fn, llm, of, run

from orchestra import Action, FunctionModel
from orchestra.communication import (
    ProgrammaticChannel,
    Question,
    ScriptedUser,
)
from orchestra.coordination.config import CommunicationConfig
from orchestra.coordination.engine import events as ev
from orchestra.coordination.state.records import dumps, loads
from orchestra.coordination.state.values import from_plain, to_plain
from orchestra.models import Message, StepInfo, ToolCall
from orchestra.models.protocol import reply_from_tool_calls


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


async def test_an_expired_question_timeout_is_named_as_the_question_s_own() -> None:
    """The error named ``user_timeout`` although the question's own limit had expired (the
    run's was 600 s): the user would raise the wrong setting."""

    def asker(value: Any, ctx: Any) -> Any:
        return Action.ask_user("Which colour?", timeout=0.05)

    result = await run(
        "task",
        {"nodes": ["User", "Asker"], "edges": ["User -> Asker", "Asker -> User"]},
        [fn("Asker", asker)],
        communication_config=CommunicationConfig(channel=ProgrammaticChannel(), user_timeout=600),
    )

    assert not result.success
    assert result.error is not None
    assert (
        "the user did not answer the question of agent 'Asker' within 0.05s "
        "(the question's own timeout; question " in result.error
    ), result.error


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
