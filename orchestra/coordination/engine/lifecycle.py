"""Branch bookkeeping shared by every transition: creating, ending, failing, cancelling.

Functions of the :class:`~orchestra.coordination.engine.core.Engine` they change. What happens
*after* a branch ends (a fan-out settles, the run finishes) is the engine's decision, reached
through ``engine.branch_ended``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestra.agents.contract import StepInput
from orchestra.coordination.topology import USER
from orchestra.errors import OrchestraError

from . import events as ev
from .branches import Branch, BranchStatus, FanOut, Frame
from .effects import ArmBranchTimer, Cancel, Disarm, LetGo, Spawn

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
    engine.spawned += 1
    branch.ready = engine.spawned
    engine.effects.append(Spawn(branch.id))


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
