"""The engine core: every state transition of a run, with no I/O.

The runner calls one method per thing that happened (a step finished, a tool returned, the
user answered, a timer fired). Each method changes the run state, emits events, and appends
*effects* — what the runner must do next (start or cancel a branch's task, arm a timer) — to
``self.effects``. Nothing here awaits, sleeps or reads a clock except to timestamp, so the
same inputs always give the same run: that is what makes replay, resume and tests cheap.
State is changed in place rather than copied: a step must cost microseconds.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from typing import Any

from orchestra.agents.base import (
    InputKind,
    StepInput,
    StepOutcome,
    StepRequest,
    tool_result_messages,
)
from orchestra.coordination.config import ConvergencePolicy, ErrorHandlingConfig, ExecutionConfig
from orchestra.coordination.topology import USER, TopologyAnalysis
from orchestra.errors import (
    ActionError,
    AgentStepError,
    ConditionError,
    LimitExceededError,
    OrchestraError,
    StepLimitError,
)
from orchestra.models.base import Message, StepInfo, ToolSpec

from . import events as ev
from .actions import PROTOCOL_HINT, Action, ActionKind, Invocation
from .convergence import collect_results, convergence_error, policy_for, settle_outcome
from .lifecycle import BranchLifecycle
from .limits import record_transfer
from .routing import (
    Permissions,
    action_problem,
    error_route,
    no_route_error,
    permissions,
    route_value,
)
from .state import Branch, BranchStatus, FanOut, Frame

_NO_SOURCES: frozenset[str] = frozenset()


class Engine(BranchLifecycle):
    """One run's state machine: decisions, hand-overs, fan-outs and convergence."""

    def __init__(
        self,
        *,
        run_id: str,
        analysis: TopologyAnalysis,
        tools: Mapping[str, tuple[ToolSpec, ...]],
        context: dict[str, Any],
        config: ExecutionConfig,
        error_config: ErrorHandlingConfig,
        max_steps: int,
        stream: ev.EventStream,
        clock: Any,
    ) -> None:
        super().__init__(run_id, stream, clock)
        self.analysis = analysis
        self.context = context
        self.config = config
        self.error_config = error_config
        self.max_steps = max_steps
        self.steps = 0
        self.invocations: Counter[str] = Counter()
        self.finished = False
        self.error: OrchestraError | None = None
        self.started_at = clock()
        self._tools = tools
        self._allowed: dict[tuple[str, bool, str | None], Permissions] = {}
        self._policies = {
            (name, calls): policy_for(analysis, name, calls, config.convergence_policy)
            for name in (*analysis.agents, USER)
            for calls in (False, True)
        }
        self.fan_outs: dict[str, FanOut] = {}
        self.questions_asked = 0

    # ---- starting ----------------------------------------------------------------------------

    def start(self, task: Any) -> Branch:
        entries = self.analysis.entries
        self._emit(
            ev.RunStarted(run_id=self.run_id, task=task, entries=entries, max_steps=self.max_steps)
        )
        if len(entries) == 1:
            root = self._new_branch(entries[0], StepInput(InputKind.TASK, task, USER))
            self.invocations[entries[0]] += 1
        else:
            root = self._new_branch(USER, None)
            self._fan_out(
                root,
                USER,
                frozenset({USER}),
                [(entry, StepInput(InputKind.TASK, task, USER), False) for entry in entries],
            )
        self.root = root
        return root

    # ---- one agent step ----------------------------------------------------------------------

    def begin_step(self, branch: Branch) -> StepRequest | None:
        """The request for the branch's next step, or None when it has none to take.

        A step begun and never finished (the run stopped while it was in flight) is taken
        again as the same step: it is not counted twice.
        """
        if self.finished or branch.status is not BranchStatus.RUNNING or branch.input is None:
            return None
        reopened = branch.step_open
        if not reopened:
            if self.steps >= self.max_steps:
                self.abort(
                    StepLimitError(
                        "max_steps",
                        f"the run reached max_steps={self.max_steps} (every agent step of every "
                        f"branch counts, steering retries included); branch {branch.id} was "
                        f"about to run {branch.agent!r}",
                    ),
                    branch,
                )
                return None
            self.steps += 1
            branch.steps += 1
            branch.step_number = self.steps
            branch.step_open = True
        agent = branch.agent
        stack = branch.call_stack
        caller = stack[-1].caller if stack else None
        can_finish = bool(stack) or self.analysis.is_exit(agent)
        key = (agent, can_finish, caller)
        allowed = self._allowed.get(key)
        if allowed is None:
            allowed = permissions(
                self.analysis, agent, can_finish, self._tools.get(agent, ()), caller
            )
            self._allowed[key] = allowed
        branch.allowed = allowed
        messages = branch.conversations.get(agent)
        if messages is None:
            messages = branch.conversations[agent] = []
        if self.config.steering_mode == "always" and branch.steps > 1 and not reopened:
            messages.append(Message("user", f"[Orchestra] You may now: {allowed.menu()}."))
        info = StepInfo(
            agent,
            branch.id,
            self.steps,
            allowed.actions,
            allowed.peers,
            allowed.parallel_groups,
            can_finish,
            allowed.can_ask_user,
            allowed.tools,
            self.context,
        )
        self._emit(
            ev.StepStarted(
                run_id=self.run_id,
                branch_id=branch.id,
                agent=agent,
                step=self.steps,
                branch_step=branch.steps,
            )
        )
        return StepRequest(
            branch.input, messages, info, self.context, self.error_config, self.model_retried
        )

    def step_completed(self, branch: Branch, outcome: StepOutcome, duration: float) -> None:
        branch.step_open = False
        if self.finished or branch.status is not BranchStatus.RUNNING:
            return  # cancelled or failed while the step ran: its result is not needed
        agent = branch.agent
        allowed = branch.allowed
        assert allowed is not None
        if outcome.problem is not None:
            self._steer(branch, outcome.problem, outcome.reply)
            return
        action = outcome.action
        problem: str | None = None
        try:
            if action is None and outcome.by_code:
                # route_value only takes edges whose conditions it has checked
                action = route_value(
                    self.analysis, agent, outcome.value, bool(branch.call_stack), self.context
                )
                if action is None:
                    self._fail(branch, no_route_error(self.analysis, agent, outcome.value))
                    return
            else:
                if action is None:
                    if not allowed.can_finish:
                        self._steer(
                            branch, f"the reply has no action; {PROTOCOL_HINT}", outcome.reply
                        )
                        return
                    action = Action.final(outcome.reply)
                problem = action_problem(
                    self.analysis, agent, action, allowed, self.context, not outcome.by_code
                )
        except ConditionError as error:
            self._fail(branch, error)
            return
        if problem is not None:
            if outcome.by_code:
                self._fail(
                    branch,
                    ActionError(f"agent {agent!r} returned an action it may not take: {problem}"),
                )
            else:
                self._steer(branch, problem, outcome.reply)
            return
        branch.retries = 0
        usage = outcome.usage
        self._emit(
            ev.StepCompleted(
                run_id=self.run_id,
                branch_id=branch.id,
                agent=agent,
                step=branch.step_number,
                duration=duration,
                action=action,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                cost_usd=usage.cost_usd if usage else None,
            )
        )
        self._apply(branch, action)

    def step_failed(self, branch: Branch, error: BaseException) -> None:
        """The agent's step raised (or timed out): route the error or fail the branch."""
        branch.step_open = False
        if self.finished or branch.ended:
            return
        agent = branch.agent
        if not isinstance(error, OrchestraError):
            error = AgentStepError(f"agent {agent!r} raised {type(error).__name__}: {error}")
        if self.error_config.enable_error_routing and not isinstance(error, LimitExceededError):
            target = error_route(self.analysis, agent)
            if target is not None:
                report: dict[str, Any] = {"failed_agent": agent, "error": str(error)}
                if self.error_config.preserve_error_context:
                    report["error_type"] = type(error).__name__
                    report["input"] = branch.input.content if branch.input else None
                if branch.call_stack and branch.call_stack[-1].caller == target:
                    self._answer(branch, report)  # the report is the callee's answer
                else:
                    self._invoke(branch, (Invocation(target, report),))
                return
        self._fail(branch, error)

    # ---- other things that happen ------------------------------------------------------------

    def model_retried(
        self, branch_id: str, agent: str, attempt: int, delay: float, error: str
    ) -> None:
        """A model call failed in a way that passes and will be retried after ``delay``."""
        self._emit(
            ev.ModelCallRetried(
                run_id=self.run_id,
                branch_id=branch_id,
                agent=agent,
                attempt=attempt,
                delay=delay,
                error=error,
            )
        )

    def tools_completed(self, branch: Branch, results: list[dict[str, Any]]) -> None:
        if self.finished or branch.ended:
            return
        branch.pending_tools = ()
        for item in results:
            self._emit(
                ev.ToolCallCompleted(
                    run_id=self.run_id,
                    branch_id=branch.id,
                    agent=branch.agent,
                    tool=item["name"],
                    call_id=item["call_id"],
                    ok=item["ok"],
                    duration=item.pop("duration", 0.0),
                )
            )
        deferred = branch.after_tools
        if deferred is None:
            branch.input = StepInput(InputKind.TOOL_RESULTS, results, branch.agent)
            return
        branch.after_tools = None
        branch.conversations[branch.agent].extend(tool_result_messages(results))
        self._apply(branch, deferred)

    def user_answered(self, branch: Branch, answer: Any) -> None:
        if self.finished or branch.status is not BranchStatus.WAITING_USER:
            return
        question_id = branch.question[0] if branch.question else ""
        branch.question = None
        branch.status = BranchStatus.RUNNING
        branch.input = StepInput(InputKind.USER_ANSWER, answer, USER)
        self._emit(
            ev.UserInputReceived(
                run_id=self.run_id, branch_id=branch.id, question_id=question_id, answer=answer
            )
        )

    def branch_failed(self, branch: Branch, error: OrchestraError) -> None:
        """Something outside a step failed the branch (its timeout, the user channel)."""
        if not self.finished:
            self._fail(branch, error)

    def convergence_timed_out(self, fan_out: FanOut) -> None:
        if not self.finished and not fan_out.settled:
            self._settle(fan_out, timed_out=True)

    def abort(self, error: OrchestraError, culprit: Branch | None = None) -> None:
        """End the whole run now (a run-wide limit): ``culprit`` fails, the rest is cancelled."""
        if self.finished:
            return
        self.error = error
        if culprit is not None and not culprit.ended:
            self._mark_failed(culprit, error)
        self._finish_run()

    # ---- applying actions --------------------------------------------------------------------

    def _apply(self, branch: Branch, action: Action) -> None:
        kind = action.kind
        if action.tool_calls and kind is not ActionKind.CALL_TOOL:
            branch.pending_tools = action.tool_calls  # tools first, then the action itself
            branch.after_tools = dataclasses.replace(action, tool_calls=())
            return
        if kind is ActionKind.INVOKE:
            self._invoke(branch, action.invocations)
        elif kind is ActionKind.FINAL:
            self._answer(branch, action.response)
        elif kind is ActionKind.ASK_USER:
            self.questions_asked += 1
            question_id = f"q{self.questions_asked}"
            branch.question = (question_id, action.question)
            branch.status = BranchStatus.WAITING_USER
            self._emit(
                ev.UserInputRequested(
                    run_id=self.run_id,
                    branch_id=branch.id,
                    agent=branch.agent,
                    question_id=question_id,
                    question=action.question,
                )
            )
        else:
            branch.pending_tools = action.tool_calls

    def _invoke(self, branch: Branch, invocations: tuple[Invocation, ...]) -> None:
        """Arrive at a convergence point, hand over to one agent, or fan out to several."""
        if self._arrives(branch, invocations):
            self._arrive(branch, invocations)
        elif len(invocations) == 1:
            self._hand_over(branch, invocations[0])
        else:
            source = branch.agent
            self._fan_out(
                branch,
                source,
                frozenset({source}),
                [
                    (
                        item.agent_name,
                        StepInput(InputKind.REQUEST, item.request, source),
                        self.analysis.is_call(source, item.agent_name),
                    )
                    for item in invocations
                ],
            )

    def _hand_over(self, branch: Branch, item: Invocation) -> None:
        source, target = branch.agent, item.agent_name
        if self.analysis.is_call(source, target):
            branch.call_stack.append(Frame(source))
            kind = "call"
        else:
            kind = "handoff"
        if self._ping_pong(branch, source, target, item.request):
            return
        self._emit(
            ev.WorkHandedOver(
                run_id=self.run_id, branch_id=branch.id, source=source, target=target, kind=kind
            )
        )
        self._enter(branch, target, StepInput(InputKind.REQUEST, item.request, source))

    def _enter(self, branch: Branch, agent: str, step_input: StepInput) -> None:
        branch.agent = agent
        branch.input = step_input
        branch.visited.append(agent)
        self.invocations[agent] += 1

    def _answer(self, branch: Branch, response: Any) -> None:
        """A final response: back to the caller if there is one, else the branch ends."""
        if not branch.call_stack:
            self._end(branch, BranchStatus.COMPLETED, "finished", response)
            return
        frame = branch.call_stack.pop()
        if frame.returns_to_fan_out:
            self._end(branch, BranchStatus.COMPLETED, "returned", response)
            return
        callee = branch.agent
        if self._ping_pong(branch, callee, frame.caller, response):
            return
        self._emit(
            ev.WorkHandedOver(
                run_id=self.run_id,
                branch_id=branch.id,
                source=callee,
                target=frame.caller,
                kind="return",
            )
        )
        branch.agent = frame.caller
        branch.input = StepInput(InputKind.RESPONSE, response, callee)

    def _steer(self, branch: Branch, problem: str, reply: str) -> None:
        branch.retries += 1
        self._emit(
            ev.ActionRejected(
                run_id=self.run_id,
                branch_id=branch.id,
                agent=branch.agent,
                step=branch.step_number,
                problem=problem,
                reply=reply,
                attempt=branch.retries,
            )
        )
        if (
            self.config.steering_mode == "never"
            or branch.retries > self.config.max_steering_retries
        ):
            self._fail(
                branch,
                ActionError(
                    f"agent {branch.agent!r} gave no usable action after {branch.retries} "
                    f"attempt(s): {problem}. Last reply: {reply[:500]!r}"
                ),
            )
            return
        allowed = branch.allowed
        menu = allowed.menu() if allowed else ""
        branch.input = StepInput(
            InputKind.STEERING, f"Your last reply could not be used: {problem}. You may: {menu}."
        )

    # ---- fan-out and convergence -------------------------------------------------------------

    def _fan_out(
        self,
        parent: Branch,
        source: str,
        sources: frozenset[str],
        items: list[tuple[str, StepInput, bool]],
    ) -> None:
        calls = any(item[2] for item in items)
        policy: ConvergencePolicy = self._policies[(source, calls)]
        fan_out = FanOut(
            id=f"f{len(self.fan_outs) + 1}",
            parent=parent,
            source=source,
            sources=sources,
            children=[],
            policy=policy,
            required=policy.required(len(items)),
            pending=len(items),
            created_at=self.clock(),
            calls=calls,
        )
        self.fan_outs[fan_out.id] = fan_out
        parent.status = BranchStatus.WAITING
        parent.waiting_on = fan_out
        for target, step_input, is_call in items:
            stack = [Frame(source, returns_to_fan_out=True)] if is_call else None
            child = self._new_branch(target, step_input, fan_out, parent, stack)
            self.invocations[target] += 1
            fan_out.children.append(child)
        self._emit(
            ev.FanOutStarted(
                run_id=self.run_id,
                fan_out_id=fan_out.id,
                branch_id=parent.id,
                source=source,
                child_branch_ids=tuple(child.id for child in fan_out.children),
                targets=tuple(item[0] for item in items),
            )
        )
        self.effects.append(("arm_fan_out", fan_out))

    def _arrives(self, branch: Branch, invocations: tuple[Invocation, ...]) -> bool:
        """Whether handing to these targets means reaching a convergence point of the
        branch's own fan-out (so the branch stops there and waits for its siblings)."""
        fan_out = branch.fan_out
        if fan_out is None or branch.call_stack or not self.config.dynamic_convergence_enabled:
            return False
        points = self.analysis.convergence_points
        return all(
            points.get(item.agent_name, _NO_SOURCES) & fan_out.sources for item in invocations
        )

    def _arrive(self, branch: Branch, invocations: tuple[Invocation, ...]) -> None:
        branch.arrivals = {item.agent_name: item.request for item in invocations}
        assert branch.fan_out is not None
        self._emit(
            ev.BranchArrived(
                run_id=self.run_id,
                branch_id=branch.id,
                fan_out_id=branch.fan_out.id,
                nodes=tuple(branch.arrivals),
            )
        )
        self._end(branch, BranchStatus.ARRIVED, "arrived", invocations[0].request)

    def _child_ended(self, child: Branch) -> None:
        fan_out = child.fan_out
        assert fan_out is not None
        if fan_out.settled:
            return
        fan_out.pending -= 1
        if child.status is BranchStatus.FAILED:
            fan_out.failed += 1
        else:
            fan_out.succeeded += 1
        self._settle(fan_out, timed_out=False)

    def _settle(self, fan_out: FanOut, timed_out: bool) -> None:
        outcome = settle_outcome(fan_out, timed_out)
        if outcome is None:
            return
        self._mark_settled(fan_out)
        cancelled = 0
        for child in fan_out.children:
            if not child.ended:
                self._cancel(child)
                cancelled += 1
        by_node, items = collect_results(fan_out)
        parent = fan_out.parent
        resumes_at: tuple[str, ...] = ()
        if outcome != "failed":
            resumes_at = tuple(by_node) or ((parent.agent,) if fan_out.calls else ())
        self._emit(
            ev.ConvergenceReached(
                run_id=self.run_id,
                fan_out_id=fan_out.id,
                branch_id=parent.id,
                succeeded=fan_out.succeeded,
                failed=fan_out.failed,
                cancelled=cancelled,
                outcome=outcome,
                resumes_at=resumes_at,
            )
        )
        if parent.ended:
            return
        parent.waiting_on = None
        if outcome == "failed":
            self._fail(
                parent,
                convergence_error(
                    fan_out, items, self.config.convergence_timeout if timed_out else None
                ),
            )
            return
        parent.status = BranchStatus.RUNNING
        deliveries = tuple(Invocation(node, node_items) for node, node_items in by_node.items())
        if deliveries and self._arrives(parent, deliveries):
            parent.forwards_results = True  # its siblings' receiver gets these items, not a list
            self._arrive(parent, deliveries)  # the nodes are convergence points of its own fan-out
            return
        if len(deliveries) > 1:
            self._fan_out(
                parent,
                fan_out.source,
                fan_out.sources | {child.agent for child in fan_out.children},
                [
                    (
                        item.agent_name,
                        StepInput(InputKind.RESULTS, item.request, fan_out.source),
                        False,
                    )
                    for item in deliveries
                ],
            )
            return
        if deliveries:
            node, node_items = deliveries[0].agent_name, deliveries[0].request
            self._enter(parent, node, StepInput(InputKind.RESULTS, node_items, fan_out.source))
        elif fan_out.calls:
            parent.input = StepInput(InputKind.RESULTS, items, fan_out.source)
        else:
            self._answer(parent, items)
        if parent.status is BranchStatus.RUNNING:
            self.effects.append(("spawn", parent))

    # ---- ending the run ----------------------------------------------------------------------

    def _finish_run(self) -> None:
        self.finished = True
        for branch in self.branches.values():
            if not branch.ended:
                self._cancel(branch)
        root = self.root
        if self.error is None and root is not None and root.status is BranchStatus.FAILED:
            self.error = root.error
        self.effects.append(("done", None))

    # ---- helpers -----------------------------------------------------------------------------

    def _ping_pong(self, branch: Branch, source: str, target: str, payload: Any) -> bool:
        """Record a transfer; fail the branch and return True when it completes a ping-pong."""
        rounds = self.analysis.ping_pong_rounds
        if rounds is None:
            return False
        error = record_transfer(branch, rounds, source, target, payload)
        if error is None:
            return False
        self._fail(branch, error)
        return True
