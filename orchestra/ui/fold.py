"""A stored session's records folded into runs, branches, steps and open questions: what the
inspector shows of it, read from the log alone.

No topology code is needed or imported: a ``StepBegin`` says whose step it is and, on a forked
branch's first step, its parent branch and fan-out (logs written before that say neither: their
steps have no agent and every branch hangs from none). Records a restore abandoned (those after
its checkpoint, before the restore) still show, marked abandoned, and change no branch's state.

A branch's state follows its records: a step begun is ``running``; an ``ask_user`` result, or
the root's final response in a run that offers follow-ups, is ``waiting for the user`` until
the answer; a tool call ``waiting for tools`` until its results are in; a final response of a
forked branch ``done``, unless its begin said whom it ``returns_to`` (a called agent's answer
to its caller, which steps next on the same branch: it ends no branch and no round); a step
error or a branch failure ``failed`` (unless it steps again).
A parent branch that steps again after its fan-out has settled ended its children that were
still at work (they arrived, or were cancelled): they are ``done``. A run's end settles the
rest: ``done`` when it succeeded, ``stopped`` otherwise (or paused; a resume puts them back),
but ``failed`` for a branch that waited on a fan-out a child of which failed, as the engine
says. A fan-out's branches are all listed from the first of them to begin, those that never
begin (cancelled when the fan-out failed) included.

A step with no result that is not in flight now was cut off (``cut_off``): its run ended (it
failed, or paused) or was killed, or a restore went back to before its result. A branch whose
step a crash or a restore cut off begins it again after the ``RunResume``: that is a new step,
at its own position, and the cut-off one stays.

A budget question is no record of its own (the branch stops at its step's begin); its answer
shows that the begin took no step, and that step is dropped then. It uses up a question number
as the engine counts (``budget-q2``, then ``q3``), so an agent question is numbered by the
questions, agent and answered budget ones, at or before its step: the id its channel gave.
While a budget question waits, it looks like a step in flight: this fold cannot tell the two
apart, so it is not listed, and an agent question another branch asks meanwhile is numbered one
too low until that answer is in.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from dataclasses import dataclass, field
from typing import TypedDict

from orchestra.agents.contract import Action, ActionKind, reply_action
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.state.manager import ON_TEMPORAL, RunLog, SessionLog, run_name
from orchestra.coordination.state.records import Entry

from .graph import exits_of
from .shown import record_of, shown

NOT_FINISHING = "the reply has no action, and its agent may not finish here: it was asked again"
"""A step's error when a plain reply was steered (its agent is no exit, and was not called)."""
TEXT_CHARS = 2000
"""Characters of a task, question or error a view keeps."""
ROOT = "b0"
"""The id of a run's first branch (its root)."""
_WAITING = frozenset({"running", "waiting for the user", "waiting for tools"})


class RunView(TypedDict):
    name: str
    task: str
    started: float
    ended: float | None
    state: str


class BranchView(TypedDict):
    id: str
    run: str
    parent: str | None
    fan_out: str | None
    agent: str | None
    state: str
    started: float
    ended: float | None


class StepView(TypedDict):
    position: int
    run: str
    branch: str
    agent: str | None
    started: float
    duration: float | None
    action: str | None
    targets: list[str]
    tokens: int
    cost_usd: float | None
    error: str | None
    abandoned: bool
    cut_off: bool
    cut_at: float | None  # when it was cut off: its run's end, or the last record before a crash


class QuestionView(TypedDict):
    id: str
    branch: str
    agent: str
    text: str
    kind: str
    answerable: bool
    response: str | None  # a follow-up offer's: the round's final response (from its host)


@dataclass(slots=True)
class Step:
    """A step as folded, with the records its detail is read from."""

    view: StepView
    result: inp.StepResult | inp.StepError | None = None
    retries: list[inp.ModelRetry] = field(default_factory=list)
    tools: list[inp.ToolResult] = field(default_factory=list)
    void: bool = False  # its begin took no step (a budget question stopped it)
    # whether its agent may finish (it was called, or is an exit): a plain reply is then its
    # final response, else the engine steered it (see contract.reply_action)
    may_finish: bool = True


@dataclass(slots=True)
class _Branch:
    view: BranchView
    open: Step | None = None  # its step in flight
    last: Step | None = None  # its latest step
    question: tuple[str, str, str] | None = None  # (id, text, kind) waiting for an answer
    asked_at: int = 0  # the position of the step that asked its agent question
    before_end: str | None = None  # its state when its run ended (a resume restores it)
    returns_to: str | None = None  # the caller its current step's final response returns to


class Fold:
    """The fold of ``entries`` (a session's records, in log order) over ``log``, the history
    they make; ``held``: whether a writer holds the session now (its last run is running)."""

    def __init__(self, log: SessionLog, entries: list[Entry], held: bool) -> None:
        self.session_id = log.session_id
        self.log = log
        self.runs: list[RunView] = []
        self.branches: dict[tuple[str, str], _Branch] = {}
        self._children: dict[tuple[str, str], list[_Branch]] = {}  # by (run, parent)
        self._fan_outs: set[tuple[str, str]] = set()  # (run, fan-out) whose children are known
        self.steps: list[Step] = []
        self.restores: list[tuple[int, str, int]] = []  # (its position, checkpoint, back to)
        self._last_at = 0.0  # the time of the latest record on the history folded so far
        self._ghosts: dict[tuple[str, str], Step] = {}  # abandoned steps in flight
        self._asked: dict[str, list[int]] = {}  # by run: where each question it numbered was
        self._rounds: dict[str, int] = {}  # final responses of each run's root
        self._run_of: dict[int, str] = {}
        self._names: dict[str, str] = {}  # run -> its name for question ids (restores in it)
        for run in log.runs:
            name = run_name(run.header.position)
            self._names[name] = run.name
            self._run_of.update((entry.position, name) for entry in run.entries)
        self._fold(entries)
        self._settle(held)

    def _fold(self, entries: list[Entry]) -> None:
        current: str | None = None
        positions = self.log.positions
        for entry in entries:
            kind = entry.kind
            if kind == inp.RunStart.KIND:
                current = run_name(entry.position)
                self._run(entry, entry.position not in positions)
            elif kind == inp.Restore.KIND:
                restore: inp.Restore = entry.record  # type: ignore[assignment]
                self.restores.append((entry.position, restore.checkpoint_id, restore.position))
            elif kind in _IGNORED or current is None:
                continue
            elif entry.position in positions:
                self._apply(self._run_of.get(entry.position, current), entry)
                self._last_at = max(self._last_at, entry.at)
            else:
                self._ghost(current, entry)

    def _run(self, entry: Entry, abandoned: bool) -> None:
        start: inp.RunStart = entry.record  # type: ignore[assignment]
        self.runs.append(
            RunView(
                name=run_name(entry.position),
                task=shown(start.task, TEXT_CHARS),
                started=start.at,
                ended=None,
                state="abandoned" if abandoned else "interrupted",
            )
        )

    def _apply(self, run: str, entry: Entry) -> None:
        record = record_of(entry, self.session_id)
        if isinstance(record, inp.RunEnd | inp.RunResume):
            self._run_event(run, record)
            return
        branch_id = getattr(record, "branch_id", None)
        if branch_id is None:
            return
        if isinstance(record, inp.StepBegin):
            self._begin(run, entry.position, record)
            if record.parent is not None and record.fan_out is not None:
                self._siblings(run, record, record.parent, record.fan_out)
            return
        branch = self.branches.get((run, branch_id))
        if branch is None:
            return
        if isinstance(record, inp.StepResult):
            self._result(run, branch, record, entry.position)
        elif isinstance(record, inp.StepError):
            self._failed_step(branch, record, shown(record.error, TEXT_CHARS))
        elif isinstance(record, inp.ModelRetry) and branch.open is not None:
            branch.open.retries.append(record)
        elif isinstance(record, inp.ToolResult) and branch.last is not None:
            branch.last.tools.append(record)
        elif isinstance(record, inp.ToolsDone):
            branch.view["state"] = "waiting for the user" if branch.question else "running"
        elif isinstance(record, inp.UserAnswer):
            self._answered(run, branch)
        elif isinstance(record, inp.BranchFailure | inp.RunAbort):
            self._failed(branch, record.at, shown(record.error, TEXT_CHARS))

    def _begin(self, run: str, position: int, record: inp.StepBegin) -> None:
        key = (run, record.branch_id)
        branch = self.branches.get(key)
        if branch is None:
            branch = self.branches[key] = _Branch(
                BranchView(
                    id=record.branch_id,
                    run=run,
                    parent=record.parent,
                    fan_out=record.fan_out,
                    agent=record.agent,
                    state="running",
                    started=record.at,
                    ended=None,
                )
            )
            if record.parent is not None:
                self._children.setdefault((run, record.parent), []).append(branch)
        self._children_settled(run, record.branch_id, record.at)
        _mark(branch.view, "running", None)
        branch.question = None
        branch.returns_to = record.returns_to
        branch.open = branch.last = self._step(run, position, record)
        branch.open.may_finish = record.returns_to is not None or self._exit(run, record.agent)
        self.steps.append(branch.open)

    def _siblings(self, run: str, record: inp.StepBegin, parent: str, fan_out: str) -> None:
        """The other branches of the fan-out its first child to begin belongs to, listed
        before they begin (one cancelled when the fan-out failed never does). The engine makes
        a fan-out's branches in one go, in the order of the parent's invocations, so their ids
        follow each other: known from one child whose agent is invoked once."""
        if (run, fan_out) in self._fan_outs:
            return
        self._fan_outs.add((run, fan_out))
        forked = self.branches.get((run, parent))
        step = forked.last if forked is not None else None
        if step is None or step.view["action"] != "parallel_invoke":
            return
        targets = step.view["targets"]
        number = record.branch_id.removeprefix("b")
        if targets.count(record.agent or "") != 1 or not number.isdigit():
            return
        first = int(number) - targets.index(record.agent or "")
        for offset, agent in enumerate(targets):
            key = (run, f"b{first + offset}")
            if key not in self.branches:
                self.branches[key] = sibling = _Branch(
                    BranchView(
                        id=key[1],
                        run=run,
                        parent=parent,
                        fan_out=fan_out,
                        agent=agent,
                        state="running",
                        started=record.at,
                        ended=None,
                    )
                )
                self._children.setdefault((run, parent), []).append(sibling)

    def _children_settled(self, run: str, parent: str, at: float) -> None:
        """A branch steps again once its fan-out settled: children still at work ended."""
        for child in self._children.get((run, parent), ()):
            if child.view["state"] == "running" and child.open is None:
                _mark(child.view, "done", at)

    def _step(self, run: str, position: int, record: inp.StepBegin) -> Step:
        return Step(
            StepView(
                position=position,
                run=run,
                branch=record.branch_id,
                agent=record.agent,
                started=record.at,
                duration=None,
                action=None,
                targets=[],
                tokens=0,
                cost_usd=None,
                error=None,
                abandoned=False,
                cut_off=False,
                cut_at=None,
            )
        )

    def _result(self, run: str, branch: _Branch, record: inp.StepResult, position: int) -> None:
        step = branch.open
        branch.open = None
        if step is not None:
            _finish(step, record)
        action = reply_action(record.outcome, step.may_finish if step is not None else True)
        kind = action.kind if action is not None else None
        view = branch.view
        if kind is ActionKind.ASK_USER:
            insort(self._asked.setdefault(run, []), position)
            branch.question = ("q", action.question if action else "", "agent")
            branch.asked_at = position
            view["state"] = "waiting for the user"
        elif kind is ActionKind.CALL_TOOL:
            view["state"] = "waiting for tools"
        elif kind is ActionKind.FINAL and branch.returns_to is None:  # else: a call returns
            if view["id"] == ROOT:
                self._round_over(run, branch, record.at)
            else:
                _mark(view, "done", record.at)
        if action is not None and action.tool_calls:  # they run first, then the action
            view["state"] = "waiting for tools"

    def _round_over(self, run: str, branch: _Branch, at: float) -> None:
        """The root's final response: the run's round is over; a follow-up is awaited when
        the run offers them."""
        rounds = self._rounds[run] = self._rounds.get(run, 0) + 1
        start = self._start(run)
        if start is not None and start.follow_up_timeout is not None and not start.follow_ups_note:
            branch.question = (f"f{rounds}", "Any follow-up?", "follow_up")
            branch.view["state"] = "waiting for the user"
        else:
            _mark(branch.view, "done", at)

    def _exit(self, run: str, agent: str | None) -> bool:
        """Whether ``agent`` is an exit of the run's topology (unknown, for a log that names no
        exits or no agent: taken as one, as before the log said)."""
        start = self._start(run)
        exits = exits_of(start.topology) if start is not None else None
        return exits is None or agent is None or agent in exits

    def _start(self, run: str) -> inp.RunStart | None:
        for found in self.log.runs:
            if run_name(found.header.position) == run:
                return found.start
        return None

    def _answered(self, run: str, branch: _Branch) -> None:
        if branch.question is None and branch.open is not None:  # a budget question's answer
            insort(self._asked.setdefault(run, []), branch.open.view["position"])
            branch.open.void = True
            branch.open = None
        branch.question = None
        if branch.view["state"] == "waiting for the user":
            branch.view["state"] = "running"

    def _failed_step(self, branch: _Branch, record: inp.StepError, error: str) -> None:
        step = branch.open
        branch.open = None
        if step is not None:
            _finish(step, record)
            step.view["error"] = error
        _mark(branch.view, "failed", record.at)

    def _failed(self, branch: _Branch, at: float, error: str) -> None:
        if branch.open is not None:
            branch.open.view["error"] = error
            branch.open = None
        branch.question = None
        _mark(branch.view, "failed", at)

    def _run_event(self, run: str, record: inp.RunEnd | inp.RunResume) -> None:
        for branch in self.branches.values():
            view = branch.view
            if view["run"] != run:
                continue
            if branch.open is not None and branch.open.view["cut_at"] is None:
                # cut off: at the run's end, or, after a crash, by the last record before it
                branch.open.view["cut_at"] = (
                    self._last_at if isinstance(record, inp.RunResume) else record.at
                )
            if isinstance(record, inp.RunResume):
                branch.open = None  # a step a crash or a restore cut off: it begins again
                if branch.before_end is not None:
                    _mark(view, branch.before_end, None)
                    branch.before_end = None
            elif view["state"] in _WAITING:
                branch.before_end = view["state"]
                branch.open = None
                _mark(view, self._ended(run, view["id"], record), record.at)

    def _ended(self, run: str, branch: str, end: inp.RunEnd) -> str:
        """A branch at work when its run ended: ``failed`` when the run failed while it
        waited on a fan-out a child of which failed (as the engine reports it)."""
        if end.success and not end.paused:
            return "done"
        children = self._children.get((run, branch), ())
        if not end.paused and any(child.view["state"] == "failed" for child in children):
            return "failed"
        return "stopped"

    def _ghost(self, run: str, entry: Entry) -> None:
        """A record a restore abandoned: its steps show, greyed; nothing else changes."""
        record = record_of(entry, self.session_id)
        branch_id = getattr(record, "branch_id", None)
        if branch_id is None:
            return
        key = (run, branch_id)
        if isinstance(record, inp.StepBegin):
            if key not in self._ghosts:
                step = self._ghosts[key] = self._step(run, entry.position, record)
                step.view["abandoned"] = True
                self.steps.append(step)
                if key not in self.branches:
                    self._begin_abandoned(run, record)
        elif isinstance(record, inp.StepResult | inp.StepError) and key in self._ghosts:
            _finish(self._ghosts.pop(key), record)

    def _begin_abandoned(self, run: str, record: inp.StepBegin) -> None:
        self._begin(run, -1, record)
        branch = self.branches[(run, record.branch_id)]
        self.steps.pop()
        branch.open = branch.last = None
        branch.view["state"] = "abandoned"

    def _settle(self, held: bool) -> None:
        """Each run's state; the branches of a last run cut off by a crash stopped; each step
        with no result and not in flight now ``cut_off``."""
        states = {run_name(run.header.position): _run_state(run) for run in self.log.runs}
        last = self.log.last_run
        last_name = run_name(last.header.position) if last is not None else None
        for view in self.runs:
            name = view["name"]
            if name in states:
                view["state"] = states[name]
                found = next(r for r in self.log.runs if run_name(r.header.position) == name)
                view["ended"] = found.end.at if found.end is not None else None
            if name == last_name and view["state"] == "interrupted" and held:
                view["state"] = "running"
        if last is not None and last.end is None and not held:
            for branch in self.branches.values():
                if branch.view["run"] == last_name and branch.view["state"] in _WAITING:
                    branch.view["state"] = "stopped"
        self.steps = [step for step in self.steps if not step.void]
        in_flight = {id(b.open) for b in self.branches.values() if self._in_flight(b, held)}
        for step in self.steps:  # with no result, not in flight: a run's end, a crash, a restore
            shown_step = step.view
            shown_step["cut_off"] = step.result is None and id(step) not in in_flight
            if not shown_step["cut_off"]:
                shown_step["cut_at"] = None
            elif shown_step["cut_at"] is None:  # a crash not resumed: the last record tells most
                shown_step["cut_at"] = max(self._last_at, shown_step["started"])

    def _in_flight(self, branch: _Branch, held: bool) -> bool:
        """Whether the branch's open step is running now: in the last run, while a writer
        holds the session and that run has not ended."""
        return held and branch.open is not None and branch.view["run"] == self.running

    @property
    def running(self) -> str | None:
        """The last run's name while it has not stopped (running, or cut off by a crash)."""
        last = self.log.last_run
        return run_name(last.header.position) if last is not None and last.end is None else None

    def questions(self) -> list[QuestionView]:
        """The questions the last run waits on, per its log (answerable: none, here)."""
        run = self.running
        found = []
        for branch in self.branches.values():
            if branch.view["run"] != run or branch.question is None:
                continue
            question_id, text, kind = branch.question
            if kind == "agent":  # numbered as the engine numbers it, budget questions included
                question_id = f"q{bisect_right(self._asked.get(run or '', []), branch.asked_at)}"
            found.append(
                QuestionView(
                    id=f"{self.session_id}:{self._names.get(run, run)}:{question_id}",
                    branch=branch.view["id"],
                    agent=(branch.last.view["agent"] if branch.last else None) or "",
                    text=shown(text, TEXT_CHARS, one_line=False),
                    kind=kind,
                    answerable=False,
                    response=None,
                )
            )
        return found

    def active(self) -> list[str]:
        """The agents of the last run with a step in flight or waiting for the user or tools."""
        run = self.running
        agents: dict[str, None] = {}
        for branch in self.branches.values():
            view = branch.view
            at_work = view["state"] != "running" or branch.open is not None
            if view["run"] == run and view["state"] in _WAITING and at_work and branch.last:
                agents[branch.last.view["agent"] or ""] = None
        agents.pop("", None)
        return list(agents)


_IGNORED = frozenset({inp.Checkpoint.KIND, inp.ToolStart.KIND})


def _mark(view: BranchView, state: str, ended: float | None) -> None:
    view["state"] = state
    view["ended"] = ended


def _finish(step: Step, record: inp.StepResult | inp.StepError) -> None:
    step.result = record
    view = step.view
    view["duration"] = record.duration
    if isinstance(record, inp.StepError):
        view["error"] = shown(record.error, TEXT_CHARS)
        return
    outcome = record.outcome
    action = reply_action(outcome, step.may_finish)
    if action is not None:
        view["action"] = action_name(action)
        view["targets"] = action_targets(action)
    elif outcome.problem is not None:
        view["error"] = shown(outcome.problem, TEXT_CHARS)
    elif not outcome.by_code:
        view["error"] = NOT_FINISHING
    usage = outcome.usage
    if usage is not None:
        view["tokens"] = usage.total_tokens
        view["cost_usd"] = usage.cost_usd


def action_name(action: Action) -> str:
    """An action's kind as the inspector names it: a fan-out (several invocations) is a
    ``parallel_invoke``, which the engine takes as an ``invoke_agent`` of several agents."""
    parallel = action.kind is ActionKind.INVOKE and len(action.invocations) > 1
    return "parallel_invoke" if parallel else str(action.kind)


def action_targets(action: Action) -> list[str]:
    """The agents an invocation goes to, or the tools a call runs."""
    if action.kind is ActionKind.INVOKE:
        return [shown(item.agent_name, 200) for item in action.invocations]
    if action.kind is ActionKind.CALL_TOOL:
        return [shown(call.name, 200) for call in action.tool_calls]
    return []


def _run_state(run: RunLog) -> str:
    end = run.end
    if end is None:
        return "interrupted" if run.start.executor is None else ON_TEMPORAL
    if end.paused:
        return "paused"
    return "finished" if end.success else "failed"
