"""The adapters' streams: real server-sent events over loopback through the official SDKs
(OpenAI Chat Completions, Anthropic Messages), and the bundled SmolLM2 run in-process.

:class:`ScriptedHTTPServer` sends a scripted reply as the SSE stream the API sends (event by
event, chunked), or cuts it off mid-way; nothing of the SDKs' stream parsing is mocked. Each
run listens through ``Orchestra.stream``, so the models stream.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import FAST, HANDOFF, SOLO, llm, quiet
from servers import Scripted, ScriptedHTTPServer, chat_stream, messages_stream
from test_anthropic_adapter import config as anthropic_config
from test_anthropic_adapter import invoke_use, reply
from test_anthropic_adapter import text as block
from test_local_model import OCEAN, asking, info, smollm
from test_openai_adapter import MODEL, chat, final_call, invoke_call, tool_calls
from test_openai_adapter import config as openai_config

from orchestra import AgentRegistry, Orchestra, OrchestraResult, ScriptedModel
from orchestra.coordination.engine import events as ev
from orchestra.models import local, openai_chat
from orchestra.models.base import Message
from orchestra.models.local import LocalModel
from orchestra.models.local_prefix import PrefixStates

WAIT = 60.0  # real sockets, SDK imports and a real model on the CPU: only a hang should reach it
REPLY = "Paris is the capital of France."


async def streamed(
    topology: Any, agents: list[Any], **options: Any
) -> tuple[list[ev.Event], OrchestraResult]:
    seen: list[ev.Event] = []

    async def consume() -> OrchestraResult | None:
        async with Orchestra.stream(
            "capital of France?",
            topology,
            agent_registry=AgentRegistry(agents),
            execution_config=quiet(),
            error_config=FAST,
            **options,
        ) as events:
            async for event in events:
                seen.append(event)
        return events.result

    result = await asyncio.wait_for(consume(), WAIT)
    assert result is not None
    return seen, result


def texts(
    events: list[ev.Event], attempt: int | None = None, agent: str | None = None
) -> list[str]:
    return [
        event.text
        for event in events
        if isinstance(event, ev.StepDelta)
        and attempt in (None, event.attempt)
        and agent in (None, event.agent)
    ]


def completed(events: list[ev.Event]) -> ev.StepCompleted:
    return next(event for event in events if isinstance(event, ev.StepCompleted))


def test_the_scripted_server_says_it_closes_a_streamed_reply(server: ScriptedHTTPServer) -> None:
    """The test server closes the connection after a stream: it says so (``Connection:
    close``), else a client pooling the connection may send its next request on it as it
    closes ("Server disconnected without sending a response", a flake of every test and the
    bench that makes two streamed calls)."""
    server.script(chat_stream(chat({"role": "assistant", "content": REPLY}).body))
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT)
    try:
        connection.request("POST", "/v1/chat/completions", body=b'{"stream": true}')
        response = connection.getresponse()
        response.read()
        assert response.getheader("connection") == "close"
    finally:
        connection.close()


# ---- OpenAI Chat Completions ------------------------------------------------------------------


async def test_openai_text_arrives_in_its_chunks_with_the_usage_of_the_last(
    server: ScriptedHTTPServer,
) -> None:
    server.script(chat_stream(chat({"role": "assistant", "content": REPLY}).body, size=4))
    events, result = await streamed(SOLO, [llm("Solo", openai_config(server))])
    assert result.success, result.error
    assert texts(events) == [REPLY[i : i + 4] for i in range(0, len(REPLY), 4)]
    assert result.final_response == REPLY
    step = completed(events)
    assert (step.prompt_tokens, step.completion_tokens, step.finish_reason) == (12, 7, "stop")
    (request,) = server.requests
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("names", ["first", "later", "pieces", "every"])
async def test_openai_a_streamed_tool_call_hands_over_once_whole(
    server: ScriptedHTTPServer, names: str
) -> None:
    """Its arguments stream as they come (in the "tools" format, the action's JSON is there);
    its id and name are put together from their pieces however the server sends them."""
    handoff = tool_calls(invoke_call("c1", "Worker", "find the capital")).body
    server.script(chat_stream(handoff, size=6, names=names))
    worker = llm("Worker", ScriptedModel([REPLY]))
    events, result = await streamed(HANDOFF, [llm("Hub", openai_config(server)), worker])
    assert result.success, result.error
    assert result.final_response == REPLY
    assert [e.target for e in events if isinstance(e, ev.WorkHandedOver)] == ["Worker"]
    assert completed(events).finish_reason == "tool_calls"
    arguments = handoff["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert texts(events, agent="Hub") == [arguments[i : i + 6] for i in range(0, len(arguments), 6)]


async def test_openai_a_final_answer_by_tool_call_streams_its_arguments(
    server: ScriptedHTTPServer,
) -> None:
    answer = tool_calls(final_call("c1", REPLY)).body
    server.script(chat_stream(answer, size=8, names="pieces"))
    events, result = await streamed(SOLO, [llm("Solo", openai_config(server))])
    assert result.success, result.error
    assert result.final_response == REPLY
    assert "".join(texts(events)) == json.dumps({"response": REPLY})


ECHOED_KEY = "sk-proj-9f2c6e0d71ab4c3d8e7f"


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        ({"type": "server_error", "code": None}, True),  # OpenAI's own
        ({"type": "tokens", "code": "rate_limit_exceeded"}, True),
        ({"type": "InternalServerError", "code": 503}, True),  # vLLM's
        ({"type": "invalid_request_error", "code": None}, False),
        ({"type": "BadRequestError", "code": 400}, False),
    ],
)
async def test_openai_an_error_chunk_mid_stream_is_classified_as_its_status_would_be(
    server: ScriptedHTTPServer, error: dict[str, Any], retried: bool
) -> None:
    """``data: {"error": ...}`` part-way through a stream (the status was 200): retried when
    the same error as an HTTP status is, else the step fails with the API's message."""
    whole = chat({"role": "assistant", "content": REPLY}).body
    failing = chat_stream(whole, size=4)
    assert failing.events is not None
    failing.events[3:] = [(None, {"error": {"message": f"no {ECHOED_KEY}", **error}})]
    server.script(failing, chat_stream(whole, size=4))
    events, result = await streamed(SOLO, [llm("Solo", openai_config(server))])
    assert result.success is retried
    assert len([e for e in events if isinstance(e, ev.ModelCallRetried)]) == int(retried)
    if retried:
        assert result.final_response == REPLY
    else:
        assert f"the stream failed: {error['type']}: no" in (result.error or "")
        assert "malformed" not in (result.error or "")
        assert ECHOED_KEY not in (result.error or "")  # a server may echo the key it was sent


async def test_openai_a_server_refusing_stream_options_is_asked_without_from_then_on(
    server: ScriptedHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openai_chat, "_REFUSE_STREAM_OPTIONS", set())
    refusal = {"message": "Unrecognized request argument supplied: stream_options"}
    whole = chat({"role": "assistant", "content": REPLY}).body
    server.script(
        Scripted(400, {"error": {**refusal, "type": "invalid_request_error"}}),
        chat_stream(whole, size=4),
        chat_stream(whole, size=4),
    )
    for _ in range(2):
        events, result = await streamed(SOLO, [llm("Solo", openai_config(server))])
        assert result.success, result.error
        assert "".join(texts(events)) == result.final_response == REPLY
        assert completed(events).prompt_tokens == 12
    assert [request.get("stream_options") for request in server.requests] == [
        {"include_usage": True},
        None,
        None,
    ]


async def test_openai_a_stream_without_usage_counts_none_and_says_so_once(
    server: ScriptedHTTPServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(openai_chat, "_SAID_NO_USAGE", set())
    whole = chat({"role": "assistant", "content": REPLY}).body
    server.script(chat_stream(whole, usage=False), chat_stream(whole, usage=False))
    for _ in range(2):
        events, result = await streamed(SOLO, [llm("Solo", openai_config(server))])
        assert result.success, result.error
        step = completed(events)
        assert (step.prompt_tokens, step.completion_tokens) == (0, 0)
    (said,) = [r.getMessage() for r in caplog.records if "no token usage" in r.getMessage()]
    assert server.url in said and repr(MODEL) in said


async def test_openai_stream_false_keeps_the_model_on_plain_requests(
    server: ScriptedHTTPServer,
) -> None:
    server.script(chat({"role": "assistant", "content": REPLY}))
    events, result = await streamed(SOLO, [llm("Solo", openai_config(server, stream=False))])
    assert result.success and result.final_response == REPLY
    assert texts(events) == []
    assert "stream" not in server.requests[0]


async def test_openai_a_stream_cut_off_is_retried_and_its_text_starts_again(
    server: ScriptedHTTPServer,
) -> None:
    whole = chat({"role": "assistant", "content": REPLY}).body
    server.script(chat_stream(whole, size=4, cut_after=3), chat_stream(whole, size=4))
    events, result = await streamed(SOLO, [llm("Solo", openai_config(server))])
    assert result.success, result.error
    assert result.final_response == REPLY
    assert "".join(texts(events, attempt=0)) == REPLY[:8]  # two pieces, then the cut
    assert "".join(texts(events, attempt=1)) == REPLY
    (retried,) = [e for e in events if isinstance(e, ev.ModelCallRetried)]
    assert retried.attempt == 1
    assert len(server.requests) == 2


async def test_openai_nobody_listening_is_one_plain_request(server: ScriptedHTTPServer) -> None:
    server.script(chat({"role": "assistant", "content": REPLY}))
    result = await asyncio.wait_for(
        Orchestra.run(
            "t",
            SOLO,
            agent_registry=AgentRegistry([llm("Solo", openai_config(server))]),
            execution_config=quiet(),
        ),
        WAIT,
    )
    assert result.success and result.final_response == REPLY
    assert "stream" not in server.requests[0]


# ---- Anthropic Messages -------------------------------------------------------------------------


async def test_anthropic_text_arrives_in_its_deltas_with_the_usage_of_the_message(
    server: ScriptedHTTPServer,
) -> None:
    server.script(messages_stream(reply(block(REPLY)).body, size=5))
    events, result = await streamed(SOLO, [llm("Solo", anthropic_config(server))])
    assert result.success, result.error
    assert texts(events) == [REPLY[i : i + 5] for i in range(0, len(REPLY), 5)]
    assert result.final_response == REPLY
    step = completed(events)
    assert (step.prompt_tokens, step.completion_tokens, step.finish_reason) == (21, 8, "end_turn")
    assert server.requests[0]["stream"] is True


async def test_anthropic_a_streamed_tool_use_hands_over_once_whole(
    server: ScriptedHTTPServer,
) -> None:
    handoff = reply(block("Handing over."), invoke_use("t1", "Worker", "find the capital"))
    server.script(messages_stream(handoff.body, size=7))
    worker = llm("Worker", ScriptedModel([REPLY]))
    events, result = await streamed(HANDOFF, [llm("Hub", anthropic_config(server)), worker])
    assert result.success, result.error
    tool_input = {"invocations": [{"agent_name": "Worker", "request": "find the capital"}]}
    assert "".join(texts(events, agent="Hub")) == "Handing over." + json.dumps(tool_input)
    assert [e.target for e in events if isinstance(e, ev.WorkHandedOver)] == ["Worker"]
    assert result.final_response == REPLY


async def test_anthropic_a_stream_cut_off_is_retried_and_its_text_starts_again(
    server: ScriptedHTTPServer,
) -> None:
    whole = reply(block(REPLY)).body
    server.script(messages_stream(whole, size=5, cut_after=4), messages_stream(whole, size=5))
    events, result = await streamed(SOLO, [llm("Solo", anthropic_config(server))])
    assert result.success, result.error
    assert result.final_response == REPLY
    assert "".join(texts(events, attempt=0)) == REPLY[:10]  # start, block start, two deltas
    assert "".join(texts(events, attempt=1)) == REPLY
    assert len([e for e in events if isinstance(e, ev.ModelCallRetried)]) == 1


@pytest.mark.parametrize(
    ("kind", "retried"), [("overloaded_error", True), ("invalid_request_error", False)]
)
async def test_anthropic_an_error_event_mid_stream_is_retried_when_it_passes(
    server: ScriptedHTTPServer, kind: str, retried: bool
) -> None:
    """Anthropic reports overload part-way through a stream as an ``error`` event (the HTTP
    status was already 200): retried like a 529; an error that does not pass fails the step."""
    whole = reply(block(REPLY)).body
    failing = messages_stream(whole, size=5)
    assert failing.events is not None
    failing.events[4:] = [("error", {"type": "error", "error": {"type": kind, "message": "no"}})]
    server.script(failing, messages_stream(whole, size=5))
    events, result = await streamed(SOLO, [llm("Solo", anthropic_config(server))])
    assert result.success is retried
    assert len([e for e in events if isinstance(e, ev.ModelCallRetried)]) == int(retried)
    if retried:
        assert result.final_response == REPLY
    else:
        assert "the stream failed: invalid_request_error: no" in (result.error or "")


# ---- the local model ----------------------------------------------------------------------------


EMOJI = [  # its first tokens are parts of one character: no text comes until the whole one
    Message("user", "Write one word: ¿Qué tal? 日本語 emoji 🎉🎉🎉 repeat the emoji 5 times")
]


@pytest.mark.parametrize(
    ("question", "step", "max_tokens"),
    [
        pytest.param(OCEAN, asking(), 64, id="json-action"),
        pytest.param(OCEAN, info(can_finish=True), 64, id="text"),
        pytest.param(EMOJI, info(can_finish=True), 7, id="multi-byte-first"),
        pytest.param(EMOJI, asking(), 96, id="multi-byte-json"),
    ],
)
async def test_local_streams_the_reply_complete_gives_with_the_same_usage(
    question: list[Message], step: Any, max_tokens: int
) -> None:
    """Usage is counted from the tokens generated, not from when the first text came (an
    emoji's tokens give text only once all of them are in: they were counted as prompt)."""
    model = LocalModel(smollm(max_tokens=max_tokens))
    whole = await model.complete(question, step)
    pieces: list[str] = []
    streamed_reply = await model.stream(question, step, pieces.append)
    assert pieces
    assert "".join(pieces) == streamed_reply.content == whole.content
    assert streamed_reply.usage == whole.usage


async def ask(model: LocalModel, how: str, question: list[Message]) -> tuple[Any, ...]:
    step = asking()
    reply_ = await (
        model.complete(question, step)
        if how == "complete"
        else model.stream(question, step, lambda text: None)
    )
    return reply_.content, reply_.usage


PROTOCOL = Message("system", "You are Helper. " + "Answer briefly, in one JSON object. " * 12)
SEA = [PROTOCOL, Message("user", "What is the sea?")]
LAKE = [*SEA, Message("assistant", "Salt water."), Message("user", "And a lake?")]
COLOURS = [PROTOCOL, Message("user", "Name three colours.")]
QUESTIONS = {"sea": SEA, "lake": LAKE, "colours": COLOURS, "ocean": OCEAN, "emoji": EMOJI}


@pytest.fixture
def fresh_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], LocalModel]]:
    """Makes the bundled model, loaded anew each time (no state kept from any call); the
    models it loaded are closed after the test."""
    loaded: list[dict[Any, Any]] = []

    def make() -> LocalModel:
        monkeypatch.setattr(local, "_loaded", {})
        loaded.append(local._loaded)
        return LocalModel(smollm(max_tokens=24))

    yield make
    for models in loaded:
        for llama, _ in models.values():
            llama.close()


@pytest.mark.parametrize("seed", [1, 2])
async def test_local_a_reply_does_not_depend_on_the_calls_before_it(
    seed: int, fresh_model: Callable[[], LocalModel]
) -> None:
    """A reply is the one a fresh model gives its prompt, whatever was asked before and
    however (streamed or not). llama.cpp's own reuse of its cache evaluated a prompt's shared
    part in the batches of the call before, and greedy decoding wrote other text; the turns
    kept from earlier calls (a system prompt, a conversation that goes on) must not."""
    calls = [(name, how) for name in QUESTIONS for how in ("complete", "stream")]
    fresh = {call: await ask(fresh_model(), call[1], QUESTIONS[call[0]]) for call in calls}
    model = fresh_model()
    random.Random(seed).shuffle(calls)
    warm = {call: await ask(model, call[1], QUESTIONS[call[0]]) for call in calls}
    assert warm == fresh
    assert all(fresh[name, "stream"] == fresh[name, "complete"] for name in QUESTIONS)


async def test_local_turns_kept_from_an_earlier_call_are_not_evaluated_again(
    fresh_model: Callable[[], LocalModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prompt asked again evaluates only the reply's header after its last turn, and a
    conversation gone on only its new turns; usage still counts the whole prompt. (Each call
    evaluated its whole prompt: a 506-token one asked again took 3.7 s instead of 0.2 s.)"""
    model = fresh_model()
    llama, _ = local.load(model.path)
    counts: list[int] = []
    evaluate = llama.eval

    def counted(tokens: list[int]) -> None:
        counts.append(len(tokens))
        evaluate(tokens)

    async def evaluated(question: list[Message]) -> tuple[int, Any]:
        """The prompt tokens the call evaluated, and its usage."""
        counts.clear()
        usage = (await model.complete(question, asking())).usage
        return sum(counts) - (llama.n_tokens - usage.prompt_tokens), usage

    monkeypatch.setattr(llama, "eval", counted)
    first, usage = await evaluated(SEA)
    again, usage_again = await evaluated(SEA)
    lake, lake_usage = await evaluated(LAKE)
    assert first == usage.prompt_tokens > 100
    assert usage_again == usage
    assert 0 < again < 8
    assert lake == lake_usage.prompt_tokens - (usage.prompt_tokens - again)


def test_local_kept_states_stay_within_their_budget(
    fresh_model: Callable[[], LocalModel],
) -> None:
    """The least recently used states go first; a state larger than the budget is not kept."""
    llama, _ = local.load(fresh_model().path)
    chat = (
        "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    tokens = llama.tokenize(chat.format(PROTOCOL.content).encode(), special=True)
    end = llama.token_eos()  # SmolLM2's "<|im_end|>": it ends each turn
    _, user_turn = (index + 1 for index, token in enumerate(tokens) if token == end)
    one_state = 30_000 * user_turn  # SmolLM2-135M keeps about 23 KB a token
    kept = PrefixStates(llama, budget=one_state)
    kept.prepare(tokens)
    assert list(kept._states) == [tuple(tokens[:user_turn])]
    assert kept._size <= one_state
    assert llama.n_tokens == user_turn
    none_kept = PrefixStates(llama, budget=one_state // 10)
    none_kept.prepare(tokens)
    assert not none_kept._states and none_kept._size == 0


async def test_local_pieces_reach_the_loop_in_order_before_the_reply() -> None:
    """Handed over from the worker thread: each piece is told on the event loop's thread, all
    of them before ``stream`` returns."""
    loop_thread: list[bool] = []
    pieces: list[str] = []
    model = LocalModel(smollm(max_tokens=24))

    def on_delta(text: str) -> None:
        loop_thread.append(asyncio.get_running_loop() is not None)
        pieces.append(text)

    question = [Message("user", "Name three colours.")]
    reply_ = await model.stream(question, info(can_finish=True), on_delta)
    assert pieces and all(loop_thread)
    assert "".join(pieces) == reply_.content


async def test_local_a_run_listened_to_streams_its_answer() -> None:
    events, result = await streamed(SOLO, [llm("Solo", smollm(max_tokens=24))])
    assert result.success, result.error
    assert "".join(texts(events)) == result.final_response
