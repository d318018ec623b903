"""Asking the user, for the runner: a branch's question goes to the run's channel and its
answer is journaled as it arrives; a pause withdraws the questions still open (they are asked
again on resume), and a channel that fails, or cancels a question itself, fails only the
asking branch.

Whatever the session's ``auto_save_interval``, its log is durable before a question is put
to the user, and again once an answer is taken in: a crash while a person thinks, or right
after they answered, loses neither their answer nor the paid work the question stands on.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

from orchestra.communication.channels import Question
from orchestra.errors import OrchestraError, UnstorableValueError, UserInputError
from orchestra.models.secrets import redact

from . import budgets, rounds
from . import inputs as inp
from .branches import Branch

if TYPE_CHECKING:
    from .runner import Runner


class OpenQuestions:
    """The questions of one run waiting for answers, by the branch that asked."""

    def __init__(self) -> None:
        # names a run that has no log (it cannot be resumed), so its question ids stay unique
        self._token = uuid.uuid4().hex[:12]
        self._asking: dict[Branch, asyncio.Future[Any]] = {}

    def withdraw(self) -> list[asyncio.Future[Any]]:
        """Withdraw every open question, after whatever is already on its way (an answer
        given before, its delivery queued in the loop, is taken in, not lost); the questions
        withdrawn, done once their channel has let go of them."""
        withdrawn = list(self._asking.values())
        loop = asyncio.get_running_loop()
        for waiting in withdrawn:
            loop.call_soon(_withdraw, waiting)
        return withdrawn

    async def ask(self, runner: Runner, branch: Branch) -> bool:
        """Ask the branch's question and take the answer in; False when it was not asked (the
        branch should stop) or a pause withdrew it (it is asked again on resume). A branch
        waiting for a budget question another branch asks stops here: the engine lets it go
        on (or fails it) with that answer."""
        if budgets.waits_for_another(runner.engine, branch):
            return False
        journal = runner.journal
        if journal is not None and not await runner.gate(branch, journal, everything=True):
            return False
        assert branch.question is not None
        question_id, text = branch.question
        if runner.communication.channel is None and budgets.is_question(question_id):
            # no one to ask: the budget is a hard one
            runner.fail_branch(branch, budgets.asked(runner.engine, question_id).error())
            return True
        if runner.communication.channel is None and rounds.is_question(question_id):
            # resumed with no one to offer it to: as at a start without a channel, not offered
            answer = inp.UserAnswer(
                at=runner.clock.now(), branch_id=branch.id, answer=None, error=rounds.NO_CHANNEL
            )
            runner.feed(answer)
            return True
        question = self._question(runner, branch, question_id, text)
        waiting = asyncio.ensure_future(runner.communication.ask(question))
        self._asking[branch] = waiting
        try:
            answer = await waiting
        except asyncio.CancelledError:
            if not waiting.cancelled() or really_cancelled():
                raise
            if runner.pausing:
                return False  # withdrawn by the pause
            failure: OrchestraError = UserInputError(
                f"the user channel cancelled the question of agent {branch.agent!r} itself: {text!r}"
            )
        except OrchestraError as error:
            failure = error
        except Exception as error:
            failure = UserInputError(
                redact(
                    f"the user channel failed on the question of agent {branch.agent!r} "
                    f"({text!r}): {type(error).__name__}: {error}"
                )
            )
        else:
            try:
                runner.feed(
                    inp.UserAnswer(at=runner.clock.now(), branch_id=branch.id, answer=answer)
                )
            except UnstorableValueError as error:
                failure = UserInputError(
                    f"the answer to the question of agent {branch.agent!r} ({text!r}) is "
                    f"{error}, which the session log cannot store"
                )
            else:
                return journal is None or await runner.durable(journal.flush)
        finally:
            self._asking.pop(branch, None)
        if question.follow_up:  # no follow-up to be had: the conversation ends, successfully
            why = redact(f"{type(failure).__name__}: {failure}")
            runner.feed(
                inp.UserAnswer(at=runner.clock.now(), branch_id=branch.id, answer=None, error=why)
            )
        else:
            runner.fail_branch(branch, failure)
        return True

    def _question(self, runner: Runner, branch: Branch, question_id: str, text: str) -> Question:
        """The question as its channel gets it: a follow-up offer with the round's response and
        the conversation's timeout, an agent's with the timeout it asked with, if any. Its id
        comes from the log (the session, its run's name there, the engine's question id), so the
        question asked again after a resume has the id it had, and no other run's question on
        the channel shares it, nor a question asked after its run went back to a checkpoint
        (the name holds the restore's position)."""
        run_id = runner.engine.run_id
        run = self._token if runner.journal is None else runner.journal.run
        asked_id = f"{run_id}:{run}:{question_id}"
        state = runner.engine.follow_ups
        if state is not None and rounds.is_question(question_id):
            return Question(
                id=asked_id,
                run_id=run_id,
                branch_id=branch.id,
                agent=branch.agent,
                text=text,
                kind="follow_up",
                timeout=state.timeout,
                response=state.current.response,
            )
        return Question(
            id=asked_id,
            run_id=run_id,
            branch_id=branch.id,
            agent=branch.agent,
            text=text,
            kind="budget" if budgets.is_question(question_id) else "agent",
            timeout=branch.question_timeout,
        )


def _withdraw(waiting: asyncio.Future[Any]) -> None:
    if not waiting.done():
        waiting.cancel()


def really_cancelled() -> bool:
    """Whether the current task is being cancelled (not just handed a CancelledError by the
    code it ran, which is that code's failure)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def abandoned(loop: asyncio.AbstractEventLoop | None) -> bool:
    """Whether this coroutine, of a run driven on ``loop``, is being closed unfinished outside
    it: its loop is gone (a Temporal worker dropping a session from its cache lets its
    coroutines be collected, each closed with GeneratorExit, whenever the collector runs, in
    whichever loop runs then). Nothing may be recorded, timed or awaited then: the session
    goes on where its history says, on whichever worker runs it next."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    return loop is not None and running is not loop
