"""The Anthropic Messages adapter against a real HTTP server on loopback, and the conversions.

:class:`ScriptedHTTPServer` speaks the Messages API (the SDK posts to
``{base_url}/v1/messages``): scripted replies with text and ``tool_use`` blocks, error statuses
(429, 529 overloaded, 500, 400) and malformed bodies. The SDK and our adapter run unmodified.
The second half checks ``to_anthropic`` and ``to_chat_messages`` (the Chat Completions
conversion) directly on small conversations.
"""

from __future__ import annotations

import itertools
import json
from functools import partial
from typing import Any

import helpers
import pytest
from helpers import CALL, FAST, HANDOFF, SOLO, fn, llm, of
from servers import Scripted, ScriptedHTTPServer

from orchestra.coordination.engine import events as ev
from orchestra.errors import ConfigurationError
from orchestra.models.anthropic_messages import DEFAULT_MAX_TOKENS, to_anthropic
from orchestra.models.base import Message, ToolCall
from orchestra.models.config import ModelConfig
from orchestra.models.openai_chat import to_chat_messages

MODEL = "claude-test"
WAIT = 30.0  # real sockets and the SDK's first import: only a hang should reach it
run = partial(helpers.run, error_config=FAST, wait=WAIT)

# ---- helpers -------------------------------------------------------------------------------


def reply(*blocks: dict[str, Any], stop_reason: str | None = None) -> Scripted:
    """A 200 answer in the Messages API shape."""
    uses_tools = any(block["type"] == "tool_use" for block in blocks)
    return Scripted(
        200,
        {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": list(blocks),
            "stop_reason": stop_reason or ("tool_use" if uses_tools else "end_turn"),
            "stop_sequence": None,
            "usage": {"input_tokens": 21, "output_tokens": 8},
        },
    )


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(block_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": block_id, "name": name, "input": arguments}


def invoke_use(block_id: str, agent: str, request: str) -> dict[str, Any]:
    invocations = [{"agent_name": agent, "request": request}]
    return tool_use(block_id, "invoke_agent", {"invocations": invocations})


def final_use(block_id: str, response: str) -> dict[str, Any]:
    return tool_use(block_id, "final_response", {"response": response})


def error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Scripted:
    return Scripted(
        status, {"type": "error", "error": {"type": kind, "message": message}}, headers or {}
    )


def config(server: ScriptedHTTPServer, name: str = MODEL, **options: Any) -> ModelConfig:
    return ModelConfig(
        provider="anthropic", name=name, base_url=server.url, api_key="sk-ant-test", **options
    )


def assert_valid_turns(turns: list[dict[str, Any]]) -> None:
    """The Messages API's rules: alternating roles starting with the user, and every tool_use
    answered by a tool_result in the very next (user) turn, results before any text."""
    assert turns and turns[0]["role"] == "user"
    for before, after in itertools.pairwise(turns):
        assert before["role"] != after["role"], turns
    for index, turn in enumerate(turns):
        assert turn["content"], turns
        uses = [b["id"] for b in turn["content"] if b["type"] == "tool_use"]
        if not uses:
            continue
        assert turn["role"] == "assistant"
        assert index + 1 < len(turns), "a tool_use is never answered"
        following = turns[index + 1]["content"]
        results = [b["tool_use_id"] for b in following if b["type"] == "tool_result"]
        assert results == uses, turns
        kinds = [b["type"] for b in following]
        assert kinds[: len(uses)] == ["tool_result"] * len(uses), turns


# ---- 1. replies ----------------------------------------------------------------------------


async def test_text_reply_is_the_final_response(server: ScriptedHTTPServer) -> None:
    server.script(reply(text("Paris"), text(" is the capital.")))
    result = await run("capital of France?", SOLO, [llm("Solo", config(server))])
    assert result.success, result.error
    assert result.final_response == "Paris is the capital."
    assert server.paths == ["/v1/messages"]
    (request,) = server.requests
    assert request["model"] == MODEL
    assert request["max_tokens"] == DEFAULT_MAX_TOKENS
    assert request["system"].startswith("You are Solo.")
    assert all(turn["role"] != "system" for turn in request["messages"])
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "[Task]\ncapital of France?"}]}
    ]
    (step,) = of(result, ev.StepCompleted)
    assert (step.prompt_tokens, step.completion_tokens) == (21, 8)
    assert step.cost_usd is None  # genai-prices does not know "claude-test"


async def test_temperature_and_max_tokens_are_sent(server: ScriptedHTTPServer) -> None:
    server.script(reply(text("ok")))
    model = config(server, temperature=0, max_tokens=77)
    result = await run("task", SOLO, [llm("Solo", model)])
    assert result.success, result.error
    (request,) = server.requests
    assert (request["temperature"], request["max_tokens"]) == (0, 77)


def test_a_seed_never_reaches_the_messages_api(server: ScriptedHTTPServer) -> None:
    """ModelConfig refuses it (tests/test_local_model.py); a copy that skipped validation is
    refused by the adapter, rather than a seed silently doing nothing."""
    with pytest.raises(ConfigurationError, match=r"ModelConfig\.seed: .*temperature=0"):
        config(server).model_copy(update={"seed": 7}).build()
    assert server.requests == []


async def test_tool_use_invoke_agent_hands_off(server: ScriptedHTTPServer) -> None:
    server.script(reply(text("Handing over."), invoke_use("toolu_1", "Worker", "summarise Q3")))
    received: list[Any] = []
    result = await run(
        "task",
        HANDOFF,
        [llm("Hub", config(server)), fn("Worker", lambda x, c: received.append(x) or "done")],
    )
    assert result.success, result.error
    assert result.final_response == "done"
    assert received == ["summarise Q3"]
    assert [(e.source, e.target, e.kind) for e in of(result, ev.WorkHandedOver)] == [
        ("Hub", "Worker", "handoff")
    ]
    (request,) = server.requests
    tools = {tool["name"]: tool for tool in request["tools"]}
    assert sorted(tools) == ["invoke_agent"]  # Hub is no exit: no final_response
    schema = tools["invoke_agent"]["input_schema"]
    items = schema["properties"]["invocations"]
    assert items["items"]["properties"]["agent_name"]["enum"] == ["Worker"]
    assert items["maxItems"] == 1
    assert all(set(tool) == {"name", "description", "input_schema"} for tool in request["tools"])


async def test_own_tool_and_final_response_run_the_tool_then_finish(
    server: ScriptedHTTPServer,
) -> None:
    ran: list[tuple[int, int]] = []

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        ran.append((a, b))
        return a + b

    server.script(
        reply(tool_use("toolu_1", "add", {"a": 2, "b": 3}), final_use("toolu_2", "it is 5"))
    )
    agent = llm("Solo", config(server), tools=[add])
    result = await run("add 2 and 3", SOLO, [agent])
    assert result.success, result.error
    assert result.final_response == "it is 5"
    assert ran == [(2, 3)]
    assert len(server.requests) == 1
    (completed,) = of(result, ev.ToolCallCompleted)
    assert (completed.tool, completed.call_id, completed.ok) == ("add", "toolu_1", True)
    tools = {tool["name"]: tool for tool in server.requests[0]["tools"]}
    assert sorted(tools) == ["add", "final_response"]
    assert tools["add"]["input_schema"] == dict(agent.tools["add"].spec.parameters)


async def test_follow_up_request_answers_every_tool_use_in_the_next_user_turn(
    server: ScriptedHTTPServer,
) -> None:
    def lookup(key: str) -> str:
        """Look a key up."""
        return f"value-{key}"

    server.script(
        reply(
            text("Looking it up and asking Worker."),
            tool_use("toolu_a", "lookup", {"key": "x"}),
            invoke_use("toolu_b", "Worker", "check"),
        ),
        reply(text("all done")),
    )
    result = await run(
        "task",
        CALL,
        [llm("Hub", config(server), tools=[lookup]), fn("Worker", lambda x, c: f"W:{x}")],
    )
    assert result.success, result.error
    assert result.final_response == "all done"
    assert len(server.requests) == 2
    follow_up = server.requests[1]
    assert isinstance(follow_up["system"], str) and follow_up["system"].startswith("You are Hub.")
    turns = follow_up["messages"]
    assert_valid_turns(turns)
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"] == [
        text("Looking it up and asking Worker."),
        tool_use("toolu_a", "lookup", {"key": "x"}),
        invoke_use("toolu_b", "Worker", "check"),
    ]
    answer = turns[2]["content"]
    assert answer[0] == {"type": "tool_result", "tool_use_id": "toolu_a", "content": "ok: value-x"}
    assert answer[1]["type"] == "tool_result" and answer[1]["tool_use_id"] == "toolu_b"
    assert answer[2] == text("[Response from Worker]\nW:check")
    assert follow_up["max_tokens"] == DEFAULT_MAX_TOKENS


async def test_two_coordination_tool_uses_are_steered(server: ScriptedHTTPServer) -> None:
    server.script(
        reply(invoke_use("toolu_1", "Worker", "x"), final_use("toolu_2", "early")),
        reply(final_use("toolu_3", "done")),
    )
    result = await run("task", CALL, [llm("Hub", config(server)), fn("Worker", lambda x, c: x)])
    assert result.success, result.error
    assert result.final_response == "done"
    (rejected,) = of(result, ev.ActionRejected)
    assert "at most one coordination tool" in rejected.problem
    assert not result.was_agent_invoked("Worker")
    turns = server.requests[1]["messages"]
    assert_valid_turns(turns)
    last = turns[-1]["content"]
    assert [b.get("tool_use_id") for b in last if b["type"] == "tool_result"] == [
        "toolu_1",
        "toolu_2",
    ]
    assert last[-1]["type"] == "text" and last[-1]["text"].startswith("[Orchestra]")


# ---- 2. retries and errors -------------------------------------------------------------------


async def test_429_with_retry_after_is_retried(server: ScriptedHTTPServer) -> None:
    server.script(
        error(429, "rate_limit_error", "slow down", {"retry-after": "0"}), reply(text("ok"))
    )
    result = await run("task", SOLO, [llm("Solo", config(server))])
    assert result.success, result.error
    assert result.final_response == "ok"
    assert len(server.requests) == 2
    (retried,) = of(result, ev.ModelCallRetried)
    assert (retried.attempt, retried.delay) == (1, 0)
    assert "HTTP 429" in retried.error and "rate_limit_error" in retried.error


async def test_529_overloaded_is_retried(server: ScriptedHTTPServer) -> None:
    server.script(error(529, "overloaded_error", "Overloaded"), reply(text("ok")))
    result = await run("task", SOLO, [llm("Solo", config(server))])
    assert result.success, result.error
    assert result.final_response == "ok"
    (retried,) = of(result, ev.ModelCallRetried)
    assert "HTTP 529" in retried.error and "overloaded_error: Overloaded" in retried.error


async def test_500_exhausted_fails_naming_provider_model_and_status(
    server: ScriptedHTTPServer,
) -> None:
    server.script(*[error(500, "api_error", "Internal server error")] * 3)
    result = await run("task", SOLO, [llm("Solo", config(server))])
    assert not result.success
    assert len(server.requests) == 3
    assert [e.attempt for e in of(result, ev.ModelCallRetried)] == [1, 2]
    assert result.metadata["error_type"] == "ModelAPIError"
    assert result.error is not None
    assert f"anthropic model '{MODEL}'" in result.error
    assert "HTTP 500" in result.error
    assert "Internal server error" in result.error


async def test_400_is_not_retried(server: ScriptedHTTPServer) -> None:
    server.script(error(400, "invalid_request_error", "messages: bad"), reply(text("never")))
    result = await run("task", SOLO, [llm("Solo", config(server))])
    assert not result.success
    assert len(server.requests) == 1
    assert of(result, ev.ModelCallRetried) == []
    assert result.error is not None
    assert "HTTP 400" in result.error and "invalid_request_error: messages: bad" in result.error


@pytest.mark.parametrize(
    "body", [b"<html>not json</html>", {"unexpected": True}, {"type": "message", "content": None}]
)
async def test_malformed_body_fails_without_retry(server: ScriptedHTTPServer, body: Any) -> None:
    server.script(Scripted(200, body), reply(text("never")))
    result = await run("task", SOLO, [llm("Solo", config(server))])
    assert not result.success
    assert len(server.requests) == 1
    assert result.metadata["error_type"] == "ModelAPIError"
    assert result.error is not None
    assert f"anthropic model '{MODEL}'" in result.error
    assert "malformed response" in result.error


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("[" * 3000 + "]" * 3000, "nests deeper than 100 levels"),
        ("9" * 5000, "holds a number of more than 4300 digits"),
    ],
    ids=["deep", "long-number"],
)
async def test_a_tool_input_the_sdk_cannot_read_is_steered(
    server: ScriptedHTTPServer, value: str, problem: str
) -> None:
    """A tool_use input is the model's JSON inline in the body: nested 3000 deep, the SDK's
    reader raised RecursionError, which failed the step as an AgentStepError."""
    unreadable = reply(final_use("toolu_1", "PLACEHOLDER"))
    body = json.dumps(unreadable.body).replace('"PLACEHOLDER"', value)
    server.script(Scripted(200, body.encode()), reply(final_use("toolu_2", "flat")))
    result = await run("task", SOLO, [llm("Solo", config(server))])
    assert result.success, result.error
    assert result.final_response == "flat"
    (rejected,) = of(result, ev.ActionRejected)
    assert rejected.problem == f"the reply {problem}"
    assert problem in json.dumps(server.requests[1]["messages"][-1])


async def test_cost_of_a_model_genai_prices_knows(server: ScriptedHTTPServer) -> None:
    server.script(reply(text("ok")))
    model = config(server, name="claude-3-5-haiku-latest")
    result = await run("task", SOLO, [llm("Solo", model)])
    assert result.success, result.error
    (step,) = of(result, ev.StepCompleted)
    assert step.cost_usd is not None and step.cost_usd > 0


# ---- 3. to_anthropic -------------------------------------------------------------------------


def test_to_anthropic_moves_system_messages_to_the_system_parameter() -> None:
    system, turns = to_anthropic(
        [Message("system", "You are A."), Message("system", "Be brief."), Message("user", "hi")]
    )
    assert system == "You are A.\n\nBe brief."
    assert turns == [{"role": "user", "content": [text("hi")]}]


def test_to_anthropic_merges_turns_of_one_role() -> None:
    system, turns = to_anthropic(
        [
            Message("user", "one"),
            Message("user", "two"),
            Message("assistant", "three"),
            Message("assistant", "four"),
        ]
    )
    assert system == ""
    assert turns == [
        {"role": "user", "content": [text("one"), text("two")]},
        {"role": "assistant", "content": [text("three"), text("four")]},
    ]


def test_to_anthropic_starts_with_a_user_turn() -> None:
    _, turns = to_anthropic([Message("system", "S"), Message("assistant", "I start")])
    assert [turn["role"] for turn in turns] == ["user", "assistant"]
    assert turns[1]["content"] == [text("I start")]
    _, empty = to_anthropic([])
    assert [turn["role"] for turn in empty] == ["user"]


def test_to_anthropic_answers_every_tool_use_in_the_next_user_turn() -> None:
    calls = (
        ToolCall("lookup", {"key": "x"}, "toolu_a"),
        ToolCall("invoke_agent", {"invocations": []}, "toolu_b"),
    )
    _, turns = to_anthropic(
        [
            Message("user", "task"),
            Message("assistant", "", tool_calls=calls),
            Message("tool", "ok: 1", name="lookup", tool_call_id="toolu_a"),
            Message("user", "[Response from W]\nfine"),
        ]
    )
    assert_valid_turns(turns)
    assert turns[1]["content"] == [
        tool_use("toolu_a", "lookup", {"key": "x"}),
        tool_use("toolu_b", "invoke_agent", {"invocations": []}),
    ]
    assert turns[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_a", "content": "ok: 1"},
        {"type": "tool_result", "tool_use_id": "toolu_b", "content": "accepted"},
        text("[Response from W]\nfine"),
    ]


def test_to_anthropic_answers_pending_tool_uses_before_the_next_assistant_turn() -> None:
    call = ToolCall("final_response", {"response": "x"}, "toolu_1")
    _, turns = to_anthropic(
        [
            Message("user", "task"),
            Message("assistant", "thinking", tool_calls=(call,)),
            Message("assistant", "again"),
        ]
    )
    assert_valid_turns(turns)
    assert turns[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "accepted"}],
    }
    assert turns[3] == {"role": "assistant", "content": [text("again")]}


def test_to_anthropic_tool_result_without_a_tool_use_is_user_text() -> None:
    _, turns = to_anthropic(
        [
            Message("user", "task"),
            Message("assistant", '{"next_action": "call_tool"}'),
            Message("tool", "ok: 3", name="add", tool_call_id="c1"),
        ]
    )
    assert turns[2] == {"role": "user", "content": [text("[Tool result]\nok: 3")]}


def test_to_anthropic_gives_an_empty_assistant_message_some_content() -> None:
    _, turns = to_anthropic([Message("user", "task"), Message("assistant", "")])
    assert turns[1]["content"] and turns[1]["content"][0]["type"] == "text"
    assert turns[1]["content"][0]["text"]


# ---- 4. to_chat_messages -------------------------------------------------------------------


def test_to_chat_messages_passes_plain_turns_through() -> None:
    assert to_chat_messages(
        [Message("system", "S"), Message("user", "u", name="User"), Message("assistant", "a")]
    ) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
    ]


def test_to_chat_messages_answers_every_tool_call_id() -> None:
    calls = (
        ToolCall("lookup", {"key": "x"}, "call_a"),
        ToolCall("invoke_agent", {"invocations": [{"agent_name": "W"}]}, "call_b"),
    )
    out = to_chat_messages(
        [
            Message("user", "task"),
            Message("assistant", "", tool_calls=calls),
            Message("tool", "ok: 1", name="lookup", tool_call_id="call_a"),
            Message("user", "[Response from W]\nfine"),
        ]
    )
    assert out[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"key": "x"}'},
            },
            {
                "id": "call_b",
                "type": "function",
                "function": {
                    "name": "invoke_agent",
                    "arguments": '{"invocations": [{"agent_name": "W"}]}',
                },
            },
        ],
    }
    assert out[2:] == [
        {"role": "tool", "tool_call_id": "call_a", "content": "ok: 1"},
        {"role": "tool", "tool_call_id": "call_b", "content": "accepted"},
        {"role": "user", "content": "[Response from W]\nfine"},
    ]


def test_to_chat_messages_keeps_the_text_next_to_tool_calls() -> None:
    out = to_chat_messages(
        [
            Message("user", "task"),
            Message("assistant", "let me check", tool_calls=(ToolCall("f", {}, "call_1"),)),
            Message("tool", "ok: done", name="f", tool_call_id="call_1"),
        ]
    )
    assert out[1]["content"] == "let me check"
    assert out[2] == {"role": "tool", "tool_call_id": "call_1", "content": "ok: done"}


def test_to_chat_messages_tool_result_without_a_call_is_a_user_turn() -> None:
    out = to_chat_messages(
        [
            Message("user", "task"),
            Message("assistant", '{"next_action": "call_tool"}'),
            Message("tool", "ok: 3", name="add", tool_call_id="c9"),
        ]
    )
    assert out[2] == {"role": "user", "content": "[Tool result]\nok: 3"}
