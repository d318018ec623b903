"""What applying an input asks the runner to do: the engine's only way to reach the world.

The engine decides; the runner (the async edge) carries out. Effects name branches and fan-outs
by id, so they are plain values like the inputs that cause them.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestra.agents.contract import StepRequest


@dataclass(frozen=True, slots=True)
class Spawn:
    """The branch has work: drive it (its steps, tools, questions) until it waits or ends."""

    branch_id: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """The branch was stopped (failed, cancelled): stop its task and let go of what it holds."""

    branch_id: str


@dataclass(frozen=True, slots=True)
class LetGo:
    """The branch ended: let go of what it holds (its timer, its pooled agents)."""

    branch_id: str


@dataclass(frozen=True, slots=True)
class ArmBranchTimer:
    """A branch was created: its ``branch_timeout`` starts."""

    branch_id: str


@dataclass(frozen=True, slots=True)
class ArmConvergenceTimer:
    """A fan-out started: its ``convergence_timeout`` starts."""

    fan_out_id: str


@dataclass(frozen=True, slots=True)
class Disarm:
    """A fan-out settled: its timer is no longer needed."""

    fan_out_id: str


@dataclass(frozen=True, slots=True)
class RoundOver:
    """A round of the conversation ended and the root branch waits for a follow-up: no time
    limit runs while it waits (its ``branch_timeout``, the run's ``timeout`` rule)."""

    branch_id: str


@dataclass(frozen=True, slots=True)
class RoundBegun:
    """A follow-up began a new round: the root's ``branch_timeout`` and the run's ``timeout``
    rule count afresh."""

    branch_id: str


@dataclass(frozen=True, slots=True)
class TakeStep:
    """Run the agent step that just began, with this request."""

    branch_id: str
    request: StepRequest


@dataclass(frozen=True, slots=True)
class RunFinished:
    """The run is over (its root branch ended, or it was aborted)."""


Effect = (
    Spawn
    | Cancel
    | LetGo
    | ArmBranchTimer
    | ArmConvergenceTimer
    | Disarm
    | RoundOver
    | RoundBegun
    | TakeStep
    | RunFinished
)
