"""The OpenAI Chat Completions adapter against real HTTP servers on loopback.

Two servers: llama.cpp's OpenAI-compatible server running the bundled SmolLM2 model (a real
model, temperature 0, decoding constrained by the action schema; topologies are chosen so the
schema leaves one legal action), and :class:`ScriptedHTTPServer` answering with scripted Chat
Completions bodies, error statuses and malformed bodies. Nothing of our own client or the SDK
is mocked; every exchange crosses a socket.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from typing import Any

import helpers
import pytest
from helpers import CALL, FAST, HANDOFF, SOLO, fn, llm, of, run_forced_handoff
from servers import Scripted, ScriptedHTTPServer, free_port, start_llama_server

from orchestra import Topology
from orchestra.coordination.config import ErrorHandlingConfig
from orchestra.coordination.engine import events as ev
from orchestra.models.base import Message, PeerInfo, StepInfo
from orchestra.models.config import ModelConfig
from orchestra.models.local import bundled_model_path
from orchestra.models.openai_chat import OpenAIChatModel
from orchestra.models.sdk_calls import is_retryable, retry_after_seconds

MODEL = "test-model"
WAIT = 60.0  # real sockets, SDK imports and a real model on the CPU: only a hang should reach it
run = partial(helpers.run, error_config=FAST, wait=WAIT)

# ---- helpers -------------------------------------------------------------------------------


def chat(
    message: dict[str, Any], finish_reason: str = "stop", usage: tuple[int, int] = (12, 7)
) -> Scripted:
    """A 200 answer in the Chat Completions shape."""
    return Scripted(
        200,
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1700000000,
            "model": MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {
                "prompt_tokens": usage[0],
                "completion_tokens": usage[1],
                "total_tokens": sum(usage),
            },
        },
    )


def text(content: str) -> Scripted:
    return chat({"role": "assistant", "content": content})


def call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": raw}}


def tool_calls(*calls: dict[str, Any], content: str | None = None) -> Scripted:
    return chat({"role": "assistant", "content": content, "tool_calls": list(calls)}, "tool_calls")


def invoke_call(call_id: str, agent: str, request: str) -> dict[str, Any]:
    return call(
        call_id, "invoke_agent", {"invocations": [{"agent_name": agent, "request": request}]}
    )


def final_call(call_id: str, response: str) -> dict[str, Any]:
    return call(call_id, "final_response", {"response": response})


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Scripted:
    return Scripted(status, {"error": {"message": message, "type": "test"}}, headers or {})


def config(server: ScriptedHTTPServer, name: str = MODEL, **options: Any) -> ModelConfig:
    return ModelConfig(
        provider="openai", name=name, base_url=server.url + "/v1", api_key="sk-test", **options
    )


def tools_by_name(request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert all(item["type"] == "function" for item in request["tools"])
    return {item["function"]["name"]: item["function"] for item in request["tools"]}


def invocation_enum(schema: dict[str, Any]) -> list[str]:
    """The agent_name enum of the invoke_agent variant of an action schema."""
    variants = schema.get("anyOf", [schema])
    for variant in variants:
        if variant["properties"]["next_action"]["enum"] == ["invoke_agent"]:
            return list(
                variant["properties"]["action_input"]["items"]["properties"]["agent_name"]["enum"]
            )
    raise AssertionError(f"no invoke_agent variant in {schema}")


def actions_in(schema: dict[str, Any]) -> list[str]:
    return [v["properties"]["next_action"]["enum"][0] for v in schema.get("anyOf", [schema])]


def assert_tool_calls_answered(messages: list[dict[str, Any]]) -> None:
    """Every assistant tool call is answered by a tool message right after it, in order."""
    for index, message in enumerate(messages):
        if message["role"] == "tool":
            assert index > 0 and messages[index - 1]["role"] in ("assistant", "tool")
        if message["role"] != "assistant" or not message.get("tool_calls"):
            continue
        ids = [item["id"] for item in message["tool_calls"]]
        answers = messages[index + 1 : index + 1 + len(ids)]
        assert [a["role"] for a in answers] == ["tool"] * len(ids), messages
        assert [a["tool_call_id"] for a in answers] == ids, messages


@pytest.fixture(scope="session")
def llama_server() -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server with the bundled SmolLM2, once per session."""
    process, url = start_llama_server(str(bundled_model_path()))
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def smollm(url: str, max_tokens: int = 96) -> ModelConfig:
    """The real model; max_tokens only bounds the run time (an action takes about 40)."""
    return ModelConfig(
        provider="openai",
        name="smollm2",
        base_url=url,
        action_format="json_object",
        temperature=0,
        max_tokens=max_tokens,
    )


# ---- 1. the real model behind llama.cpp's server -------------------------------------------


async def test_llama_server_one_node_run_gives_a_string_answer_and_counts_tokens(
    llama_server: str,
) -> None:
    model = smollm(llama_server, max_tokens=32)
    result = await run("What is the capital of France?", SOLO, [llm("Solo", model)])
    assert result.success, result.error
    assert isinstance(result.final_response, str)
    assert of(result, ev.ActionRejected) == []
    metrics = result.get_metrics()
    assert metrics["prompt_tokens"] > 0
    assert metrics["completion_tokens"] > 0
    assert metrics["agents"]["Solo"]["prompt_tokens"] == metrics["prompt_tokens"]
    (step,) = of(result, ev.StepCompleted)
    assert step.cost_usd is None  # genai-prices does not know a local model


async def test_llama_server_hub_is_forced_to_hand_off_to_its_only_peer(llama_server: str) -> None:
    hub_step, received = await run_forced_handoff(
        smollm(llama_server), error_config=FAST, wait=WAIT
    )
    assert isinstance(received[0], str)
    assert hub_step.prompt_tokens > 0


def test_request_for_llama_server_constrains_the_reply_to_the_allowed_peers() -> None:
    model = ModelConfig(
        provider="openai",
        name="smollm2",
        base_url="http://127.0.0.1:9/v1",
        action_format="json_object",
        temperature=0,
    ).build()
    assert isinstance(model, OpenAIChatModel)
    info = StepInfo(
        agent_name="Hub",
        branch_id="b0",
        step=1,
        actions=("invoke_agent",),
        peers=(PeerInfo("Worker", is_call=False),),
        parallel_groups=(),
        can_finish=False,
        can_ask_user=False,
    )
    body = model.request([Message("system", "You are Hub."), Message("user", "go")], info)
    assert body["model"] == "smollm2"
    assert body["temperature"] == 0
    assert "tools" not in body
    assert body["response_format"]["type"] == "json_object"
    schema = body["response_format"]["schema"]
    assert actions_in(schema) == ["invoke_agent"]
    assert invocation_enum(schema) == ["Worker"]
    assert body["messages"] == [
        {"role": "system", "content": "You are Hub."},
        {"role": "user", "content": "go"},
    ]


async def test_json_object_request_on_the_wire_lists_exactly_the_allowed_peers(
    server: ScriptedHTTPServer,
) -> None:
    topology = Topology(nodes=["Hub", "A", "B"], edges=["Hub -> A", "Hub -> B"])
    choice = {"next_action": "invoke_agent", "action_input": [{"agent_name": "B", "request": "go"}]}
    server.script(text(json.dumps(choice)))
    result = await run(
        "task",
        topology,
        [
            llm("Hub", config(server, action_format="json_object", temperature=0)),
            fn("A", lambda x, c: f"A:{x}"),
            fn("B", lambda x, c: f"B:{x}"),
        ],
    )
    assert result.success, result.error
    assert result.final_response == "B:go"
    (request,) = server.requests
    assert server.paths == ["/v1/chat/completions"]
    assert "tools" not in request
    assert request["temperature"] == 0
    schema = request["response_format"]["schema"]
    assert request["response_format"]["type"] == "json_object"
    assert actions_in(schema) == ["invoke_agent"]  # Hub is no exit: it may not finish
    assert sorted(invocation_enum(schema)) == ["A", "B"]
    assert len(invocation_enum(schema)) == 2
    items = schema["properties"]["action_input"]
    assert items["maxItems"] == 1


# ---- 2. native tool calls against a scripted server ----------------------------------------


async def test_invoke_agent_tool_call_hands_off(server: ScriptedHTTPServer) -> None:
    server.script(tool_calls(invoke_call("call_1", "Worker", "summarise Q3")))
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
    assert len(server.requests) == 1
    assert server.paths == ["/v1/chat/completions"]
    (step,) = [e for e in of(result, ev.StepCompleted) if e.agent == "Hub"]
    assert (step.prompt_tokens, step.completion_tokens) == (12, 7)


async def test_tools_sent_list_coordination_tools_allowed_now_and_the_agents_own_tools(
    server: ScriptedHTTPServer,
) -> None:
    def lookup(key: str, limit: int = 3) -> str:
        """Look a key up.

        Args:
            key: what to look up
            limit: how many results
        """
        return key

    topology = Topology(nodes=["Hub", "A", "B"], edges=["Hub -> A", "Hub -> B"])
    server.script(tool_calls(invoke_call("call_1", "A", "x")))
    hub = llm("Hub", config(server), tools=[lookup])
    result = await run(
        "task", topology, [hub, fn("A", lambda x, c: "a"), fn("B", lambda x, c: "b")]
    )
    assert result.success, result.error
    (request,) = server.requests
    assert "response_format" not in request
    tools = tools_by_name(request)
    assert sorted(tools) == ["invoke_agent", "lookup"]  # no final_response: Hub is no exit
    invocations = tools["invoke_agent"]["parameters"]["properties"]["invocations"]
    assert sorted(invocations["items"]["properties"]["agent_name"]["enum"]) == ["A", "B"]
    assert invocations["maxItems"] == 1
    assert tools["lookup"]["parameters"] == dict(hub.tools["lookup"].spec.parameters)
    assert tools["lookup"]["parameters"]["required"] == ["key"]
    assert tools["lookup"]["description"] == "Look a key up."


async def test_tools_sent_to_an_exit_offer_final_response_and_no_invoke(
    server: ScriptedHTTPServer,
) -> None:
    def lookup(key: str) -> str:
        """Look a key up."""
        return key

    server.script(tool_calls(final_call("call_1", "42")))
    result = await run("task", SOLO, [llm("Solo", config(server), tools=[lookup])])
    assert result.success, result.error
    assert result.final_response == "42"
    tools = tools_by_name(server.requests[0])
    assert sorted(tools) == ["final_response", "lookup"]
    assert tools["final_response"]["parameters"]["required"] == ["response"]


async def test_an_agent_that_may_only_answer_gets_no_tools_and_its_text_is_the_answer(
    server: ScriptedHTTPServer,
) -> None:
    server.script(text("Paris"))
    result = await run("capital of France?", SOLO, [llm("Solo", config(server))])
    assert result.success, result.error
    assert result.final_response == "Paris"
    (request,) = server.requests
    assert "tools" not in request and "response_format" not in request


async def test_a_seed_is_sent_when_given_and_only_then(server: ScriptedHTTPServer) -> None:
    server.script(text("Paris"), text("Paris"))
    for model in (config(server, seed=1234), config(server)):
        result = await run("capital of France?", SOLO, [llm("Solo", model)])
        assert result.success, result.error
    seeded, unseeded = server.requests
    assert seeded["seed"] == 1234
    assert "seed" not in unseeded


async def test_own_tool_and_final_response_in_one_reply_runs_the_tool_then_finishes(
    server: ScriptedHTTPServer,
) -> None:
    ran: list[tuple[int, int]] = []

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        ran.append((a, b))
        return a + b

    server.script(
        tool_calls(call("call_1", "add", {"a": 2, "b": 3}), final_call("call_2", "the sum is 5"))
    )
    result = await run("add 2 and 3", SOLO, [llm("Solo", config(server), tools=[add])])
    assert result.success, result.error
    assert result.final_response == "the sum is 5"
    assert ran == [(2, 3)]
    assert len(server.requests) == 1
    (completed,) = of(result, ev.ToolCallCompleted)
    assert (completed.tool, completed.call_id, completed.ok) == ("add", "call_1", True)
    finished = next(e for e in of(result, ev.BranchCompleted) if e.branch_id == "b0")
    assert result.events.index(completed) < result.events.index(finished)


async def test_follow_up_request_answers_the_tool_call_id_with_the_tool_result(
    server: ScriptedHTTPServer,
) -> None:
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    server.script(
        tool_calls(call("call_7", "add", {"a": 2, "b": 3})), tool_calls(final_call("call_8", "5"))
    )
    result = await run("add 2 and 3", SOLO, [llm("Solo", config(server), tools=[add])])
    assert result.success, result.error
    assert result.final_response == "5"
    assert len(server.requests) == 2
    messages = server.requests[1]["messages"]
    assert_tool_calls_answered(messages)
    assert messages[-2]["role"] == "assistant"
    assert messages[-2]["tool_calls"] == [call("call_7", "add", {"a": 2, "b": 3})]
    assert messages[-1] == {"role": "tool", "tool_call_id": "call_7", "content": "ok: 5"}


async def test_own_tool_with_a_call_answers_every_tool_call_id_in_the_follow_up(
    server: ScriptedHTTPServer,
) -> None:
    def lookup(key: str) -> str:
        """Look a key up."""
        return f"value-{key}"

    server.script(
        tool_calls(
            call("call_a", "lookup", {"key": "x"}), invoke_call("call_b", "Worker", "check")
        ),
        text("all done"),
    )
    result = await run(
        "task",
        CALL,
        [llm("Hub", config(server), tools=[lookup]), fn("Worker", lambda x, c: f"W:{x}")],
    )
    assert result.success, result.error
    assert result.final_response == "all done"
    assert [(e.source, e.target, e.kind) for e in of(result, ev.WorkHandedOver)] == [
        ("Hub", "Worker", "call"),
        ("Worker", "Hub", "return"),
    ]
    messages = server.requests[1]["messages"]
    assert_tool_calls_answered(messages)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool", "user"]
    assert messages[3] == {"role": "tool", "tool_call_id": "call_a", "content": "ok: value-x"}
    assert messages[4]["tool_call_id"] == "call_b"
    assert messages[5]["content"] == "[Response from Worker]\nW:check"


async def test_two_coordination_calls_in_one_reply_are_steered(
    server: ScriptedHTTPServer,
) -> None:
    server.script(
        tool_calls(invoke_call("call_1", "Worker", "x"), final_call("call_2", "early")),
        tool_calls(final_call("call_3", "done")),
    )
    result = await run("task", CALL, [llm("Hub", config(server)), fn("Worker", lambda x, c: x)])
    assert result.success, result.error
    assert result.final_response == "done"
    (rejected,) = of(result, ev.ActionRejected)
    assert "invoke_agent, final_response" in rejected.problem
    assert "at most one coordination tool" in rejected.problem
    assert not result.was_agent_invoked("Worker")
    messages = server.requests[1]["messages"]
    assert_tool_calls_answered(messages)
    assert [m.get("tool_call_id") for m in messages if m["role"] == "tool"] == [
        "call_1",
        "call_2",
    ]
    assert messages[-1]["role"] == "user"
    assert messages[-1]["content"].startswith("[Orchestra]")


async def test_invalid_json_in_tool_call_arguments_is_steered(
    server: ScriptedHTTPServer,
) -> None:
    server.script(
        tool_calls(call("call_1", "final_response", '{"response": "unterminated')),
        tool_calls(final_call("call_2", "fixed")),
    )
    result = await run("task", CALL, [llm("Hub", config(server)), fn("Worker", lambda x, c: x)])
    assert result.success, result.error
    assert result.final_response == "fixed"
    (rejected,) = of(result, ev.ActionRejected)
    assert "final_response" in rejected.problem
    assert "not valid JSON" in rejected.problem
    # What the model sent is what the rejection quotes, not a placeholder.
    assert "final_response" in rejected.reply
    messages = server.requests[1]["messages"]
    assert_tool_calls_answered(messages)
    assert "not valid JSON" in messages[-1]["content"]


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ('{"response": ' + "[" * 100_000 + "]" * 100_000 + "}", "nests deeper than 100 levels"),
        ('{"response": ' + "9" * 5000 + "}", "holds a number of more than 4300 digits"),
    ],
    ids=["deep", "long-number"],
)
async def test_unreadable_tool_call_arguments_are_steered(
    server: ScriptedHTTPServer, arguments: str, problem: str
) -> None:
    """json.loads raised RecursionError or ValueError on these, which failed the branch."""
    server.script(
        tool_calls(call("call_1", "final_response", arguments)),
        tool_calls(final_call("call_2", "fixed")),
    )
    result = await run("task", CALL, [llm("Hub", config(server)), fn("Worker", lambda x, c: x)])
    assert result.success, result.error
    assert result.final_response == "fixed"
    (rejected,) = of(result, ev.ActionRejected)
    assert rejected.problem == f"the arguments of tool call 'final_response' {problem}"
    assert problem in server.requests[1]["messages"][-1]["content"]


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("[" * 100_000 + "]" * 100_000, "nests deeper than 100 levels"),
        ("9" * 5000, "holds a number of more than 4300 digits"),
    ],
    ids=["deep", "long-number"],
)
async def test_a_body_the_sdk_cannot_read_is_steered_not_a_crash(
    server: ScriptedHTTPServer, extra: str, problem: str
) -> None:
    """The SDK's own JSON reader raised RecursionError on a body nested 100,000 deep, which
    escaped the adapter and failed the step as an AgentStepError."""
    body = json.dumps(text("hi").body).replace('"content": "hi"', f'"content": "hi", "x": {extra}')
    server.script(Scripted(200, body.encode()), text("fine"))
    result = await run("task", SOLO, [llm("Solo", config(server))])
    assert result.success, result.error
    assert result.final_response == "fine"
    (rejected,) = of(result, ev.ActionRejected)
    assert rejected.problem == f"the reply {problem}"
    assert problem in server.requests[1]["messages"][-1]["content"]


async def test_text_format_sends_no_tools_and_reads_the_json_protocol_from_text(
    server: ScriptedHTTPServer,
) -> None:
    choice = {"next_action": "invoke_agent", "action_input": [{"agent_name": "Worker"}]}
    server.script(text("```json\n" + json.dumps(choice) + "\n```"))
    model = config(server, action_format="text")
    result = await run("task", HANDOFF, [llm("Hub", model), fn("Worker", lambda x, c: "w")])
    assert result.success, result.error
    assert result.final_response == "w"
    (request,) = server.requests
    assert "tools" not in request and "response_format" not in request
    assert "invoke_agent" in request["messages"][0]["content"]  # the protocol is in the prompt


async def test_tool_calls_with_no_id_or_one_id_twice_are_each_run_and_answered(
    server: ScriptedHTTPServer,
) -> None:
    """Some OpenAI-compatible servers send tool calls without ids (or reuse one) and null
    token counts. The calls' results were matched by id, so the second call was never run
    and got the first one's result; with a session the run aborted (an id of None cannot be
    stored); the null counts raised a TypeError."""

    def lookup(key: str) -> str:
        """Look a key up."""
        return f"value-{key}"

    nameless = call("", "lookup", {"key": "x"})
    del nameless["id"]
    reply = tool_calls(
        nameless, call("dup", "lookup", {"key": "y"}), call("dup", "lookup", {"key": "z"})
    )
    reply.body["usage"] = {"prompt_tokens": None, "completion_tokens": None}
    server.script(reply, text("all done"))
    result = await run("task", SOLO, [llm("Solo", config(server), tools=[lookup])])
    assert result.success, result.error
    messages = server.requests[1]["messages"]
    assert_tool_calls_answered(messages)
    assert [item["id"] for item in messages[2]["tool_calls"]] == ["call_0", "dup", "call_2"]
    assert [m["content"] for m in messages[3:6]] == [
        "ok: value-x",
        "ok: value-y",
        "ok: value-z",
    ]


async def test_a_reply_without_usage_counts_no_tokens(server: ScriptedHTTPServer) -> None:
    answer = text("ok")
    del answer.body["usage"]
    server.script(answer)
    result = await run("task", SOLO, [llm("Solo", config(server))])
    assert result.success, result.error
    (step,) = of(result, ev.StepCompleted)
    assert (step.prompt_tokens, step.completion_tokens, step.cost_usd) == (0, 0, None)


# ---- 3. retries and errors -------------------------------------------------------------------


async def test_429_with_retry_after_is_retried_then_succeeds(server: ScriptedHTTPServer) -> None:
    server.script(
        error(429, "slow down", {"retry-after": "0.01"}), tool_calls(final_call("call_1", "ok"))
    )
    policy = ErrorHandlingConfig(max_retries=2, retry_initial_delay=0, retry_max_delay=1)
    result = await run("task", SOLO, [llm("Solo", config(server))], error_config=policy)
    assert result.success, result.error
    assert result.final_response == "ok"
    assert len(server.requests) == 2
    (retried,) = of(result, ev.ModelCallRetried)
    assert (retried.agent, retried.attempt, retried.delay) == ("Solo", 1, 0.01)
    assert "HTTP 429" in retried.error and "slow down" in retried.error


async def test_retry_after_zero_is_retried_at_once(server: ScriptedHTTPServer) -> None:
    server.script(error(429, "rate limited", {"retry-after": "0"}), text("fine"))
    result = await run("task", SOLO, [llm("Solo", config(server))])
    assert result.success, result.error
    assert result.final_response == "fine"
    (retried,) = of(result, ev.ModelCallRetried)
    assert retried.delay == 0


async def test_500_is_retried_then_succeeds(server: ScriptedHTTPServer) -> None:
    server.script(error(500, "internal"), error(503, "unavailable"), text("recovered"))
    result = await run("task", SOLO, [llm("Solo", config(server))])
    assert result.success, result.error
    assert result.final_response == "recovered"
    assert len(server.requests) == 3
    assert [e.attempt for e in of(result, ev.ModelCallRetried)] == [1, 2]
    assert server.requests[0] == server.requests[2]  # the same request, sent again


async def test_retries_exhausted_fail_the_run_naming_provider_model_and_status(
    server: ScriptedHTTPServer,
) -> None:
    server.script(*[error(500, "server exploded")] * 3)
    result = await run("task", SOLO, [llm("Solo", config(server))])
    assert not result.success
    assert len(server.requests) == 3  # the call and max_retries=2 retries
    assert len(of(result, ev.ModelCallRetried)) == 2
    assert result.metadata["error_type"] == "ModelAPIError"
    assert result.error is not None
    assert "openai" in result.error
    assert f"'{MODEL}'" in result.error
    assert "HTTP 500" in result.error
    assert "server exploded" in result.error


async def test_401_is_not_retried(server: ScriptedHTTPServer) -> None:
    server.script(error(401, "invalid api key"), text("never sent"))
    result = await run("task", SOLO, [llm("Solo", config(server))])
    assert not result.success
    assert len(server.requests) == 1
    assert of(result, ev.ModelCallRetried) == []
    assert result.error is not None
    assert "HTTP 401" in result.error and "invalid api key" in result.error


@pytest.mark.parametrize("body", [b"this is not json", {"unexpected": True}])
async def test_malformed_200_body_fails_the_run(server: ScriptedHTTPServer, body: Any) -> None:
    server.script(Scripted(200, body), text("never sent"))
    result = await run("task", SOLO, [llm("Solo", config(server))])
    assert not result.success
    assert len(server.requests) == 1  # not retryable
    assert result.metadata["error_type"] == "ModelAPIError"
    assert result.error is not None
    assert "malformed response" in result.error
    assert f"openai model '{MODEL}'" in result.error


async def test_connection_refused_is_retried_then_reported_as_cannot_reach() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    model = ModelConfig(provider="openai", name=MODEL, base_url=url, api_key="sk-test")
    policy = ErrorHandlingConfig(max_retries=1, retry_initial_delay=0, retry_max_delay=0)
    result = await run("task", SOLO, [llm("Solo", model)], error_config=policy)
    assert not result.success
    assert result.error is not None
    assert "cannot reach" in result.error and url in result.error
    assert "openai" in result.error
    (retried,) = of(result, ev.ModelCallRetried)
    assert "cannot reach" in retried.error


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        ({}, None),
    ],
)
def test_retry_after_seconds(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_seconds(headers) == seconds
    assert retry_after_seconds(None) is None


def test_which_statuses_are_retryable() -> None:
    assert [
        s for s in (400, 401, 403, 404, 408, 409, 422, 429, 500, 502, 503, 529) if is_retryable(s)
    ] == [
        408,
        409,
        429,
        500,
        502,
        503,
        529,
    ]


# ---- 4. cost -------------------------------------------------------------------------------


async def test_cost_of_a_model_genai_prices_knows(server: ScriptedHTTPServer) -> None:
    server.script(text("cheap"))
    result = await run("task", SOLO, [llm("Solo", config(server, name="gpt-4o-mini"))])
    assert result.success, result.error
    (step,) = of(result, ev.StepCompleted)
    assert step.cost_usd is not None and step.cost_usd > 0
    assert (step.prompt_tokens, step.completion_tokens) == (12, 7)


async def test_cost_of_an_unknown_model_is_none(server: ScriptedHTTPServer) -> None:
    server.script(text("free?"))
    result = await run("task", SOLO, [llm("Solo", config(server, name="no-such-model-xyz"))])
    assert result.success, result.error
    (step,) = of(result, ev.StepCompleted)
    assert step.cost_usd is None
