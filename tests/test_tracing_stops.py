"""Tracing where a run goes wrong or stops short: error messages kept off spans unless content
is, a run cancelled (its spans ended, and its live status block), a bad or broken tracer
provider, a tracer that fails on one event, and a fan-out that converges after a resume."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers import fn, invoke, llm, run, spokes
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, StatusCode, Tracer
from pydantic import ValidationError
from test_status_view import NORMAL, plain, tty_console, watching
from test_tracing import WAIT, everything, measure, named, one, parent_of, spans, traced

from orchestra import AgentRegistry, ExecutionConfig, ScriptedModel
from orchestra.coordination.config import TracingConfig
from orchestra.coordination.engine import events as ev
from orchestra.coordination.monitoring.live import LiveDisplay
from orchestra.coordination.monitoring.tracing import run_tracer
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.errors import ConfigurationError, ModelAPIError

__all__ = ["spans"]  # the fixture, shared with test_tracing

SECRET = "SECRET-PATIENT-RECORD 123"
WITHHELD = "(message withheld; record_content is off)"


def tool_call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"next_action": "call_tool", "action_input": [{"name": name, "arguments": arguments}]}


def refuse(value: Any, context: Any) -> str:
    raise ValueError(f"could not handle {value!r}")


async def test_error_messages_reach_spans_only_with_content(
    spans: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error's message often quotes the input: without the opt-in a span says only which
    error it was (step, branch, run, and a retried model call alike)."""
    provider, exporter = spans
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
    busy = ModelAPIError(SECRET, provider="test", model="m", status=503, retryable=True)

    async def both(**tracing: Any) -> list[Any]:
        exporter.clear()
        await run(
            SECRET,
            {"nodes": ["One"], "edges": []},
            [fn("One", refuse)],
            config=traced(provider, **tracing),
        )
        model = ScriptedModel([busy, "fine"])
        await run(
            "go",
            {"nodes": ["Solo"], "edges": []},
            [llm("Solo", model)],
            config=traced(provider, **tracing),
        )
        return list(exporter.get_finished_spans())

    found = await both()
    assert SECRET not in everything(found)
    failed = [span for span in found if span.status.status_code is StatusCode.ERROR]
    assert {span.name for span in failed} == {
        "invoke_workflow",
        "branch b0",
        "invoke_agent One",
        "chat ScriptedModel",
    }
    for span in failed:
        assert WITHHELD in (span.status.description or ""), span.name
    retried = [span for span in failed if span.name == "chat ScriptedModel"]
    assert retried[0].attributes["error.type"] == "503"

    found = await both(record_content=True)
    for name in ("invoke_agent One", "branch b0", "chat ScriptedModel"):
        failed = [s for s in named(found, name) if s.status.status_code is StatusCode.ERROR]
        assert SECRET in (failed[0].status.description or ""), name


async def blocked(value: Any, context: Any) -> str:
    await asyncio.Event().wait()  # never set: the run only ends by being cancelled
    raise AssertionError("unreachable")


@pytest.mark.parametrize("how", ["cancel", "wait_for"])
async def test_a_cancelled_run_ends_every_span(spans: Any, how: str) -> None:
    provider, exporter = spans
    holding = asyncio.Event()

    async def slow(value: Any, context: Any) -> str:
        holding.set()
        return await blocked(value, context)

    going = run("go", {"nodes": ["Slow"], "edges": []}, [fn("Slow", slow)], config=traced(provider))
    if how == "cancel":
        task = asyncio.ensure_future(going)
        await asyncio.wait_for(holding.wait(), WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(going, 0.2)  # the agent never answers: it always times out
    found = list(exporter.get_finished_spans())
    assert sorted(span.name for span in found) == [
        "branch b0",
        "invoke_agent Slow",
        "invoke_workflow",
    ]
    for span in found:
        assert span.attributes["orchestra.outcome"] == "cancelled", span.name
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == "cancelled"
    assert parent_of(found, one(found, "invoke_agent Slow")) is one(found, "branch b0")


async def test_a_cancelled_run_ends_its_live_block(monkeypatch: pytest.MonkeyPatch) -> None:
    console, out = tty_console()
    display = LiveDisplay(console, auto_refresh=False)
    watching(monkeypatch, display)
    holding = asyncio.Event()

    async def slow(value: Any, context: Any) -> str:
        holding.set()
        return await blocked(value, context)

    config = ExecutionConfig(status=NORMAL)
    task = asyncio.ensure_future(
        run("go", {"nodes": ["Slow"], "edges": []}, [fn("Slow", slow)], config=config)
    )
    await asyncio.wait_for(holding.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not display._views  # not kept until close_displays()
    display.refresh()
    shown = plain(out.getvalue())
    assert shown.count("· cancelled ·") == 1, shown


def test_a_tracer_provider_must_have_get_tracer() -> None:
    with pytest.raises(ValidationError, match="tracer_provider"):
        TracingConfig(tracer_provider="bogus")
    with pytest.raises(ValidationError, match=r"tracing\.tracer_provider"):
        ExecutionConfig(tracing={"tracer_provider": object()})
    assert TracingConfig(tracer_provider=TracerProvider()).tracer_provider is not None


async def test_a_provider_whose_get_tracer_raises_is_a_configuration_error() -> None:
    class Broken:
        def get_tracer(self, *args: Any, **kwargs: Any) -> Tracer:
            raise RuntimeError("exporter misconfigured")

    config = ExecutionConfig(tracing=TracingConfig(tracer_provider=Broken()))
    with pytest.raises(ConfigurationError, match=r"tracing\.tracer_provider Broken.*misconfigured"):
        await run(
            "go", {"nodes": ["One"], "edges": []}, [fn("One", lambda v, c: "x")], config=config
        )


class FlakyTracer:
    """An SDK tracer that fails to start any step's span."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    def start_span(self, name: str, *args: Any, **kwargs: Any) -> Span:
        if name.startswith("invoke_agent"):
            raise ValueError("boom in tracer")
        return self.tracer.start_span(name, *args, **kwargs)


class FlakyProvider:
    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider

    def get_tracer(self, name: str) -> FlakyTracer:
        return FlakyTracer(self.provider.get_tracer(name))


async def test_a_tracer_failing_on_some_events_still_ends_the_rest(
    spans: Any, caplog: pytest.LogCaptureFixture
) -> None:
    provider, exporter = spans
    config = traced(FlakyProvider(provider))  # type: ignore[arg-type]
    topology = {"nodes": ["One", "Two"], "edges": ["One -> Two"]}
    with caplog.at_level(logging.WARNING, "orchestra.coordination.monitoring.tracing"):
        result = await run(
            "go",
            topology,
            [fn("One", lambda v, c: "1"), fn("Two", lambda v, c: "2")],
            config=config,
        )
    assert result.success, result.error
    assert "observer_errors" not in result.metadata  # still subscribed: the trace went on
    found = list(exporter.get_finished_spans())
    assert sorted(span.name for span in found) == ["branch b0", "invoke_workflow"]
    workflow = one(found, "invoke_workflow")
    assert [event.name for event in workflow.events] == ["orchestra.tracer_error"]
    warnings = [r for r in caplog.records if "tracing run" in r.getMessage()]
    assert len(warnings) == 1 and "ValueError" in warnings[0].getMessage()


async def test_a_fan_out_converging_after_a_resume_marks_its_step(
    spans: Any, tmp_path: Path
) -> None:
    """The run pauses after the fan-out converged, before its step: the resumed run's
    converging step says which fan-out it converges (the branches' spans, exported with the
    earlier run, cannot be linked: their ids are not in the log)."""
    provider, exporter = spans
    holding, go_on = asyncio.Event(), asyncio.Event()

    async def slow(value: Any, context: Any) -> str:
        holding.set()
        await go_on.wait()
        return "b"

    hub = ScriptedModel([invoke(("A", "x"), ("B", "y")), "done"])

    def instance() -> OrchestraInstance:
        registry = AgentRegistry([llm("Hub", hub), fn("A", lambda v, c: "a"), fn("B", slow)])
        return OrchestraInstance(
            spokes("A", "B"),
            agent_registry=registry,
            initial_config=traced(provider),
            state_manager=StateManager(SQLiteStorageBackend(tmp_path / "s.db")),
        )

    first = instance()
    running = asyncio.create_task(first.execute("go", context={"session_id": "s"}))
    await asyncio.wait_for(holding.wait(), WAIT)
    assert await first.pause_session("s")
    go_on.set()
    paused = await asyncio.wait_for(running, WAIT)
    assert paused.metadata.get("paused") is True, paused.error
    branch = one(list(exporter.get_finished_spans()), "branch b2")
    exporter.clear()

    resumed = await asyncio.wait_for(instance().resume_session("s"), WAIT)
    assert resumed.success, resumed.error
    converging = one(list(exporter.get_finished_spans()), "invoke_agent Hub")
    assert (
        converging.attributes["orchestra.fan_out.id"] == branch.attributes["orchestra.fan_out.id"]
    )


async def test_branches_still_open_at_a_resume_are_linked_when_they_converge(spans: Any) -> None:
    """A fan-out's branches open when the run stopped get new spans in the resumed run, and
    the converging step links those."""
    provider, exporter = spans
    hub = ScriptedModel([invoke(("A", "x"), ("B", "y")), "done"])
    agents = [llm("Hub", hub), fn("A", lambda v, c: "a"), fn("B", lambda v, c: "b")]
    result = await run("go", spokes("A", "B"), agents)
    assert result.success, result.error
    events = list(result.events)
    cut_at = next(i for i, e in enumerate(events) if isinstance(e, ev.BranchCompleted))
    tracer = run_tracer(TracingConfig(tracer_provider=provider), {})
    for event in events[:cut_at]:  # the log replayed: both spokes' branches open
        tracer(msgspec.structs.replace(event, replayed=True))
    tracer(ev.RunResumed(run_id=result.session_id, at=events[cut_at].at, context_keys=()))
    for event in events[cut_at:]:
        tracer(event)
    found = list(exporter.get_finished_spans())
    children = [span for span in found if span.name in ("branch b1", "branch b2")]
    assert len(children) == 2
    converging = one(found, "invoke_agent Hub")
    assert {link.context.span_id for link in converging.links} == {
        child.context.span_id for child in children
    }


async def test_per_branch_state_is_let_go_when_the_branch_ends(spans: Any) -> None:
    """Nothing of a branch is kept once it ended, and without content no tool call's
    arguments are kept at all (a long run's tracer holds only what is open)."""
    provider, _ = spans
    hub = ScriptedModel([invoke(("A", "x"), ("B", "y")), "done"])
    solo = ScriptedModel([tool_call("measure", what="rope"), "4"])
    agents = [llm("Hub", hub), fn("A", lambda v, c: "a"), fn("B", lambda v, c: "b")]
    fanned = await run("go", spokes("A", "B"), agents)
    solo_run = await run("go", {"nodes": ["Solo"], "edges": []}, [llm("Solo", solo, [measure])])
    for result in (fanned, solo_run):
        assert result.success, result.error
        for record in (False, True):
            tracer = run_tracer(TracingConfig(tracer_provider=provider, record_content=record), {})
            for event in result.events:
                tracer(event)
                if not record:
                    assert not tracer.arguments
            kept = (tracer.last_step, tracer.arguments, tracer.links, tracer.fan_outs)
            assert kept == ({}, {}, {}, {})
