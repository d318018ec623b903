"""How work moves: an agent's action taken — tools first, then a question to the user, a hand-over,
a call, a fan-out or an answer. Functions of the
:class:`~orchestra.coordination.engine.core.Engine` they change.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from orchestra.agents.contract import Action, ActionKind, InputKind, Invocation, StepInput

from . import convergence, lifecycle
from . import events as ev
from .branches import Branch, BranchStatus, Frame

if TYPE_CHECKING:
    from .core import Engine


def take(engine: Engine, branch: Branch, action: Action) -> None:
    kind = action.kind
    if action.tool_calls and kind is not ActionKind.CALL_TOOL:
        branch.pending_tools = action.tool_calls  # tools first, then the action itself
        branch.after_tools = dataclasses.replace(action, tool_calls=())
        return
    if kind is ActionKind.INVOKE:
        invoke(engine, branch, action.invocations)
    elif kind is ActionKind.FINAL:
        lifecycle.answer(engine, branch, action.response)
    elif kind is ActionKind.ASK_USER:
        ask(engine, branch, next_question_id(engine), action.question)
        branch.question_timeout = action.timeout
    else:
        branch.pending_tools = action.tool_calls


def invoke(engine: Engine, branch: Branch, invocations: tuple[Invocation, ...]) -> None:
    """Arrive at a convergence point, hand over to one agent, or fan out to several."""
    if convergence.arrives(engine, branch, invocations):
        convergence.arrive(engine, branch, invocations)
    elif len(invocations) == 1:
        hand_over(engine, branch, invocations[0])
    else:
        source = branch.agent
        items = [
            (
                item.agent_name,
                StepInput(InputKind.REQUEST, item.request, source),
                engine.analysis.is_call(source, item.agent_name),
            )
            for item in invocations
        ]
        convergence.fan_out(engine, branch, source, frozenset({source}), items)


def hand_over(engine: Engine, branch: Branch, item: Invocation) -> None:
    source, target = branch.agent, item.agent_name
    if engine.analysis.is_call(source, target):
        branch.call_stack.append(Frame(source))
        kind = "call"
    else:
        kind = "handoff"
    if lifecycle.transfer_refused(engine, branch, source, target, item.request):
        return
    engine.stream.emit(
        ev.WorkHandedOver(
            run_id=engine.run_id,
            at=engine.now,
            branch_id=branch.id,
            source=source,
            target=target,
            kind=kind,
        )
    )
    lifecycle.enter(engine, branch, target, StepInput(InputKind.REQUEST, item.request, source))


def next_question_id(engine: Engine, prefix: str = "") -> str:
    """The id of the run's next question (``prefix`` marks whose: a budget's, say)."""
    engine.questions_asked += 1
    return f"{prefix}q{engine.questions_asked}"


def ask(engine: Engine, branch: Branch, question_id: str, text: str) -> None:
    """The branch waits for the user's answer to ``text``."""
    branch.question = (question_id, text)
    branch.question_timeout = None
    branch.status = BranchStatus.WAITING_USER
    engine.stream.emit(
        ev.UserInputRequested(
            run_id=engine.run_id,
            at=engine.now,
            branch_id=branch.id,
            agent=branch.agent,
            question_id=question_id,
            question=text,
        )
    )
