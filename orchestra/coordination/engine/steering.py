"""Steering: what the engine does with a reply it cannot use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestra.agents.contract import InputKind, StepInput, StepOutcome
from orchestra.errors import ActionError

from . import events as ev
from . import lifecycle
from .branches import Branch

if TYPE_CHECKING:
    from .core import Engine


def steer(engine: Engine, branch: Branch, problem: str, outcome: StepOutcome) -> None:
    """The reply could not be used: say so (``ActionRejected``, with the usage it cost) and ask
    the agent again with what it may do, or, once ``max_steering_retries`` are spent (or
    steering is off), fail the branch."""
    branch.retries += 1
    reply, usage = outcome.reply, outcome.usage
    engine.stream.emit(
        ev.ActionRejected(
            run_id=engine.run_id,
            at=engine.now,
            branch_id=branch.id,
            agent=branch.agent,
            step=branch.step_number,
            problem=problem,
            reply=reply,
            attempt=branch.retries,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cost_usd=usage.cost_usd if usage else None,
        )
    )
    if (
        engine.config.steering_mode == "never"
        or branch.retries > engine.config.max_steering_retries
    ):
        error = ActionError(
            f"agent {branch.agent!r} gave no usable action after {branch.retries} "
            f"attempt(s): {problem}. Last reply: {reply[:500]!r}"
        )
        lifecycle.fail(engine, branch, error)
        return
    menu = branch.allowed.menu() if branch.allowed else ""
    branch.input = StepInput(
        InputKind.STEERING, f"Your last reply could not be used: {problem}. You may: {menu}."
    )
