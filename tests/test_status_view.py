"""The live status view: the pure fold of a run's events (tree, statuses, totals, replayed
events), its rendering in one live area shared by every run in the process, and the choice
between it and plain lines."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import Iterable
from typing import Any

import msgspec
import pytest
from helpers import final, fn, invoke, llm, run, spokes
from rich.console import Console
from rich.text import Text

from orchestra import ExecutionConfig, ScriptedModel, StatusConfig
from orchestra.coordination.engine import events as ev
from orchestra.coordination.monitoring import blocks, live
from orchestra.coordination.monitoring.live import LiveDisplay, LiveWatch, interactive
from orchestra.coordination.monitoring.view import BranchStatus, RunState, RunView
from orchestra.coordination.results import OrchestraResult

NORMAL = StatusConfig.from_verbosity(1)
VERBOSE = StatusConfig.from_verbosity(2)


async def fanned_out() -> OrchestraResult:
    """Hub fans out to A and B, then answers on their results."""
    hub = ScriptedModel([invoke(("A", "look"), ("B", {"k": 1})), final("both done")])
    agents = [llm("Hub", hub), llm("A", ScriptedModel(["a"])), llm("B", ScriptedModel(["b"]))]
    result = await run("task", spokes("A", "B"), agents)
    assert result.success, result.error
    return result


def folded(events: Iterable[ev.Event], models: Iterable[str] = ("Hub", "A", "B")) -> RunView:
    view = RunView("r", set(models))
    for event in events:
        view(event)
    return view


def upto(events: list[ev.Event], kind: type[ev.Event], nth: int = 1) -> list[ev.Event]:
    """The events up to and with the ``nth`` of ``kind``."""
    seen = 0
    for index, event in enumerate(events):
        seen += isinstance(event, kind)
        if seen == nth:
            return events[: index + 1]
    raise AssertionError(f"no {kind.__name__} #{nth}")


async def test_the_fold_keeps_the_tree_the_statuses_and_the_totals() -> None:
    events = (await fanned_out()).events

    started = folded(upto(events, ev.StepStarted))
    assert started.branches[started.root or ""].status is BranchStatus.MODEL

    fanning = folded(upto(events, ev.FanOutStarted))
    hub = fanning.branches["b0"]
    assert hub.status is BranchStatus.CONVERGING and hub.steps == 1
    [(fan_out, children)] = fanning.children(hub)
    assert [child.agent for child in children] == ["A", "B"]
    assert [child.parent for child in children] == ["b0", "b0"] and fan_out.outcome is None

    view = folded(events)
    [(fan_out, children)] = view.children(view.branches["b0"])
    assert fan_out.outcome == "met" and (fan_out.succeeded, fan_out.failed) == (2, 0)
    assert view.state is RunState.SUCCEEDED and view.ended
    assert view.steps == 4 == sum(branch.steps for branch in view.branches.values())
    assert view.elapsed(10**9) == pytest.approx(events[-1].duration)  # type: ignore[attr-defined]
    assert view.branches["b0"].status is BranchStatus.DONE


async def test_replayed_events_give_the_same_view() -> None:
    """A resumed run's view is right once it has caught up with its log."""
    events = (await fanned_out()).events
    assert folded(_replayed(event) for event in events) == folded(events)


async def test_a_failed_run_and_a_failed_branch_say_why() -> None:
    def broken(value: Any, context: Any) -> str:
        raise RuntimeError("disk on fire")

    result = await run("task", {"nodes": ["A"], "edges": []}, [fn("A", broken)])
    view = folded(result.events, models=())
    assert view.state is RunState.FAILED and "disk on fire" in (view.error or "")
    branch = view.branches["b0"]
    assert branch.status is BranchStatus.FAILED and "disk on fire" in (branch.error or "")


def base(**fields: Any) -> dict[str, Any]:
    return {"run_id": "r", "at": 1.0, **fields}


def opened() -> list[ev.Event]:
    return [
        ev.RunStarted(**base(task="t", entries=("A",), max_steps=9)),
        ev.BranchCreated(**base(branch_id="b0", agent="A", parent_branch_id=None, fan_out_id=None)),
    ]


def test_tool_calls_waiting_for_the_user_and_a_pause_are_shown() -> None:
    view = folded(opened(), models=("A",))
    view(ev.ToolCallStarted(**base(at=2.0, branch_id="b0", agent="A", tool="t", call_id="c")))
    branch = view.branches["b0"]
    assert branch.status is BranchStatus.TOOL and branch.elapsed(3.5) == 1.5
    view(
        ev.ToolCallCompleted(
            **base(at=3.0, branch_id="b0", agent="A", tool="t", call_id="c", ok=True, duration=1.0)
        )
    )
    assert branch.status is BranchStatus.RUNNING and branch.elapsed(9.0) == 1.0

    view(
        ev.UserInputRequested(**base(branch_id="b0", agent="A", question_id="q", question="which?"))
    )
    assert branch.status is BranchStatus.USER and branch.question == "which?"
    assert view.shown_state is RunState.WAITING_FOR_USER
    view(ev.UserInputReceived(**base(branch_id="b0", question_id="q", answer="x")))
    assert view.shown_state is RunState.RUNNING

    view(ev.PauseRequested(**base(reason="lunch")))
    assert view.shown_state is RunState.PAUSING and not view.ended
    view(ev.RunPaused(**base(reason="lunch", total_steps=0, duration=4.0)))
    assert (view.state, view.reason, view.elapsed(99.0)) == (RunState.PAUSED, "lunch", 4.0)
    view(ev.RunResumed(**base(at=50.0, context_keys=())))
    assert view.state is RunState.RUNNING and view.elapsed(51.0) == 5.0


def tty_console(width: int = 110) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=width, emoji=False), out


def plain(text: str) -> str:
    """What a terminal shows of ``text``, control sequences left out."""
    return Text.from_ansi(text).plain


def watching(monkeypatch: pytest.MonkeyPatch, display: LiveDisplay) -> None:
    """Runs in this test print to ``display`` (as on a terminal)."""
    monkeypatch.setattr(live, "interactive", lambda stream: True)
    monkeypatch.setattr(live, "shared_display", lambda stream: display)


async def test_the_live_area_shows_the_run_and_its_end_is_printed_once_above_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    console, out = tty_console()
    display = LiveDisplay(console, auto_refresh=False)
    watching(monkeypatch, display)
    frames: list[str] = []

    def worker(value: Any, context: Any) -> str:
        display.refresh()  # a frame drawn while the worker's step is in flight
        frames.append(out.getvalue())
        return "done"

    config = ExecutionConfig(status=NORMAL)
    result = await run("task", {"nodes": ["W"], "edges": []}, [fn("W", worker)], config=config)
    assert result.success
    (frame,) = frames
    assert "\x1b[" in frame  # drawn as a live area, with control sequences
    shown = plain(frame)
    assert f"run {result.session_id} · running" in shown and "b0 W" in shown
    assert "in a step" in shown

    display.refresh()  # the run ended: its block is printed above, the area erased
    ending = plain(out.getvalue()[len(frame) :])
    assert ending.count(f"run {result.session_id} · succeeded · 1 steps") == 1
    assert "✓ done" in ending
    display.refresh()
    assert plain(out.getvalue()[len(frame) :]) == ending  # nothing more: printed once


async def test_verbose_scrolls_its_lines_above_the_live_area(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    console, out = tty_console()
    display = LiveDisplay(console, auto_refresh=False)
    watching(monkeypatch, display)
    await fanned_out_with(ExecutionConfig(status=VERBOSE))
    display.refresh()
    shown = plain(out.getvalue())
    assert "fan-out f1 from Hub: A, B" in shown and "-> A: look" in shown
    assert "converged (met), 2 ok, 0 failed" in shown  # the final block's folded fan-out


async def fanned_out_with(config: ExecutionConfig) -> OrchestraResult:
    hub = ScriptedModel([invoke(("A", "look"), ("B", {"k": 1})), final("both done")])
    agents = [llm("Hub", hub), llm("A", ScriptedModel(["a"])), llm("B", ScriptedModel(["b"]))]
    return await run("task", spokes("A", "B"), agents, config=config)


async def two_runs_at_once(
    monkeypatch: pytest.MonkeyPatch, session_ids: tuple[str, str]
) -> tuple[str, io.StringIO, LiveDisplay]:
    """Two runs of one code agent at once, printing to one terminal display: the frame drawn
    while both are in their step, what the terminal got, the display."""
    console, out = tty_console()
    display = LiveDisplay(console, auto_refresh=False)
    watching(monkeypatch, display)
    arrived = 0
    both = asyncio.Event()
    frames: list[str] = []

    async def worker(value: Any, context: Any) -> str:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            display.refresh()  # both runs are in their step now
            frames.append(out.getvalue())
            both.set()
        await both.wait()
        return "done"

    config = ExecutionConfig(status=NORMAL)
    topology = {"nodes": ["W"], "edges": []}
    results = await asyncio.gather(
        *(
            run("t", topology, [fn("W", worker)], config=config, context={"session_id": name})
            for name in session_ids
        )
    )
    assert all(result.success for result in results)
    (frame,) = frames
    return frame, out, display


async def test_two_concurrent_runs_get_a_block_each(monkeypatch: pytest.MonkeyPatch) -> None:
    frame, out, display = await two_runs_at_once(monkeypatch, ("alpha", "beta"))
    assert "run alpha · running" in plain(frame) and "run beta · running" in plain(frame)
    display.refresh()
    ending = plain(out.getvalue()[len(frame) :])
    assert ending.count("run alpha · succeeded") == 1 == ending.count("run beta · succeeded")


def test_a_session_read_back_draws_nothing() -> None:
    """Replayed events are folded, never drawn: the run joins when something is news."""
    console, out = tty_console()
    display = LiveDisplay(console, auto_refresh=False, clock=lambda: 2.0)
    watch = LiveWatch(NORMAL, display, "r", {"A"})
    for event in opened():
        watch(_replayed(event))
    display.refresh()
    assert out.getvalue() == "" and watch.view.branches["b0"].agent == "A"
    watch(ev.RunResumed(**base(context_keys=())))
    display.refresh()
    assert "run r · running" in plain(out.getvalue())
    display.close()


def _replayed(event: ev.Event) -> ev.Event:
    return msgspec.structs.replace(event, replayed=True)


def test_close_finishes_a_run_cut_off_and_erases_the_area() -> None:
    console, out = tty_console()
    display = LiveDisplay(console, clock=lambda: 2.0)  # its own refresh thread
    watch = LiveWatch(NORMAL, display, "r", {"A"})
    for event in opened():
        watch(event)
    display.close()  # returns once the thread has ended
    assert display._thread is None
    text = out.getvalue()
    assert "run r · running" in plain(text)
    assert "\x1b[?25h" in text[-20:]  # the cursor shown again: the area is gone


async def test_plain_lines_when_the_stream_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    await fanned_out_with(ExecutionConfig(status=VERBOSE))
    err = capsys.readouterr().err
    assert "fan-out f1 from Hub: A, B" in err and "\x1b" not in err


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_which_streams_get_the_live_view(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TERM", raising=False)
    for name in ("TTY_INTERACTIVE", "TTY_COMPATIBLE", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    assert interactive(FakeTerminal())
    assert not interactive(io.StringIO())
    monkeypatch.setenv("FORCE_COLOR", "1")  # CI services set it: a pipe is still a pipe
    assert not interactive(io.StringIO())
    monkeypatch.setenv("TERM", "dumb")
    assert not interactive(FakeTerminal())
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("TTY_INTERACTIVE", "0")
    assert not interactive(FakeTerminal())


def test_quiet_watches_nothing_and_a_pipe_gets_plain_lines() -> None:
    quiet = StatusConfig.from_verbosity(0)
    assert live.status_watch(quiet, "r", {}, FakeTerminal()) is None
    printer = live.status_watch(NORMAL, "r", {}, io.StringIO())
    assert type(printer).__name__ == "StatusPrinter"


def test_the_area_leaves_streams_to_another_terminal_alone() -> None:
    """rich's Live swapped sys.stdout and sys.stderr for proxies from the drawing thread: the
    program's stdout reached the terminal, every print on the event loop redrew the area
    there, and a contextlib.redirect_stdout around a run was left in place for good. Only
    streams to the display's own terminal get a proxy (tests/test_live_display.py)."""
    console, out = tty_console()
    display = LiveDisplay(console, auto_refresh=False, clock=lambda: 2.0)
    watch = LiveWatch(NORMAL, display, "r", {"A"})
    before = (sys.stdout, sys.stderr)
    for event in opened():
        watch(event)
    display.refresh()  # the area is up
    assert "run r · running" in plain(out.getvalue())
    assert (sys.stdout, sys.stderr) == before
    drawn = out.getvalue()
    print("a line the program prints")
    assert out.getvalue() == drawn  # it went where the program sent it, drawing nothing
    display.close()
    assert (sys.stdout, sys.stderr) == before


def test_a_run_that_starts_later_joins_the_area_on_the_same_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The display was keyed by the stream object: a run built once sys.stderr had been
    wrapped got a second area drawn over the first."""
    monkeypatch.setattr(live, "_DISPLAYS", {})
    leader, follower = os.openpty()
    try:
        with (
            open(follower, "w", closefd=False) as first,
            open(follower, "w", closefd=False) as later,
        ):
            assert live.shared_display(first) is live.shared_display(later)
            assert live.shared_display(io.StringIO()) is not live.shared_display(first)
    finally:
        os.close(leader)
        os.close(follower)


def wide_fan_out(children: int, working: int, failed: int) -> list[ev.Event]:
    """A run whose root fanned out to ``children`` branches: the first ``working`` still in a
    step, ``failed`` failed, the rest done."""
    events = opened()
    ids = tuple(f"b{index}" for index in range(1, children + 1))
    events += [
        ev.BranchCreated(**base(branch_id=child, agent="W", parent_branch_id="b0", fan_out_id="f1"))
        for child in ids
    ]
    events.append(
        ev.FanOutStarted(
            **base(
                fan_out_id="f1", branch_id="b0", source="A", child_branch_ids=ids, targets=("W",)
            )
        )
    )
    for index, child in enumerate(ids):
        events.append(
            ev.StepStarted(**base(branch_id=child, agent="W", step=index + 2, branch_step=1))
        )
        if index >= working + failed:
            events.append(ev.BranchCompleted(**base(branch_id=child, agent="W", outcome="done")))
        elif index >= working:
            fields = base(branch_id=child, agent="W", error_type="X", error="boom")
            events.append(ev.BranchFailed(**fields))
    return events


def test_a_wide_fan_out_draws_a_bounded_block_and_counts_the_rest() -> None:
    """A 1000-branch fan-out copied every branch under the lock the engine waits on, rendered
    1005 lines a frame (124 ms) and filled the terminal."""
    view = folded(wide_fan_out(1000, working=12, failed=8), models=())
    excerpt = view.snapshot(live.MAX_ROWS)
    assert len(excerpt.branches) < live.MAX_ROWS  # a copy of the rows drawn, not of the run
    [(_, children)] = excerpt.children(excerpt.branches["b0"])
    assert [child.branch_id for child in children[:12]] == [f"b{i}" for i in range(1, 13)]
    assert children[12].branch_id == "b1000"  # then the latest to end
    console, out = tty_console()
    console.height = 30
    display = LiveDisplay(console, auto_refresh=False, clock=lambda: 2.0)
    watch = LiveWatch(NORMAL, display, "r", set())
    for event in wide_fan_out(1000, working=12, failed=8):
        watch(event)
    display.refresh()
    frame = plain(out.getvalue())
    assert len(frame.splitlines()) < console.height
    left_out = 1000 - len(children)
    assert f"… and {left_out} more (" in frame
    counts = frame.split(f"… and {left_out} more (")[1].split(")")[0]
    assert dict(part.split(" ", 1)[::-1] for part in counts.split(", ")) == {
        "done": str(980 - (len(children) - 12)),
        "failed": "8",
    }
    display.close()


def test_the_area_fits_the_terminal_whatever_the_number_of_runs() -> None:
    console, out = tty_console()
    console.height = 12
    display = LiveDisplay(console, auto_refresh=False, clock=lambda: 2.0)
    for name in ("r1", "r2", "r3", "r4", "r5"):
        watch = LiveWatch(NORMAL, display, name, set())
        for event in wide_fan_out(30, working=30, failed=0):
            watch(event)
    display.refresh()
    frame = plain(out.getvalue())
    assert len(frame.splitlines()) < console.height and "… and 2 more runs" in frame
    display.close()


async def test_show_actions_at_normal_scrolls_the_steps_above_the_area(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """StatusConfig(show_actions=True) at NORMAL was ignored on a terminal."""
    console, out = tty_console()
    display = LiveDisplay(console, auto_refresh=False)
    watching(monkeypatch, display)
    config = ExecutionConfig(status=StatusConfig(verbosity=1, show_actions=True))
    assert (await fanned_out_with(config)).success
    display.refresh()
    shown = plain(out.getvalue())
    assert "Hub: invoke_agent(A, B)" in shown and "-> A: look" in shown


def test_a_newline_in_a_branch_error_stays_on_its_row() -> None:
    """An error's newlines stretched a live block (one branch, 19 rows) and could draw rows
    that no branch has."""
    view = folded(opened(), models=())
    fields = base(branch_id="b0", agent="A", error_type="X", error="quota\n[forged] b9 ✓ done")
    view(ev.BranchFailed(**fields))
    label = blocks.branch_label(view.branches["b0"], 2.0)
    assert "\n" not in label.plain and "quota\\n[forged]" in label.plain
