"""One run's observer for a MetricsCollector: what each event counts.

It runs on the engine's path, once per event, so it does little: the labelled series it adds
to (prometheus-client's ``labels(...)`` costs about a microsecond and a half a call) are found
once per agent, tool and model and kept; an event it has nothing to count for costs a dict
lookup. Events replayed from a session's log (a resumed run catching up) are never counted:
they were counted when they happened. They still tell it which branches and fan-outs are open
and when the run stood still, so the gauge and the convergence wait of a resumed run are right.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orchestra.coordination.engine import events as ev
from orchestra.coordination.engine.clock import working_time

from .model_calls import Attempt, ModelCalls

if TYPE_CHECKING:
    from .metrics import MetricsCollector

Series = Any
"""A labelled prometheus-client metric (``Counter.labels(...)``'s result): ``inc`` or
``observe``."""


class _AgentSeries:
    """One agent's series in one run, each made when first added to (a series once made is
    shown, at 0, from then on: an agent that calls no model shows no ``api_calls``)."""

    __slots__ = ("agent", "collector", "found", "model")

    def __init__(self, collector: MetricsCollector, agent: str, model: str | None) -> None:
        self.collector = collector
        self.agent = agent
        self.model = model  # None: the agent calls no model (code)
        self.found: dict[str, Series] = {}

    def __getitem__(self, name: str) -> Series:
        series = self.found.get(name)
        if series is None:
            by_model = self.collector.labelled_by_model(name)
            values = (self.agent, self.model or "") if by_model else (self.agent,)
            series = self.found[name] = self.collector.series(name, values)
        return series


class RunWatch:
    """One run's observer: counts its live events, and follows its branches, fan-outs and
    stops (replayed events included) for the gauge and the convergence wait."""

    __slots__ = (
        "active",
        "agents",
        "branches",
        "budget_questions",
        "calls",
        "collector",
        "failed_steps",
        "fan_outs",
        "gaps",
        "last_at",
        "models",
        "stopped_at",
    )

    def __init__(self, collector: MetricsCollector, models: dict[str, str | None]) -> None:
        self.collector = collector
        self.models = models
        self.agents: dict[str, _AgentSeries] = {}
        self.active = False
        self.branches: set[str] = set()
        self.calls = ModelCalls()  # the model call in flight on each branch (live events only)
        self.budget_questions: set[str] = set()  # asked about spent budgets (replayed too)
        # each branch's last failure event, when it was a failed step (its error counted): the
        # agent and error type, so its branch's failure for that same error is not counted again
        self.failed_steps: dict[str, tuple[str, str]] = {}
        self.fan_outs: dict[str, tuple[str, float]] = {}  # id: (source agent, started at)
        # when the run stood still (paused, or cut off by a crash) until resumed, as the engine
        # reckons its working time
        self.gaps: list[tuple[float, float]] = []
        self.stopped_at: float | None = None
        self.last_at = 0.0  # the time of the event before this one

    def __call__(self, event: ev.Event) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)
        self.last_at = event.at

    def agent(self, name: str) -> _AgentSeries:
        series = self.agents.get(name)
        if series is None:
            series = self.agents[name] = _AgentSeries(self.collector, name, self.models.get(name))
        return series

    def start(self, event: ev.RunStarted | ev.RunResumed) -> None:
        if isinstance(event, ev.RunResumed):
            stopped = self.stopped_at if self.stopped_at is not None else self.last_at
            self.gaps.append((stopped, event.at))
            self.stopped_at = None
        if event.replayed or self.active:
            return
        self.active = True
        self.collector._branches(len(self.branches))
        self.collector._run_active(self, True)

    def end(self, event: ev.RunPaused | ev.RunCompleted, outcome: str) -> None:
        self.stopped_at = event.at
        if not event.replayed:
            self.stop(outcome)

    def stop(self, outcome: str) -> None:
        """The run stopped here: it ended or paused (its event said so), or it was cancelled
        or halted (no event says so: ``execution`` tells every run's watch, whatever the
        reason). Its branches leave the gauge; the first reason given is counted."""
        if not self.active:
            return
        self.active = False
        self.collector._branches(-len(self.branches))
        self.collector.series("runs", (outcome,)).inc()
        self.collector._run_active(self, False)

    def branch_opened(self, event: ev.BranchCreated) -> None:
        self.branches.add(event.branch_id)
        if self.active:
            self.collector._branches(1)

    def branch_closed(self, event: ev.BranchCompleted | ev.BranchFailed) -> None:
        self.calls.end(event.branch_id, event.at)  # a call cut off (cancelled) is not timed
        self.failed_steps.pop(event.branch_id, None)
        if event.branch_id in self.branches:
            self.branches.discard(event.branch_id)
            if self.active:
                self.collector._branches(-1)


def _step_started(watch: RunWatch, event: ev.StepStarted) -> None:
    """A step of a model-backed agent is a model call begun (its retries are more): counted
    here, the call whose failure fails the step included (no event after it says so)."""
    watch.failed_steps.pop(event.branch_id, None)  # the failure before was routed on
    if not event.replayed and watch.models.get(event.agent) is not None:
        watch.agent(event.agent)["api_calls"].inc()
        watch.calls.begin(event.branch_id, event.at)


def _model_call(watch: RunWatch, agent: str, attempt: Attempt | None) -> None:
    if attempt is not None:
        watch.agent(agent)["model_call_seconds"].observe(attempt.ended - attempt.started)


def _step_ended(watch: RunWatch, event: ev.ActionRejected | ev.StepFailed) -> None:
    """The step's last model call ended with it (a reply that could not be used, or a
    failure: the call that raised is timed too)."""
    if not event.replayed:
        _model_call(watch, event.agent, watch.calls.end(event.branch_id, event.at))


def _step_failed(watch: RunWatch, event: ev.StepFailed) -> None:
    """A failed step is an error whether error routing hands it on or its branch fails; the
    ``BranchFailed`` that may follow for the same error is that failure, not counted again."""
    _step_ended(watch, event)
    watch.failed_steps[event.branch_id] = (event.agent, event.error_type)
    if not event.replayed:
        watch.collector.series("errors", (event.agent, event.error_type)).inc()


def _step(watch: RunWatch, event: ev.StepCompleted) -> None:
    if event.replayed:
        return
    _model_call(watch, event.agent, watch.calls.end(event.branch_id, event.at))
    series = watch.agent(event.agent)
    series["steps"].inc()
    series["step_seconds"].observe(event.duration)
    # Usage is what the agent reported (a custom agent or model may report any number): only a
    # finite amount above zero is counted. A negative one made the counter raise, and the
    # stream then dropped this run's watch; a NaN cost would have spoiled the total for good.
    prompt, completion = event.prompt_tokens, event.completion_tokens
    if prompt > 0:
        series["prompt_tokens"].inc(prompt)
    if completion > 0:
        series["completion_tokens"].inc(completion)
    if prompt > 0 or completion > 0:
        series["total_tokens"].inc(max(prompt, 0) + max(completion, 0))
    cost = event.cost_usd
    if cost is not None and cost > 0 and math.isfinite(cost):
        series["cost_usd"].inc(cost)


def _retried(watch: RunWatch, event: ev.ModelCallRetried) -> None:
    if not event.replayed:
        series = watch.agent(event.agent)
        series["api_calls"].inc()
        series["retries"].inc()
        attempt = watch.calls.retried(event.branch_id, event.at, event.delay, event.error)
        _model_call(watch, event.agent, attempt)


def _tool_call(watch: RunWatch, event: ev.ToolCallCompleted) -> None:
    if event.replayed:
        return
    collector, values = watch.collector, (event.agent, event.tool)
    collector.series("tool_calls", (*values, "ok" if event.ok else "error")).inc()
    collector.series("tool_call_seconds", values).observe(event.duration)


def _branch_failed(watch: RunWatch, event: ev.BranchFailed) -> None:
    """A branch failed: an error (a timeout, steering spent, ``max_steps``, a fan-out's
    ``ConvergenceError``...) unless it is the failure of the step that failed last on this
    branch, same agent and error type (counted with the step). A routed step failure followed
    by another failure before any step starts (``max_steps`` at the fallback) is two errors."""
    counted = watch.failed_steps.get(event.branch_id) == (event.agent, event.error_type)
    watch.branch_closed(event)
    if not event.replayed and not counted:
        watch.collector.series("errors", (event.agent, event.error_type)).inc()


def _fan_out(watch: RunWatch, event: ev.FanOutStarted) -> None:
    watch.fan_outs[event.fan_out_id] = (event.source, event.at)


def _converged(watch: RunWatch, event: ev.ConvergenceReached) -> None:
    started = watch.fan_outs.pop(event.fan_out_id, None)
    if started is not None and not event.replayed:
        source, at = started
        waited = max(working_time(at, event.at, watch.gaps), 0.0)
        watch.agent(source)["convergence_wait_seconds"].observe(waited)


def _run_completed(watch: RunWatch, event: ev.RunCompleted) -> None:
    watch.end(event, "succeeded" if event.success else "failed")


def _run_paused(watch: RunWatch, event: ev.RunPaused) -> None:
    watch.end(event, "paused")


def _budget_spent(watch: RunWatch, event: ev.BudgetSpent) -> None:
    """A spent budget, counted once per question (the branches that wait for another's
    answer are not counted again), by scope (run, branch or agent: not which one) and limit."""
    if event.question_id in watch.budget_questions:
        return
    watch.budget_questions.add(event.question_id)
    if not event.replayed:
        scope = event.budget.split(" ", 1)[0]
        watch.collector.series("budget_exceeded", (scope, event.limit)).inc()


_HANDLERS: dict[type[ev.Event], Callable[[RunWatch, Any], None]] = {
    ev.RunStarted: RunWatch.start,
    ev.RunResumed: RunWatch.start,
    ev.RunPaused: _run_paused,
    ev.RunCompleted: _run_completed,
    ev.BranchCreated: RunWatch.branch_opened,
    ev.BranchCompleted: RunWatch.branch_closed,
    ev.BranchFailed: _branch_failed,
    ev.StepStarted: _step_started,
    ev.StepCompleted: _step,
    ev.ActionRejected: _step_ended,
    ev.StepFailed: _step_failed,
    ev.ModelCallRetried: _retried,
    ev.ToolCallCompleted: _tool_call,
    ev.FanOutStarted: _fan_out,
    ev.ConvergenceReached: _converged,
    ev.BudgetSpent: _budget_spent,
}
