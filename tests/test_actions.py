"""The action protocol (parse_reply / parse_action, Action constructors) and the test models."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Sequence

import pytest

from orchestra.agents import replies
from orchestra.agents.contract import Action, ActionKind, Invocation
from orchestra.agents.replies import (
    ActionParseError,
    checked_tool_calls,
    parse_action,
    parse_reply,
)
from orchestra.errors import ScriptExhaustedError
from orchestra.models import FunctionModel, Message, ModelReply, PeerInfo, ScriptedModel, StepInfo
from orchestra.models.base import ToolCall, Usage
from orchestra.models.protocol import MAX_NESTING


def info(agent: str = "A", **overrides: object) -> StepInfo:
    fields: dict[str, object] = {
        "agent_name": agent,
        "branch_id": "b0",
        "step": 1,
        "actions": ("invoke_agent", "final_response"),
        "peers": (PeerInfo("B", is_call=True), PeerInfo("C", is_call=False, label="ok")),
        "parallel_groups": (("B", "C"),),
        "can_finish": True,
        "can_ask_user": False,
        "tools": ("search",),
        "context": {"k": "v"},
    }
    fields.update(overrides)
    return StepInfo(**fields)  # type: ignore[arg-type]


# ---- parse_action: the protocol form --------------------------------------------------------


def test_invoke_agent_one_item() -> None:
    action = parse_action(
        {"next_action": "invoke_agent", "action_input": [{"agent_name": "W1", "request": "go"}]}
    )
    assert action.kind is ActionKind.INVOKE
    assert action.invocations == (Invocation("W1", "go"),)
    assert action.targets == ("W1",)


def test_invoke_agent_several_items_keep_order_request_and_label() -> None:
    action = parse_action(
        {
            "next_action": "invoke_agent",
            "action_input": [
                {"agent_name": "W1", "request": {"part": 1}},
                {"agent_name": "W2", "request": "b", "label": "valid"},
                {"agent_name": "W3"},
            ],
        }
    )
    assert action.targets == ("W1", "W2", "W3")
    assert action.invocations[0].request == {"part": 1}
    assert action.invocations[1].label == "valid"
    assert action.invocations[2].request is None
    assert action.invocations[2].label is None


def test_final_response_unwraps_response() -> None:
    action = parse_action(
        {"next_action": "final_response", "action_input": {"response": {"answer": [1, 2]}}}
    )
    assert action.kind is ActionKind.FINAL
    assert action.response == {"answer": [1, 2]}


def test_final_response_with_other_keys_keeps_the_whole_input() -> None:
    body = {"response": "x", "confidence": 0.9}
    assert parse_action({"next_action": "final_response", "action_input": body}).response == body


def test_final_response_without_input_is_none() -> None:
    action = parse_action({"next_action": "final_response"})
    assert action.kind is ActionKind.FINAL
    assert action.response is None


def test_ask_user() -> None:
    action = parse_action({"next_action": "ask_user", "action_input": {"question": "Which year?"}})
    assert action.kind is ActionKind.ASK_USER
    assert action.question == "Which year?"


def test_call_tool() -> None:
    action = parse_action(
        {
            "next_action": "call_tool",
            "action_input": [
                {"name": "search", "arguments": {"q": "x"}},
                {"name": "fetch", "arguments": {"url": "u"}, "id": "abc"},
                {"name": "now"},
            ],
        }
    )
    assert action.kind is ActionKind.CALL_TOOL
    assert action.tool_calls == (
        ToolCall("search", {"q": "x"}, "call_0"),
        ToolCall("fetch", {"url": "u"}, "abc"),
        ToolCall("now", {}, "call_2"),
    )


# ---- the lenient forms ------------------------------------------------------------------------


def test_single_invocation_not_in_a_list() -> None:
    action = parse_action(
        {"next_action": "invoke_agent", "action_input": {"agent_name": "W1", "request": "go"}}
    )
    assert action.invocations == (Invocation("W1", "go"),)


def test_single_tool_call_not_in_a_list() -> None:
    action = parse_action(
        {"next_action": "call_tool", "action_input": {"name": "search", "arguments": {"q": 1}}}
    )
    assert action.tool_calls == (ToolCall("search", {"q": 1}, "call_0"),)


def test_bare_string_response() -> None:
    action = parse_action({"next_action": "final_response", "action_input": "the answer"})
    assert action.kind is ActionKind.FINAL
    assert action.response == "the answer"


def test_bare_string_question() -> None:
    action = parse_action({"next_action": "ask_user", "action_input": "Which year?"})
    assert action.question == "Which year?"


# ---- parse_reply: text and structured replies -------------------------------------------------

FINAL = {"next_action": "final_response", "action_input": {"response": "done"}}


def test_structured_reply_wins_over_text() -> None:
    action = parse_reply("ignored plain text", FINAL)
    assert action == Action.final("done")


def test_json_text() -> None:
    assert parse_reply(json.dumps(FINAL), None) == Action.final("done")


def test_json_text_with_surrounding_whitespace() -> None:
    assert parse_reply("\n  " + json.dumps(FINAL) + "  \n", None) == Action.final("done")


def test_json_in_json_fence_with_prose_around() -> None:
    text = f"Here is my decision:\n```json\n{json.dumps(FINAL, indent=2)}\n```\nThanks."
    assert parse_reply(text, None) == Action.final("done")


def test_json_in_plain_fence() -> None:
    text = f"```\n{json.dumps(FINAL)}\n```"
    assert parse_reply(text, None) == Action.final("done")


@pytest.mark.parametrize("text", ["Just a plain answer.", "", "   ", "[1, 2, 3]", "42"])
def test_plain_text_is_no_action(text: str) -> None:
    assert parse_reply(text, None) is None


def test_no_content_at_all_is_no_action() -> None:
    assert parse_reply(None, None) is None


@pytest.mark.parametrize("text", ['{"answer": 42}', '{"response": "x"}', "{}"])
def test_json_that_is_not_an_action_is_no_action(text: str) -> None:
    assert parse_reply(text, None) is None


@pytest.mark.parametrize(
    "text",
    [
        '{"next_action": "final_response", ',
        "{not json}",
        '{"next_action": "final_response"} trailing words',
        "```json\n{'next_action': 'final_response'}\n```",
    ],
)
def test_malformed_json_starting_with_brace_is_a_parse_error(text: str) -> None:
    with pytest.raises(ActionParseError, match="not valid JSON") as caught:
        parse_reply(text, None)
    assert "next_action" in str(caught.value)  # the hint names the protocol


def nested(depth: int) -> str:
    """A final response whose JSON nests ``depth`` levels in all (the action object is one)."""
    inner = depth - 1  # under the action object, the outermost list is action_input
    return '{"next_action": "final_response", "action_input": ' + "[" * inner + "]" * inner + "}"


def test_a_reply_nested_past_what_python_reads_is_a_parse_error() -> None:
    """json.loads raises RecursionError on it: a crash of the step, before."""
    with pytest.raises(ActionParseError, match=f"nests deeper than {MAX_NESTING} levels"):
        parse_reply(nested(100_000), None)


def test_a_reply_nested_past_what_the_log_stores_is_a_parse_error() -> None:
    """It parses, but the session log could not store the value, and the step would fail."""
    parse_reply(nested(MAX_NESTING), None)
    with pytest.raises(ActionParseError, match=f"nests deeper than {MAX_NESTING} levels"):
        parse_reply(nested(MAX_NESTING + 1), None)


def test_a_number_too_long_to_convert_is_a_parse_error() -> None:
    """json.loads raises a plain ValueError (int's digit limit): a crash of the step, before."""
    text = '{"next_action": "final_response", "action_input": ' + "9" * 5000 + "}"
    with pytest.raises(ActionParseError, match="holds a number of more than 4300 digits") as caught:
        parse_reply(text, None)
    assert "next_action" in str(caught.value)  # steered like any other unusable reply


def test_a_structured_action_nested_too_deep_is_a_parse_error() -> None:
    value: list[object] = []
    for _ in range(MAX_NESTING):
        value = [value]
    with pytest.raises(ActionParseError, match="the action nests deeper"):
        parse_action({"next_action": "final_response", "action_input": value})


def test_tool_call_arguments_nested_too_deep_are_a_parse_error() -> None:
    value: list[object] = []
    for _ in range(MAX_NESTING):
        value = [value]
    fine = ToolCall("search", {"q": [[["x"]]]}, "c1")
    assert checked_tool_calls([fine]) == (fine,)
    with pytest.raises(ActionParseError, match="the arguments of tool call 'search' nests"):
        checked_tool_calls([fine, ToolCall("search", {"q": value}, "c2")])


def test_parse_error_is_a_value_error() -> None:
    assert issubclass(ActionParseError, ValueError)


# ---- parse_action: what is rejected -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["delegate", "", None, "FINAL_RESPONSE"])
def test_unknown_next_action(kind: object) -> None:
    with pytest.raises(ActionParseError, match="unknown next_action"):
        parse_action({"next_action": kind, "action_input": {}})


def test_missing_next_action() -> None:
    with pytest.raises(ActionParseError, match="unknown next_action"):
        parse_action({"action_input": {"response": "x"}})


def test_unknown_next_action_through_parse_reply() -> None:
    with pytest.raises(ActionParseError, match="'delegate'"):
        parse_reply('{"next_action": "delegate", "action_input": []}', None)


def test_extra_top_level_keys() -> None:
    with pytest.raises(ActionParseError, match=r"unexpected key.*thoughts"):
        parse_action({**FINAL, "thoughts": "hmm"})


def test_extra_keys_in_an_invocation_item() -> None:
    with pytest.raises(ActionParseError, match=r"unexpected key.*priority"):
        parse_action(
            {
                "next_action": "invoke_agent",
                "action_input": [{"agent_name": "W", "request": "x", "priority": 1}],
            }
        )


@pytest.mark.parametrize("body", [[], None, "W1", 3])
def test_empty_or_missing_invocation_list(body: object) -> None:
    with pytest.raises(ActionParseError, match="non-empty list"):
        parse_action({"next_action": "invoke_agent", "action_input": body})


@pytest.mark.parametrize("item", ["W1", {"request": "x"}, {"agent_name": 3}, ["W1"]])
def test_invocation_item_without_agent_name(item: object) -> None:
    with pytest.raises(ActionParseError, match="agent_name"):
        parse_action({"next_action": "invoke_agent", "action_input": [item]})


@pytest.mark.parametrize("label", [1, ["valid"], {"l": 1}, True])
def test_non_string_label(label: object) -> None:
    with pytest.raises(ActionParseError, match="'label' must be a string"):
        parse_action(
            {"next_action": "invoke_agent", "action_input": [{"agent_name": "W", "label": label}]}
        )


@pytest.mark.parametrize("arguments", ["q=1", [1, 2], 5])
def test_bad_tool_arguments(arguments: object) -> None:
    with pytest.raises(ActionParseError, match="'arguments' must be an object"):
        parse_action(
            {"next_action": "call_tool", "action_input": [{"name": "t", "arguments": arguments}]}
        )


@pytest.mark.parametrize("item", [{"arguments": {}}, {"name": 3}, "search"])
def test_tool_item_without_name(item: object) -> None:
    with pytest.raises(ActionParseError, match="call_tool item"):
        parse_action({"next_action": "call_tool", "action_input": [item]})


def test_empty_tool_call_list() -> None:
    with pytest.raises(ActionParseError, match="non-empty list"):
        parse_action({"next_action": "call_tool", "action_input": []})


@pytest.mark.parametrize("body", [{"question": ""}, {"question": "   "}, {}, "", None, 3])
def test_ask_user_needs_a_question(body: object) -> None:
    with pytest.raises(ActionParseError, match="question"):
        parse_action({"next_action": "ask_user", "action_input": body})


# ---- Action constructors ----------------------------------------------------------------------


def test_invoke_constructor() -> None:
    action = Action.invoke("B", {"x": 1}, label="valid")
    assert action.kind is ActionKind.INVOKE
    assert action.invocations == (Invocation("B", {"x": 1}, "valid"),)
    assert Action.invoke("B").invocations == (Invocation("B", None, None),)


def test_invoke_parallel_with_tuples_and_invocations() -> None:
    action = Action.invoke_parallel([("W1", "a"), Invocation("W2", "b", "lab"), ("W1", "c")])
    assert action.kind is ActionKind.INVOKE
    assert action.invocations == (
        Invocation("W1", "a"),
        Invocation("W2", "b", "lab"),
        Invocation("W1", "c"),
    )
    assert action.targets == ("W1", "W2", "W1")


def test_invoke_parallel_accepts_any_iterable() -> None:
    action = Action.invoke_parallel(("W", i) for i in range(3))
    assert [item.request for item in action.invocations] == [0, 1, 2]


def test_final_ask_user_and_call_tools_constructors() -> None:
    assert Action.final([1]).kind is ActionKind.FINAL
    assert Action.final([1]).response == [1]
    assert Action.final(None).response is None
    ask = Action.ask_user("Why?")
    assert (ask.kind, ask.question) == (ActionKind.ASK_USER, "Why?")
    calls = Action.call_tools(iter([ToolCall("t", {"a": 1}, "c1")]))
    assert calls.kind is ActionKind.CALL_TOOL
    assert calls.tool_calls == (ToolCall("t", {"a": 1}, "c1"),)


def test_invocation_payload_is_what_conditions_see() -> None:
    assert Invocation("B", "r").payload() == {"agent_name": "B", "request": "r"}
    assert Invocation("B", "r", "ok").payload() == {
        "agent_name": "B",
        "request": "r",
        "label": "ok",
    }


@pytest.mark.parametrize(
    "action",
    [
        Action.invoke("B", "r"),
        Action.invoke("B", {"nested": [1, 2]}, label="valid"),
        Action.invoke_parallel([("W1", "a"), Invocation("W2", "b", "x")]),
        Action.final("done"),
        Action.final({"response": 1, "more": 2}),
        Action.final(None),
        Action.ask_user("Which year?"),
        Action.call_tools(
            [ToolCall("search", {"q": "x"}, "call_0"), ToolCall("now", {}, "call_1")]
        ),
    ],
    ids=lambda a: a.describe(),
)
def test_to_protocol_round_trips_through_parse_action(action: Action) -> None:
    protocol = action.to_protocol()
    assert json.loads(json.dumps(protocol)) == protocol  # plain JSON data
    assert parse_action(protocol) == action
    assert parse_reply(json.dumps(protocol), None) == action


def test_to_protocol_round_trip_keeps_tool_call_ids() -> None:
    action = Action.call_tools([ToolCall("search", {"q": "x"}, "toolu_01"), ToolCall("now", {})])
    back = parse_action(action.to_protocol())
    assert back.tool_calls[0].call_id == "toolu_01"


def test_to_protocol_forms() -> None:
    assert Action.invoke("B", "r", label="l").to_protocol() == {
        "next_action": "invoke_agent",
        "action_input": [{"agent_name": "B", "request": "r", "label": "l"}],
    }
    assert Action.final(3).to_protocol() == {
        "next_action": "final_response",
        "action_input": {"response": 3},
    }
    assert Action.ask_user("q?").to_protocol() == {
        "next_action": "ask_user",
        "action_input": {"question": "q?"},
    }
    assert Action.call_tools([ToolCall("t", {"a": 1})]).to_protocol() == {
        "next_action": "call_tool",
        "action_input": [{"name": "t", "arguments": {"a": 1}}],
    }


def test_describe() -> None:
    assert Action.invoke("B").describe() == "invoke_agent(B)"
    assert Action.invoke_parallel([("W1", 1), ("W2", 2)]).describe() == "invoke_agent(W1, W2)"
    assert Action.final("x").describe() == "final_response"
    assert Action.ask_user("q").describe() == "ask_user"
    tools = Action.call_tools([ToolCall("a", {}), ToolCall("b", {})])
    assert tools.describe() == "call_tool(a, b)"


# ---- ScriptedModel ----------------------------------------------------------------------------


async def test_scripted_model_replies_in_order_in_every_form() -> None:
    usage = Usage(prompt_tokens=3, completion_tokens=4)
    model = ScriptedModel(["text", FINAL, ModelReply(content="c", usage=usage)])
    assert model.remaining == 3
    first = await model.complete([], info())
    assert (first.content, first.action) == ("text", None)
    second = await model.complete([], info())
    assert (second.content, second.action) == (None, FINAL)
    third = await model.complete([], info())
    assert third.content == "c"
    assert third.usage == usage
    assert third.usage.total_tokens == 7
    assert model.remaining == 0


async def test_scripted_model_exhaustion_names_the_agent() -> None:
    model = ScriptedModel(["only"])
    await model.complete([], info("Researcher"))
    with pytest.raises(ScriptExhaustedError, match=r"'Researcher'.*after 1"):
        await model.complete([], info("Researcher"))


async def test_scripted_model_raises_exception_replies_and_continues() -> None:
    model = ScriptedModel([ValueError("boom"), "after"])
    with pytest.raises(ValueError, match="boom"):
        await model.complete([], info())
    assert (await model.complete([], info())).content == "after"


async def test_scripted_model_records_calls_as_copies() -> None:
    model = ScriptedModel(["a", "b"])
    messages = [Message("system", "sys"), Message("user", "hi", name="User")]
    first_info = info(step=1)
    await model.complete(messages, first_info)
    messages.append(Message("assistant", "a", name="A"))
    await model.complete(messages, info(step=2))
    assert len(model.calls) == 2
    assert model.calls[0].messages == (Message("system", "sys"), Message("user", "hi", name="User"))
    assert model.calls[0].info is first_info
    assert len(model.calls[1].messages) == 3
    assert model.calls[1].info.step == 2


async def test_scripted_model_without_recording() -> None:
    model = ScriptedModel(["a"], record=False)
    await model.complete([], info())
    assert model.calls == []


async def test_scripted_model_rejects_unusable_reply_types() -> None:
    model = ScriptedModel([42])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="int"):
        await model.complete([], info())


# ---- FunctionModel ----------------------------------------------------------------------------


async def test_function_model_sync_function() -> None:
    seen: list[tuple[Sequence[Message], StepInfo]] = []

    def reply(messages: Sequence[Message], step: StepInfo) -> str:
        seen.append((messages, step))
        return f"hello from {step.agent_name}"

    model = FunctionModel(reply)
    messages = [Message("user", "hi")]
    result = await model.complete(messages, info("Writer"))
    assert result == ModelReply(content="hello from Writer")
    assert seen[0][0] == messages
    assert model.call_count == 1


async def test_function_model_async_function_and_action_dicts() -> None:
    async def reply(messages: Sequence[Message], step: StepInfo) -> dict[str, object]:
        return {"next_action": "final_response", "action_input": {"response": step.step}}

    model = FunctionModel(reply)
    result = await model.complete([], info(step=7))
    assert result.action == {"next_action": "final_response", "action_input": {"response": 7}}
    assert parse_reply(result.content, result.action) == Action.final(7)


async def test_function_model_may_return_a_model_reply() -> None:
    reply = ModelReply(content="x", usage=Usage(1, 2))
    model = FunctionModel(lambda messages, step: reply)
    assert await model.complete([], info()) is reply


async def test_function_model_sees_every_info_field() -> None:
    captured: list[StepInfo] = []

    def reply(messages: Sequence[Message], step: StepInfo) -> str:
        captured.append(step)
        return "ok"

    await FunctionModel(reply).complete([], info("Boss", branch_id="b3", step=5))
    step = captured[0]
    assert step.agent_name == "Boss"
    assert step.branch_id == "b3"
    assert step.step == 5
    assert step.actions == ("invoke_agent", "final_response")
    assert step.peers == (PeerInfo("B", True, None), PeerInfo("C", False, "ok"))
    assert step.peer_names == ("B", "C")
    assert step.parallel_groups == (("B", "C"),)
    assert step.can_finish is True
    assert step.can_ask_user is False
    assert step.tools == ("search",)
    assert step.context == {"k": "v"}


@pytest.mark.parametrize("bad", [42, None, ["list"], 3.5])
async def test_function_model_bad_return_type(bad: object) -> None:
    model = FunctionModel(lambda messages, step: bad)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="FunctionModel function must produce"):
        await model.complete([], info())


async def test_function_model_async_bad_return_type() -> None:
    async def reply(messages: Sequence[Message], step: StepInfo) -> object:
        return 42

    with pytest.raises(TypeError, match="int"):
        await FunctionModel(reply).complete([], info())  # type: ignore[arg-type]


def test_function_model_needs_a_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        FunctionModel("not a function")  # type: ignore[arg-type]


async def test_function_model_exceptions_propagate() -> None:
    def reply(messages: Sequence[Message], step: StepInfo) -> str:
        raise RuntimeError("model down")

    with pytest.raises(RuntimeError, match="model down"):
        await FunctionModel(reply).complete([], info())


@pytest.mark.parametrize("unit", ["```{", "```json {", "```{ ```"])
def test_reading_a_fenced_reply_takes_time_in_proportion_to_it(unit: str) -> None:
    """One regex found the fence, backtracking from every fence to the end: 320 KB of them
    took 5 s, on the event loop (1 MB would take a minute). Now milliseconds; the bound only
    catches the quadratic case."""
    reply = unit * (1_000_000 // len(unit))
    done = threading.Event()

    def read() -> None:
        with contextlib.suppress(ActionParseError):
            parse_reply(reply, None)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(30), f"reading {len(reply):,} characters of {unit!r} took over 30 s"


@pytest.mark.parametrize(
    ("reply", "body"),
    [
        ('pre ```json {"a": 1} ``` mid ``` end', '{"a": 1}'),
        ('```json\n{"a": {"b": 2}}\n```', '{"a": {"b": 2}}'),
        ('```{"a": "```"}```', '{"a": "```"}'),
        ("```{``` no closing brace", None),
        ("``` {x} y ```", None),
    ],
)
def test_the_fenced_json_is_the_first_fence_to_the_last_closing_one_after_a_brace(
    reply: str, body: str | None
) -> None:
    assert replies._fenced(reply) == body
