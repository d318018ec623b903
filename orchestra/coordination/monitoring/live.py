"""The live status display: runs drawn as they work, on an interactive terminal.

The engine's path only folds events into a :class:`~.view.RunView` (under a lock, a few
microseconds); nothing is drawn there. A :class:`LiveDisplay`, one per terminal for the whole
process, draws every attached run's block in one rich ``Live`` area from a thread of its own:
about eight times a second it copies what it will draw of the views (under the lock), then
prints what scrolls (VERBOSE's lines, a finished run's final block) above the live area and
redraws the area, all off the event loop. What it draws is bounded, whatever the number of
branches: the area fits the terminal's height, and a run's block shows at most ``MAX_ROWS``
rows (a fan-out's working branches first, then those that ended last, then a line counting the
rest). When its last run has finished it erases the area and its thread ends; a run returns
only once its final block is out (:meth:`LiveDisplay.settle`, awaited off the loop and bounded),
so whatever the caller prints next starts on a clean line below it.

While a question is asked on this terminal (:meth:`LiveDisplay.prompting`, entered for a run
whose channel is a ``TerminalChannel``), the blocks are printed once and the area is taken down
until no question on the terminal is left (every one answered or given up: a question queued
behind another is shown with no frame drawn after its prompt), and the channel is asked only
once the area is down (:meth:`LiveDisplay.cleared`): a prompt and what the user types stay on
screen. Meanwhile no progress frame is drawn, but a run's final block and VERBOSE's lines still
are, in order and before that run returns, followed by the waiting question's prompt shown
again. A run waiting on another channel (code, a web client) is one more state in the area.

While runs are attached, ``sys.stdout`` and ``sys.stderr``, where they write to the display's
terminal, are replaced (on the thread attaching a run, never the drawing thread, and put back only if still
in place) by a :class:`_Proxy` whose lines wait for the next frame and are printed above the
area; rich's own redirection is off, because it swaps the streams from the drawing thread and
draws on whichever thread prints. Writes at the fd level (a subprocess, a C library) cannot be
caught. A frame is skipped, its lines and blocks kept for the next, while the terminal's fd
points elsewhere (a library silencing its output with ``dup2``).

:func:`status_watch` decides, from the output stream, between this and plain lines (see
docs/observability.md, "Status display").
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from orchestra.agents.agent import Agent
from orchestra.agents.base import BaseAgent
from orchestra.agents.pool import AgentPool
from orchestra.coordination.config import StatusConfig, VerbosityLevel
from orchestra.coordination.engine import events as ev
from orchestra.coordination.engine.clock import now

from .blocks import run_block
from .status import StatusPrinter, status_line
from .view import RunView

REFRESH_PER_SECOND = 8
MAX_ROWS = 20
"""Rows of a run's branch tree the live area draws at most (fewer when runs share a short
terminal)."""
SETTLE_SECONDS = 1.0
"""How long a run's end waits, at most, for its final block to be printed."""


class LiveDisplay:
    """One live area for every run in the process that prints to ``console``: runs attach
    (:meth:`update` with their first event that is news), and a finished run's block is
    printed once, final, above the area and taken out of it.

    With ``auto_refresh`` (the default) a thread of its own redraws while runs are attached;
    without, nothing is drawn until :meth:`refresh` is called (tests draw a frame at a chosen
    moment)."""

    def __init__(
        self,
        console: Console,
        *,
        auto_refresh: bool = True,
        clock: Callable[[], float] = now,
    ) -> None:
        self.console = console
        self.auto_refresh = auto_refresh
        self.clock = clock
        self.terminal = _terminal(console.file)
        """The device and inode the display draws on (a frame is skipped while its fd points
        elsewhere)."""
        # guards the views, the waiting lines and text, the run lists, the area's state
        self._lock = threading.Lock()
        self._drawn = threading.Condition(self._lock)  # told when a frame is out
        self._drawing = threading.Lock()  # one frame at a time, the Live area's start and stop
        self._views: dict[int, RunView] = {}  # by id(view): two runs may share a session id
        self._finished: list[tuple[int, RunView]] = []
        self._lines: list[str] = []
        self._partial: list[str] = []  # what the program wrote after its last newline while
        # the area was up, in the pieces it wrote
        # the questions on (or on their way to) this terminal, by the function that shows the
        # prompt on screen again; the runs that ask here (by id(view)); and whether the frame
        # that took the area down for them is out
        self._prompts: dict[Callable[[], None], int] = {}
        self._asks_here: set[int] = set()
        self._down = False
        self._frames = [0, 0]  # frames begun, frames out
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Live | None = None
        self._proxies: list[tuple[str, _Proxy]] = []

    def update(self, view: RunView, event: ev.Event, line: str | None = None) -> None:
        """Fold ``event`` into ``view`` (attaching the view if it is new), with the line to
        print above the live area (VERBOSE); the engine's path: no drawing here."""
        key = id(view)
        with self._lock:
            view(event)
            if line is not None:
                self._lines.append(line)
            attached = key not in self._views and not view.ended
            if attached:
                self._views[key] = view
            if view.ended and self._views.pop(key, None) is not None:
                self._finished.append((key, view.snapshot(MAX_ROWS)))
                self._asks_here.discard(key)
            if self.auto_refresh and self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="orchestra-live", daemon=True
                )
                self._thread.start()
            empty = not self._views
        if attached:
            self._capture()
        if view.ended:
            self._wake.set()
        if empty:
            self._release()

    def fold(self, view: RunView, delta: ev.StepDelta) -> None:
        """A piece of a reply being written, folded into ``view``: nothing else to do (it
        prints no line, and its run is attached by the step it belongs to), and there are
        many of them."""
        with self._lock:
            view(delta)

    def stop(self, view: RunView, outcome: str) -> None:
        """The run stopped without an event saying so (cancelled, halted): its block is
        finished with ``outcome`` (printed once, final, above the area) as an ended run's is."""
        key = id(view)
        with self._lock:
            view.stop(outcome, self.clock())
            if self._views.pop(key, None) is not None:
                self._finished.append((key, view.snapshot(MAX_ROWS)))
            self._asks_here.discard(key)
            empty = not self._views
        self._wake.set()
        if empty:
            self._release()

    def settle(self, view: RunView, timeout: float = SETTLE_SECONDS) -> bool:
        """Wait (at most ``timeout`` seconds) until ``view``'s final block is printed and,
        when no other run is attached, the area erased: a run returns only then, so what its
        caller prints next is neither erased by a frame nor printed above its end. False when
        it timed out (the terminal's fd pointed elsewhere, a stuck frame) or nothing draws
        (no ``auto_refresh``)."""
        key = id(view)
        self._wake.set()
        with self._drawn:
            if self._thread is None:  # nothing would draw it
                return self._settled(key)
            # with a question on screen the block is still printed (above the prompt, shown
            # again): what the caller prints next comes after it
            return self._drawn.wait_for(lambda: self._settled(key), timeout)

    @contextlib.contextmanager
    def prompting(self, view: RunView, reshow: Callable[[], None]) -> Iterator[None]:
        """A question of ``view``'s run asked on this terminal, from before its prompt is
        written until it is answered or given up: the next frame takes the area down (the
        blocks printed once above), and no progress frame is drawn until no such question is
        left and no attached run that asks here shows a branch waiting for the user (the
        answer taken in: no frame drawn in between shows the question still waiting).
        ``reshow`` shows the prompt of the question on screen again; it is called (once per
        frame, on the drawing thread) after a run's final block or lines are printed
        meanwhile. Entered and left on the event loop: a lock held for microseconds."""
        with self._lock:
            self._prompts[reshow] = self._prompts.get(reshow, 0) + 1
            if id(view) in self._views:
                self._asks_here.add(id(view))
        self._wake.set()
        try:
            yield
        finally:
            with self._lock:
                left = self._prompts.pop(reshow) - 1
                if left:
                    self._prompts[reshow] = left
            self._wake.set()

    def _prompting(self) -> bool:
        """Whether the area is to be down for questions on the terminal (under the lock)."""
        return bool(self._prompts) or any(self._views[key].asking for key in self._asks_here)

    def cleared(self) -> bool:
        """Wait (inside :meth:`prompting`) until the frame that took the area down is out: a
        channel asked only then writes its prompt where no frame erases it. However long a
        frame takes (a question may wait anyway); False, at once, when nothing will draw one:
        no drawing thread, or the terminal's fd points elsewhere."""
        self._wake.set()
        with self._drawn:
            if self._thread is None:  # nothing would draw it
                return False
            while not self._drawn.wait_for(
                lambda: self._down,
                SETTLE_SECONDS,  # only how often the checks below are made
            ):
                if self._thread is None or _terminal(self.console.file) != self.terminal:
                    return False
            return True

    def _settled(self, key: int) -> bool:
        begun, out = self._frames
        return (
            key not in self._views
            and all(finished != key for finished, _ in self._finished)
            and begun == out
            and (bool(self._views) or (self._live is None and not self._lines))
        )

    def refresh(self) -> None:
        """Draw one frame: the waiting lines and finished blocks above the area, the attached
        runs in it; the area is erased once no run is attached, and while a question is asked
        on the terminal (the blocks printed once above: the prompt and what the user types
        stay on screen; after that only lines and finished blocks, then the prompt shown
        again). No frame while the terminal's fd points elsewhere (a library silencing its
        output with ``dup2``): what it would have printed waits for the next."""
        height = self.console.height
        with self._drawing:
            if _terminal(self.console.file) != self.terminal:
                return
            with self._lock:
                prompting = self._prompting()
                parked = prompting and self._down
                if parked and not (self._lines or self._finished):
                    return
                lines, self._lines = self._lines, []
                finished, self._finished = self._finished, []
                runs, rows = _fitting(0 if parked else len(self._views), height)
                chosen = list(itertools.islice(self._views.items(), runs))
                shown = [view.snapshot(rows) for _, view in chosen]
                hidden = 0 if parked else len(self._views) - len(shown)
                reshow = list(self._prompts) if parked else []
                self._frames[0] += 1
            try:
                ended = [view for _, view in finished]
                if parked:
                    self._above_prompt(lines, ended, reshow)
                else:
                    self._draw(lines, ended, shown, hidden, prompting)
            finally:
                with self._drawn:
                    self._down = prompting and self._prompting()
                    self._frames[1] += 1
                    self._drawn.notify_all()

    def _above_prompt(
        self, lines: list[str], finished: list[RunView], reshow: list[Callable[[], None]]
    ) -> None:
        """With the area down for a question: what scrolls printed below its prompt (on a line
        of its own: the cursor is after the prompt, or after what the user typed), then the
        prompt shown again, so the user sees where to type."""
        at = self.clock()
        self.console.print()
        for line in lines:
            self.console.print(Text(line), soft_wrap=True)
        for view in finished:
            self.console.print(run_block(view, at))
        for again in reshow:
            again()

    def _draw(
        self,
        lines: list[str],
        finished: list[RunView],
        shown: list[RunView],
        hidden: int,
        prompting: bool,
    ) -> None:
        if self._live is None and not (lines or finished or shown):
            return
        at = self.clock()
        live = self._live or self._start()
        for line in lines:
            live.console.print(Text(line), soft_wrap=True)
        for view in finished:
            live.console.print(run_block(view, at))
        blocks = [run_block(view, at) for view in shown]
        if hidden:
            blocks.append(Text(f"… and {hidden} more runs", style="dim"))
        if not prompting and shown:
            live.update(Group(*blocks), refresh=True)
            return
        for block in blocks:  # printed once, final until the next news
            live.console.print(block)
        live.update(Group(), refresh=True)
        live.stop()
        with self._lock:
            self._live = None
            written, self._partial = "".join(self._partial), []
        if written:  # the program's unfinished line, left where it would have been
            self.console.print(Text(written), end="", soft_wrap=True)

    def take(self, text: str) -> bool:
        """Text the program wrote to this terminal (through :class:`_Proxy`): while the area
        is up it waits, line by line, to be printed above it by the drawing thread (True);
        False when the area is down (the caller writes it as it is). A line rewritten in place
        with ``\r`` (a progress bar) is kept in its last state; each write costs its own
        length, however long the unfinished line grows."""
        with self._lock:
            if self._live is None:
                return False
            pieces = text.split("\n")
            self._partial.append(pieces[0])
            if "\r" in pieces[0]:
                self._partial = [_last_state("".join(self._partial))]
            complete: list[str] = []
            if len(pieces) > 1:
                ended = ["".join(self._partial), *pieces[1:-1]]
                complete = [_last_state(line).rstrip("\r") for line in ended]
                self._partial = [_last_state(pieces[-1])] if pieces[-1] else []
                self._lines += complete
        if complete:
            self._wake.set()
        return True

    def close(self) -> None:
        """Finish every attached run's block as it stands (a run cut off with no end of its
        own) and wait (bounded) until the area is erased: call before printing anything
        else."""
        with self._lock:
            self._finished += [(key, view.snapshot(MAX_ROWS)) for key, view in self._views.items()]
            self._views.clear()
            self._asks_here.clear()
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(SETTLE_SECONDS)
        self.refresh()
        self._release()

    def _start(self) -> Live:
        live = Live(
            console=self.console,
            auto_refresh=False,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        live.start()
        with self._lock:
            self._live = live
        return live

    def _capture(self) -> None:
        """Put a :class:`_Proxy` in place of ``sys.stdout`` and ``sys.stderr`` where they
        write to this display's terminal (on the thread attaching a run, never the drawing
        thread), so that what the program prints while the area is up is printed above it
        instead of being erased by the next frame."""
        if self._proxies:
            return
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if not isinstance(stream, _Proxy) and _terminal(stream) == self.terminal:
                proxy = _Proxy(self, stream)
                setattr(sys, name, proxy)
                self._proxies.append((name, proxy))

    def _release(self) -> None:
        """The streams :meth:`_capture` replaced put back, each only if it is still the proxy
        (a ``contextlib.redirect_stdout`` entered meanwhile keeps its own)."""
        proxies, self._proxies = self._proxies, []
        for name, proxy in proxies:
            if getattr(sys, name) is proxy:
                setattr(sys, name, proxy.stream)

    def _run(self) -> None:
        while True:
            self._wake.wait(1 / REFRESH_PER_SECOND)
            self._wake.clear()
            self.refresh()
            with self._lock:
                idle = not (self._lines or self._finished)
                if not self._views and (idle or _terminal(self.console.file) != self.terminal):
                    self._thread = None  # a later run starts it again
                    return


def _last_state(line: str) -> str:
    """What a terminal shows of a line written with carriage returns: the text after the last
    one that text follows (trailing ones are kept: what comes next overwrites the line)."""
    body = line.rstrip("\r")
    return body[body.rfind("\r") + 1 :] + line[len(body) :]


class _Proxy:
    """``sys.stdout`` or ``sys.stderr`` while runs are attached to a display on the terminal
    it writes to: a write waits for the display's next frame while the area is up (it never
    draws on the writer's thread) and goes straight to the stream otherwise; everything else
    (``fileno``, ``isatty``, ``encoding``, ``flush``) is the stream's."""

    def __init__(self, display: LiveDisplay, stream: TextIO) -> None:
        self.display = display
        self.stream = stream

    def write(self, text: str) -> int:
        if self.display.take(text):
            return len(text)
        return self.stream.write(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _fitting(runs: int, height: int) -> tuple[int, int]:
    """How many runs' blocks the area draws and how many tree rows each, so the area stays
    under the terminal's ``height`` (its last line is the cursor's): a block is its tree and
    two border rows, and runs that do not fit are counted on one line."""
    room = max(3, height - 1)
    if runs * 3 > room:
        return max(1, (room - 1) // 3), 1
    return runs, max(1, min(MAX_ROWS, room // max(1, runs) - 2))


class LiveWatch:
    """A run's subscriber (deltas included: the reply being written is shown): its events
    folded into its view on ``display``; at VERBOSE, or with ``show_actions``, its status
    lines handed over to scroll above the area. Replayed events (a resumed run catching up) are folded but neither printed nor shown: the run joins the display with its first
    event that is news, so a finished session read back draws nothing."""

    def __init__(
        self, config: StatusConfig, display: LiveDisplay, run_id: str, model_agents: set[str]
    ) -> None:
        self.config = config
        self.display = display
        self.view = RunView(run_id, model_agents)
        self.scrolls = config.verbosity >= VerbosityLevel.VERBOSE or config.show_actions

    def __call__(self, event: ev.Event) -> None:
        if type(event) is ev.StepDelta:
            self.display.fold(self.view, event)
            return
        if event.replayed:
            self.view(event)
            return
        line = status_line(event, self.config) if self.scrolls else None
        self.display.update(self.view, event, line)

    def stop(self, outcome: str) -> None:
        """The run stopped without an event saying so: its block ends with ``outcome``
        (registered with the run's setup by ``wiring.build``)."""
        self.display.stop(self.view, outcome)

    def prompting(self, reshow: Callable[[], None]) -> contextlib.AbstractContextManager[None]:
        """The run's question on the terminal (see :meth:`LiveDisplay.prompting`; held by
        ``wiring._AskWhenCleared`` from before its prompt until its answer)."""
        return self.display.prompting(self.view, reshow)

    def cleared(self) -> bool:
        """Block, inside :meth:`prompting`, until the area is down (called off the event loop
        before the run's user channel is asked)."""
        return self.display.cleared()

    def settle(self) -> None:
        """Block (bounded) until the run's final block is out (registered with the run's setup
        by ``wiring.build``, called off the event loop once the run stopped)."""
        self.display.settle(self.view)


_DISPLAYS: dict[tuple[int, int], LiveDisplay] = {}
_DISPLAYS_LOCK = threading.Lock()


def shared_display(stream: TextIO) -> LiveDisplay:
    """The process's one display on the terminal ``stream`` writes to (closed, so its area is
    erased, at exit). Keyed by the terminal, not the stream object: a run that starts later,
    once ``sys.stderr`` has been wrapped or replaced by another object on the same terminal,
    joins the area already up instead of drawing a second one over it."""
    key = _terminal(stream)
    with _DISPLAYS_LOCK:
        display = _DISPLAYS.get(key)
        if display is None:
            if not _DISPLAYS:
                atexit.register(close_displays)
            display = _DISPLAYS[key] = LiveDisplay(Console(file=stream, emoji=False))
        return display


def _terminal(stream: IO[str]) -> tuple[int, int]:
    """The device and inode ``stream`` writes to (its own identity when it has no file)."""
    try:
        found = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no fileno (io.StringIO), or closed
        return (-1, id(stream))
    return (found.st_dev, found.st_ino)


def close_displays() -> None:
    """Close every shared display (each run's final block printed, the live areas erased)."""
    with _DISPLAYS_LOCK:
        displays = list(_DISPLAYS.values())
    for display in displays:
        display.close()


def interactive(stream: TextIO) -> bool:
    """Whether ``stream`` gets the live view: it is a terminal (``isatty``; ``FORCE_COLOR``,
    which CI services set, does not make a pipe one) and rich counts it interactive (not
    ``TERM=dumb`` or ``unknown``, not ``TTY_INTERACTIVE=0`` or ``TTY_COMPATIBLE=0``)."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
    return tty and Console(file=stream).is_interactive


def status_watch(
    config: StatusConfig,
    run_id: str,
    agents: Mapping[str, BaseAgent | AgentPool],
    stream: TextIO | None = None,
) -> ev.Subscriber | None:
    """The status subscriber of a run printing to ``stream`` (default stderr): the live view
    on an interactive terminal, plain lines elsewhere, none when QUIET or disabled."""
    if not config.enabled or config.verbosity is VerbosityLevel.QUIET:
        return None
    out = stream or sys.stderr
    if not interactive(out):
        return StatusPrinter(config, out)
    return LiveWatch(config, shared_display(out), run_id, _model_agents(agents))


def _model_agents(agents: Mapping[str, BaseAgent | AgentPool]) -> set[str]:
    """The agents whose steps are model calls (a pool's by its first instance)."""
    return {
        name
        for name, agent in agents.items()
        if isinstance(agent.instances[0] if isinstance(agent, AgentPool) else agent, Agent)
    }


__all__ = ["LiveDisplay", "LiveWatch", "close_displays", "status_watch"]
