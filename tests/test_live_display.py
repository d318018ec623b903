"""The live status display against the program around it: a run returns once its final block
is out, a question takes the area down before the channel is asked, the program's own prints
on the terminal are kept above the area, a frame waits while a library points the terminal's
fd elsewhere, a resumed run's time leaves the gap out, a stopped run's branches are shown
stopped, and two runs with one session id get a block each."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import msgspec
import pytest
from helpers import WAIT, ask, final, fn, invoke, llm, run, spokes
from rich.console import Console
from rich.text import Text
from test_status_view import NORMAL, base, opened, tty_console, two_runs_at_once, watching

from orchestra import (
    Action,
    AgentRegistry,
    CommunicationConfig,
    ExecutionConfig,
    ScriptedModel,
    TerminalChannel,
)
from orchestra.communication.channels import CommunicationManager, ProgrammaticChannel, Question
from orchestra.coordination.engine import events as ev
from orchestra.coordination.monitoring import blocks
from orchestra.coordination.monitoring.live import SETTLE_SECONDS, LiveDisplay, LiveWatch
from orchestra.coordination.monitoring.view import BUSY, BranchStatus, RunView
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import SQLiteStorageBackend, StateManager

SHOWN = "\x1b[?25h"  # the cursor shown again: the live area is gone
ONE = {"nodes": ["W"], "edges": []}


def plain(text: str) -> str:
    return Text.from_ansi(text).plain


def erased(text: str) -> bool:
    """Whether ``text`` ends with the live area erased (the cursor shown again)."""
    return text.rstrip("\r").endswith(SHOWN)


# 1. A run returns once its final block is out


async def test_a_run_returns_once_its_final_block_is_out_and_the_area_erased(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Orchestra.run returned while the area was still up: the caller's next print landed
    under it and the following frame erased it."""
    console, out = tty_console()
    display = LiveDisplay(console)  # its own drawing thread
    watching(monkeypatch, display)

    async def worker(value: Any, context: Any) -> str:
        await asyncio.sleep(0)
        return "RESULT-42"

    result = await run("t", ONE, [fn("W", worker)], config=ExecutionConfig(status=NORMAL))
    assert result.success
    text = out.getvalue()
    assert f"run {result.session_id} · succeeded" in plain(text)
    assert erased(text)
    assert display._thread is None or display._views == {}


async def test_a_cancelled_run_raises_once_its_final_block_is_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    console, out = tty_console()
    display = LiveDisplay(console)
    watching(monkeypatch, display)
    started = asyncio.Event()

    async def worker(value: Any, context: Any) -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    running = asyncio.create_task(
        run("t", ONE, [fn("W", worker)], config=ExecutionConfig(status=NORMAL))
    )
    await asyncio.wait_for(started.wait(), WAIT)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    text = out.getvalue()
    ending = plain(text).split("cancelled ·")[-1]
    assert "cancelled" in plain(text) and erased(text)
    assert "b0 W  - cancelled" in ending  # finding 5: no spinner left on a stopped branch


async def test_a_paused_run_returns_once_its_final_block_is_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    console, out = tty_console()
    display = LiveDisplay(console)
    watching(monkeypatch, display)
    holding, go_on = asyncio.Event(), asyncio.Event()

    async def held(value: Any, context: Any) -> str:
        holding.set()
        await go_on.wait()
        return "held"

    hub = ScriptedModel([invoke(("A", "x"), ("B", "y")), final("done")])
    orchestra = OrchestraInstance(
        spokes("A", "B"),
        agent_registry=AgentRegistry([llm("Hub", hub), fn("A", held), fn("B", lambda v, c: "b")]),
        initial_config=ExecutionConfig(status=NORMAL),
        state_manager=StateManager(SQLiteStorageBackend(tmp_path / "s.db")),
    )
    running = asyncio.create_task(orchestra.execute("go", context={"session_id": "p"}))
    await asyncio.wait_for(holding.wait(), WAIT)
    assert await orchestra.pause_session("p", "lunch")
    go_on.set()
    paused = await asyncio.wait_for(running, WAIT)
    assert paused.metadata.get("paused") is True
    text = out.getvalue()
    assert "run p · paused: lunch" in plain(text) and erased(text)


def test_settling_never_hangs_when_nothing_draws() -> None:
    """Without a drawing thread (or with one stuck) a run's end does not wait for good."""
    console, _ = tty_console()
    display = LiveDisplay(console, auto_refresh=False, clock=lambda: 2.0)
    watch = LiveWatch(NORMAL, display, "r", {"A"})
    for event in opened():
        watch(event)
    watch.stop("cancelled")
    assert display.settle(watch.view, timeout=0.01) is False  # the block is still queued
    display.refresh()
    assert display.settle(watch.view, timeout=0.01) is True


# 2. The user's prompt and the program's prints stay on screen


def asked(question: str = "which colour?") -> ev.Event:
    return ev.UserInputRequested(
        **base(branch_id="b0", agent="A", question_id="q", question=question)
    )


class Prompt:
    """A question on the terminal the display draws on, as ``wiring._AskWhenCleared`` holds
    one: entered before its prompt is written, left once it is answered; each time the
    display shows the prompt again, ``AGAIN`` is written to the terminal. Questions on one
    input share the function that does it (``like``), as a ``TerminalChannel``'s do."""

    AGAIN = "PROMPT-AGAIN> "

    def __init__(self, watch: LiveWatch, like: Prompt | None = None) -> None:
        self.watch = watch
        self.display = watch.display
        self.held = contextlib.ExitStack()
        self.shown_again = 0
        self.again = self._again if like is None else like.again

    def _again(self) -> None:
        self.shown_again += 1
        self.display.console.file.write(self.AGAIN)

    def ask(self) -> Prompt:
        self.held.enter_context(self.watch.prompting(self.again))
        return self

    def answered(self) -> None:
        self.held.close()


def test_a_question_prints_the_blocks_once_and_takes_the_area_down() -> None:
    """Each frame erased the prompt a terminal channel had written and the characters the
    user typed."""
    console, out = tty_console()
    display = LiveDisplay(console, auto_refresh=False, clock=lambda: 2.0)
    watch = LiveWatch(NORMAL, display, "r", {"A"})
    for event in opened():
        watch(event)
    display.refresh()
    assert "run r · running" in plain(out.getvalue())
    watch(asked())
    prompt = Prompt(watch).ask()
    display.refresh()
    parked = out.getvalue()
    assert erased(parked) and "run r · waiting for the user" in plain(parked)
    display.refresh()
    display.refresh()
    assert out.getvalue() == parked  # no frame over the prompt and the answer
    watch(ev.UserInputReceived(**base(branch_id="b0", question_id="q", answer="blue")))
    prompt.answered()
    display.refresh()
    assert "run r · running" in plain(out.getvalue()[len(parked) :])  # drawn again
    display.close()


def test_the_area_stays_down_until_the_last_waiting_question_is_answered() -> None:
    """Two branches asked at once: the first answer drew the run's block again, after the
    second question's prompt (the user typed under a box)."""
    console, out = tty_console()
    display = LiveDisplay(console, auto_refresh=False, clock=lambda: 2.0)
    watch = LiveWatch(NORMAL, display, "r", {"A"})
    for event in opened():
        watch(event)
    watch(
        ev.BranchCreated(**base(branch_id="b1", agent="A", parent_branch_id=None, fan_out_id=None))
    )
    watch(asked())
    watch(ev.UserInputRequested(**base(branch_id="b1", agent="A", question_id="q2", question="?")))
    first, second = Prompt(watch).ask(), Prompt(watch).ask()
    display.refresh()
    parked = out.getvalue()
    assert "run r · waiting for the user" in plain(parked)
    watch(ev.UserInputReceived(**base(branch_id="b0", question_id="q", answer="blue")))
    first.answered()
    display.refresh()
    assert out.getvalue() == parked  # the second prompt is on screen: nothing drawn after it
    watch(ev.UserInputReceived(**base(branch_id="b1", question_id="q2", answer="up")))
    second.answered()
    display.refresh()
    assert "run r · running" in plain(out.getvalue()[len(parked) :])  # drawn again
    display.close()


async def test_the_user_channel_is_asked_once_the_area_is_down(
    monkeypatch: pytest.MonkeyPatch, pipe_terminal: tuple[int, int]
) -> None:
    """The channel was asked at once: its prompt raced the frame that took the area down."""
    console, out = tty_console()
    display = LiveDisplay(console)
    watching(monkeypatch, display)
    seen: list[str] = []

    class Terminal(TerminalChannel):
        async def ask(self, question: Question) -> Any:
            seen.append(out.getvalue())  # what is on the terminal when the prompt is written
            return "blue"

    model = ScriptedModel([ask("Which colour?"), final("you said it")])
    result = await run(
        "t",
        {"nodes": ["A"], "edges": ["A -> User"]},
        [llm("A", model)],
        config=ExecutionConfig(status=NORMAL),
        communication_config=CommunicationConfig(channel=Terminal(pipe_terminal[0])),
    )
    assert result.success, result.error
    (before_prompt,) = seen
    assert "waiting for the user" in plain(before_prompt) and erased(before_prompt)


async def test_a_question_on_another_channel_is_shown_in_the_area_and_leaves_it_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding 3: a run waiting on a channel that is not the terminal (code, a web client)
    took the area down, so no other run on the terminal was drawn until it was answered."""
    console, out = tty_console()
    display = LiveDisplay(console, auto_refresh=False, clock=lambda: 2.0)
    watching(monkeypatch, display)
    channel = ProgrammaticChannel()
    frames: list[str] = []

    async def answer() -> None:
        question = await asyncio.wait_for(channel.next_question(), WAIT)
        display.refresh()  # a frame while the question waits
        frames.append(out.getvalue())
        channel.answer(question.id, "blue")

    model = ScriptedModel([ask("Which colour?"), final("you said it")])
    answering = asyncio.create_task(answer())
    result = await run(
        "t",
        {"nodes": ["A"], "edges": ["A -> User"]},
        [llm("A", model)],
        config=ExecutionConfig(status=NORMAL),
        communication_config=CommunicationConfig(channel=channel),
    )
    await answering
    assert result.success, result.error
    (frame,) = frames
    assert "waiting for the user" in plain(frame) and not erased(frame)  # the area is up
    assert display._prompts == {}
    display.close()


@pytest.fixture
def pipe_terminal() -> Iterator[tuple[int, int]]:
    """A pipe standing in for the terminal: (read end, write end), the read end non-blocking."""
    read, write = os.pipe()
    os.set_blocking(read, False)
    yield read, write
    os.close(read)
    os.close(write)


def drain(fd: int) -> str:
    chunks = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return chunks.decode()
        if not chunk:
            return chunks.decode()
        chunks += chunk


def terminal_console(fd: int) -> Console:
    stream = open(fd, "w", closefd=False)  # noqa: SIM115 - closed with the pipe
    return Console(file=stream, force_terminal=True, width=100, height=30, emoji=False)


def attached(monkeypatch: pytest.MonkeyPatch, write: int) -> tuple[LiveDisplay, LiveWatch, IO[str]]:
    """A run attached to a display on the pipe terminal ``write``, the program's ``sys.stdout``
    a file object of its own on that same terminal."""
    display = LiveDisplay(terminal_console(write), auto_refresh=False, clock=lambda: 2.0)
    program = open(write, "w", closefd=False)  # noqa: SIM115 - closed with the pipe
    monkeypatch.setattr(sys, "stdout", program)
    watch = LiveWatch(NORMAL, display, "r", {"A"})
    for event in opened():
        watch(event)
    return display, watch, program


def test_the_programs_prints_on_the_terminal_are_kept_above_the_area(
    monkeypatch: pytest.MonkeyPatch, pipe_terminal: tuple[int, int]
) -> None:
    """A line the program wrote to the terminal while the area was up was erased by the next
    frame."""
    read, write = pipe_terminal
    elsewhere = io.StringIO()
    monkeypatch.setattr(sys, "stderr", elsewhere)
    display, watch, program = attached(monkeypatch, write)
    assert sys.stdout is not program and sys.stderr is elsewhere  # only the same terminal
    assert sys.stdout.isatty() == program.isatty() and sys.stdout.fileno() == write
    display.refresh()
    assert "run r · running" in plain(drain(read))
    print("a line the program prints", flush=True)
    print("half a ", end="", flush=True)
    assert drain(read) == ""  # nothing drawn on the program's thread
    display.refresh()
    frame = plain(drain(read))
    assert frame.index("a line the program prints") < frame.index("run r · running")
    watch(ev.RunCompleted(**base(at=3.0, success=True, error=None, total_steps=0, duration=2.0)))
    assert sys.stdout is program  # put back with the last run
    display.refresh()
    ending = plain(drain(read))
    assert ending.endswith("half a ")  # the unfinished line, left where it would have been
    print("and the rest", flush=True)
    assert drain(read) == "and the rest\n"


def test_a_proxy_left_behind_writes_straight_through(
    monkeypatch: pytest.MonkeyPatch, pipe_terminal: tuple[int, int]
) -> None:
    """A stream restored later (by a redirect_stdout entered while the area was up) may be the
    proxy: once the area is down it writes as the stream it stands for."""
    read, write = pipe_terminal
    display, watch, _ = attached(monkeypatch, write)
    proxy = sys.stdout
    buffer = io.StringIO()
    sys.stdout = buffer  # a redirect_stdout entered meanwhile
    watch(ev.RunCompleted(**base(at=3.0, success=True, error=None, total_steps=0, duration=2.0)))
    assert sys.stdout is buffer  # not put back over the redirect
    display.refresh()
    drain(read)
    print("after", file=proxy, flush=True)
    assert drain(read) == "after\n"


# 3. A library pointing the terminal's fd elsewhere


def test_a_frame_waits_while_the_terminals_fd_points_elsewhere(
    pipe_terminal: tuple[int, int],
) -> None:
    """llama.cpp dup2s /dev/null over fds 1 and 2 while a model loads: the first frame (the
    cursor hidden, the lines to scroll) went to /dev/null."""
    read, write = pipe_terminal
    display = LiveDisplay(terminal_console(write), auto_refresh=False, clock=lambda: 2.0)
    watch = LiveWatch(NORMAL, display, "r", {"A"})
    watch.scrolls = True
    for event in opened():
        watch(event)
    watch(ev.StepCompleted(**base(branch_id="b0", agent="A", step=1, **STEP)))
    kept = os.dup(write)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, write)
        display.refresh()  # the fd is /dev/null now: nothing is taken for this frame
    finally:
        os.dup2(kept, write)
        os.close(kept)
        os.close(null)
    display.refresh()
    frame = drain(read)
    assert "\x1b[?25l" in frame  # the area started here, cursor hidden
    assert "step    1" in plain(frame) and "run r · running" in plain(frame)
    display.close()


STEP: dict[str, Any] = {"action": Action.final("done"), "duration": 0.5}


# 4. A resumed run's elapsed time


def test_a_resumed_runs_elapsed_time_leaves_the_gap_out() -> None:
    """The view set its last event's time before the fold: a resume after 100 s stopped
    counted the 100 s as running time."""
    crashed = [
        ev.RunStarted(**base(at=0.0, task="t", entries=("A",), max_steps=9)),
        ev.BranchCreated(
            **base(at=0.0, branch_id="b0", agent="A", parent_branch_id=None, fan_out_id=None)
        ),
        ev.StepStarted(**base(at=1.0, branch_id="b0", agent="A", step=1, branch_step=1)),
    ]
    view = RunView("r")
    for event in crashed:
        view(msgspec.structs.replace(event, replayed=True))
    view(ev.RunResumed(**base(at=101.0, context_keys=())))
    assert view.elapsed(101.0) == pytest.approx(1.0)  # it ran until its last event, at t=1
    assert view.elapsed(103.0) == pytest.approx(3.0)


# 5. Stopped runs, and two runs sharing a session id


@pytest.mark.parametrize("outcome", ["cancelled", "halted"])
def test_a_stopped_runs_busy_branches_are_shown_stopped(outcome: str) -> None:
    view = RunView("r", {"A"})
    for event in opened():
        view(event)
    view(ev.StepStarted(**base(at=2.0, branch_id="b0", agent="A", step=1, branch_step=1)))
    assert view.branches["b0"].status in BUSY
    view.stop(outcome, 3.5)
    branch = view.branches["b0"]
    assert branch.status is BranchStatus(outcome) and branch.elapsed(99.0) == 1.5
    label = blocks.branch_label(branch, 4.0).plain
    assert f"- {outcome}" in label and not any(frame in label for frame in blocks._SPINNER.frames)


async def test_two_runs_with_one_session_id_get_a_block_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frame, _, _ = await two_runs_at_once(monkeypatch, ("s", "s"))
    assert plain(frame).count("run s · running") == 2


# The run's own manager, runs that end while another waits, lines rewritten in place


async def test_the_run_s_own_communication_manager_answers_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a terminal the run's manager was replaced by a plain one: a subclass's own ``ask``
    was skipped and the run failed with no user channel (it passed piped or quiet)."""
    console, _ = tty_console()
    display = LiveDisplay(console)
    watching(monkeypatch, display)

    class AutoAnswer(CommunicationManager):
        def __init__(self) -> None:
            super().__init__(channel=None, user_timeout=None)
            self.asked: list[str] = []

        async def ask(self, question: Question) -> Any:
            self.asked.append(question.text)
            return "blue"

    manager = AutoAnswer()
    model = ScriptedModel([ask("Which colour?"), final("you said it")])
    instance = OrchestraInstance(
        {"nodes": ["A"], "edges": ["A -> User"]},
        AgentRegistry([llm("A", model)]),
        initial_config=ExecutionConfig(status=NORMAL),
        communication_manager=manager,
    )
    result = await instance.execute("t")
    assert result.success, result.error
    assert manager.asked == ["Which colour?"]


def test_while_a_run_waits_for_the_user_another_ends_in_order_above_the_prompt() -> None:
    """Finding 3: while one run's question held the area down, nothing was drawn, another
    run's final block included: its return did not wait for the block, so what its caller
    printed next came out before it (or the block not at all, the question never answered).
    Now the block is out, then the prompt shown again, before that run returns; and a
    question asked meanwhile needs no frame (the area is down already)."""
    console, out = tty_console()
    display = LiveDisplay(console, clock=lambda: 2.0)  # its own drawing thread
    asking = LiveWatch(NORMAL, display, "r", {"A"})
    for event in opened():
        asking(event)
    asking(asked())
    first = Prompt(asking).ask()
    assert display.cleared()  # parked: the prompt goes on screen
    out.write("PROMPT r> ")
    other = LiveWatch(NORMAL, display, "s", {"A"})
    for event in opened():
        other(msgspec.structs.replace(event, run_id="s"))
    other(msgspec.structs.replace(asked(), run_id="s"))
    second = Prompt(other, like=first).ask()
    assert display.cleared()  # the area is down already
    ended = ev.RunCompleted(**base(at=3.0, success=True, error=None, total_steps=0, duration=2.0))
    third = LiveWatch(NORMAL, display, "t", {"A"})
    for event in [*opened(), ended]:
        third(msgspec.structs.replace(event, run_id="t"))
    assert display.settle(third.view, timeout=WAIT)  # returned once its block is out
    after = plain(out.getvalue().split("PROMPT r> ")[-1])
    assert after.startswith("\n╭─ run t · succeeded")  # on a line of its own
    assert after.endswith(Prompt.AGAIN)  # then the prompt, once (both share one terminal)
    assert first.shown_again == 1
    assert "run s" not in after and "run r" not in after  # no progress frame under the prompt
    first.answered()
    second.answered()
    display.close()


def test_a_run_stopped_while_another_asks_leaves_the_area_down() -> None:
    """Finding 1: run r asked (the area came down), then run s; stopping r (cancelled,
    paused, a storage failure) brought the area back while s's prompt was on screen, its
    blocks drawn below that prompt."""
    console, out = tty_console()
    display = LiveDisplay(console, auto_refresh=False, clock=lambda: 2.0)
    r = LiveWatch(NORMAL, display, "r", {"A"})
    for event in opened():
        r(event)
    r(asked())
    r_prompt = Prompt(r).ask()
    display.refresh()  # the area down, r's prompt on screen
    s = LiveWatch(NORMAL, display, "s", {"A"})
    for event in opened():
        s(msgspec.structs.replace(event, run_id="s"))
    s(msgspec.structs.replace(asked("s's question?"), run_id="s"))
    s_prompt = Prompt(s, like=r_prompt).ask()
    display.refresh()
    out.write("PROMPT s> ")  # s's prompt is the last thing on screen
    display.stop(r.view, "cancelled")
    r_prompt.answered()  # its question withdrawn
    display.refresh()
    display.refresh()
    after = plain(out.getvalue().split("PROMPT s> ")[-1])
    assert "run r · cancelled" in after and after.endswith(Prompt.AGAIN)
    assert "run s" not in after  # no frame under s's prompt
    assert r_prompt.shown_again == 1
    s(
        msgspec.structs.replace(
            ev.UserInputReceived(**base(branch_id="b0", question_id="q", answer="x")), run_id="s"
        )
    )
    s_prompt.answered()
    display.refresh()
    assert "run s · running" in plain(out.getvalue().split(Prompt.AGAIN)[-1])  # drawn again
    display.close()


def test_a_line_rewritten_in_place_is_kept_in_its_last_state(
    monkeypatch: pytest.MonkeyPatch, pipe_terminal: tuple[int, int]
) -> None:
    """A progress bar (``\\r`` rewrites) was kept whole, every state joined, and each write
    copied the unfinished line again (quadratic); ``writelines`` went around the proxy."""
    read, write = pipe_terminal
    display, _, _ = attached(monkeypatch, write)
    display.refresh()
    drain(read)
    for percent in range(101):
        sys.stdout.write(f"\rloading {percent}%")
    sys.stdout.write("\n")
    sys.stdout.write("50%\r")
    sys.stdout.write("60%\r\n")
    sys.stdout.writelines(["from ", "writelines\n"])
    assert display._lines == ["loading 100%", "60%", "from writelines"]
    for _ in range(10_000):
        sys.stdout.write(".")
    assert len(display._partial) == 10_000  # pieces kept as written, joined once
    display.refresh()
    frame = plain(drain(read))
    assert frame.index("loading 100%") < frame.index("60%") < frame.index("from writelines")
    assert "loading 99%" not in frame
    display.close()


class _SlowTerminal(io.StringIO):
    """A terminal whose writes wait while ``open`` is clear (a loaded machine, a slow link)."""

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()
        self.open.set()

    def write(self, text: str) -> int:
        self.open.wait()
        return super().write(text)


def test_a_question_waits_for_the_frame_that_takes_the_area_down_however_slow() -> None:
    """The wait for that frame gave up after a second, and the prompt then came out under the
    live area, to be erased by the frame (or the frame was printed into what the user typed)."""
    terminal = _SlowTerminal()
    console = Console(file=terminal, force_terminal=True, width=110, emoji=False)
    display = LiveDisplay(console, clock=lambda: 2.0)  # its own drawing thread
    watch = LiveWatch(NORMAL, display, "r", {"A"})
    for event in opened():
        watch(event)
    terminal.open.clear()  # the next frames stall
    watch(asked())
    prompt = Prompt(watch).ask()
    cleared: list[bool] = []
    waiter = threading.Thread(target=lambda: cleared.append(display.cleared()))
    waiter.start()
    waiter.join(SETTLE_SECONDS + 0.5)
    assert waiter.is_alive()  # still waiting for the frame, past the old one-second bound
    terminal.open.set()
    waiter.join(WAIT)
    assert cleared == [True]
    prompt.answered()
    display.close()
