"""The in-process llama.cpp model, ModelConfig, retry delays and the action schemas.

The local model runs the bundled SmolLM2 for real, at temperature 0 (its default, with a fixed
seed); topologies leave the model one legal action where an action is needed. The rest are
direct unit checks.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import helpers
import pytest
from helpers import SOLO, llm, run_forced_handoff
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestra.coordination.config import ErrorHandlingConfig
from orchestra.errors import ConfigurationError, ModelAPIError
from orchestra.models import local
from orchestra.models.base import Message, PeerInfo, StepInfo, ToolSpec
from orchestra.models.config import MAX_SEED, ModelConfig
from orchestra.models.defaults import default_model_config
from orchestra.models.local import LocalModel, bundled_model_path
from orchestra.models.protocol import action_schema, coordination_tools
from orchestra.models.retry import retry_delay

WAIT = 60.0  # a real model on the CPU, loaded by the first run: only a hang should reach it
run = partial(helpers.run, wait=WAIT)


def smollm(max_tokens: int = 96) -> ModelConfig:
    """The bundled model; max_tokens only bounds the run time (an action takes about 40)."""
    return ModelConfig(provider="local", name="smollm2", temperature=0, max_tokens=max_tokens)


# ---- 1. the in-process model ---------------------------------------------------------------


async def test_local_one_node_run_finishes_with_a_string() -> None:
    agent = llm("Solo", smollm(max_tokens=32))
    assert isinstance(agent.model, LocalModel)
    result = await run("What is the capital of France?", SOLO, [agent])
    assert result.success, result.error
    assert isinstance(result.final_response, str)
    metrics = result.get_metrics()
    assert metrics["prompt_tokens"] > 0 and metrics["completion_tokens"] > 0


async def test_local_hub_is_forced_to_invoke_its_only_peer() -> None:
    await run_forced_handoff(smollm(), wait=WAIT)


async def test_the_llama_model_is_loaded_once_and_shared() -> None:
    path = bundled_model_path()
    first = llm("Solo", smollm(max_tokens=8))
    result = await run("Say hi.", SOLO, [first])
    assert result.success, result.error
    loaded = local._loaded[path]
    second = llm("Solo", smollm(max_tokens=8))
    other = llm("Solo", ModelConfig(provider="local", name=str(path), max_tokens=8))
    for agent in (second, other):
        assert isinstance(agent.model, LocalModel)
        assert agent.model.path == path
        result = await run("Say hi.", SOLO, [agent])
        assert result.success, result.error
        assert local._loaded[path] is loaded
    assert list(local._loaded).count(path) == 1


def test_the_bundled_model_decodes_greedily_with_a_fixed_seed_unless_told_otherwise() -> None:
    """The demo's model (the default with no key and no ORCHESTRA_MODEL) sets neither; what it
    sends llama.cpp is temperature 0 and seed 42 (docs/models.md). Given values win, 0 too."""
    demo = default_model_config({})
    assert (demo.provider, demo.name) == ("local", "smollm2")
    assert demo.temperature is None and demo.seed is None
    hello = [Message("user", "hi")]
    body = demo.build().request(hello, info(can_finish=True))
    assert (body["temperature"], body["seed"]) == (0, 42) == (0, local.DEFAULT_SEED)
    given = ModelConfig(provider="local", name="smollm2", temperature=0.7, seed=0)
    body = LocalModel(given).request(hello, info(can_finish=True))
    assert (body["temperature"], body["seed"]) == (0.7, 0)


async def test_the_bundled_model_gives_the_same_reply_to_the_same_prompt() -> None:
    """By default, with another prompt in between (whose kept turn states must not change
    this prompt's evaluation): a plain answer and a constrained action."""
    model = LocalModel(ModelConfig(provider="local", name="smollm2", max_tokens=32))
    solar = [Message("user", "Tell me about solar power.")]
    replies = [
        (await model.complete(solar, info(can_finish=True))).content,
        (await model.complete(OCEAN, asking())).content,
        (await model.complete(solar, info(can_finish=True))).content,
        (await model.complete(OCEAN, asking())).content,
    ]
    assert all(replies), replies
    assert replies[0] == replies[2] and replies[1] == replies[3], replies
    assert replies[0] != replies[1]


async def test_parallel_calls_take_the_model_in_the_order_they_were_made() -> None:
    """Left to the worker threads' race for the model, about one gather of six in five came
    back out of order, and parallel agents' steps with it (the demo's researchers)."""
    model = LocalModel(ModelConfig(provider="local", name="smollm2", max_tokens=4))

    async def ask(n: int, finished: list[int]) -> None:
        await model.complete([Message("user", f"Count to {n}.")], info(can_finish=True))
        finished.append(n)

    for _ in range(2):
        finished: list[int] = []
        await asyncio.gather(*(ask(n, finished) for n in range(6)))
        assert finished == list(range(6))


OCEAN = [  # unconstrained in length, SmolLM2 answers this with 484 characters in 112 tokens
    Message("system", "Answer with one JSON object."),
    Message("user", "List twenty facts about the ocean."),
]


def asking() -> StepInfo:
    """A step that may answer or ask the user: a constrained JSON reply, not plain text."""
    return info(can_finish=True, can_ask_user=True)


async def test_a_reply_that_would_outrun_max_tokens_is_cut_inside_its_text() -> None:
    """Unbounded, this reply is cut off mid-string and does not parse; a demo run failed so,
    every retry cut off again. Its text is capped instead, so the model closes it itself."""
    reply = await LocalModel(smollm(max_tokens=112)).complete(OCEAN, asking())
    answer = json.loads(reply.content or "")["action_input"]
    text = answer.get("response") or answer.get("question")
    assert 0 < len(text) <= local._chars_within(112)


async def test_a_reply_cut_off_inside_its_text_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the cap is not enough (digits cost a token each, and a demo run once repeated
    "2023-" until its tokens ran out), the cut reply is completed: the grammar made it a valid
    prefix."""
    monkeypatch.setattr(local, "bounded", lambda schema, max_chars: schema)
    reply = await LocalModel(smollm(max_tokens=112)).complete(OCEAN, asking())
    assert reply.usage.completion_tokens == 112  # it ran out
    answer = json.loads(reply.content or "")["action_input"]
    assert answer.get("response") or answer.get("question")


TEXT = st.text(max_size=12) | st.sampled_from(['a"b', "\\", "\n\t", "é", "😀x", "}]", "\\u0041"])
SCALAR = (
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False) | TEXT
)
ANY_JSON = st.recursive(
    SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3)
)
ACTIONS = st.fixed_dictionaries(
    {
        "next_action": st.just("final_response"),
        "action_input": st.fixed_dictionaries({"response": TEXT}),
    }
) | st.fixed_dictionaries(
    {
        "next_action": st.just("call_tool"),
        "action_input": st.lists(
            st.fixed_dictionaries({"name": TEXT, "arguments": st.dictionaries(TEXT, ANY_JSON)}),
            min_size=1,
            max_size=2,
        ),
    }
)
STYLES = st.sampled_from(
    [{}, {"ensure_ascii": False}, {"indent": 2}, {"separators": (" ,  ", " :\n ")}]
)


def begins(completed: Any, original: Any) -> bool:
    """Whether ``completed`` is ``original`` cut short: whole parts equal, the last one begun."""
    if isinstance(original, dict):
        keys = list(completed) if isinstance(completed, dict) else None
        return (
            keys is not None
            and keys == list(original)[: len(keys)]
            and all(completed[key] == original[key] for key in keys[:-1])
            and (not keys or begins(completed[keys[-1]], original[keys[-1]]))
        )
    if isinstance(original, list):
        return (
            isinstance(completed, list)
            and len(completed) <= len(original)
            and completed[:-1] == original[: max(len(completed) - 1, 0)]
            and (not completed or begins(completed[-1], original[len(completed) - 1]))
        )
    if isinstance(original, str):
        return isinstance(completed, str) and original.startswith(completed)
    return type(completed) is type(original) and completed == original


@settings(max_examples=80, deadline=None)
@given(ACTIONS, STYLES)
def test_a_reply_cut_anywhere_is_completed_as_what_it_began_or_not_at_all(
    action: dict[str, Any], style: dict[str, Any]
) -> None:
    reply = json.dumps(action, **style)
    assert json.loads(local.closed(reply) or "") == action
    for cut in range(len(reply)):
        completed = local.closed(reply[:cut])
        if completed is not None:
            value = json.loads(completed)
            assert begins(value, action), (reply[:cut], completed)
            json.dumps(value, ensure_ascii=False).encode()  # no half of a character left


@pytest.mark.parametrize(
    ("prefix", "completed"),
    [
        (
            '{"next_action": "final_response", "action_input": {"response": "The rep',
            '{"next_action": "final_response", "action_input": {"response": "The rep"}}',
        ),
        ('{"a": ["x", "y', '{"a": ["x", "y"]}'),
        ('{"a": "x\\', '{"a": "x"}'),  # a lone backslash: an escape cut short
        ('{"a": "x\\u00', '{"a": "x"}'),
        ('{"a": "x\\u00e9', '{"a": "x\\u00e9"}'),
        ('{"a": "x\\\\', '{"a": "x\\\\"}'),  # an escaped backslash is whole
        ('{"a": "q\\"uote', '{"a": "q\\"uote"}'),
        ('{"next_act', None),  # cut inside a key: nothing to complete
        ('{"a": tr', None),
        ('{"a": 12', None),  # a number that may have had more digits
        ('{"a": [1.5 ', '{"a": [1.5 ]}'),
        ('{"a": "x\\ud83d\\ude', '{"a": "x"}'),  # half of a character: dropped
    ],
)
def test_a_cut_reply_is_completed_only_where_it_was_cut_inside_a_value(
    prefix: str, completed: str | None
) -> None:
    assert local.closed(prefix) == completed


def test_a_cut_reply_too_deep_to_read_is_left_as_it_came() -> None:
    """Its RecursionError escaped the model call; the reply is refused (and the agent
    steered) when it is read."""
    assert local.closed("[" * 100_000 + '"cut') is None


def test_a_bad_model_path_is_a_configuration_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model.gguf"
    with pytest.raises(ConfigurationError, match=re.escape("no-such-model.gguf")) as caught:
        ModelConfig(provider="local", name=str(missing)).build()
    assert str(missing) in str(caught.value)
    with pytest.raises(ConfigurationError, match=re.escape("no-such-model.gguf")):
        llm("A", ModelConfig(provider="local", name=str(missing)))


# ---- 2. ModelConfig ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"provider": "mistral", "name": "m"}, "provider"),
        ({"provider": "openai", "name": ""}, "name"),
        ({"provider": "openai", "name": "m", "temperature": 5}, "temperature"),
        ({"provider": "openai", "name": "m", "max_tokens": 0}, "max_tokens"),
        ({"provider": "openai", "name": "m", "action_format": "xml"}, "action_format"),
        ({"provider": "openai", "name": "m", "color": "red"}, "color"),
        ({"provider": "openai", "name": "m", "seed": -1}, "seed"),
        ({"provider": "local", "name": "smollm2", "seed": MAX_SEED + 1}, "seed"),  # "random"
        ({"provider": "openai", "name": "m", "seed": "7"}, "seed"),
        ({"provider": "openai", "name": "m", "seed": 7.0}, "seed"),
        ({"provider": "openai", "name": "m", "seed": True}, "seed"),
    ],
)
def test_model_config_validation_names_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ModelConfig(**options)
    assert [error["loc"] for error in caught.value.errors()] == [(field,)]
    assert field in str(caught.value)


def test_a_seed_is_refused_for_anthropic_naming_the_field() -> None:
    with pytest.raises(ConfigurationError) as caught:
        ModelConfig(seed=7, provider="anthropic", name="claude-3-5-haiku-latest")
    message = str(caught.value)
    assert message.startswith("ModelConfig.seed: ")
    assert "takes no seed" in message and "temperature=0" in message
    for provider in ("openai", "local"):
        assert ModelConfig(provider=provider, name="smollm2", seed=0).seed == 0
        assert ModelConfig(provider=provider, name="smollm2", seed=MAX_SEED).seed == MAX_SEED
    with pytest.raises(ValidationError) as invalid:  # a bad provider is the one error reported
        ModelConfig(provider="mistral", name="m", seed=7)
    assert [error["loc"] for error in invalid.value.errors()] == [("provider",)]


def test_a_missing_api_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    openai_config = ModelConfig(provider="openai", name="gpt-4o-mini")
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        openai_config.resolved_api_key()
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        openai_config.build()
    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
        ModelConfig(provider="anthropic", name="claude-3-5-haiku-latest").build()


def test_a_base_url_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = ModelConfig(provider="openai", name="smollm2", base_url="http://127.0.0.1:9/v1")
    config.build()  # no ConfigurationError
    assert config.resolved_api_key()


def test_the_key_comes_from_the_argument_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert ModelConfig(provider="openai", name="m").resolved_api_key() == "sk-from-env"
    given = ModelConfig(provider="openai", name="m", api_key="sk-given")
    assert given.resolved_api_key() == "sk-given"
    assert "sk-given" not in repr(given)


def test_default_action_formats() -> None:
    assert ModelConfig(provider="openai", name="m").format == "tools"
    assert ModelConfig(provider="anthropic", name="m").format == "tools"
    assert ModelConfig(provider="local", name="smollm2").format == "json_object"
    assert ModelConfig(provider="openai", name="m", action_format="text").format == "text"


# ---- 3. retry_delay ------------------------------------------------------------------------


def api_error(retry_after: float | None = None) -> ModelAPIError:
    return ModelAPIError(
        "rate limited",
        provider="openai",
        model="m",
        status=429,
        retryable=True,
        retry_after=retry_after,
    )


def test_retry_after_is_honoured() -> None:
    policy = ErrorHandlingConfig(retry_initial_delay=0.5, retry_max_delay=30)
    assert retry_delay(1, api_error(2.0), policy) == 2.0
    assert retry_delay(5, api_error(0.0), policy) == 0.0


def test_retry_after_is_capped_at_retry_max_delay() -> None:
    policy = ErrorHandlingConfig(retry_initial_delay=0.5, retry_max_delay=5)
    assert retry_delay(1, api_error(120.0), policy) == 5
    assert retry_delay(1, api_error(-3.0), policy) == 0


def test_backoff_grows_exponentially_with_jitter_within_bounds() -> None:
    policy = ErrorHandlingConfig(retry_initial_delay=1, retry_max_delay=100)
    random.seed(1234)
    for attempt in range(1, 7):
        base = 2 ** (attempt - 1)
        delays = [retry_delay(attempt, api_error(), policy) for _ in range(50)]
        assert all(base / 2 <= delay <= base for delay in delays), (attempt, delays)
        assert len(set(delays)) > 1  # jitter: retries do not run in lockstep


def test_backoff_bounds_are_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = ErrorHandlingConfig(retry_initial_delay=0.5, retry_max_delay=100)
    monkeypatch.setattr(random, "uniform", lambda low, high: low)
    assert [retry_delay(n, api_error(), policy) for n in (1, 2, 3, 4)] == [0.25, 0.5, 1, 2]
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    assert [retry_delay(n, api_error(), policy) for n in (1, 2, 3, 4)] == [0.5, 1, 2, 4]


def test_backoff_is_capped_at_retry_max_delay() -> None:
    policy = ErrorHandlingConfig(retry_initial_delay=1, retry_max_delay=5)
    random.seed(99)
    delays = [retry_delay(20, api_error(), policy) for _ in range(50)]
    assert all(2.5 <= delay <= 5 for delay in delays)
    zero = ErrorHandlingConfig(retry_initial_delay=0, retry_max_delay=0)
    assert retry_delay(3, api_error(), zero) == 0


# ---- 4. action_schema and coordination_tools -----------------------------------------------


def info(
    peers: Sequence[PeerInfo] = (),
    *,
    can_finish: bool = False,
    can_ask_user: bool = False,
    parallel_groups: tuple[tuple[str, ...], ...] = (),
    tools: tuple[ToolSpec, ...] = (),
) -> StepInfo:
    actions = [
        action
        for action, allowed in (
            ("invoke_agent", bool(peers)),
            ("final_response", can_finish),
            ("ask_user", can_ask_user),
            ("call_tool", bool(tools)),
        )
        if allowed
    ]
    return StepInfo(
        agent_name="A",
        branch_id="b0",
        step=1,
        actions=tuple(actions),
        peers=tuple(peers),
        parallel_groups=parallel_groups,
        can_finish=can_finish,
        can_ask_user=can_ask_user,
        tools=tools,
    )


def variants(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        v["properties"]["next_action"]["enum"][0]: v["properties"]["action_input"]
        for v in schema.get("anyOf", [schema])
    }


LOOKUP = ToolSpec("lookup", "Look up.", {"type": "object", "properties": {"key": {}}})


def test_schema_without_finishing_offers_only_the_invocation() -> None:
    schema = action_schema(info([PeerInfo("W", is_call=False)]))
    assert "anyOf" not in schema  # one legal action: the schema is that action
    assert list(variants(schema)) == ["invoke_agent"]
    invocations = variants(schema)["invoke_agent"]
    assert invocations["items"]["properties"]["agent_name"]["enum"] == ["W"]
    assert (invocations["minItems"], invocations["maxItems"]) == (1, 1)
    assert "label" not in invocations["items"]["properties"]
    assert schema["required"] == ["next_action", "action_input"]


def test_schema_lists_every_allowed_action() -> None:
    schema = action_schema(
        info(
            [PeerInfo("W1", is_call=True), PeerInfo("W2", is_call=True)],
            can_finish=True,
            can_ask_user=True,
            tools=(LOOKUP,),
        )
    )
    found = variants(schema)
    assert sorted(found) == ["ask_user", "call_tool", "final_response", "invoke_agent"]
    assert found["invoke_agent"]["items"]["properties"]["agent_name"]["enum"] == ["W1", "W2"]
    assert found["call_tool"]["items"]["properties"]["name"]["enum"] == ["lookup"]
    assert found["final_response"]["required"] == ["response"]
    assert found["ask_user"]["required"] == ["question"]


def test_schema_of_an_agent_that_may_only_finish() -> None:
    assert list(variants(action_schema(info(can_finish=True)))) == ["final_response"]


def test_parallel_groups_lift_the_one_invocation_limit() -> None:
    peers = [PeerInfo("W1", is_call=True), PeerInfo("W2", is_call=True)]
    schema = action_schema(info(peers, parallel_groups=(("W1", "W2"),)))
    invocations = variants(schema)["invoke_agent"]
    assert "maxItems" not in invocations
    assert invocations["minItems"] == 1
    (tool,) = coordination_tools(info(peers, parallel_groups=(("W1", "W2"),)))
    assert "maxItems" not in tool.parameters["properties"]["invocations"]
    assert "W1, W2" in tool.description


def test_a_peer_needing_a_label_adds_a_label_enum() -> None:
    peers = [
        PeerInfo("Approver", is_call=False, label="approved"),
        PeerInfo("Fixer", is_call=False, label="rejected"),
        PeerInfo("Logger", is_call=False),
    ]
    item = variants(action_schema(info(peers)))["invoke_agent"]["items"]
    assert item["properties"]["label"] == {"type": "string", "enum": ["approved", "rejected"]}
    assert item["required"] == ["agent_name", "request"]
    (tool,) = coordination_tools(info(peers))
    tool_item = tool.parameters["properties"]["invocations"]["items"]
    assert tool_item["properties"]["label"]["enum"] == ["approved", "rejected"]
    assert 'Approver (needs "label": "approved")' in tool.description


def test_a_local_schema_caps_free_text_only() -> None:
    schema = local.bounded(action_schema(info([PeerInfo("W", is_call=True)], can_finish=True)), 99)
    found = variants(schema)
    assert found["final_response"]["properties"]["response"]["maxLength"] == 99
    assert found["invoke_agent"]["items"]["properties"]["request"]["maxLength"] == 99
    assert "maxLength" not in found["invoke_agent"]["items"]["properties"]["agent_name"]
    body = LocalModel(smollm(max_tokens=160)).request([], info(can_finish=True, can_ask_user=True))
    capped = variants(body["response_format"]["schema"])["ask_user"]["properties"]["question"]
    assert capped["maxLength"] == (160 - local.JSON_TOKENS) * 3
    assert local._chars_within(4096) == 1000  # more, and llama.cpp crashes on the grammar


def test_coordination_tools_shrink_to_what_is_allowed() -> None:
    assert [t.name for t in coordination_tools(info([PeerInfo("W", is_call=False)]))] == [
        "invoke_agent"
    ]
    assert [t.name for t in coordination_tools(info(can_finish=True))] == ["final_response"]
    everything = info([PeerInfo("W", is_call=True)], can_finish=True, can_ask_user=True)
    assert [t.name for t in coordination_tools(everything)] == [
        "invoke_agent",
        "final_response",
        "ask_user",
    ]
    (invoke, *_) = coordination_tools(everything)
    invocations = invoke.parameters["properties"]["invocations"]
    assert invocations["items"]["properties"]["agent_name"]["enum"] == ["W"]
    assert invocations["maxItems"] == 1
    assert "W (answers back to you)" in invoke.description
    assert "One invocation at a time." in invoke.description
    assert coordination_tools(info()) == []
