"""OpenTelemetry spans of a run, built from its event stream (GenAI semantic conventions).

One :class:`RunTracer` watches one run. Every span is started and ended at the ``at`` of the
events that opened and closed it, so its times are the run's own, not the moment a subscriber
happened to see them. The tree::

    invoke_workflow                      the run (a resumed run: a new one, resumed=true)
      branch b0                          each branch
        invoke_agent Hub                 each agent step
          chat ScriptedModel             each model call attempt (a retried one: error status)
        execute_tool measure             each tool call, under the step that asked for it
        invoke_agent Hub                 a step after a fan-out converged: linked to its branches
      (fan-out) branch b1 under the step that fanned out

Events replayed from a session's log (a resumed run catching up) make no spans: they were
exported when they happened. They still say which branches are open, so the resumed run's
spans carry on under a new run span. A crash loses the spans that were open then (a step, a
branch, the run): a span is exported only when it ends.

Attribute names are written here rather than imported: the GenAI conventions are still in
development and left ``opentelemetry-semantic-conventions`` (whose ``gen_ai`` names are marked
as moved), which ships with the SDK, not with the API this module needs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, Tracer

from orchestra.agents.base import BaseAgent
from orchestra.agents.contract import Action, ActionKind
from orchestra.agents.pool import AgentPool
from orchestra.coordination.config import TracingConfig
from orchestra.coordination.engine import events as ev
from orchestra.models.secrets import redact

from .agent_models import ModelLabel, model_label
from .model_calls import Attempt, ModelCalls
from .text import cut

CONTENT_VARIABLE = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
CONTENT_LIMIT = 4000
"""Characters of one recorded content value (the rest is cut, saying how much)."""
ERROR_LIMIT = 1000
"""Characters of an error recorded as a span's status description."""

OPERATION = "gen_ai.operation.name"
AGENT = "gen_ai.agent.name"
CONVERSATION = "gen_ai.conversation.id"
MODEL = "gen_ai.request.model"
PROVIDER = "gen_ai.provider.name"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
FINISH_REASONS = "gen_ai.response.finish_reasons"
TOOL = "gen_ai.tool.name"
TOOL_CALL = "gen_ai.tool.call.id"
TOOL_TYPE = "gen_ai.tool.type"
TOOL_ARGUMENTS = "gen_ai.tool.call.arguments"
INPUT = "gen_ai.input.messages"
OUTPUT = "gen_ai.output.messages"
ERROR_TYPE = "error.type"


def record_content_wanted(config: TracingConfig) -> bool:
    """Content is recorded when the config or the OpenTelemetry variable opts in."""
    return config.record_content or os.environ.get(CONTENT_VARIABLE, "").lower() == "true"


def run_tracer(config: TracingConfig, agents: Mapping[str, BaseAgent | AgentPool]) -> RunTracer:
    """The subscriber that traces one run with ``agents`` (by node name)."""
    provider = config.tracer_provider or trace.get_tracer_provider()
    tracer = provider.get_tracer("orchestra")
    models = {name: model_label(agent) for name, agent in agents.items()}
    return RunTracer(tracer, models, record_content_wanted(config))


def _ns(at: float) -> int:
    return int(at * 1e9)


def _content(value: Any) -> str:
    """A value as recorded: JSON where it can be, keys redacted, cut to ``CONTENT_LIMIT``."""
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    return cut(redact(text), CONTENT_LIMIT)


def _error(span: Span, description: str, error_type: str | None = None) -> None:
    if error_type is not None:
        span.set_attribute(ERROR_TYPE, error_type)
    span.set_status(Status(StatusCode.ERROR, cut(redact(description), ERROR_LIMIT)))


def _output(action: Action) -> Any:
    """What an action says, as content: the response, the question, the requests handed on."""
    if action.kind is ActionKind.FINAL:
        return action.response
    if action.kind is ActionKind.ASK_USER:
        return action.question
    return [{"agent": item.agent_name, "request": item.request} for item in action.invocations]


class RunTracer:
    """Spans for one run's events (see the module's docstring)."""

    def __init__(
        self, tracer: Tracer, models: Mapping[str, ModelLabel | None], record_content: bool
    ) -> None:
        self.tracer = tracer
        self.models = models
        self.record_content = record_content
        self.run: Span | None = None
        self.branches: dict[str, Span] = {}  # open branch: its span
        self.replayed: dict[str, str] = {}  # branch open in the log replayed: its agent
        self.steps: dict[str, tuple[Span, str]] = {}  # branch: its step in flight, its agent
        self.last_step: dict[str, SpanContext] = {}  # branch: its latest step
        self.tools: dict[tuple[str, str], Span] = {}  # (branch, call id): tool call in flight
        self.fan_outs: dict[str, list[SpanContext]] = {}  # fan-out: its branches' spans
        self.links: dict[str, list[Link]] = {}  # branch: converged branches for its next step
        self.calls = ModelCalls()
        self.actions: dict[str, Action] = {}  # branch: the action its tool calls come from

    def __call__(self, event: ev.Event) -> None:
        if event.replayed:
            _follow(self, event)
            return
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    # ---- spans -------------------------------------------------------------------------------

    def start(
        self,
        name: str,
        at: float,
        parent: Span | SpanContext | None,
        attributes: Mapping[str, Any],
        kind: SpanKind = SpanKind.INTERNAL,
        links: list[Link] | None = None,
    ) -> Span:
        if isinstance(parent, SpanContext):
            parent = trace.NonRecordingSpan(parent)
        context = trace.set_span_in_context(parent) if parent is not None else None
        return self.tracer.start_span(name, context, kind, attributes, links, start_time=_ns(at))

    def model(self, agent: str) -> ModelLabel | None:
        return self.models.get(agent)

    def open_run(self, event: ev.Event, resumed: bool) -> None:
        attributes: dict[str, Any] = {OPERATION: "invoke_workflow", CONVERSATION: event.run_id}
        if resumed:
            attributes["orchestra.run.resumed"] = True
        if isinstance(event, ev.RunStarted):
            attributes["orchestra.run.entries"] = list(event.entries)
            if self.record_content:
                attributes[INPUT] = _content(event.task)
        self.run = self.start("invoke_workflow", event.at, None, attributes)

    def open_branch(self, branch_id: str, agent: str, at: float, parent: Any) -> None:
        attributes = {"orchestra.branch.id": branch_id, AGENT: agent}
        self.branches[branch_id] = self.start(f"branch {branch_id}", at, parent, attributes)

    def chat(self, agent: str, attempt: Attempt, parent: Span) -> Span | None:
        """The span of one model call attempt, ended; None for a code agent."""
        label = self.model(agent)
        if label is None:
            return None
        attributes: dict[str, Any] = {
            OPERATION: "chat",
            MODEL: label.name,
            PROVIDER: label.provider,
            "orchestra.attempt": attempt.number,
        }
        span = self.start(
            f"chat {label.name}", attempt.started, parent, attributes, SpanKind.CLIENT
        )
        if attempt.retried_for is not None:
            _error(span, attempt.retried_for, "retried")
        return span

    def end_step(self, branch_id: str, at: float) -> tuple[Span | None, Span | None]:
        """Close the branch's step in flight: its span and its last call's span (still open,
        for the caller to complete and end), or None where there is none."""
        found = self.steps.pop(branch_id, None)
        attempt = self.calls.end(branch_id, at)
        if found is None:
            return None, None
        step, agent = found
        return step, None if attempt is None else self.chat(agent, attempt, step)

    def close_branch(self, branch_id: str, at: float, status: Callable[[Span], None]) -> None:
        """End what is open on the branch, then the branch; ``status`` marks each span."""
        open_spans = [self.tools.pop(key) for key in list(self.tools) if key[0] == branch_id]
        open_spans += [span for span in self.end_step(branch_id, at) if span is not None]
        for span in open_spans:
            status(span)
            span.end(_ns(at))
        branch = self.branches.pop(branch_id, None)
        if branch is not None:
            status(branch)
            branch.end(_ns(at))

    def close_run(self, at: float, status: Callable[[Span], None]) -> None:
        for branch_id in list(self.branches):
            self.close_branch(branch_id, at, status)
        if self.run is not None:
            status(self.run)
            self.run.end(_ns(at))
            self.run = None


# ---- what each event does ----------------------------------------------------------------------


def _follow(tracer: RunTracer, event: ev.Event) -> None:
    """A replayed event: only which branches are open is kept (their spans are gone)."""
    if isinstance(event, ev.BranchCreated):
        tracer.replayed[event.branch_id] = event.agent
    elif isinstance(event, ev.BranchCompleted | ev.BranchFailed):
        tracer.replayed.pop(event.branch_id, None)


def _run_started(tracer: RunTracer, event: ev.RunStarted) -> None:
    tracer.open_run(event, resumed=False)


def _run_resumed(tracer: RunTracer, event: ev.RunResumed) -> None:
    """The run goes on: a new run span, and a new span for each branch still open."""
    tracer.open_run(event, resumed=True)
    for branch_id, agent in tracer.replayed.items():
        tracer.open_branch(branch_id, agent, event.at, tracer.run)
    tracer.replayed.clear()


def _branch_created(tracer: RunTracer, event: ev.BranchCreated) -> None:
    parent: Span | SpanContext | None = tracer.run
    if event.parent_branch_id is not None:
        parent = tracer.last_step.get(event.parent_branch_id, parent)
    tracer.open_branch(event.branch_id, event.agent, event.at, parent)
    span = tracer.branches[event.branch_id]
    if event.fan_out_id is not None:
        span.set_attribute("orchestra.fan_out.id", event.fan_out_id)
        tracer.fan_outs.setdefault(event.fan_out_id, []).append(span.get_span_context())


def _step_started(tracer: RunTracer, event: ev.StepStarted) -> None:
    attributes = {
        OPERATION: "invoke_agent",
        AGENT: event.agent,
        "orchestra.branch.id": event.branch_id,
        "orchestra.step": event.step,
    }
    label = tracer.model(event.agent)
    if label is not None:
        attributes[MODEL] = label.name
        attributes[PROVIDER] = label.provider
    links = tracer.links.pop(event.branch_id, None)
    span = tracer.start(
        f"invoke_agent {event.agent}",
        event.at,
        tracer.branches.get(event.branch_id) or tracer.run,
        attributes,
        links=links,
    )
    tracer.steps[event.branch_id] = (span, event.agent)
    tracer.last_step[event.branch_id] = span.get_span_context()
    tracer.calls.begin(event.branch_id, event.at)


def _step_completed(tracer: RunTracer, event: ev.StepCompleted) -> None:
    step, chat = tracer.end_step(event.branch_id, event.at)
    if step is not None:
        step.set_attribute("orchestra.action", event.action.kind.value)
    usage = {INPUT_TOKENS: event.prompt_tokens, OUTPUT_TOKENS: event.completion_tokens}
    for span in (chat, step):
        if span is None:
            continue
        if tracer.model(event.agent) is not None:
            span.set_attributes(usage)
            if event.finish_reason is not None:
                span.set_attribute(FINISH_REASONS, [event.finish_reason])
        if tracer.record_content:
            span.set_attribute(OUTPUT, _content(_output(event.action)))
        span.end(_ns(event.at))
    tracer.actions[event.branch_id] = event.action


def _retried(tracer: RunTracer, event: ev.ModelCallRetried) -> None:
    found = tracer.steps.get(event.branch_id)
    step = found[0] if found is not None else None
    attempt = tracer.calls.retried(event.branch_id, event.at, event.delay, event.error)
    if step is None or attempt is None:
        return
    span = tracer.chat(event.agent, attempt, step)
    if span is not None:
        span.end(_ns(event.at))


def _rejected(tracer: RunTracer, event: ev.ActionRejected) -> None:
    step, chat = tracer.end_step(event.branch_id, event.at)
    if step is None:
        return
    step.set_attribute("orchestra.rejected", True)
    if tracer.record_content:
        step.set_attribute(OUTPUT, _content(event.reply))
        step.set_attribute("orchestra.problem", _content(event.problem))
    _error(step, "the reply could not be used", "rejected_reply")
    for span in (chat, step):
        if span is not None:
            span.end(_ns(event.at))


def _step_failed(tracer: RunTracer, event: ev.StepFailed) -> None:
    for span in tracer.end_step(event.branch_id, event.at):
        if span is not None:
            _error(span, event.error, event.error_type)
            span.end(_ns(event.at))


def _tool_started(tracer: RunTracer, event: ev.ToolCallStarted) -> None:
    attributes: dict[str, Any] = {
        OPERATION: "execute_tool",
        TOOL: event.tool,
        TOOL_CALL: event.call_id,
        TOOL_TYPE: "function",
        AGENT: event.agent,
    }
    action = tracer.actions.get(event.branch_id)
    if tracer.record_content and action is not None:
        for call in action.tool_calls:
            if call.call_id == event.call_id:
                attributes[TOOL_ARGUMENTS] = _content(dict(call.arguments))
    parent = tracer.last_step.get(event.branch_id) or tracer.branches.get(event.branch_id)
    span = tracer.start(f"execute_tool {event.tool}", event.at, parent, attributes)
    tracer.tools[(event.branch_id, event.call_id)] = span


def _tool_completed(tracer: RunTracer, event: ev.ToolCallCompleted) -> None:
    span = tracer.tools.pop((event.branch_id, event.call_id), None)
    if span is None:
        return
    if not event.ok:
        _error(span, f"tool {event.tool!r} failed", "tool_error")
    span.end(_ns(event.at))


def _converged(tracer: RunTracer, event: ev.ConvergenceReached) -> None:
    branches = tracer.fan_outs.pop(event.fan_out_id, [])
    tracer.links[event.branch_id] = [
        Link(context, {"orchestra.fan_out.id": event.fan_out_id}) for context in branches
    ]
    run = tracer.run
    if run is not None:
        run.add_event(
            "orchestra.converged",
            {"orchestra.fan_out.id": event.fan_out_id, "orchestra.outcome": event.outcome},
            _ns(event.at),
        )


def _branch_completed(tracer: RunTracer, event: ev.BranchCompleted) -> None:
    def outcome(span: Span) -> None:
        span.set_attribute("orchestra.outcome", event.outcome)

    tracer.close_branch(event.branch_id, event.at, outcome)


def _branch_failed(tracer: RunTracer, event: ev.BranchFailed) -> None:
    def failed(span: Span) -> None:
        span.set_attribute("orchestra.outcome", "failed")
        _error(span, event.error, event.error_type)

    tracer.close_branch(event.branch_id, event.at, failed)


def _run_paused(tracer: RunTracer, event: ev.RunPaused) -> None:
    def paused(span: Span) -> None:
        span.set_attribute("orchestra.outcome", "paused")

    tracer.close_run(event.at, paused)


def _run_completed(tracer: RunTracer, event: ev.RunCompleted) -> None:
    def ended(span: Span) -> None:
        span.set_attribute("orchestra.outcome", "succeeded" if event.success else "failed")
        if not event.success:
            _error(span, event.error or "the run failed")

    tracer.close_run(event.at, ended)


def _user_input(tracer: RunTracer, event: ev.UserInputRequested | ev.UserInputReceived) -> None:
    span = tracer.branches.get(event.branch_id)
    if span is None:
        return
    if isinstance(event, ev.UserInputRequested):
        content = {"orchestra.question": _content(event.question)} if tracer.record_content else {}
        span.add_event("orchestra.user_input_requested", content, _ns(event.at))
    else:
        content = {"orchestra.answer": _content(event.answer)} if tracer.record_content else {}
        span.add_event("orchestra.user_input_received", content, _ns(event.at))


_HANDLERS: dict[type[ev.Event], Callable[[RunTracer, Any], None]] = {
    ev.RunStarted: _run_started,
    ev.RunResumed: _run_resumed,
    ev.BranchCreated: _branch_created,
    ev.StepStarted: _step_started,
    ev.StepCompleted: _step_completed,
    ev.ModelCallRetried: _retried,
    ev.ActionRejected: _rejected,
    ev.StepFailed: _step_failed,
    ev.ToolCallStarted: _tool_started,
    ev.ToolCallCompleted: _tool_completed,
    ev.ConvergenceReached: _converged,
    ev.BranchCompleted: _branch_completed,
    ev.BranchFailed: _branch_failed,
    ev.RunPaused: _run_paused,
    ev.RunCompleted: _run_completed,
    ev.UserInputRequested: _user_input,
    ev.UserInputReceived: _user_input,
}
