"""Branch bookkeeping shared by every transition: creating, ending, failing, cancelling.

The :class:`~orchestra.coordination.engine.core.Engine` builds on it; what happens *after* a
branch ends (a fan-out settles, the run finishes) is the engine's decision, reached through
:meth:`_child_ended` and :meth:`_finish_run`.
"""

from __future__ import annotations

from typing import Any, Literal

from orchestra.agents.base import StepInput
from orchestra.coordination.topology import USER
from orchestra.errors import OrchestraError

from . import events as ev
from .state import Branch, BranchStatus, FanOut, Frame

Effect = tuple[
    Literal["spawn", "cancel", "ended", "arm_branch", "arm_fan_out", "settled", "done"], Any
]
"""What the runner must do: start or cancel a branch's task, let go of what an ended branch
held (its timer, its pooled agents), arm or disarm a timer, finish the run."""


class BranchLifecycle:
    def __init__(self, run_id: str, stream: ev.EventStream, clock: Any) -> None:
        self.run_id = run_id
        self.stream = stream
        self.clock = clock
        self.effects: list[Effect] = []
        self.branches: dict[str, Branch] = {}
        self.root: Branch | None = None

    def _child_ended(self, child: Branch) -> None:
        raise NotImplementedError

    def _finish_run(self) -> None:
        raise NotImplementedError

    def _emit(self, event: ev.Event) -> None:
        self.stream.emit(event)

    def _new_branch(
        self,
        agent: str,
        step_input: StepInput | None,
        fan_out: FanOut | None = None,
        parent: Branch | None = None,
        call_stack: list[Frame] | None = None,
    ) -> Branch:
        branch = Branch(
            id=f"b{len(self.branches)}",
            agent=agent,
            input=step_input,
            created_at=self.clock(),
            fan_out=fan_out,
            parent=parent,
            call_stack=call_stack or [],
        )
        if agent != USER:
            branch.visited.append(agent)
        self.branches[branch.id] = branch
        self._emit(
            ev.BranchCreated(
                run_id=self.run_id,
                branch_id=branch.id,
                agent=agent,
                parent_branch_id=parent.id if parent else None,
                fan_out_id=fan_out.id if fan_out else None,
            )
        )
        self.effects.append(("arm_branch", branch))
        if agent != USER:
            self.effects.append(("spawn", branch))
        return branch

    def _end(self, branch: Branch, status: BranchStatus, outcome: str, result: Any) -> None:
        branch.status = status
        branch.outcome = outcome
        branch.result = result
        branch.ended_at = self.clock()
        self.effects.append(("ended", branch))
        self._emit(
            ev.BranchCompleted(
                run_id=self.run_id, branch_id=branch.id, agent=branch.agent, outcome=outcome
            )
        )
        self._after_end(branch)

    def _fail(self, branch: Branch, error: OrchestraError) -> None:
        if branch.ended:
            return
        self._mark_failed(branch, error)
        self._after_end(branch)

    def _mark_failed(self, branch: Branch, error: OrchestraError) -> None:
        branch.status = BranchStatus.FAILED
        branch.outcome = "failed"
        branch.error = error
        branch.ended_at = self.clock()
        self._cancel_children(branch)
        self.effects.append(("cancel", branch))
        self._emit(
            ev.BranchFailed(
                run_id=self.run_id,
                branch_id=branch.id,
                agent=branch.agent,
                error_type=type(error).__name__,
                error=str(error),
            )
        )

    def _after_end(self, branch: Branch) -> None:
        if branch.fan_out is not None:
            self._child_ended(branch)
        elif branch is self.root:
            self._finish_run()

    def _cancel(self, branch: Branch) -> None:
        branch.status = BranchStatus.CANCELLED
        branch.outcome = "cancelled"
        branch.ended_at = self.clock()
        self._cancel_children(branch)
        self.effects.append(("cancel", branch))
        self._emit(
            ev.BranchCompleted(
                run_id=self.run_id, branch_id=branch.id, agent=branch.agent, outcome="cancelled"
            )
        )

    def _mark_settled(self, fan_out: FanOut) -> None:
        fan_out.settled = True
        self.effects.append(("settled", fan_out))

    def _cancel_children(self, branch: Branch) -> None:
        fan_out = branch.waiting_on
        if fan_out is not None and not fan_out.settled:
            self._mark_settled(fan_out)
            for child in fan_out.children:
                if not child.ended:
                    self._cancel(child)
