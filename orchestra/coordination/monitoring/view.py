"""A run as someone watching it sees it, folded from its events: plain data, no terminal in it.

:class:`RunView` takes every event of one run, replayed ones too (a resumed run's view is right
once it has caught up with its log), and keeps what a live display shows: the branch tree
(fan-out children under the branch that fanned out), for each branch its agent, what it is
doing, its step, its working time, its tokens and cost, and the run's totals and state. It
runs on the engine's path, so each event costs a dictionary look-up and a few assignments,
never a walk over the run. :meth:`RunView.snapshot` copies it for a reader on another thread
(the terminal's refresh thread, later the web inspector); given a number of rows, it copies
only the branches a display of that many rows draws, so a fan-out of 1000 branches costs a
frame what the 20 it shows cost.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from orchestra.coordination.engine import events as ev
from orchestra.errors import budget_amount


class BranchStatus(StrEnum):
    """What a branch is doing, as a watcher names it."""

    RUNNING = "running"  # between steps: its next step is on the way
    MODEL = "in a model call"
    STEP = "in a step"  # a code agent's step (it calls no model)
    TOOL = "in a tool call"
    CONVERGING = "waiting at convergence"  # its fan-out's branches, or their convergence point
    USER = "waiting for the user"
    DONE = "done"
    CANCELLED = "cancelled"
    HALTED = "halted"  # its run stopped here otherwise (storage failed, say)
    FAILED = "failed"


BUSY = frozenset({BranchStatus.MODEL, BranchStatus.STEP, BranchStatus.TOOL})
"""The statuses in which a call is in flight (a display shows a spinner)."""
ENDED = frozenset(
    {BranchStatus.DONE, BranchStatus.CANCELLED, BranchStatus.HALTED, BranchStatus.FAILED}
)


class RunState(StrEnum):
    RUNNING = "running"
    PAUSING = "pausing"  # a pause was asked for; steps in flight finish first
    PAUSED = "paused"
    WAITING_FOR_USER = "waiting for the user"
    WAITING_FOR_FOLLOW_UP = "waiting for a follow-up"  # a round ended; the user may ask more
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # its task was cancelled: no event says so
    HALTED = "halted"  # stopped here otherwise (storage failed, say): no event says so


_ENDED = frozenset(
    {RunState.PAUSED, RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.HALTED}
)


WRITING_KEPT = 2000
"""Characters of a reply being written a branch's view keeps: many more than a display shows,
so a key the window cuts in half lies far left of what is shown (and a whole one is redacted
before it is shown)."""


@dataclass
class BranchView:
    """One branch. ``working`` is the seconds it spent in steps and tool calls, not counting
    the one in flight (which began at ``busy_since``)."""

    branch_id: str
    agent: str
    parent: str | None
    fan_out: str | None
    status: BranchStatus = BranchStatus.RUNNING
    step: int = 0  # the run's number of its latest step
    steps: int = 0
    working: float = 0.0
    busy_since: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    retries: int = 0
    rejected: int = 0
    error: str | None = None
    question: str | None = None
    budget: str | None = None  # the spent budget it stands at, and whose answer it waits for
    fan_outs: list[str] = field(default_factory=list)
    tools_open: int = 0
    writing: str = ""
    """The end (``WRITING_KEPT`` characters) of the reply its model is writing, as streamed
    (``StepDelta``); empty between steps."""
    writing_attempt: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def elapsed(self, now: float) -> float:
        """Working seconds up to ``now`` (the call in flight included)."""
        return self.working + (0.0 if self.busy_since is None else max(0.0, now - self.busy_since))


@dataclass
class FanOutView:
    """A fan-out: its source branch and its children; ``outcome`` once it converged (its
    children are then folded: a display shows one line for them)."""

    fan_out_id: str
    source: str
    children: tuple[str, ...]
    """Every child; in a snapshot given rows, only those drawn (in the order drawn)."""
    targets: tuple[str, ...]
    outcome: str | None = None
    succeeded: int = 0
    failed: int = 0
    working: dict[str, None] = field(default_factory=dict)
    """The children that have not ended, oldest first (an ordered set)."""
    ended: list[str] = field(default_factory=list)
    """The children that have ended, in the order they ended."""
    tally: Counter[str] = field(default_factory=Counter)
    """How many children have ended, by status; in a snapshot given rows, how many children
    are not drawn, by status ("running" for those that have not ended)."""

    def chosen(self) -> Iterator[str]:
        """The children in the order a display picks them: those still working (oldest first),
        then those that ended (the latest first)."""
        return itertools.chain(self.working, reversed(self.ended))


@dataclass
class RunView:
    """One run, folded from its events (feed it with ``view(event)``)."""

    run_id: str
    model_agents: Collection[str] = ()
    """The agents that call a model: their steps are model calls (a code agent's are steps)."""
    state: RunState = RunState.RUNNING
    reason: str | None = None  # why it paused
    error: str | None = None  # why it failed
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    root: str | None = None
    branches: dict[str, BranchView] = field(default_factory=dict)
    fan_outs: dict[str, FanOutView] = field(default_factory=dict)
    asking: int = 0  # branches waiting for the user
    round: int = 1  # the round of a conversation with follow-ups
    offered: bool = False  # the round ended and a follow-up is offered
    budget: str | None = None  # the run's spent budget, until a raise (or the run's end)
    budget_askers: dict[str, str] = field(default_factory=dict)  # by question id: who asks
    ran: float = 0.0  # seconds run before ``running_since`` (earlier stretches of a resumed run)
    running_since: float | None = None
    last_at: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def ended(self) -> bool:
        return self.state in _ENDED

    @property
    def shown_state(self) -> RunState:
        """The state as a watcher reads it: a running run whose work all waits on the user
        is waiting for the user (for a follow-up, once a round ended)."""
        if self.state is RunState.RUNNING and self.offered:
            return RunState.WAITING_FOR_FOLLOW_UP
        if self.state is RunState.RUNNING and self.asking:
            return RunState.WAITING_FOR_USER
        return self.state

    def elapsed(self, now: float) -> float:
        """The run's seconds up to ``now``, pauses and crashes left out."""
        since = self.running_since
        return self.ran + (0.0 if since is None else max(0.0, now - since))

    def __call__(self, event: ev.Event) -> None:
        fold = _FOLDS.get(type(event))
        if fold is not None:
            fold(self, event)
        self.last_at = event.at  # after the fold: a resume reads the time of the event before it

    def stop(self, outcome: str, at: float) -> None:
        """The run stopped at ``at`` without an event saying so (``outcome``: cancelled or
        halted); nothing for a run that already ended or paused. Its branches that had not
        ended stop with it: none is left drawn as busy in its final block."""
        if self.ended:
            return
        cancelled = outcome == "cancelled"
        self.state = RunState.CANCELLED if cancelled else RunState.HALTED
        status = BranchStatus.CANCELLED if cancelled else BranchStatus.HALTED
        for branch in self.branches.values():
            if branch.status not in ENDED:
                branch.working = branch.elapsed(at)  # the call cut off counts up to the stop
                _ended(branch, status, self)
        if self.running_since is not None:
            _stopped(self, self.ran + max(0.0, at - self.running_since))

    def snapshot(self, rows: int | None = None) -> RunView:
        """A copy that later events leave alone (for a reader on another thread). Given
        ``rows``, it holds only what a tree of that many rows draws (a row per branch, per
        fan-out and per fan-out's summary of the children left out): its cost is that of the
        rows, not of the run's branches."""
        copied = copy.copy(self)
        if rows is None:
            copied.branches = {key: _copied(branch) for key, branch in self.branches.items()}
            copied.fan_outs = {key: _whole(fan_out) for key, fan_out in self.fan_outs.items()}
        else:
            copied.branches, copied.fan_outs = {}, {}
            if self.root is not None and rows > 0:
                _take(self, copied, self.branches[self.root], [rows])
        return copied

    def children(self, branch: BranchView) -> list[tuple[FanOutView, list[BranchView]]]:
        """The branch's fan-outs, each with its child branches (in a snapshot given rows,
        those drawn)."""
        found = []
        for fan_out_id in branch.fan_outs:
            fan_out = self.fan_outs.get(fan_out_id)
            if fan_out is None:  # left out of a snapshot given rows
                continue
            kids = [self.branches[child] for child in fan_out.children if child in self.branches]
            found.append((fan_out, kids))
        return found


def _copied(branch: BranchView) -> BranchView:
    copied = copy.copy(branch)
    copied.fan_outs = list(branch.fan_outs)
    return copied


def _whole(fan_out: FanOutView) -> FanOutView:
    copied = copy.copy(fan_out)
    copied.working, copied.ended = dict(fan_out.working), list(fan_out.ended)
    copied.tally = Counter(fan_out.tally)
    return copied


def _take(view: RunView, copied: RunView, branch: BranchView, budget: list[int]) -> None:
    """Copy ``branch`` and, while ``budget[0]`` rows are left, its fan-outs and the children
    they draw (depth first, picked as :meth:`FanOutView.chosen` says), with a tally of those
    left out: the work done is that of the rows drawn. An open fan-out needs two rows (its
    line, and the summary's, kept back while its children are drawn; the last child may
    take it)."""
    copied.branches[branch.branch_id] = _copied(branch)
    budget[0] -= 2 if branch.writing else 1  # the reply being written has a row of its own
    for fan_out_id in branch.fan_outs:
        fan_out = view.fan_outs[fan_out_id]
        converged = fan_out.outcome is not None
        if budget[0] < (1 if converged else 2):
            return
        shown = copied.fan_outs[fan_out_id] = copy.copy(fan_out)
        shown.children, shown.working, shown.ended, shown.tally = (), {}, [], Counter()
        budget[0] -= 1 if converged else 2
        if converged:  # drawn as one line
            continue
        drawn: list[str] = []
        total = len(fan_out.working) + len(fan_out.ended)
        for child in fan_out.chosen():
            if budget[0] < (0 if len(drawn) + 1 == total else 1):
                break
            drawn.append(child)
            _take(view, copied, view.branches[child], budget)
        budget[0] += 1
        shown.children = tuple(drawn)
        if len(drawn) < total:
            budget[0] -= 1
            shown.tally = _left_out(fan_out, copied)


def _left_out(fan_out: FanOutView, copied: RunView) -> Counter[str]:
    """How many of ``fan_out``'s children ``copied`` does not hold, by status."""
    left = Counter(fan_out.tally)
    left["running"] = len(fan_out.working)
    for child in copied.branches.values():
        if child.fan_out == fan_out.fan_out_id:
            left[str(child.status) if child.status in ENDED else "running"] -= 1
    return +left


def _add_cost(total: float | None, cost: float | None) -> float | None:
    return total if cost is None else (total or 0.0) + cost


def _run_started(view: RunView, event: ev.RunStarted) -> None:
    view.running_since = event.at


def _branch_created(view: RunView, event: ev.BranchCreated) -> None:
    view.branches[event.branch_id] = BranchView(
        event.branch_id, event.agent, event.parent_branch_id, event.fan_out_id
    )
    if event.parent_branch_id is None and view.root is None:
        view.root = event.branch_id


def _step_started(view: RunView, event: ev.StepStarted) -> None:
    branch = view.branches[event.branch_id]
    branch.agent = event.agent
    branch.step = event.step
    branch.status = BranchStatus.MODEL if event.agent in view.model_agents else BranchStatus.STEP
    branch.busy_since = event.at
    branch.writing, branch.writing_attempt = "", 0


def _delta(view: RunView, event: ev.StepDelta) -> None:
    """A piece of the reply being written: kept at the end of what was written, or starting
    it afresh when it is of a later attempt (the model call was retried)."""
    branch = view.branches.get(event.branch_id)
    if branch is None or branch.step != event.step or branch.status not in BUSY:
        return  # a piece of no step in flight
    written = branch.writing if event.attempt == branch.writing_attempt else ""
    branch.writing = (written + event.text)[-WRITING_KEPT:]
    branch.writing_attempt = event.attempt


def _step_over(view: RunView, event: ev.StepFailed | ev.ActionRejected) -> None:
    branch = view.branches.get(event.branch_id)
    if branch is not None:
        branch.writing = ""


def _step_completed(view: RunView, event: ev.StepCompleted) -> None:
    branch = view.branches[event.branch_id]
    branch.status = BranchStatus.RUNNING
    branch.busy_since = None
    branch.writing = ""
    branch.working += event.duration
    branch.steps += 1
    branch.step = event.step
    branch.prompt_tokens += event.prompt_tokens
    branch.completion_tokens += event.completion_tokens
    branch.cost_usd = _add_cost(branch.cost_usd, event.cost_usd)
    view.steps += 1
    view.prompt_tokens += event.prompt_tokens
    view.completion_tokens += event.completion_tokens
    view.cost_usd = _add_cost(view.cost_usd, event.cost_usd)


def _retried(view: RunView, event: ev.ModelCallRetried) -> None:
    view.branches[event.branch_id].retries += 1


def _rejected(view: RunView, event: ev.ActionRejected) -> None:
    view.branches[event.branch_id].rejected += 1
    _step_over(view, event)


def _handed_over(view: RunView, event: ev.WorkHandedOver) -> None:
    view.branches[event.branch_id].agent = event.target


def _fanned_out(view: RunView, event: ev.FanOutStarted) -> None:
    children = event.child_branch_ids  # created (BranchCreated) just before, none ended yet
    view.fan_outs[event.fan_out_id] = FanOutView(
        event.fan_out_id, event.branch_id, children, event.targets, working=dict.fromkeys(children)
    )
    source = view.branches[event.branch_id]
    source.fan_outs.append(event.fan_out_id)
    source.status = BranchStatus.CONVERGING


def _arrived(view: RunView, event: ev.BranchArrived) -> None:
    view.branches[event.branch_id].status = BranchStatus.CONVERGING


def _converged(view: RunView, event: ev.ConvergenceReached) -> None:
    fan_out = view.fan_outs[event.fan_out_id]
    fan_out.outcome = event.outcome
    fan_out.succeeded, fan_out.failed = event.succeeded, event.failed
    source = view.branches[fan_out.source]
    if source.status is BranchStatus.CONVERGING:
        source.status = BranchStatus.RUNNING


def _tool_started(view: RunView, event: ev.ToolCallStarted) -> None:
    branch = view.branches[event.branch_id]
    if not branch.tools_open:
        branch.busy_since = event.at
    branch.tools_open += 1
    branch.status = BranchStatus.TOOL


def _tool_completed(view: RunView, event: ev.ToolCallCompleted) -> None:
    branch = view.branches[event.branch_id]
    branch.tools_open = max(0, branch.tools_open - 1)
    if branch.tools_open or branch.busy_since is None:
        return
    branch.working += max(0.0, event.at - branch.busy_since)
    branch.busy_since = None
    if branch.status is BranchStatus.TOOL:
        branch.status = BranchStatus.RUNNING


def _waits_for_user(view: RunView, branch: BranchView) -> None:
    if branch.status is not BranchStatus.USER:
        branch.status = BranchStatus.USER
        view.asking += 1


def _asked(view: RunView, event: ev.UserInputRequested) -> None:
    branch = view.branches[event.branch_id]
    _waits_for_user(view, branch)
    branch.question = event.question
    if event.question_id in view.budget_askers:  # the branch that asked it ended: this one asks
        view.budget_askers[event.question_id] = event.branch_id
        branch.budget = (branch.budget or "").partition("; ")[0]


def _round_completed(view: RunView, event: ev.RoundCompleted) -> None:
    """The wait for a follow-up is no working time: the run's clock stops until it is answered."""
    view.round, view.offered = event.round, True
    if view.running_since is not None:
        _stopped(view, view.ran + max(0.0, event.at - view.running_since))


def _round_started(view: RunView, event: ev.RoundStarted) -> None:
    view.round = event.round


def _answered(view: RunView, event: ev.UserInputReceived) -> None:
    if view.offered and event.branch_id == view.root:
        view.offered = False
        if view.state is RunState.RUNNING:
            view.running_since = event.at
    branch = view.branches[event.branch_id]
    branch.budget = None
    if branch.status is BranchStatus.USER:
        branch.status, branch.question = BranchStatus.RUNNING, None
        view.asking -= 1


def _budget_spent(view: RunView, event: ev.BudgetSpent) -> None:
    """A spent budget stops the branch: it waits for the user's answer to its question, or
    (a budget another branch asks about) for that branch's answer."""
    branch = view.branches[event.branch_id]
    _waits_for_user(view, branch)
    spent = (
        f"{event.budget} budget's {event.limit}={budget_amount(event.limit, event.allowed)} "
        f"spent ({budget_amount(event.limit, event.spent)} used)"
    )
    asker = view.budget_askers.setdefault(event.question_id, event.branch_id)
    branch.budget = spent if asker == event.branch_id else f"{spent}; waits for {asker}'s answer"
    if event.budget == "run":
        view.budget = spent


def _budget_raised(view: RunView, event: ev.BudgetRaised) -> None:
    if event.budget == "run":
        view.budget = None


def _ended(branch: BranchView, status: BranchStatus, view: RunView) -> None:
    if branch.status is BranchStatus.USER:
        view.asking -= 1
    fan_out = view.fan_outs.get(branch.fan_out or "")
    if fan_out is not None:  # its fan-out's tally, so a display counts what it leaves out in O(1)
        if branch.status in ENDED:
            fan_out.tally[str(branch.status)] -= 1
        else:
            fan_out.working.pop(branch.branch_id, None)
            fan_out.ended.append(branch.branch_id)
        fan_out.tally[str(status)] += 1
    branch.status = status
    branch.busy_since = None
    branch.tools_open = 0
    branch.writing = ""


def _branch_completed(view: RunView, event: ev.BranchCompleted) -> None:
    branch = view.branches[event.branch_id]
    if event.outcome == "arrived":  # it waits at the convergence point until its fan-out settles
        branch.status = BranchStatus.CONVERGING
        return
    status = BranchStatus.CANCELLED if event.outcome == "cancelled" else BranchStatus.DONE
    _ended(branch, status, view)


def _branch_failed(view: RunView, event: ev.BranchFailed) -> None:
    branch = view.branches[event.branch_id]
    _ended(branch, BranchStatus.FAILED, view)
    branch.error = event.error


def _pause_requested(view: RunView, event: ev.PauseRequested) -> None:
    view.state, view.reason = RunState.PAUSING, event.reason


def _stopped(view: RunView, duration: float) -> None:
    view.ran, view.running_since = duration, None


def _paused(view: RunView, event: ev.RunPaused) -> None:
    view.state, view.reason = RunState.PAUSED, event.reason
    _stopped(view, event.duration)


def _resumed(view: RunView, event: ev.RunResumed) -> None:
    if view.running_since is not None:  # a crash cut it off: it ran until its last event
        view.ran += max(0.0, view.last_at - view.running_since)
    view.state, view.reason, view.running_since = RunState.RUNNING, None, event.at


def _completed(view: RunView, event: ev.RunCompleted) -> None:
    view.state = RunState.SUCCEEDED if event.success else RunState.FAILED
    view.error, view.budget = event.error, None
    _stopped(view, event.duration)


_FOLDS: dict[type[ev.Event], Callable[[RunView, Any], None]] = {
    ev.RunStarted: _run_started,
    ev.BranchCreated: _branch_created,
    ev.StepStarted: _step_started,
    ev.StepDelta: _delta,
    ev.StepCompleted: _step_completed,
    ev.StepFailed: _step_over,
    ev.ModelCallRetried: _retried,
    ev.ActionRejected: _rejected,
    ev.WorkHandedOver: _handed_over,
    ev.FanOutStarted: _fanned_out,
    ev.BranchArrived: _arrived,
    ev.ConvergenceReached: _converged,
    ev.ToolCallStarted: _tool_started,
    ev.ToolCallCompleted: _tool_completed,
    ev.UserInputRequested: _asked,
    ev.UserInputReceived: _answered,
    ev.RoundCompleted: _round_completed,
    ev.RoundStarted: _round_started,
    ev.BudgetSpent: _budget_spent,
    ev.BudgetRaised: _budget_raised,
    ev.BranchCompleted: _branch_completed,
    ev.BranchFailed: _branch_failed,
    ev.PauseRequested: _pause_requested,
    ev.RunPaused: _paused,
    ev.RunResumed: _resumed,
    ev.RunCompleted: _completed,
}
"""Each kind of event's fold (it takes that kind); the other kinds change nothing shown."""
