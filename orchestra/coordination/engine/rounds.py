"""Follow-ups: a run that goes on as a conversation, one round per question of the user's.

With follow-ups on (``RunStart.follow_up_timeout``), the root branch's final response ends a
*round*, not the run: the round is recorded, and the root branch waits for the user's
follow-up through the same question machinery as an agent's ``ask_user`` (``moves.ask``; the
runner asks it, a pause withdraws it, a resume asks it again). The answer is a journaled input
like any other, so a replayed or resumed run has the same rounds. A blank answer (None, empty or
whitespace-only text: what a timeout, Ctrl-D or a channel with nothing to say gives) ends the
conversation with the last round's response; anything else is the task of a new round, taken
by the topology's entry agent(s) in the conversations they already have.

Functions of the :class:`~orchestra.coordination.engine.core.Engine` they change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestra.agents.contract import InputKind, StepInput
from orchestra.coordination.topology import USER
from orchestra.errors import StepLimitError

from . import convergence, lifecycle, moves
from . import events as ev
from .branches import Branch, BranchStatus
from .effects import RoundBegun, RoundOver, Spawn

if TYPE_CHECKING:
    from .core import Engine

QUESTION_PREFIX = "f"
"""The ids of follow-up questions: ``f1`` after the first round, ``f2`` after the second."""

QUESTION = "Any follow-up? (an empty answer ends the conversation)"

NO_CHANNEL = "not offered: the run has no user channel"
"""``metadata["follow_ups"]`` of a run that asked for follow-ups and had nobody to offer them
to: at its start, or when it was resumed, waiting for one, with no channel (the journaled
answer None then carries it as its ``error``, so a replay ends the same way)."""


@dataclass(slots=True)
class Round:
    """One round: its ``question`` (the run's task for the first), when it began and at which
    of the run's step counts, and once it ended, its ``response`` and own ``steps``. With
    several entries, ``entries`` is the id of the fan-out from the user that started the
    entry agents' branches (a convergence node's later fan-out from the user is not it)."""

    number: int
    question: Any
    started_at: float
    first_step: int
    response: Any = None
    steps: int = 0
    ended_at: float | None = None
    entries: str | None = None  # with several entries: the fan-out that started them


@dataclass(slots=True)
class Conversation:
    """A run's follow-up state: the offer's ``timeout``, its rounds, when the wait for the
    current offer began (None: not waiting), and why a channel could not take an offer."""

    timeout: float
    rounds: list[Round] = field(default_factory=list)
    waiting_since: float | None = None
    error: str | None = None

    @property
    def current(self) -> Round:
        return self.rounds[-1]


def begin(engine: Engine, timeout: float | None, task: Any) -> None:
    """The run starts its first round (with follow-ups on)."""
    if timeout is not None:
        engine.follow_ups = Conversation(timeout, [Round(1, task, engine.now, 0)])


def entered(engine: Engine, root: Branch) -> None:
    """The root has just fanned the round's question out to the entries: the fan-out whose
    branches the next round's entry agents go on from."""
    state = engine.follow_ups
    if state is not None and root.waiting_on is not None:
        state.current.entries = root.waiting_on.id


def is_question(question_id: str) -> bool:
    return question_id.startswith(QUESTION_PREFIX)


def steps_in_round(engine: Engine) -> int:
    """The steps the current round has taken (all the run's, without follow-ups): what
    ``max_steps`` bounds."""
    state = engine.follow_ups
    return engine.steps - (state.current.first_step if state is not None else 0)


def step_limit_error(engine: Engine, branch: Branch) -> StepLimitError:
    """What stops a branch at ``max_steps``: the run's limit, or with follow-ups its round's."""
    state = engine.follow_ups
    reached = f"round {state.current.number} of the conversation" if state else "the run"
    return StepLimitError(
        "max_steps",
        f"{reached} reached max_steps={engine.max_steps} (every agent step of every "
        f"branch counts, steering retries included"
        f"{'; each round has max_steps of its own' if state else ''}); branch "
        f"{branch.id} was about to run {branch.agent!r}",
    )


def waiting(engine: Engine) -> bool:
    """Whether the run waits for the user's follow-up (no time limit runs meanwhile)."""
    state = engine.follow_ups
    return state is not None and state.waiting_since is not None


def round_over(engine: Engine, root: Branch, response: Any) -> bool:
    """The root branch gave its final response: with follow-ups on, the round is recorded and
    the root waits for a follow-up (True); else False (the branch ends, and so does the run)."""
    state = engine.follow_ups
    if state is None or engine.finished or root is not engine.root:
        return False
    current = state.current
    current.response = response
    current.steps = engine.steps - current.first_step
    current.ended_at = engine.now
    root.result = response
    state.waiting_since = engine.now
    engine.stream.emit(
        ev.RoundCompleted(
            run_id=engine.run_id,
            at=engine.now,
            branch_id=root.id,
            round=current.number,
            response=response,
            steps=current.steps,
            total_steps=engine.steps,
        )
    )
    engine.effects.append(RoundOver(root.id))
    moves.ask(engine, root, f"{QUESTION_PREFIX}{current.number}", QUESTION)
    engine.effects.append(Spawn(root.id))  # a root at User has no task of its own to ask it
    return True


def answered(engine: Engine, root: Branch, answer: Any, error: str | None) -> None:
    """The user's answer to a follow-up offer: blank ends the conversation, anything else
    begins the next round. The wait is no working time (a gap, as a pause is)."""
    state = engine.follow_ups
    assert state is not None and state.waiting_since is not None
    engine.gaps.append((state.waiting_since, engine.now))
    state.waiting_since = None
    if error == NO_CHANNEL:
        engine.follow_ups_note = error
    elif error is not None:
        state.error = error
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        lifecycle.end(engine, root, BranchStatus.COMPLETED, "finished", state.current.response)
        return
    number = state.current.number + 1
    state.rounds.append(Round(number, answer, engine.now, engine.steps))
    root.result = None
    engine.stream.emit(
        ev.RoundStarted(
            run_id=engine.run_id, at=engine.now, branch_id=root.id, round=number, question=answer
        )
    )
    engine.effects.append(RoundBegun(root.id))
    root.transfers = None  # like max_steps, loop detection counts each round afresh
    follow_up = StepInput(InputKind.FOLLOW_UP, answer, USER)
    entries = engine.analysis.entries
    if len(entries) == 1:
        lifecycle.enter(engine, root, entries[0], follow_up)
        return
    earlier = _entry_branches(engine, state.rounds[-2])
    root.agent = USER
    items = [(entry, follow_up, False) for entry in entries]
    convergence.fan_out(engine, root, USER, frozenset({USER}), items)
    entered(engine, root)
    assert root.waiting_on is not None
    for child in root.waiting_on.children:  # each entry agent goes on in its conversations
        before = earlier.get(child.agent)
        if before is not None:
            child.conversations = {
                agent: list(messages) for agent, messages in before.conversations.items()
            }


def _entry_branches(engine: Engine, last: Round) -> dict[str, Branch]:
    """The branches that the last round's fan-out to the entries started, by the entry agent
    each began at (a branch may have ended at another agent, one its entry handed over to):
    each holds the conversations of every agent it reached."""
    fan_out = engine.fan_outs.get(last.entries) if last.entries is not None else None
    if fan_out is None:
        return {}
    return {child.visited[0]: child for child in fan_out.children if child.visited}
