"""The status display: plain lines, one per agent step, read from the event stream, or (on an
interactive terminal) the live view of :mod:`.live`; :func:`status_watch` picks one."""

from __future__ import annotations

import reprlib
import string
import sys
from typing import Any, TextIO

from orchestra.agents.contract import Action, ActionKind
from orchestra.coordination.config import StatusConfig, VerbosityLevel
from orchestra.coordination.engine import events as ev
from orchestra.errors import budget_amount
from orchestra.models.secrets import redact
from orchestra.text import cut, printable

PREVIEW = 200
"""Characters of an action's content shown with ``show_actions`` (the rest is cut)."""
_WINDOW = PREVIEW * 2
"""Characters of an item's text read for its preview (whitespace collapsed, it may shorten)."""
_TOKEN_CHARS = string.ascii_letters + string.digits + "._~+/=-"
"""The characters a key is made of (as :mod:`orchestra.models.secrets` matches them)."""
_ARGUMENTS = reprlib.Repr()
_ARGUMENTS.maxlevel = 3
_ARGUMENTS.maxdict = _ARGUMENTS.maxlist = _ARGUMENTS.maxtuple = _ARGUMENTS.maxset = 8
_ARGUMENTS.maxstring = _ARGUMENTS.maxother = _ARGUMENTS.maxlong = _WINDOW * 3
"""A tool call's arguments as :func:`redact` reads them: bounded, so a huge argument costs
little, and whole for as far as a preview reads. Where reprlib shortens a value it keeps its
start and its end; the start alone is longer than ``_WINDOW``, so the end (which may be the
back half of a key it cut) always lies past what a preview shows."""
TEXT_LIMIT = 1000
"""Characters of an error, a pause reason, a rejected reply's problem or a question shown in a
status line (the rest is cut, saying how much)."""


class StatusPrinter:
    """Prints what a run does: at NORMAL a line per step, per branch end and per spent or
    raised budget (a budget stops the run until the user answers); at VERBOSE also
    rejected replies, retried model calls, fan-outs, convergence and questions. QUIET prints
    nothing.

    ``show_actions`` adds, under each step, what the action carried: the requests handed to
    each peer, the final response, the question, each tool call's arguments (``PREVIEW``
    characters of each). Events replayed from a session's log (a resumed run catching up) are
    not printed: they were printed when they happened.
    """

    def __init__(self, config: StatusConfig, stream: TextIO | None = None) -> None:
        self.config = config
        self.out = stream or sys.stderr

    def __call__(self, event: ev.Event) -> None:
        if (
            event.replayed
            or not self.config.enabled
            or self.config.verbosity is VerbosityLevel.QUIET
        ):
            return
        line = status_line(event, self.config)
        if line:
            print(line, file=self.out, flush=True)


def status_line(event: ev.Event, config: StatusConfig) -> str | None:
    """The status line of ``event`` at ``config``'s verbosity (None: nothing to say), with
    ``show_actions`` a step's details on lines of their own under it. Ready to print: each
    line is :func:`printable` and one line, so nothing a run's text holds (a newline in an
    error) can start a line that looks like a status line."""
    line = _line(event, config)
    if line is None:
        return None
    shown = printable(line, one_line=True)
    if config.show_actions and isinstance(event, ev.StepCompleted):
        shown += "".join(
            f"\n{' ' * 8}{printable(detail, one_line=True)}" for detail in details(event.action)
        )
    return shown


def _line(event: ev.Event, config: StatusConfig) -> str | None:
    verbose = config.verbosity >= VerbosityLevel.VERBOSE
    if isinstance(event, ev.StepCompleted):
        return (
            f"[{event.run_id}] step {event.step:>4} {event.branch_id:>6} {event.agent}: "
            f"{event.action.describe()} ({event.duration * 1000:.1f} ms)"
        )
    if isinstance(event, ev.BranchFailed):
        return (
            f"[{event.run_id}] branch {event.branch_id} failed at {event.agent}: "
            f"{_cut(event.error)}"
        )
    if isinstance(event, ev.RunCompleted):
        outcome = "succeeded" if event.success else f"failed: {_cut(event.error or '')}"
        return f"[{event.run_id}] run {outcome} in {event.duration:.2f}s, {event.total_steps} steps"
    if isinstance(event, ev.RunPaused):
        reason = f": {_cut(event.reason)}" if event.reason else ""
        return f"[{event.run_id}] run paused{reason} after {event.total_steps} steps"
    if isinstance(event, ev.RunResumed):
        return f"[{event.run_id}] run resumed"
    if isinstance(event, ev.BudgetSpent):
        return (
            f"[{event.run_id}] {event.branch_id:>6}: the {event.budget} budget's {event.limit}="
            f"{budget_amount(event.limit, event.allowed)} is spent "
            f"({budget_amount(event.limit, event.spent)} used): stopped before its next step "
            f"(question {event.question_id})"
        )
    if isinstance(event, ev.BudgetRaised):
        return (
            f"[{event.run_id}] {event.branch_id:>6}: the user raised the {event.budget} "
            f"budget's {event.limit} to {budget_amount(event.limit, event.allowed)}"
        )
    if not verbose:
        return None
    if isinstance(event, ev.ActionRejected):
        return f"[{event.run_id}] step {event.step:>4} {event.branch_id:>6} {event.agent}: rejected ({_cut(event.problem)})"
    if isinstance(event, ev.FanOutStarted):
        return f"[{event.run_id}] fan-out {event.fan_out_id} from {event.source}: {', '.join(event.targets)}"
    if isinstance(event, ev.ConvergenceReached):
        return f"[{event.run_id}] fan-out {event.fan_out_id} converged ({event.outcome}): {event.succeeded} ok, {event.failed} failed"
    if isinstance(event, ev.ModelCallRetried):
        return (
            f"[{event.run_id}] {event.branch_id:>6} {event.agent}: model call failed "
            f"({_cut(event.error)}), retry {event.attempt} in {event.delay:.1f}s"
        )
    if isinstance(event, ev.UserInputRequested):
        return f"[{event.run_id}] {event.agent} asks the user: {_cut(event.question)}"
    return None


def details(action: Action) -> list[str]:
    """What an action carries, a line per item, each cut to ``PREVIEW`` characters (a tool
    call's arguments with anything shaped like a key redacted: a model may echo one)."""
    lines = [
        f"-> {item.agent_name}: {_preview(_text(item.request))}" for item in action.invocations
    ]
    lines += [
        f"tool {call.name}({_preview(redact(_ARGUMENTS.repr(dict(call.arguments))))})"
        for call in action.tool_calls
    ]
    if action.kind is ActionKind.FINAL:
        lines.append(f"response: {_preview(_text(action.response))}")
    elif action.kind is ActionKind.ASK_USER:
        lines.append(f"question: {_preview(_text(action.question))}")
    return lines


def _text(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _preview(text: str) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``PREVIEW`` characters. A cut
    is marked with "…" and never ends inside a token: half a key is no longer a key to
    :func:`redact`, so the part before a cut is dropped with it."""
    head = text[:_WINDOW]
    shown = " ".join(head.split())
    if len(head) == len(text) and len(shown) <= PREVIEW:
        return shown
    return shown[: PREVIEW - 1].rstrip(_TOKEN_CHARS).rstrip() + "…"


def _cut(text: str) -> str:
    return cut(text, TEXT_LIMIT)
