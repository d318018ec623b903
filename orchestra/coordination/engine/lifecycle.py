"""A branch's life, shared by every transition: created, given work, moved to an agent,
answering, ended, failed, cancelled.

Functions of the :class:`~orchestra.coordination.engine.core.Engine` they change. What happens
*after* a branch ends (a fan-out settles, the run finishes) is the engine's decision, reached
through ``engine.branch_ended``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestra.agents.contract import InputKind, StepInput
from orchestra.coordination.topology import USER
from orchestra.errors import OrchestraError

from . import events as ev
from .branches import Branch, BranchStatus, FanOut, Frame
from .effects import ArmBranchTimer, Cancel, Disarm, LetGo, Spawn
from .limits import record_transfer

if TYPE_CHECKING:
    from .core import Engine


def new_branch(
    engine: Engine,
    agent: str,
    step_input: StepInput | None,
    fan_out: FanOut | None = None,
    parent: Branch | None = None,
    call_stack: list[Frame] | None = None,
) -> Branch:
    branch = Branch(
        id=f"b{len(engine.branches)}",
        agent=agent,
        input=step_input,
        created_at=engine.now,
        fan_out=fan_out,
        parent=parent,
        call_stack=call_stack or [],
    )
    if agent != USER:
        branch.visited.append(agent)
    engine.branches[branch.id] = branch
    engine.stream.emit(
        ev.BranchCreated(
            run_id=engine.run_id,
            at=engine.now,
            branch_id=branch.id,
            agent=agent,
            parent_branch_id=parent.id if parent else None,
            fan_out_id=fan_out.id if fan_out else None,
        )
    )
    engine.effects.append(ArmBranchTimer(branch.id))
    if agent != USER:
        spawn(engine, branch)
    return branch


def spawn(engine: Engine, branch: Branch) -> None:
    """The branch has work: its task starts (behind those started before it). A resumed run
    starts its branches in this order again, so they take their turns as they would have."""
    behind_the_others(engine, branch)
    engine.effects.append(Spawn(branch.id))


def behind_the_others(engine: Engine, branch: Branch) -> None:
    """The branch is ready again, behind the branches ready before it: as its task is in the
    event loop, when it is started, or wakes after giving way (see :func:`step_taken`) or
    after its tools (the last one done)."""
    engine.spawned += 1
    branch.ready = engine.spawned


TURN_EVERY = 32
"""A branch lets other work run (timers, other branches, a pause) at least every this many of
its steps, even when its steps never wait (quick code): the runner yields to the event loop
there, which puts the branch behind the others ready to go."""


def turn_over(branch: Branch) -> bool:
    """Whether the branch's turn is over after its last step: the runner yields to the event
    loop there, and the engine records the branch going behind the others. One rule for both,
    or a resumed run would start branches in another order than the live run took them."""
    return branch.steps % TURN_EVERY == 0 and not branch.ended


def step_taken(engine: Engine, branch: Branch) -> None:
    """A branch whose turn is over goes behind the branches ready, as in the event loop: a run
    resumed after a pause mid-turn of another branch starts them in the order the live run
    would have taken them."""
    if turn_over(branch):
        behind_the_others(engine, branch)


def enter(engine: Engine, branch: Branch, agent: str, step_input: StepInput) -> None:
    """The branch's work moves on to ``agent``."""
    branch.agent = agent
    branch.input = step_input
    branch.visited.append(agent)
    engine.invocations[agent] += 1


def answer(engine: Engine, branch: Branch, response: Any) -> None:
    """A final response: back to the caller if there is one, else the branch ends."""
    if not branch.call_stack:
        if not engine.round_over(branch, response):
            end(engine, branch, BranchStatus.COMPLETED, "finished", response)
        return
    frame = branch.call_stack.pop()
    if frame.returns_to_fan_out:
        end(engine, branch, BranchStatus.COMPLETED, "returned", response)
        return
    callee = branch.agent
    if transfer_refused(engine, branch, callee, frame.caller, response):
        return
    engine.stream.emit(
        ev.WorkHandedOver(
            run_id=engine.run_id,
            at=engine.now,
            branch_id=branch.id,
            source=callee,
            target=frame.caller,
            kind="return",
        )
    )
    branch.agent = frame.caller
    branch.input = StepInput(InputKind.RESPONSE, response, callee)


def transfer_refused(
    engine: Engine, branch: Branch, source: str, target: str, payload: Any
) -> bool:
    """Note that work moves ``source -> target``; when that completes a ping-pong the
    topology's ``ping_pong`` rule forbids, fail the branch and return True."""
    rounds = engine.analysis.ping_pong_rounds
    if rounds is None:
        return False
    error = record_transfer(branch, rounds, source, target, payload)
    if error is None:
        return False
    fail(engine, branch, error)
    return True


def end(engine: Engine, branch: Branch, status: BranchStatus, outcome: str, result: Any) -> None:
    branch.status = status
    branch.outcome = outcome
    branch.result = result
    branch.ended_at = engine.now
    engine.effects.append(LetGo(branch.id))
    engine.stream.emit(
        ev.BranchCompleted(
            run_id=engine.run_id,
            at=engine.now,
            branch_id=branch.id,
            agent=branch.agent,
            outcome=outcome,
        )
    )
    engine.branch_ended(branch)


def fail(engine: Engine, branch: Branch, error: OrchestraError) -> None:
    if branch.ended:
        return
    mark_failed(engine, branch, error)
    engine.branch_ended(branch)


def mark_failed(engine: Engine, branch: Branch, error: OrchestraError) -> None:
    branch.status = BranchStatus.FAILED
    branch.outcome = "failed"
    branch.error = error
    branch.ended_at = engine.now
    cancel_children(engine, branch)
    engine.effects.append(Cancel(branch.id))
    engine.stream.emit(
        ev.BranchFailed(
            run_id=engine.run_id,
            at=engine.now,
            branch_id=branch.id,
            agent=branch.agent,
            error_type=type(error).__name__,
            error=str(error),
        )
    )
    _question_dropped(engine, branch, error)


def cancel(engine: Engine, branch: Branch) -> None:
    branch.status = BranchStatus.CANCELLED
    branch.outcome = "cancelled"
    branch.ended_at = engine.now
    cancel_children(engine, branch)
    engine.effects.append(Cancel(branch.id))
    engine.stream.emit(
        ev.BranchCompleted(
            run_id=engine.run_id,
            at=engine.now,
            branch_id=branch.id,
            agent=branch.agent,
            outcome="cancelled",
        )
    )
    _question_dropped(engine, branch, None)


def _question_dropped(engine: Engine, branch: Branch, error: OrchestraError | None) -> None:
    """A branch that ends while it asks the user leaves its question: a budget question other
    branches wait for is theirs to settle (see ``budgets.dropped``)."""
    if branch.question is not None:
        from . import budgets  # imported here: budgets builds on this module

        budgets.dropped(engine, branch, error)


def mark_settled(engine: Engine, fan_out: FanOut) -> None:
    fan_out.settled = True
    engine.effects.append(Disarm(fan_out.id))


def cancel_children(engine: Engine, branch: Branch) -> None:
    fan_out = branch.waiting_on
    if fan_out is not None and not fan_out.settled:
        mark_settled(engine, fan_out)
        for child in fan_out.children:
            if not child.ended:
                cancel(engine, child)
