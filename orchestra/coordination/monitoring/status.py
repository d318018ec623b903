"""Plain status lines, one per agent step, read from the event stream."""

from __future__ import annotations

import sys
from typing import TextIO

from orchestra.coordination.config import StatusConfig, VerbosityLevel
from orchestra.coordination.engine import events as ev
from orchestra.coordination.engine.actions import Action


class StatusPrinter:
    """Prints what a run does: at NORMAL a line per step and per branch end; at VERBOSE also
    rejected replies, fan-outs, convergence and questions. QUIET prints nothing."""

    def __init__(self, config: StatusConfig, stream: TextIO | None = None) -> None:
        self.config = config
        self.out = stream or sys.stderr

    def __call__(self, event: ev.Event) -> None:
        if not self.config.enabled or self.config.verbosity is VerbosityLevel.QUIET:
            return
        line = self._line(event)
        if line:
            print(line, file=self.out, flush=True)

    def _line(self, event: ev.Event) -> str | None:
        verbose = self.config.verbosity >= VerbosityLevel.VERBOSE
        if isinstance(event, ev.StepCompleted):
            action = event.action
            text = action.describe() if isinstance(action, Action) else str(action)
            return f"[{event.run_id}] step {event.step:>4} {event.branch_id:>6} {event.agent}: {text} ({event.duration * 1000:.1f} ms)"
        if isinstance(event, ev.BranchFailed):
            return (
                f"[{event.run_id}] branch {event.branch_id} failed at {event.agent}: {event.error}"
            )
        if isinstance(event, ev.RunCompleted):
            outcome = "succeeded" if event.success else f"failed: {event.error}"
            return f"[{event.run_id}] run {outcome} in {event.duration:.2f}s, {event.total_steps} steps"
        if not verbose:
            return None
        if isinstance(event, ev.ActionRejected):
            return f"[{event.run_id}] step {event.step:>4} {event.branch_id:>6} {event.agent}: rejected ({event.problem})"
        if isinstance(event, ev.FanOutStarted):
            return f"[{event.run_id}] fan-out {event.fan_out_id} from {event.source}: {', '.join(event.targets)}"
        if isinstance(event, ev.ConvergenceReached):
            return f"[{event.run_id}] fan-out {event.fan_out_id} converged ({event.outcome}): {event.succeeded} ok, {event.failed} failed"
        if isinstance(event, ev.UserInputRequested):
            return f"[{event.run_id}] {event.agent} asks the user: {event.question}"
        return None
