"""OpenTelemetry tracing: the span tree of real runs read from the SDK's in-memory exporter
(hand-offs, a fan-out and its convergence, tool calls, retries, rejected replies, failures,
error routing, a paused and resumed run), content recorded only on opt-in, no API key in any
span, the switch (a global provider in a subprocess; off imports no OpenTelemetry), and one
run exported over OTLP/HTTP to a real receiver (Arize Phoenix) and read back from it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import services
from helpers import FAST, fn, invoke, llm, quiet, run, spokes
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from servers import Scripted, ScriptedHTTPServer

from orchestra import AgentRegistry, Edge, ErrorHandlingConfig, ScriptedModel, Topology, tool
from orchestra.coordination.config import ExecutionConfig, TracingConfig
from orchestra.coordination.engine import events as ev
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.errors import ModelAPIError
from orchestra.models.base import ModelReply, Usage
from orchestra.models.config import ModelConfig

WAIT = 5.0
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def traced(provider: TracerProvider, **tracing: Any) -> ExecutionConfig:
    return quiet(tracing=TracingConfig(tracer_provider=provider, **tracing))


def named(found: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in found if span.name == name]


def one(found: list[ReadableSpan], name: str) -> ReadableSpan:
    matches = named(found, name)
    assert len(matches) == 1, [span.name for span in found]
    return matches[0]


def parent_of(found: list[ReadableSpan], span: ReadableSpan) -> ReadableSpan:
    assert span.parent is not None, span.name
    return next(other for other in found if other.context.span_id == span.parent.span_id)


@tool
def measure(what: str) -> int:
    """Measure something.

    Args:
        what: the thing
    """
    return len(what)


# ---- the span tree ---------------------------------------------------------------------------


async def test_a_hand_off_chain_is_a_run_a_branch_and_a_step_per_agent(spans: Any) -> None:
    provider, exporter = spans
    topology = {"nodes": ["One", "Two"], "edges": ["One -> Two"]}
    two = ScriptedModel([ModelReply(content="done", usage=Usage(11, 4, 0.1, "stop"))])
    result = await run(
        "go", topology, [fn("One", lambda v, c: "one"), llm("Two", two)], config=traced(provider)
    )
    assert result.success, result.error
    found = list(exporter.get_finished_spans())

    workflow = one(found, "invoke_workflow")
    assert workflow.parent is None
    assert workflow.attributes["gen_ai.operation.name"] == "invoke_workflow"
    branch = one(found, "branch b0")
    assert parent_of(found, branch) is workflow
    first, second = one(found, "invoke_agent One"), one(found, "invoke_agent Two")
    assert parent_of(found, first) is branch and parent_of(found, second) is branch
    assert second.attributes["gen_ai.agent.name"] == "Two"
    assert second.attributes["gen_ai.usage.input_tokens"] == 11
    chat = one(found, "chat ScriptedModel")
    assert parent_of(found, chat) is second
    assert chat.kind.name == "CLIENT"
    assert (
        dict(chat.attributes).items()
        >= {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "ScriptedModel",
            "gen_ai.provider.name": "orchestra",
            "gen_ai.usage.input_tokens": 11,
            "gen_ai.usage.output_tokens": 4,
        }.items()
    )
    assert chat.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert not named(found, "chat One")  # code calls no model
    # times are the events': the run span covers its steps, exactly
    assert workflow.start_time <= first.start_time <= first.end_time <= second.start_time
    assert second.end_time <= workflow.end_time
    for span in found:
        assert span.status.status_code is StatusCode.UNSET, span.name


async def test_fan_out_branches_hang_under_the_step_and_the_converging_step_links_them(
    spans: Any,
) -> None:
    provider, exporter = spans
    hub = ScriptedModel([invoke(("A", "x"), ("B", "y")), "all done"])
    agents = [llm("Hub", hub), fn("A", lambda v, c: "a"), fn("B", lambda v, c: "b")]
    result = await run("go", spokes("A", "B"), agents, config=traced(provider))
    assert result.success, result.error
    found = list(exporter.get_finished_spans())

    fanned, converging = named(found, "invoke_agent Hub")
    children = [
        span for span in found if span.name.startswith("branch ") and span.name != "branch b0"
    ]
    assert len(children) == 2
    for child in children:
        assert parent_of(found, child) is fanned
        assert child.attributes["orchestra.fan_out.id"]
    assert {link.context.span_id for link in converging.links} == {
        child.context.span_id for child in children
    }
    assert not fanned.links


async def test_tool_calls_retries_and_rejected_replies(spans: Any) -> None:
    provider, exporter = spans
    model = ScriptedModel(
        [
            ModelAPIError("busy", provider="test", model="m", status=503, retryable=True),
            {"next_action": "no_such_action"},
            {
                "next_action": "call_tool",
                "action_input": [{"name": "measure", "arguments": {"what": "rope"}}],
            },
            "4",
        ]
    )
    result = await run(
        "go",
        Topology(nodes=["Solo"], edges=[]),
        [llm("Solo", model, tools=[measure])],
        config=traced(provider),
        error_config=FAST,
    )
    assert result.success, result.error
    found = list(exporter.get_finished_spans())

    steps = named(found, "invoke_agent Solo")
    assert len(steps) == 3  # rejected, tool call, answer
    rejected = steps[0]
    assert rejected.status.status_code is StatusCode.ERROR
    assert rejected.attributes["error.type"] == "rejected_reply"
    chats = named(found, "chat ScriptedModel")
    retried = [span for span in chats if span.status.status_code is StatusCode.ERROR]
    assert len(retried) == 1 and parent_of(found, retried[0]) is rejected
    # the error's status, not what happened next; its message only with content on
    assert retried[0].attributes["error.type"] == "503"
    assert retried[0].attributes["orchestra.retried"] is True
    assert "busy" not in (retried[0].status.description or "")
    assert len([s for s in chats if parent_of(found, s) is rejected]) == 2
    tool_span = one(found, "execute_tool measure")
    assert parent_of(found, tool_span) is steps[1]
    assert tool_span.attributes["gen_ai.tool.name"] == "measure"
    assert tool_span.attributes["gen_ai.tool.call.id"]
    assert tool_span.status.status_code is StatusCode.UNSET


async def test_a_failed_branch_and_its_step_end_with_an_error(spans: Any) -> None:
    provider, exporter = spans

    def broken(value: Any, context: Any) -> str:
        raise ValueError("A broke")

    hub = ScriptedModel([invoke(("A", "x"), ("B", "y")), "done anyway"])
    agents = [llm("Hub", hub), fn("A", broken), fn("B", lambda v, c: "b")]
    await run("go", spokes("A", "B"), agents, config=traced(provider))
    found = list(exporter.get_finished_spans())

    step = one(found, "invoke_agent A")
    branch = parent_of(found, step)
    for span in (step, branch):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == (
            "AgentStepError (message withheld; record_content is off)"
        )
        assert span.attributes["error.type"] == "AgentStepError"
    assert branch.attributes["orchestra.outcome"] == "failed"
    assert all(span.end_time is not None for span in found)


async def test_a_step_whose_error_is_routed_ends_with_an_error(spans: Any) -> None:
    """Error routing hands the error on in the same branch: the new StepFailed event ends the
    step (without it, the step's span stayed open)."""
    provider, exporter = spans
    topology = Topology(
        nodes=["Main", "Handler"],
        edges=[
            "User -> Main",
            Edge("Main", "Handler", metadata={"on_error": True}),
            "Handler -> User",
        ],
    )

    def boom(value: Any, context: Any) -> str:
        raise ValueError("boom")

    result = await run(
        "task",
        topology,
        [fn("Main", boom), fn("Handler", lambda v, c: "handled")],
        config=traced(provider),
        error_config=ErrorHandlingConfig(enable_error_routing=True),
    )
    assert result.success, result.error
    assert any(isinstance(event, ev.StepFailed) for event in result.events)
    found = list(exporter.get_finished_spans())
    main = one(found, "invoke_agent Main")
    assert main.status.status_code is StatusCode.ERROR
    assert main.attributes["error.type"] == "AgentStepError"
    assert one(found, "invoke_agent Handler").status.status_code is StatusCode.UNSET


async def test_a_paused_run_ends_its_spans_and_the_resumed_run_repeats_none(
    spans: Any, tmp_path: Path
) -> None:
    provider, exporter = spans
    holding, go_on = asyncio.Event(), asyncio.Event()

    async def second(value: Any, context: Any) -> str:
        holding.set()
        await go_on.wait()
        return "two"

    registry = AgentRegistry(
        [fn("One", lambda v, c: "one"), fn("Two", second), fn("Three", lambda v, c: "three")]
    )
    topology = {"nodes": ["One", "Two", "Three"], "edges": ["One -> Two", "Two -> Three"]}
    orchestra = OrchestraInstance(
        topology,
        agent_registry=registry,
        initial_config=traced(provider),
        state_manager=StateManager(SQLiteStorageBackend(tmp_path / "s.db")),
    )
    running = asyncio.create_task(orchestra.execute("go", context={"session_id": "p"}))
    await asyncio.wait_for(holding.wait(), WAIT)
    assert await orchestra.pause_session("p")
    go_on.set()
    paused = await asyncio.wait_for(running, WAIT)
    assert paused.metadata.get("paused") is True, paused.error
    first = list(exporter.get_finished_spans())
    run_span = one(first, "invoke_workflow")
    assert run_span.attributes["orchestra.outcome"] == "paused"
    assert run_span.status.status_code is StatusCode.UNSET
    assert one(first, "branch b0").attributes["orchestra.outcome"] == "paused"

    exporter.clear()
    resumed = await asyncio.wait_for(orchestra.resume_session("p"), WAIT)
    assert resumed.success, resumed.error
    assert any(event.replayed for event in resumed.events)
    again = list(exporter.get_finished_spans())
    assert [span.name for span in again if span.name.startswith("invoke_agent")] == [
        "invoke_agent Three"
    ]
    assert one(again, "invoke_workflow").attributes["orchestra.run.resumed"] is True
    assert parent_of(again, one(again, "branch b0")) is one(again, "invoke_workflow")


# ---- content and secrets -----------------------------------------------------------------------


def everything(found: list[ReadableSpan]) -> str:
    """Every name, attribute, status and event of the spans, as one text to search."""
    parts = []
    for span in found:
        parts += [span.name, json.dumps(dict(span.attributes or {}), default=str)]
        parts.append(span.status.description or "")
        parts += [json.dumps(dict(e.attributes or {}), default=str) for e in span.events]
    return "\n".join(parts)


async def content_run(provider: TracerProvider, **tracing: Any) -> None:
    model = ScriptedModel(
        [
            {
                "next_action": "call_tool",
                "action_input": [{"name": "measure", "arguments": {"what": "secret-rope"}}],
            },
            "the answer is 11",
        ]
    )
    result = await run(
        "the private task",
        Topology(nodes=["Solo"], edges=[]),
        [llm("Solo", model, tools=[measure])],
        config=traced(provider, **tracing),
    )
    assert result.success, result.error


async def test_content_is_recorded_only_on_opt_in(
    spans: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, exporter = spans
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
    await content_run(provider)
    text = everything(list(exporter.get_finished_spans()))
    for private in ("the private task", "secret-rope", "the answer is 11"):
        assert private not in text

    exporter.clear()
    await content_run(provider, record_content=True)
    found = list(exporter.get_finished_spans())
    text = everything(found)
    for private in ("the private task", "secret-rope", "the answer is 11"):
        assert private in text
    # the GenAI conventions' message form: a JSON list of messages, each with text parts
    task = json.loads(one(found, "invoke_workflow").attributes["gen_ai.input.messages"])
    assert task == [{"role": "user", "parts": [{"type": "text", "content": "the private task"}]}]
    answer = json.loads(named(found, "chat ScriptedModel")[-1].attributes["gen_ai.output.messages"])
    assert answer == [
        {"role": "assistant", "parts": [{"type": "text", "content": "the answer is 11"}]}
    ]

    exporter.clear()
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    await content_run(provider)
    assert "the answer is 11" in everything(list(exporter.get_finished_spans()))

    exporter.clear()  # a workflow's explicit False wins over the variable
    await content_run(provider, record_content=False)
    assert "the answer is 11" not in everything(list(exporter.get_finished_spans()))


async def test_no_api_key_reaches_any_span_even_with_content(spans: Any) -> None:
    provider, exporter = spans
    key = "sk-" + "Zq7x" * 12
    leaked = f"my key is {key}"
    with ScriptedHTTPServer() as server:
        body = {
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-test",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": leaked},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        }
        server.script(Scripted(200, body))
        config = ModelConfig(
            provider="openai", name="gpt-test", base_url=server.url + "/v1", api_key=key
        )
        from orchestra import Agent

        agent = Agent("Solo", config, register=False)
        result = await run(
            f"use {key}",
            Topology(nodes=["Solo"], edges=[]),
            [agent],
            config=traced(provider, record_content=True),
            error_config=FAST,
            wait=60,
        )
    assert result.success, result.error
    found = list(exporter.get_finished_spans())
    chat = one(found, "chat gpt-test")
    assert chat.attributes["gen_ai.provider.name"] == "openai"
    assert chat.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    text = everything(found)
    assert "my key is [REDACTED]" in text
    assert key not in text


# ---- the switch --------------------------------------------------------------------------------


def python(code: str) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(code)
    environment = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + str(ROOT / "tests")}
    environment.pop("OTEL_PYTHON_TRACER_PROVIDER", None)
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        cwd=ROOT,
    )


RUN = """
import asyncio, sys
from helpers import fn, quiet, run
from orchestra import Topology
result = asyncio.run(run("go", Topology(nodes=["Solo"], edges=[]), [fn("Solo", lambda v, c: "ok")]))
assert result.success, result.error
"""


def test_a_global_tracer_provider_turns_tracing_on() -> None:
    done = python(
        textwrap.dedent(
            """
            from opentelemetry import trace
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                InMemorySpanExporter,
            )
            exporter = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
            """
        )
        + RUN
        + """
print(sorted(span.name for span in exporter.get_finished_spans()))
"""
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['branch b0', 'invoke_agent Solo', 'invoke_workflow']"


def test_off_subscribes_nothing_and_imports_no_opentelemetry() -> None:
    done = python(
        RUN
        + """
from orchestra.coordination.engine.events import EventStream
names = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
print(names)
"""
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_tracing_setting_forms_and_what_a_session_stores() -> None:
    provider = TracerProvider()
    config = ExecutionConfig(tracing=TracingConfig(tracer_provider=provider, record_content=True))
    stored = config.model_dump(mode="json")
    assert stored["tracing"] == {"enabled": None, "record_content": True}
    assert TracingConfig().record_content is None  # the variable decides
    assert ExecutionConfig.model_validate(stored).tracing.record_content is True
    assert ExecutionConfig(tracing=True).tracing.enabled is True
    assert ExecutionConfig(tracing=False).tracing.enabled is False
    with pytest.raises(ValueError, match="tracing must be"):
        ExecutionConfig(tracing="yes")


# ---- a real OTLP receiver ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def phoenix() -> Iterator[str]:
    """A Phoenix started on loopback for this module. ``python3 dev.py test`` installs it (into
    ``.venv/phoenix``), so a missing one fails the test, saying how to get it: a receiver
    silently skipped would let the export path go untested. Only ``ORCHESTRA_NO_PHOENIX=1``,
    set by someone who means it, skips."""
    binary = services.phoenix_binary()
    if binary is None:
        if os.environ.get(services.NO_PHOENIX_VARIABLE) == "1":
            pytest.skip(f"{services.NO_PHOENIX_VARIABLE}=1: no OTLP receiver on purpose")
        pytest.fail(
            "Arize Phoenix (the OTLP receiver of this test) is not installed: run "
            f"`python3 dev.py test`, which installs it into .venv/phoenix, or point "
            f"{services.PHOENIX_VARIABLE} at a `phoenix` binary "
            f"({services.NO_PHOENIX_VARIABLE}=1 skips this test on purpose)"
        )
    process, url, folder = services.start_phoenix(binary)
    try:
        yield url
    finally:
        services.stop(process, folder)


def phoenix_spans(url: str, wanted: int) -> list[dict[str, Any]]:
    """The default project's spans, read again until ``wanted`` of them are stored (Phoenix
    stores what it receives on a task of its own, after answering the export)."""
    found: list[dict[str, Any]] = []
    for _ in range(100):
        with services.LOOPBACK.open(f"{url}/v1/projects/default/spans?limit=100", timeout=10) as r:
            found = json.loads(r.read())["data"]
        if len(found) >= wanted:
            return found
        time.sleep(0.1)  # not stored yet: read again
    names = [span["name"] for span in found]
    raise AssertionError(f"Phoenix stored {len(found)} spans ({names}), {wanted} were exported")


async def test_spans_exported_over_otlp_http_are_read_back_from_phoenix(phoenix: str) -> None:
    import requests
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    direct = requests.Session()
    direct.trust_env = False  # loopback: never through an HTTP_PROXY the environment sets
    exporter = OTLPSpanExporter(f"{phoenix}/v1/traces", session=direct)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    hub = ScriptedModel(
        [ModelReply(action=invoke(("A", "x"), ("B", "y")), usage=Usage(9, 3, None, "stop")), "done"]
    )
    try:
        result = await run(
            "go",
            spokes("A", "B"),
            [llm("Hub", hub), fn("A", lambda v, c: "a"), fn("B", lambda v, c: "b")],
            config=traced(provider),
            wait=60,
        )
    finally:
        provider.shutdown()
    assert result.success, result.error

    stored = phoenix_spans(phoenix, 10)
    by_id = {span["context"]["span_id"]: span for span in stored}
    assert sorted(span["name"] for span in stored) == [
        "branch b0",
        "branch b1",
        "branch b2",
        "chat ScriptedModel",
        "chat ScriptedModel",
        "invoke_agent A",
        "invoke_agent B",
        "invoke_agent Hub",
        "invoke_agent Hub",
        "invoke_workflow",
    ]
    workflow = next(span for span in stored if span["name"] == "invoke_workflow")
    assert workflow["parent_id"] is None
    assert workflow["attributes"]["gen_ai.operation.name"] == "invoke_workflow"
    chats = [span for span in stored if span["name"] == "chat ScriptedModel"]
    first_chat = next(s for s in chats if s["attributes"].get("gen_ai.usage.input_tokens") == 9)
    step = by_id[first_chat["parent_id"]]
    assert step["name"] == "invoke_agent Hub"
    assert first_chat["attributes"]["gen_ai.request.model"] == "ScriptedModel"
    assert first_chat["attributes"]["gen_ai.response.finish_reasons"] == ["stop"]
    child = next(span for span in stored if span["name"] == "branch b1")
    assert by_id[child["parent_id"]] is step  # the fan-out's branch under the step
    assert by_id[step["parent_id"]]["name"] == "branch b0"
