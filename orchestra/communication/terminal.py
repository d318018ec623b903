"""The terminal as the ``User`` node: agents' questions are shown, the person at the keyboard
types the answers.

A question is shown with the asking agent, its branch and its id; questions from parallel
branches wait their turn and are answered one at a time. A one-line answer is sent with Enter.
A longer one starts with a line holding only ``\"\"\"`` and ends with the next such line (or
end of input, Ctrl-D). The keyboard is read through the event loop's reader on the input's
file descriptor, never by a blocking read, and the prompt is written from a worker thread, so
a slow terminal never stalls the run's other branches. The question's text comes from a model:
it is shown as text, its control characters as escapes (:func:`orchestra.text.printable`).
"""

from __future__ import annotations

import asyncio
import codecs
import os
import sys
from typing import TextIO

from orchestra.errors import ConfigurationError, UserInputError
from orchestra.text import printable

from .channels import Question

BLOCK = '"""'
"""A line holding only this starts a multi-line answer, and the next one ends it."""

QUESTION_CHARS = 4_000
"""How much of a question is shown: a screenful, not a flood."""


class TerminalChannel:
    """Ask on a terminal: prompts go to ``output`` (default ``sys.stderr``, where the status
    display writes), answers are read from the file descriptor ``input_fd`` (default standard
    input). ``user_timeout`` bounds each answer on this channel, in place of the run's
    ``CommunicationConfig.user_timeout``."""

    def __init__(
        self,
        input_fd: int | None = None,
        output: TextIO | None = None,
        user_timeout: float | None = None,
    ) -> None:
        if user_timeout is not None and not user_timeout > 0:
            raise ConfigurationError(
                f"TerminalChannel user_timeout must be > 0 seconds, got {user_timeout}"
            )
        self._fd = sys.stdin.fileno() if input_fd is None else input_fd
        self._output = output
        self.user_timeout = user_timeout
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # read, not yet taken as a line
        self._ended = False
        self._turn: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._asked = 0  # questions asked and not answered, this one included

    async def ask(self, question: Question) -> str:
        """The user's answer to ``question``, once the questions before it are answered."""
        self._asked += 1
        try:
            async with self._lock():
                await self._write(self._prompt(question))
                return await self._answer(question)
        finally:
            self._asked -= 1

    def _lock(self) -> asyncio.Lock:
        """One question at a time, per event loop (a channel may serve several ``asyncio.run``)."""
        loop = asyncio.get_running_loop()
        if self._turn is None or self._turn[0] is not loop:
            self._turn = (loop, asyncio.Lock())
        return self._turn[1]

    def _prompt(self, question: Question) -> str:
        label = question.id.rsplit(":", 1)[-1]
        queued = f" ({self._asked - 1} more waiting)" if self._asked > 1 else ""
        text = printable(question.text, QUESTION_CHARS)
        return (
            f"\n? {question.agent} asks (branch {question.branch_id}, question {label}){queued}:\n"
            f"  {text}\n"
            f"  (Enter sends one line; a line of {BLOCK} starts and ends several)\n> "
        )

    async def _answer(self, question: Question) -> str:
        first = await self._line(question)
        if first is None:
            raise UserInputError(
                f"the terminal's input ended before {question.agent!r}'s question "
                f"{question.id!r} (branch {question.branch_id}) was answered"
            )
        if first.strip() != BLOCK:
            return first
        lines: list[str] = []
        while (line := await self._line(question)) is not None and line.strip() != BLOCK:
            lines.append(line)
        return "\n".join(lines)

    async def _line(self, question: Question) -> str | None:
        """The next line typed (without its newline); None at end of input."""
        while "\n" not in self._pending:
            if self._ended:
                rest, self._pending = self._pending, ""
                return rest or None
            data = await self._read()
            if not data:
                self._ended = True
                self._pending += self._decoder.decode(b"", final=True)
            else:
                self._pending += self._decoder.decode(data)
        line, self._pending = self._pending.split("\n", 1)
        return line.removesuffix("\r")

    async def _read(self) -> bytes:
        """What the input holds once it is readable (b"" at its end), read without blocking."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(self._fd, _set, ready)
        try:
            await ready
        finally:
            loop.remove_reader(self._fd)
        return os.read(self._fd, 65_536)

    async def _write(self, text: str) -> None:
        output = self._output or sys.stderr
        await asyncio.to_thread(_write, output, text)


def _set(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


def _write(output: TextIO, text: str) -> None:
    output.write(text)
    output.flush()
