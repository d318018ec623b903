"""Streaming replies through a run: ``StepDelta`` events, ``Orchestra.stream``, and what a run
does with nobody listening (it does not stream), with the test kit's models.

The adapters' streams over real sockets are in test_streaming_adapters.py; the live display's
row for a reply being written is at the end of this module, last on a real pseudo-terminal.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pexpect
import pytest
from helpers import FAST, HANDOFF, SOLO, TESTS, WAIT, final, invoke, llm, quiet
from rich.text import Text
from test_status_view import NORMAL, base, opened, tty_console, watching

from orchestra import (
    AgentRegistry,
    ExecutionConfig,
    FunctionModel,
    Orchestra,
    OrchestraResult,
    ScriptedModel,
)
from orchestra.coordination.engine import events as ev
from orchestra.coordination.monitoring import blocks
from orchestra.coordination.monitoring.live import LiveDisplay
from orchestra.coordination.monitoring.view import RunView
from orchestra.errors import ConfigurationError, ModelAPIError
from orchestra.models import Message, StepInfo
from orchestra.models.base import DeltaSink, ModelReply
from orchestra.models.secrets import REDACTED

REPLY = "Paris is the capital of France, and has been for a long while."


async def streamed(
    task: Any, topology: Any, agents: Sequence[Any], **options: Any
) -> tuple[list[ev.Event], OrchestraResult]:
    """Every event ``Orchestra.stream`` hands out, and the run's result."""
    seen: list[ev.Event] = []

    async def consume() -> OrchestraResult | None:
        async with Orchestra.stream(
            task,
            topology,
            agent_registry=AgentRegistry(agents),
            execution_config=options.pop("execution_config", quiet()),
            **options,
        ) as events:
            async for event in events:
                seen.append(event)
        return events.result

    result = await asyncio.wait_for(consume(), WAIT)
    assert result is not None
    return seen, result


def deltas(events: Sequence[ev.Event]) -> list[ev.StepDelta]:
    return [event for event in events if isinstance(event, ev.StepDelta)]


def comparable(result: OrchestraResult) -> list[dict[str, Any]]:
    """The result's events as data, less what differs between two runs of one script (the
    session id, the times)."""
    varying = {"run_id", "at", "duration"}
    return [
        {key: value for key, value in event.to_dict().items() if key not in varying}
        for event in result.events
    ]


class Counting:
    """A model that can stream, counting how it was called."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.completed = self.streamed = 0

    async def complete(self, messages: Sequence[Message], info: StepInfo) -> ModelReply:
        self.completed += 1
        return ModelReply(content=self.reply)

    async def stream(
        self, messages: Sequence[Message], info: StepInfo, on_delta: DeltaSink
    ) -> ModelReply:
        self.streamed += 1
        for word in self.reply.split(" "):
            on_delta(word + " ")
        return ModelReply(content=self.reply)


# ---- 1. deltas through Orchestra.stream ------------------------------------------------------


async def test_stream_yields_the_reply_in_pieces_before_its_step_completes() -> None:
    model = ScriptedModel([REPLY], chunk_size=7)
    events, result = await streamed("capital?", SOLO, [llm("Solo", model)])
    assert result.success, result.error
    assert result.final_response == REPLY
    pieces = deltas(events)
    assert [piece.text for piece in pieces] == [REPLY[i : i + 7] for i in range(0, len(REPLY), 7)]
    assert {(piece.branch_id, piece.agent, piece.step, piece.attempt) for piece in pieces} == {
        ("b0", "Solo", 1, 0)
    }
    kinds = [type(event).__name__ for event in events]
    assert kinds.index("StepDelta") > kinds.index("StepStarted")
    assert kinds.index("StepCompleted") > len(kinds) - 1 - kinds[::-1].index("StepDelta")
    assert events[-1] == result.events[-1]  # it ends with the run's last event: RunCompleted
    assert not deltas(result.events)  # deltas are never kept with the run's events


async def test_the_result_and_its_events_are_the_same_with_or_without_a_listener() -> None:
    def agents() -> list[Any]:
        hub = ScriptedModel([invoke(("Worker", "look it up")), final("done: " + REPLY)])
        return [llm("Hub", hub), llm("Worker", ScriptedModel([final(REPLY)]))]

    topology = {"nodes": ["Hub", "Worker"], "edges": ["Hub <-> Worker"], "entry_point": "Hub"}
    plain = await asyncio.wait_for(
        Orchestra.run(
            "task", topology, agent_registry=AgentRegistry(agents()), execution_config=quiet()
        ),
        WAIT,
    )
    events, listened = await streamed("task", topology, agents())
    assert deltas(events)
    assert plain.success and listened.success
    assert comparable(listened) == comparable(plain)
    assert listened.final_response == plain.final_response
    assert listened.total_steps == plain.total_steps == 3


async def test_coordination_json_is_streamed_as_text_and_acted_on_once_whole() -> None:
    """The hub's reply is the JSON of an invoke_agent action: its pieces arrive as text (none
    of them a usable action), and the hand-over happens only after the whole reply."""
    action = json.dumps(invoke(("Worker", "find the capital")))
    hub = ScriptedModel([action], chunk_size=10)
    events, result = await streamed(
        "task", HANDOFF, [llm("Hub", hub), llm("Worker", ScriptedModel([final(REPLY)]))]
    )
    assert result.success, result.error
    hub_pieces = [piece for piece in deltas(events) if piece.agent == "Hub"]
    assert "".join(piece.text for piece in hub_pieces) == action
    handed = next(i for i, event in enumerate(events) if isinstance(event, ev.WorkHandedOver))
    last_piece = events.index(hub_pieces[-1])
    completed = next(i for i, event in enumerate(events) if isinstance(event, ev.StepCompleted))
    assert last_piece < completed < handed
    assert result.final_response == REPLY


async def test_an_action_dict_is_streamed_as_its_json() -> None:
    events, result = await streamed("t", SOLO, [llm("Solo", ScriptedModel([final("ok")]))])
    assert result.success
    assert json.loads("".join(piece.text for piece in deltas(events))) == final("ok")


@pytest.mark.parametrize("chunk_size", [0, -1, 1.5, True, "8"])
def test_a_test_models_chunk_size_must_be_a_positive_int(chunk_size: Any) -> None:
    with pytest.raises(TypeError, match="chunk_size must be a positive int"):
        ScriptedModel([], chunk_size=chunk_size)
    with pytest.raises(TypeError, match="chunk_size must be a positive int"):
        FunctionModel(lambda messages, info: "x", chunk_size=chunk_size)


async def test_a_retry_starts_the_text_again_under_the_next_attempt() -> None:
    """A call that fails after writing some text is retried; the void text is marked by its
    attempt, and the reply is the retried call's."""

    class FailsMidway(Counting):
        async def stream(
            self, messages: Sequence[Message], info: StepInfo, on_delta: DeltaSink
        ) -> ModelReply:
            self.streamed += 1
            if self.streamed == 1:
                on_delta("Lyon is ")
                raise ModelAPIError("the stream was cut", provider="t", model="m", retryable=True)
            return await super().stream(messages, info, on_delta)

    model = FailsMidway(REPLY)
    events, result = await streamed("t", SOLO, [llm("Solo", model)], error_config=FAST)
    assert result.success, result.error
    assert result.final_response == REPLY
    pieces = deltas(events)
    assert (pieces[0].text, pieces[0].attempt) == ("Lyon is ", 0)
    assert {piece.attempt for piece in pieces[1:]} == {1}
    assert "".join(piece.text for piece in pieces[1:]).strip() == REPLY
    retried = next(event for event in events if isinstance(event, ev.ModelCallRetried))
    assert events.index(pieces[0]) < events.index(retried) < events.index(pieces[1])


# ---- 2. only when someone listens --------------------------------------------------------------


async def test_nobody_listening_calls_complete_and_a_listener_calls_stream() -> None:
    quiet_model, listened_model = Counting(REPLY), Counting(REPLY)
    result = await asyncio.wait_for(
        Orchestra.run(
            "t",
            SOLO,
            agent_registry=AgentRegistry([llm("Solo", quiet_model)]),
            execution_config=quiet(),
        ),
        WAIT,
    )
    assert result.success
    assert (quiet_model.completed, quiet_model.streamed) == (1, 0)
    _, result = await streamed("t", SOLO, [llm("Solo", listened_model)])
    assert result.success
    assert (listened_model.completed, listened_model.streamed) == (0, 1)


async def test_plain_status_lines_do_not_stream_and_print_no_delta(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A CI log (stderr not a terminal) gets its usual lines: no pieces of replies."""
    model = Counting(REPLY)
    result = await asyncio.wait_for(
        Orchestra.run(
            "t",
            SOLO,
            agent_registry=AgentRegistry([llm("Solo", model)]),
            execution_config=ExecutionConfig(status=NORMAL),
        ),
        WAIT,
    )
    assert result.success
    assert (model.completed, model.streamed) == (1, 0)
    printed = capsys.readouterr().err
    assert "step    1" in printed and "Paris" not in printed


async def test_a_model_that_cannot_stream_still_answers_a_listening_run() -> None:
    class CompleteOnly:
        async def complete(self, messages: Sequence[Message], info: StepInfo) -> ModelReply:
            return ModelReply(content=REPLY)

    events, result = await streamed("t", SOLO, [llm("Solo", CompleteOnly())])
    assert result.success and result.final_response == REPLY
    assert not deltas(events)


def test_deltas_reach_only_subscribers_that_ask_and_are_never_stored() -> None:
    stream = ev.EventStream()
    plain: list[ev.Event] = []
    listening: list[ev.Event] = []
    stream.subscribe(plain.append)
    assert not stream.wants_deltas
    unsubscribe = stream.subscribe(listening.append, deltas=True)
    assert stream.wants_deltas
    piece, started = delta("Par"), opened()[0]
    stream.emit(started)
    stream.emit_delta(piece)
    assert plain == [started] and listening == [started, piece]
    assert stream.events == [started]
    unsubscribe()
    assert not stream.wants_deltas


def test_a_delta_subscriber_that_raises_is_unsubscribed_and_reported() -> None:
    stream = ev.EventStream()

    def broken(event: ev.Event) -> None:
        raise ValueError("boom")

    stream.subscribe(broken, deltas=True)
    stream.emit_delta(delta("x"))
    assert not stream.wants_deltas
    (error,) = stream.observer_errors
    assert "ValueError: boom" in error and "unsubscribed" in error
    stream.emit(opened()[0])  # it hears no event any more either


# ---- 3. Orchestra.stream: its end, early break, failures ---------------------------------------


class Stalls:
    """Writes a first piece, then waits for ever (until its step is cancelled)."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def complete(self, messages: Sequence[Message], info: StepInfo) -> ModelReply:
        raise AssertionError("a listened run streams")

    async def stream(
        self, messages: Sequence[Message], info: StepInfo, on_delta: DeltaSink
    ) -> ModelReply:
        on_delta("Thinking")
        try:
            await asyncio.Event().wait()
        finally:
            self.cancelled.set()
        raise AssertionError("unreachable")


async def test_breaking_out_of_the_stream_cancels_the_run_and_leaves_no_task() -> None:
    model = Stalls()
    gc.collect()  # earlier tests' garbage must not warn inside this test's window
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with Orchestra.stream(
            "t", SOLO, agent_registry=AgentRegistry([llm("Solo", model)]), execution_config=quiet()
        ) as events:
            async for event in events:
                if isinstance(event, ev.StepDelta):
                    break
        gc.collect()
    assert model.cancelled.is_set()
    assert events.result is None  # the run was cancelled, not finished
    left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    assert [task.get_name() for task in left if not task.done()] == []
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []


async def test_a_run_that_fails_is_a_failed_result_after_its_events() -> None:
    events, result = await streamed("t", SOLO, [])  # no agent for Solo
    assert not result.success
    assert "Solo" in (result.error or "")
    assert events == []  # it failed before it started: no event


async def test_misuse_raises_at_the_call_as_run_does() -> None:
    with pytest.raises(ConfigurationError, match="max_steps"):
        Orchestra.stream("t", SOLO, max_steps=0)
    with pytest.raises(TypeError, match=r"Orchestra\.stream"):
        Orchestra.stream("t", SOLO, bogus=1)


async def test_events_are_iterated_inside_the_block() -> None:
    with pytest.raises(TypeError, match=r"async with Orchestra\.stream"):
        async for _ in Orchestra.stream("t", SOLO):
            pass


# ---- 4. the live display ------------------------------------------------------------------------


def delta(text: str, attempt: int = 0, step: int = 1) -> ev.StepDelta:
    return ev.StepDelta(
        **base(branch_id="b0", agent="A", step=step, text=text, attempt=attempt, at=2.0)
    )


def writing_view(*pieces: ev.StepDelta) -> RunView:
    view = RunView("r", {"A"})
    for event in [
        *opened(),
        ev.StepStarted(**base(branch_id="b0", agent="A", step=1, branch_step=1)),
    ]:
        view(event)
    for piece in pieces:
        view(piece)
    return view


def row(view: RunView) -> str | None:
    shown = blocks.writing_row(view.branches["b0"])
    return None if shown is None else shown.plain


def test_the_row_shows_the_end_of_the_reply_up_to_its_last_whole_word() -> None:
    view = writing_view(delta("The capital "), delta("of France is Par"))
    assert row(view) == "✎ The capital of France is"
    view(delta("is.\n\x1b[2J Done "))
    assert row(view) == "✎ The capital of France is Paris. \\x1b[2J Done"
    long = writing_view(*[delta(f"word{i} ") for i in range(100)])
    shown = row(long)
    assert shown is not None and shown.startswith("✎ …") and shown.endswith("word99")
    assert len(shown) <= blocks.WRITING_SHOWN + 3


def test_a_key_in_the_reply_is_never_shown_even_half_written() -> None:
    key = "sk-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4"
    view = writing_view(delta("my key is " + key[:12]))
    assert key[:12] not in (row(view) or "")
    view(delta(key[12:] + " and more "))
    shown = row(view) or ""
    assert REDACTED in shown and "sk-A1b2" not in shown


def test_a_retry_clears_the_text_and_the_step_end_removes_the_row() -> None:
    view = writing_view(delta("Lyon is the "), delta("Paris is the ", attempt=1))
    assert row(view) == "✎ Paris is the"
    view(delta("late piece of step 0 ", step=0))  # of no step in flight: dropped
    assert row(view) == "✎ Paris is the"
    view(ev.StepFailed(**base(branch_id="b0", agent="A", step=1, error_type="E", error="e")))
    assert view.branches["b0"].writing == ""


async def test_the_live_area_draws_the_reply_being_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A frame drawn while the model is mid-reply shows its end on the branch's row."""
    console, out = tty_console()
    display = LiveDisplay(console, auto_refresh=False)
    watching(monkeypatch, display)
    frames: list[str] = []

    class DrawsMidway(Counting):
        async def stream(
            self, messages: Sequence[Message], info: StepInfo, on_delta: DeltaSink
        ) -> ModelReply:
            self.streamed += 1
            on_delta("The capital of France ")
            on_delta("is Par")
            display.refresh()
            frames.append(out.getvalue())
            return ModelReply(content="The capital of France is Paris.")

    model = DrawsMidway("")
    result = await asyncio.wait_for(
        Orchestra.run(
            "t",
            SOLO,
            agent_registry=AgentRegistry([llm("Solo", model)]),
            execution_config=ExecutionConfig(status=NORMAL),
        ),
        WAIT,
    )
    display.close()
    assert result.success
    assert model.streamed == 1  # the live view listens: the model streams
    (frame,) = frames
    assert "✎ The capital of France" in Text.from_ansi(frame).plain
    after = Text.from_ansi(out.getvalue()[len(frame) :]).plain
    start = after.index("· succeeded")
    final_block = after[start : after.index("╰", start)]
    assert "✓ done" in final_block and "✎" not in final_block


def test_plain_lines_have_nothing_to_say_of_a_delta() -> None:
    from orchestra.coordination.monitoring.status import StatusPrinter, status_line

    assert status_line(delta("text"), NORMAL) is None
    out = io.StringIO()
    StatusPrinter(NORMAL, out)(delta("text"))
    assert out.getvalue() == ""


PTY_SCRIPT = """\
import asyncio, sys
from orchestra import Agent, AgentRegistry, Orchestra
from orchestra.models.base import ModelReply

class Writes:
    async def complete(self, messages, info):
        raise AssertionError("the live view listens: the model streams")

    async def stream(self, messages, info, on_delta):
        on_delta("The capital of France ")
        on_delta("is Paris, as every ")
        await asyncio.to_thread(sys.stdin.readline)  # until the test saw it drawn
        on_delta("atlas says.")
        return ModelReply(content="The capital of France is Paris, as every atlas says.")

async def main():
    agents = AgentRegistry([Agent("Solo", Writes(), register=False)])
    result = await Orchestra.run("t", {"nodes": ["Solo"], "edges": []}, agent_registry=agents)
    print("RESULT:", result.final_response)

asyncio.run(main())
"""


def test_the_reply_being_written_is_drawn_on_a_real_terminal(tmp_path: Path) -> None:
    """On a pseudo-terminal the live view (NORMAL, the default) draws the end of the reply
    while the model is still writing it; the run then ends as ever."""
    child = pexpect.spawn(
        sys.executable,
        ["-c", PTY_SCRIPT],
        cwd=str(tmp_path),
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(Path.home()),
            "TERM": "xterm-256color",
            "PYTHONPATH": os.pathsep.join((str(TESTS.parent), str(TESTS))),
        },
        encoding="utf-8",
        timeout=60,  # pexpect's bound on each expected output: only a hang reaches it
        dimensions=(40, 120),
    )
    child.expect("✎ The capital of France is Paris, as")
    assert "atlas" not in child.before
    child.sendline("")
    child.expect("RESULT: The capital of France is Paris, as every atlas says.")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
