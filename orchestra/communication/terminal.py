"""The terminal as the ``User`` node: agents' questions are shown, the person at the keyboard
types the answers.

A question is shown with the asking agent, its branch and its id; questions from parallel
branches wait their turn and are answered one at a time. A one-line answer is sent with Enter.
A longer one starts with a line holding only ``\"\"\"`` and ends with the next such line (or
Ctrl-D). Every channel on one file descriptor shares one reader and one turn, so two runs asking
on the same terminal ask one at a time too. The keyboard is read through the event loop's reader on the input's
file descriptor, never by a blocking read, and the prompt is written from a worker thread, so
a slow terminal never stalls the run's other branches. The question's text comes from a model:
it is shown as text, its control characters as escapes (:func:`orchestra.text.printable`).

A follow-up offer (a run with ``allow_follow_ups``) shows the round's whole response the same
way (it is the run's product: never cut), then asks for a follow-up within the time it has: an
empty line, or Ctrl-D, ends the conversation.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import select
import sys
import termios
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TextIO

from orchestra.agents.contract import render, timeout_problem
from orchestra.errors import ConfigurationError, UserInputError
from orchestra.text import printable

from .channels import Question

BLOCK = '"""'
"""A line holding only this starts a multi-line answer, and the next one ends it."""

QUESTION_CHARS = 4_000
"""How much of an agent's question is shown: a screenful, not a flood."""


def user_channel() -> TerminalChannel | None:
    """The terminal, when the process's input is one and so is a stream to show questions on
    (standard error, where the status display writes, else standard output): the channel of a
    run given none. Input from a pipe or a file, a prompt that would go into a file, or a
    stream that is missing or closed (``sys.stdin`` is None when the process started with its
    input closed) is no one to ask: None (an agent's question then fails its branch; follow-ups
    are not offered)."""
    if not _is_terminal(sys.stdin):
        return None
    screen = next((stream for stream in (sys.stderr, sys.stdout) if _is_terminal(stream)), None)
    return None if screen is None else TerminalChannel(output=screen)


def _is_terminal(stream: TextIO | None) -> bool:
    """Whether ``stream`` is open on a terminal (False for None, a closed stream, or an object
    standing in for one that has no file descriptor)."""
    try:
        return stream is not None and not stream.closed and stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class TerminalChannel:
    """Ask on a terminal: prompts go to ``output`` (default ``sys.stderr``, where the status
    display writes), answers are read from the file descriptor ``input_fd`` (default standard
    input). ``user_timeout`` bounds each answer on this channel, in place of the run's
    ``CommunicationConfig.user_timeout``; it counts from when the question is shown."""

    def __init__(
        self,
        input_fd: int | None = None,
        output: TextIO | None = None,
        user_timeout: float | None = None,
    ) -> None:
        problem = timeout_problem(user_timeout, "TerminalChannel user_timeout")
        if problem is not None:
            raise ConfigurationError(problem)
        self._fd = sys.stdin.fileno() if input_fd is None else input_fd
        self._output = output
        self.user_timeout = user_timeout

    @property
    def prompt_again(self) -> Callable[[], None]:
        """What shows the prompt of the question on screen again (a no-op when none is), for
        the live status display to call after it printed a run's end below that prompt. One
        function for every channel reading this input, equal whichever channel gives it, so
        the prompt is shown once. Called off the event loop."""
        return _reader(self._fd).show_again

    @contextlib.contextmanager
    def coming(self) -> Iterator[None]:
        """A question on its way to this channel (held up while the live status display takes
        its area down) counts among those waiting, so the prompt shown meanwhile says so: two
        questions asked at once are both counted before either prompt is shown."""
        reader = _reader(self._fd)
        reader.asked += 1
        try:
            yield
        finally:
            reader.asked -= 1

    async def ask(self, question: Question) -> str | None:
        """The user's answer to ``question``, once the questions before it are answered (None:
        no follow-up)."""
        return await self.ask_within(question, None, "")

    async def ask_within(
        self, question: Question, seconds: float | None, outcome: str
    ) -> str | None:
        """Like :meth:`ask`, with ``seconds`` counted from when the question is shown (time
        spent waiting for its turn does not count). On expiry the screen says so, with
        ``outcome`` (what happens instead), and :class:`TimeoutError` is raised; what was typed
        for the question is dropped when the next one is shown, never taken as its answer."""
        reader = _reader(self._fd)
        reader.asked += 1
        try:
            async with reader.turn():
                note = reader.withdrawn
                await self._write(note + self._prompt(question, reader.asked, seconds))
                reader.showing = (self._output or sys.stderr, _again(question))
                reader.discard_stale()
                try:
                    return await self._answer_within(question, reader, seconds, outcome)
                finally:
                    reader.showing, reader.in_block = None, False
        finally:
            reader.asked -= 1

    async def _answer_within(
        self, question: Question, reader: _Reader, seconds: float | None, outcome: str
    ) -> str | None:
        limit = asyncio.timeout(seconds)
        try:
            async with limit:
                return await self._answer(question, reader)
        except asyncio.CancelledError:
            label = question.id.rsplit(":", 1)[-1]
            reader.stale = True  # said when the next question is shown (this task is ending)
            reader.withdrawn = (
                f"\n(question {label} was withdrawn; what was typed for it is not taken)\n"
            )
            raise
        except TimeoutError:
            if limit.expired():
                assert seconds is not None  # only a limit expires
                reader.stale = True
                await self._write(_expired(question, seconds, outcome))
            raise

    def _prompt(self, question: Question, asked: int, seconds: float | None) -> str:
        label = question.id.rsplit(":", 1)[-1]
        queued = f" ({asked - 1} more waiting)" if asked > 1 else ""
        if question.follow_up:  # the round's answer is the run's product: shown whole
            response = printable(render(question.response))
            limit = "" if seconds is None else f" ({seconds:g} s to answer)"
            return (
                f"\n{response}\n\n? Follow-up ({label}){queued}: ask more, or press Enter on an "
                f"empty line (or Ctrl-D) to finish{limit}\n> "
            )
        text = printable(question.text, QUESTION_CHARS)
        return (
            f"\n? {_who(question)} (branch {question.branch_id}, question {label}){queued}:\n"
            f"  {text}\n"
            f"  (Enter sends one line; a line of {BLOCK} starts and ends several)\n> "
        )

    async def _answer(self, question: Question, reader: _Reader) -> str | None:
        reader.begin_answer()
        first = await reader.line()
        if first is None and question.follow_up:
            return None  # Ctrl-D, or the input's end: no follow-up
        if first is None:
            where = f"the question {question.id!r} of agent {question.agent!r} (branch {question.branch_id})"
            raise UserInputError(
                f"the terminal's input ended before {where} was answered"
                if reader.ended
                else f"the user gave no answer (Ctrl-D at an empty prompt) to {where}"
            )
        if first.strip() != BLOCK:
            return first
        reader.in_block = True
        lines: list[str] = []
        while (line := await reader.line()) is not None and line.strip() != BLOCK:
            lines.append(line)
        return "\n".join(lines)

    async def _write(self, text: str) -> None:
        output = self._output or sys.stderr
        await asyncio.to_thread(_write, output, text)


class _Reader:
    """The input of one file descriptor on one event loop, shared by every channel reading it:
    one turn (a question at a time), one buffer, one loop reader (a second ``add_reader`` on
    the fd would replace the first's callback).

    End of input: on a pipe or a file, the first empty read ends it for good. On a terminal a
    Ctrl-D ends only the answer being typed (the block, or the line: after some text, the
    terminal hands that text over with no newline; at an empty prompt, the read is empty and
    the question gets no answer); the keyboard never ends the input. It lives as long as the process (one per fd, whatever the event
    loop: what is to be dropped stays known to a later ``asyncio.run``); only the turn is per
    loop."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.tty = os.isatty(fd)
        self._turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self.asked = 0  # questions asked and not answered, on every channel of this fd
        self.stale = False  # a question gave up while typed for: drop that input
        self.withdrawn = ""  # the note for a question withdrawn on screen, said with the next
        self.answer_ended = False  # a Ctrl-D ended the answer being typed
        # the question on screen: where its prompt went and the line that shows it again; and
        # whether its answer is a block being typed (read on the live display's thread)
        self.showing: tuple[TextIO, str] | None = None
        self.in_block = False
        self._ended = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # read, not yet taken as a line

    def turn(self) -> asyncio.Lock:
        """The lock that asks one question at a time, on the running loop."""
        loop = asyncio.get_running_loop()
        lock = self._turns.get(loop)
        if lock is None:
            lock = self._turns[loop] = asyncio.Lock()
        return lock

    @property
    def ended(self) -> bool:
        return self._ended

    def show_again(self) -> None:
        """The prompt of the question on screen shown again, below what was printed since
        (what the user had typed stays in the terminal's line buffer until Enter)."""
        showing, in_block = self.showing, self.in_block
        if showing is None:
            return
        output, again = showing
        if in_block:
            again = again.removesuffix("> ") + f"  (in a block: a line of {BLOCK} ends it)\n> "
        _write(output, again)

    def begin_answer(self) -> None:
        """A question is shown: a Ctrl-D typed for the one before counts no more."""
        self.answer_ended = False
        self.withdrawn = ""

    async def line(self) -> str | None:
        """The next line typed (without its newline); None at the end of the answer's input."""
        while "\n" not in self._pending:
            if self._ended or self.answer_ended:
                rest, self._pending = self._pending, ""
                return rest or None
            self._take(await self._read())
        line, self._pending = self._pending.split("\n", 1)
        return line.removesuffix("\r")

    def _take(self, data: bytes) -> None:
        if data:
            self._pending += self._decoder.decode(data)
            if self.tty and not data.endswith(b"\n"):  # a terminal's Ctrl-D after some text
                self.answer_ended = True
            return
        self._pending += self._decoder.decode(b"", final=True)
        self._ended = not self.tty
        self.answer_ended = True

    def discard_stale(self) -> None:
        """Drop what was typed for a question that timed out or was withdrawn, up to the next
        question's prompt: it must not become that question's answer."""
        if not self.stale:
            return
        self.stale = False
        self._pending = ""
        self._decoder.reset()
        if self.tty:
            termios.tcflush(self.fd, termios.TCIFLUSH)
            return
        while not self._ended and select.select([self.fd], [], [], 0)[0]:  # only what is there
            if not os.read(self.fd, 65_536):
                self._ended = True

    async def _read(self) -> bytes:
        """What the input holds once it is readable (b"" at its end), read without blocking."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(self.fd, _set, ready)
        try:
            await ready
        finally:
            loop.remove_reader(self.fd)
        return os.read(self.fd, 65_536)


_READERS: dict[tuple[int, int, int], _Reader] = {}


def _reader(fd: int) -> _Reader:
    """The shared reader of ``fd``, for the file it is open on now (a number reused for
    another file, a new pipe say, gets a reader of its own)."""
    found = os.fstat(fd)
    key = (fd, found.st_dev, found.st_ino)
    reader = _READERS.get(key)
    if reader is None:
        reader = _READERS[key] = _Reader(fd)
    return reader


def _expired(question: Question, seconds: float, outcome: str) -> str:
    """What the screen says when ``question`` got no answer within ``seconds``."""
    if question.follow_up:
        return (
            f"\n(the conversation ended: no follow-up came within {seconds:g} s; what was typed "
            "for it is not taken)\n"
        )
    label = question.id.rsplit(":", 1)[-1]
    return (
        f"\n(no answer to question {label} within {seconds:g}s: {outcome}; "
        "what was typed for it is not taken)\n"
    )


def _again(question: Question) -> str:
    """The prompt of ``question`` shown again: who asks and where to type."""
    label = question.id.rsplit(":", 1)[-1]
    if question.follow_up:
        return (
            f"? Follow-up ({label}) still waits: ask more, or press Enter on an empty line "
            "(or Ctrl-D) to finish\n> "
        )
    return f"? {_who(question)} (branch {question.branch_id}, question {label}) still waits:\n> "


def _who(question: Question) -> str:
    """Who asks ``question``: its agent, or the engine on a budget's behalf."""
    if question.kind == "budget":
        return f"Budget question before {question.agent}'s next step"
    return f"{question.agent} asks"


def _set(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


_WRITING = threading.Lock()
"""One write at a time: a prompt (from a worker thread) and a prompt shown again (from the
live display's thread) never interleave."""


def _write(output: TextIO, text: str) -> None:
    with _WRITING:
        output.write(text)
        output.flush()
