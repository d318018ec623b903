"""Channels to the user. Only the asking branch waits for an answer; the rest run on."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from orchestra.agents.contract import timeout_problem
from orchestra.errors import ConfigurationError, UserInputError


@dataclass(frozen=True, slots=True)
class Question:
    """A question to the user. ``id`` is unique across runs sharing a channel.

    ``kind`` is ``"agent"`` (an agent asks, ``agent`` names it), ``"budget"`` (the engine asks,
    a budget being spent before ``agent``'s next step, whether to raise it) or ``"follow_up"``
    (a round of a conversation ended with ``response``, its final response, which a channel
    shows before asking; an answer of None or blank text ends the conversation). ``timeout``: the seconds
    this question may wait, in place of the channel's or the run's ``user_timeout``."""

    id: str
    run_id: str
    branch_id: str
    agent: str
    text: str
    kind: Literal["agent", "budget", "follow_up"] = "agent"
    timeout: float | None = None
    response: Any = None

    @property
    def follow_up(self) -> bool:
        return self.kind == "follow_up"


@runtime_checkable
class UserChannel(Protocol):
    async def ask(self, question: Question) -> Any: ...


@runtime_checkable
class TimedChannel(Protocol):
    """A channel that applies the time limit itself, from when its user sees the question
    (:class:`~orchestra.communication.terminal.TerminalChannel`, where questions queue for the
    screen): ``ask_within`` raises :class:`TimeoutError` once ``seconds`` have passed since
    then; ``outcome`` says, for the user, what happens instead of the answer."""

    async def ask_within(self, question: Question, seconds: float | None, outcome: str) -> Any: ...


class ProgrammaticChannel:
    """A queue-backed channel that code (a UI, a test, another service) answers.

    ``await channel.next_question()`` yields each question as it is asked;
    ``channel.answer(question.id, text)`` resumes the branch that asked it.
    """

    def __init__(self) -> None:
        # each question with the future its answer goes to: one done before the question is
        # handed out was withdrawn (or answered by id already), and is skipped; by the future,
        # not the id, since a question asked again after a resume has the id it had
        self._questions: deque[tuple[Question, asyncio.Future[Any]]] = deque()
        self._arrived: asyncio.Event | None = None  # made on the loop of the first to wait
        self._waiting: dict[str, asyncio.Future[Any]] = {}

    def _hand_out(self, question: Question, future: asyncio.Future[Any]) -> None:
        """Queue the question for :meth:`next_question`. Those no longer waiting are dropped
        once they outnumber the waiting ones: a channel answered by id alone (a web page, a
        service), which never takes questions out, once kept every question it was asked."""
        if len(self._questions) > 2 * len(self._waiting) + 16:
            self._questions = deque(item for item in self._questions if not item[1].done())
        self._questions.append((question, future))
        if self._arrived is not None:
            self._arrived.set()

    async def ask(self, question: Question) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[question.id] = future
        self._hand_out(question, future)
        try:
            return await future
        finally:
            if self._waiting.get(question.id) is future:
                del self._waiting[question.id]
            future.cancel()  # its branch stopped waiting: don't hand it out

    async def next_question(self) -> Question:
        """The next question still waiting for an answer (withdrawn ones are skipped)."""
        while True:
            while self._questions:
                question, future = self._questions.popleft()
                if not future.done():
                    return question
            if self._arrived is None:
                self._arrived = asyncio.Event()
            self._arrived.clear()
            await self._arrived.wait()

    @property
    def pending(self) -> list[str]:
        """Ids of the questions asked and not yet answered."""
        return list(self._waiting)

    def answer(self, question_id: str, answer: Any) -> None:
        future = self._waiting.get(question_id)
        if future is None or future.done():
            raise UserInputError(
                f"no pending question {question_id!r}; pending: {', '.join(self._waiting) or 'none'}"
            )
        future.set_result(answer)


class ScriptedUser:
    """A user who answers from a script, in order (part of the test kit)."""

    def __init__(self, answers: Iterable[Any]) -> None:
        self._answers = list(answers)
        self.questions: list[Question] = []

    async def ask(self, question: Question) -> Any:
        """The next scripted answer; with none left, a follow-up gets None (the conversation
        ends) and an agent's question fails."""
        self.questions.append(question)
        if not self._answers and question.follow_up:
            return None
        if not self._answers:
            raise UserInputError(
                f"ScriptedUser has no answer left for the question of agent "
                f"{question.agent!r}: {question.text!r}"
            )
        return self._answers.pop(0)


class CommunicationManager:
    """Routes questions to the configured channel, with an optional time limit: the channel's
    own ``user_timeout`` attribute when it has one, else ``user_timeout``; a
    :class:`TimedChannel` counts it from when its user sees the question. On timeout the
    question fails (``on_user_timeout="fail"``, a :class:`UserInputError` that fails the asking
    branch) or is answered with ``default_answer``, the agent told that the user did not answer
    (``"default"``). A question's own ``timeout`` takes the place of both. A follow-up offer
    that times out ends the conversation (the answer None): never a failure, never the
    default. The runner journals each outcome like any answer or failure. ``user_timeout_source``
    names where ``user_timeout`` was set (a workflow file's key, a command-line option) in a
    timed-out question's error."""

    def __init__(
        self,
        channel: UserChannel | None = None,
        user_timeout: float | None = None,
        *,
        on_user_timeout: Literal["fail", "default"] = "fail",
        default_answer: str = "",
        user_timeout_source: str | None = None,
    ) -> None:
        if channel is not None and not isinstance(channel, UserChannel):
            raise TypeError(f"channel must have an async ask(question) method, got {channel!r}")
        problem = timeout_problem(user_timeout, "CommunicationManager user_timeout")
        if problem is not None:
            raise ConfigurationError(problem)
        if on_user_timeout not in ("fail", "default"):
            raise ConfigurationError(
                f"on_user_timeout must be 'fail' or 'default', got {on_user_timeout!r}"
            )
        self.channel = channel
        self.user_timeout = user_timeout
        self.on_user_timeout = on_user_timeout
        self.default_answer = default_answer
        self.user_timeout_source = user_timeout_source or "CommunicationConfig.user_timeout"

    def timeout(self) -> float | None:
        """How long a question may wait for its answer (None: as long as it takes)."""
        own = getattr(self.channel, "user_timeout", None)
        return own if isinstance(own, int | float) else self.user_timeout

    async def ask(self, question: Question) -> Any:
        if self.channel is None and question.follow_up:
            raise UserInputError(
                f"a follow-up was to be offered (question {question.id}), but the run has no "
                "user channel"
            )
        if self.channel is None:
            raise UserInputError(
                f"agent {question.agent!r} asked the user {question.text!r} (question "
                f"{question.id}, branch {question.branch_id}), but the run has no user channel: "
                "on the command line, run it on a terminal (standard input, and standard error "
                "or output) to answer; from Python, pass "
                "communication_config=CommunicationConfig(channel=...)"
            )
        seconds = self.limit(question)
        if seconds is not None and isinstance(self.channel, TimedChannel):
            try:
                return await self.channel.ask_within(question, seconds, self.outcome(question))
            except TimeoutError:
                return self._timed_out(question, seconds)
        limit = asyncio.timeout(seconds)
        try:
            async with limit:
                return await self.channel.ask(question)
        except TimeoutError:
            if not limit.expired():
                raise  # the channel's own timeout: its failure, reported by the caller
        assert seconds is not None  # only a limit expires
        return self._timed_out(question, seconds)

    def _limit_name(self, question: Question) -> str:
        """Which limit bounds ``question``, in the words that set it, for its timeout error."""
        if question.timeout is not None:
            return "the question's own timeout"
        return self.timeout_source()

    def timeout_source(self) -> str:
        """Where :meth:`timeout` was set, in the words that set it (a Temporal session's
        workflow names it as the client does)."""
        if isinstance(getattr(self.channel, "user_timeout", None), int | float):
            return f"{type(self.channel).__name__} user_timeout"
        return self.user_timeout_source

    def limit(self, question: Question) -> float | None:
        """The seconds ``question`` may wait: its own timeout, else :meth:`timeout`."""
        return question.timeout if question.timeout is not None else self.timeout()

    def outcome(self, question: Question) -> str:
        """What an unanswered question does, in the user's words."""
        if question.follow_up:
            return "the conversation ends"
        if self.on_user_timeout == "default":
            return f"the agent goes on with the default answer ({self.default_answer!r})"
        return "the asking branch fails"

    def _timed_out(self, question: Question, seconds: float) -> str | None:
        """The answer given for an unanswered question (None for a follow-up: the
        conversation ends), or its branch's failure."""
        if question.follow_up:
            return None
        if self.on_user_timeout == "default":
            return (
                f"(The user did not answer within {seconds:g}s; go on with the default "
                f"answer: {self.default_answer})"
            )
        raise UserInputError(
            f"the user did not answer the question of agent {question.agent!r} within "
            f"{seconds:g}s ({self._limit_name(question)}; question {question.id}, branch "
            f"{question.branch_id}): {question.text!r}"
        )
