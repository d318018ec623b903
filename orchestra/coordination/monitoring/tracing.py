"""OpenTelemetry spans of a run, built from its event stream (GenAI semantic conventions).

One :class:`RunTracer` watches one run. Every span is started and ended at the ``at`` of the
events that opened and closed it, so its times are the run's own, not the moment a subscriber
happened to see them. The tree::

    invoke_workflow                      the run (a resumed run: a new one, resumed=true)
      branch b0                          each branch
        invoke_agent Hub                 each agent step
          chat ScriptedModel             each model call attempt (a retried one: error status)
          execute_tool measure           each tool call, under the step that asked for it
        invoke_agent Hub                 a step after a fan-out converged: linked to its branches
      (fan-out) branch b1 under the step that fanned out

Events replayed from a session's log (a resumed run catching up) make no spans: they were
exported when they happened. They still say which branches are open, and which fan-out each
belongs to, so the resumed run's spans carry on under a new run span and a fan-out that
converges after the resume links the branches it still had open (those that ended before it
were exported with the earlier run; the converging step's ``orchestra.fan_out.id`` finds
them). A run cancelled or halted (no event says so) is ended by :meth:`RunTracer.stop`, which
``wiring.build`` registers with the run's setup. A crash loses the spans that were open then (a
step, a branch, the run): a span is exported only when it ends.

Error messages often quote what an agent was given, so a span's status description holds one
only with ``record_content``; otherwise it says which error it was (``error.type``) and no more.
A tracer that fails on one event (a bad attribute, an SDK problem) reports it once, as a
warning, and carries on with the next: the spans it can still end are exported.

Attribute names are written here rather than imported: the GenAI conventions are still in
development and left ``opentelemetry-semantic-conventions`` (whose ``gen_ai`` names are marked
as moved), which ships with the SDK, not with the API this module needs.
"""

from __future__ import annotations

import json
import logging
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
from orchestra.coordination.engine.clock import now
from orchestra.errors import ConfigurationError
from orchestra.models.secrets import redact
from orchestra.text import cut

from .agent_models import ModelLabel, model_label
from .model_calls import Attempt, ModelCalls

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
FAN_OUT = "orchestra.fan_out.id"

_log = logging.getLogger(__name__)


def record_content_wanted(config: TracingConfig) -> bool:
    """Whether content is recorded: ``record_content`` when it is set (True or False), else the
    OpenTelemetry variable."""
    if config.record_content is not None:
        return config.record_content
    return os.environ.get(CONTENT_VARIABLE, "").lower() == "true"


def run_tracer(config: TracingConfig, agents: Mapping[str, BaseAgent | AgentPool]) -> RunTracer:
    """The subscriber that traces one run with ``agents`` (by node name); a provider that
    cannot give a tracer is a ConfigurationError naming it, before the run starts."""
    provider = config.tracer_provider or trace.get_tracer_provider()
    try:
        tracer = provider.get_tracer("orchestra")
    except Exception as error:
        raise ConfigurationError(
            f"tracing.tracer_provider {type(provider).__name__}: get_tracer raised "
            f"{type(error).__name__}: {cut(redact(str(error)), ERROR_LIMIT)}"
        ) from error
    models = {name: model_label(agent) for name, agent in agents.items()}
    return RunTracer(tracer, models, record_content_wanted(config))


def _ns(at: float) -> int:
    return int(at * 1e9)


def _content(value: Any) -> str:
    """A value as recorded: JSON where it can be, keys redacted, cut to ``CONTENT_LIMIT``."""
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    return cut(redact(text), CONTENT_LIMIT)


def _messages(role: str, value: Any, finish_reason: str | None = None) -> str:
    """``value`` as the GenAI conventions' message list (``gen_ai.input.messages`` and
    ``gen_ai.output.messages``): one message of ``role`` with one text part, the text
    redacted and cut (so the JSON around it stays whole)."""
    part = {"type": "text", "content": _content(value)}
    message: dict[str, Any] = {"role": role, "parts": [part]}
    if finish_reason is not None:
        message["finish_reason"] = finish_reason
    return json.dumps([message])


def _error(span: Span, description: str, error_type: str | None = None) -> None:
    """Mark ``span`` failed with a description the tracer wrote (no content in it)."""
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
        self.member: dict[str, str] = {}  # branch of a fan-out, open in the log replayed: its id
        # branch: the fan-out that converged on it and the links for its next step
        self.links: dict[str, tuple[str, list[Link]]] = {}
        self.calls = ModelCalls()
        # branch: its last action's tool calls' arguments (kept only to record, with content)
        self.arguments: dict[str, dict[str, Any]] = {}
        self.failed = False  # a handler raised (reported once)

    def __call__(self, event: ev.Event) -> None:
        if event.replayed:
            _follow(self, event)
            return
        handler = _HANDLERS.get(type(event))
        if handler is None:
            return
        try:
            handler(self, event)
        except Exception as error:  # one event's spans lost, not the run's trace
            self.report(event, error)

    def report(self, event: ev.Event, error: Exception) -> None:
        """A handler raised: said once (a warning, and an event on the run span); later events
        are handled as usual, so the run's end still ends every span that is open."""
        if self.failed:
            return
        self.failed = True
        _log.warning(
            "tracing run %s: handling %s raised %s; that event's spans may be missing",
            event.run_id,
            type(event).__name__,
            type(error).__name__,
        )
        if self.run is not None:
            self.run.add_event("orchestra.tracer_error", {ERROR_TYPE: type(error).__name__})

    def stop(self, outcome: str) -> None:
        """The run stopped without an event saying so (``outcome``: cancelled or halted):
        every span still open ends now, in error; nothing when the run ended or paused."""
        if self.run is None:
            return

        def stopped(span: Span) -> None:
            span.set_attribute("orchestra.outcome", outcome)
            _error(span, f"the run was {outcome}", outcome)

        self.close_run(now(), stopped)

    def failure(self, span: Span, message: str, error_type: str | None) -> None:
        """Mark ``span`` failed with an error's ``message``, which may quote content: only its
        type is recorded unless content is."""
        if self.record_content:
            _error(span, message, error_type)
        else:
            withheld = f"{error_type or 'error'} (message withheld; record_content is off)"
            _error(span, withheld, error_type)

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
                attributes[INPUT] = _messages("user", event.task)
        self.run = self.start("invoke_workflow", event.at, None, attributes)

    def open_branch(
        self, branch_id: str, agent: str, at: float, parent: Any, fan_out_id: str | None
    ) -> None:
        attributes = {"orchestra.branch.id": branch_id, AGENT: agent}
        if fan_out_id is not None:
            attributes[FAN_OUT] = fan_out_id
        span = self.start(f"branch {branch_id}", at, parent, attributes)
        self.branches[branch_id] = span
        if fan_out_id is not None:
            self.fan_outs.setdefault(fan_out_id, []).append(span.get_span_context())

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
            span.set_attribute("orchestra.retried", True)
            self.failure(span, attempt.retried_for, attempt.error_type)
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
        self.last_step.pop(branch_id, None)
        self.arguments.pop(branch_id, None)
        self.links.pop(branch_id, None)
        branch = self.branches.pop(branch_id, None)
        if branch is not None:
            status(branch)
            branch.end(_ns(at))

    def close_run(self, at: float, status: Callable[[Span], None]) -> None:
        for branch_id in list(self.branches):
            self.close_branch(branch_id, at, status)
        self.fan_outs.clear()  # fan-outs that never converged
        if self.run is not None:
            status(self.run)
            self.run.end(_ns(at))
            self.run = None


# ---- what each event does ----------------------------------------------------------------------


def _follow(tracer: RunTracer, event: ev.Event) -> None:
    """A replayed event: only which branches are open, the fan-out of each, and a convergence
    whose step has not started yet are kept (their spans are gone)."""
    if isinstance(event, ev.BranchCreated):
        tracer.replayed[event.branch_id] = event.agent
        if event.fan_out_id is not None:
            tracer.member[event.branch_id] = event.fan_out_id
    elif isinstance(event, ev.BranchCompleted | ev.BranchFailed):
        tracer.replayed.pop(event.branch_id, None)
        tracer.member.pop(event.branch_id, None)
        tracer.links.pop(event.branch_id, None)
    elif isinstance(event, ev.ConvergenceReached):  # its branches' spans are gone: no links
        tracer.links[event.branch_id] = (event.fan_out_id, [])
    elif isinstance(event, ev.StepStarted):
        tracer.links.pop(event.branch_id, None)


def _run_started(tracer: RunTracer, event: ev.RunStarted) -> None:
    tracer.open_run(event, resumed=False)


def _run_resumed(tracer: RunTracer, event: ev.RunResumed) -> None:
    """The run goes on: a new run span, and a new span for each branch still open."""
    tracer.open_run(event, resumed=True)
    for branch_id, agent in tracer.replayed.items():
        fan_out_id = tracer.member.get(branch_id)
        tracer.open_branch(branch_id, agent, event.at, tracer.run, fan_out_id)
    tracer.replayed.clear()
    tracer.member.clear()


def _branch_created(tracer: RunTracer, event: ev.BranchCreated) -> None:
    parent: Span | SpanContext | None = tracer.run
    if event.parent_branch_id is not None:
        parent = tracer.last_step.get(event.parent_branch_id, parent)
    tracer.open_branch(event.branch_id, event.agent, event.at, parent, event.fan_out_id)


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
    converged = tracer.links.pop(event.branch_id, None)
    links = None
    if converged is not None:
        attributes[FAN_OUT], links = converged
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
            span.set_attribute(OUTPUT, _messages("assistant", _output(event.action)))
        span.end(_ns(event.at))
    if tracer.record_content and event.action.tool_calls:
        tracer.arguments[event.branch_id] = {
            call.call_id: dict(call.arguments) for call in event.action.tool_calls
        }


def _retried(tracer: RunTracer, event: ev.ModelCallRetried) -> None:
    found = tracer.steps.get(event.branch_id)
    step = found[0] if found is not None else None
    attempt = tracer.calls.retried(
        event.branch_id, event.at, event.delay, event.error, event.error_type
    )
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
        step.set_attribute(OUTPUT, _messages("assistant", event.reply))
        step.set_attribute("orchestra.problem", _content(event.problem))
    _error(step, "the reply could not be used", "rejected_reply")
    for span in (chat, step):
        if span is not None:
            span.end(_ns(event.at))


def _step_failed(tracer: RunTracer, event: ev.StepFailed) -> None:
    for span in tracer.end_step(event.branch_id, event.at):
        if span is not None:
            tracer.failure(span, event.error, event.error_type)
            span.end(_ns(event.at))


def _tool_started(tracer: RunTracer, event: ev.ToolCallStarted) -> None:
    attributes: dict[str, Any] = {
        OPERATION: "execute_tool",
        TOOL: event.tool,
        TOOL_CALL: event.call_id,
        TOOL_TYPE: "function",
        AGENT: event.agent,
    }
    arguments = tracer.arguments.get(event.branch_id, {})
    if event.call_id in arguments:
        attributes[TOOL_ARGUMENTS] = _content(arguments[event.call_id])
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
    links = [Link(context, {FAN_OUT: event.fan_out_id}) for context in branches]
    tracer.links[event.branch_id] = (event.fan_out_id, links)
    run = tracer.run
    if run is not None:
        run.add_event(
            "orchestra.converged",
            {FAN_OUT: event.fan_out_id, "orchestra.outcome": event.outcome},
            _ns(event.at),
        )


def _branch_completed(tracer: RunTracer, event: ev.BranchCompleted) -> None:
    def outcome(span: Span) -> None:
        span.set_attribute("orchestra.outcome", event.outcome)

    tracer.close_branch(event.branch_id, event.at, outcome)


def _branch_failed(tracer: RunTracer, event: ev.BranchFailed) -> None:
    def failed(span: Span) -> None:
        span.set_attribute("orchestra.outcome", "failed")
        tracer.failure(span, event.error, event.error_type)

    tracer.close_branch(event.branch_id, event.at, failed)


def _run_paused(tracer: RunTracer, event: ev.RunPaused) -> None:
    def paused(span: Span) -> None:
        span.set_attribute("orchestra.outcome", "paused")

    tracer.close_run(event.at, paused)


def _run_completed(tracer: RunTracer, event: ev.RunCompleted) -> None:
    def ended(span: Span) -> None:
        span.set_attribute("orchestra.outcome", "succeeded" if event.success else "failed")
        if not event.success:
            tracer.failure(span, event.error or "the run failed", "run_failed")

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


def _budget(tracer: RunTracer, event: ev.BudgetSpent | ev.BudgetRaised) -> None:
    """A budget spent or raised, on the span of its scope: the run's for the run's budget,
    else the branch's it stopped (or whose answer raised it)."""
    span = tracer.run if event.budget == "run" else tracer.branches.get(event.branch_id)
    if span is None:
        return
    attributes: dict[str, str | float] = {
        "orchestra.budget.scope": event.budget,
        "orchestra.budget.limit": event.limit,
        "orchestra.budget.allowed": event.allowed,
        "orchestra.branch.id": event.branch_id,
    }
    if isinstance(event, ev.BudgetSpent):
        attributes["orchestra.budget.spent"] = event.spent
        attributes["orchestra.question.id"] = event.question_id
        span.add_event("orchestra.budget_spent", attributes, _ns(event.at))
    else:
        span.add_event("orchestra.budget_raised", attributes, _ns(event.at))


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
    ev.BudgetSpent: _budget,
    ev.BudgetRaised: _budget,
}
