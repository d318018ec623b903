"""The engine core: every state transition of a run, with no I/O.

One entry point, :meth:`Engine.apply`, takes an input (:mod:`.inputs`: a step began, a step
returned, a tool finished, the user answered, a timer fired, ...) and returns the effects the
runner must carry out (:mod:`.effects`: start or cancel a branch's task, arm a timer, run a
step). Nothing here awaits, sleeps or reads a clock: time comes with each input. So the same
inputs always give the same run, with the same events — which is what makes replay, resume and
tests exact and cheap. State is changed in place rather than copied: a step must cost
microseconds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from orchestra.agents.contract import (
    PROTOCOL_HINT,
    Action,
    InputKind,
    Invocation,
    SharedContext,
    StepInput,
    StepOutcome,
    StepRequest,
    reply_action,
    tool_result_messages,
)
from orchestra.coordination.config import ConvergencePolicy, ErrorHandlingConfig, ExecutionConfig
from orchestra.coordination.topology import USER, TopologyAnalysis
from orchestra.errors import (
    ActionError,
    ConditionError,
    LimitExceededError,
    OrchestraError,
)
from orchestra.models.base import Message, StepInfo, ToolSpec

from . import budgets, convergence, lifecycle, moves, rounds, steering
from . import events as ev
from . import inputs as inp
from .branches import Branch, BranchStatus, FanOut
from .clock import working_time
from .convergence import policy_for
from .effects import Effect, RunFinished, TakeStep
from .routing import (
    Permissions,
    action_problem,
    error_route,
    no_route_error,
    permissions,
    route_value,
)

_UNSET_CONFIG = ExecutionConfig()
_UNSET_ERROR_CONFIG = ErrorHandlingConfig()
"""An engine's settings until its RunStart gives the run's (both frozen: one pair serves every
engine, not a pydantic validation per run)."""


class Engine:
    """One run's state machine: decisions, hand-overs, fan-outs and convergence."""

    def __init__(
        self,
        *,
        run_id: str,
        analysis: TopologyAnalysis,
        tools: Mapping[str, tuple[ToolSpec, ...]],
        stream: ev.EventStream,
    ) -> None:
        self.run_id = run_id
        self.analysis = analysis
        self.stream = stream
        self.effects: list[Effect] = []
        self.branches: dict[str, Branch] = {}
        self.fan_outs: dict[str, FanOut] = {}
        self.root: Branch | None = None
        # set by the run's first input (RunStart)
        self.context: dict[str, Any] = {}
        # what agents and edge conditions see of it: a read-only copy (see SharedContext)
        self.shared_context = SharedContext()
        self.config = _UNSET_CONFIG
        # the workflow file the settings were read from, for budget errors to name its keys:
        # the one this process was given (not journaled: the log keeps no file name)
        self.settings_file: str | None = None
        self.error_config = _UNSET_ERROR_CONFIG
        self.max_steps = 0
        self.steps = 0
        self.invocations: Counter[str] = Counter()
        self.questions_asked = 0
        self.spawned = 0  # how many times a branch was given work (see Branch.ready)
        self.budget_book: budgets.Book | None = None  # read from the events when first needed
        self.shared_budget_questions = False  # the run's rule (its RunStart): see budgets.stop
        self.dropped_questions: list[tuple[str, str]] = []  # see budgets.hand_over
        self.follow_ups: rounds.Conversation | None = None  # with follow-ups on: the rounds
        self.follow_ups_note: str | None = None  # why follow-ups asked for are not offered
        self.finished = False
        self.error: OrchestraError | None = None
        self.checkpoint_ids: list[str] = []
        self.pause_reason: str | None = None
        self.paused = False  # stopped at a step boundary (and not resumed since)
        # time: that of the input being applied, and the run's working time so far
        self.now = 0.0
        self.last_at = 0.0  # the time of the input applied before this one
        self.started_at = 0.0
        self.stopped_at: float | None = None  # when it last stopped (paused, or over)
        # the times it was not working: stopped (paused, or cut off by a crash) until resumed
        self.gaps: list[tuple[float, float]] = []
        self._tools = tools
        self._allowed: dict[tuple[str, bool, str | None], Permissions] = {}
        self._policies: dict[tuple[str, bool], ConvergencePolicy] = {}

    def apply(self, item: inp.Input) -> list[Effect]:
        """Apply one input; the effects the runner must carry out (in order)."""
        if item.at > self.now:
            self.last_at, self.now = self.now, item.at
        else:
            self.last_at = self.now  # a clock that stepped back never makes time run backwards
        _HANDLERS[type(item)](self, item)
        if self.dropped_questions:
            budgets.hand_over(self)
        effects, self.effects = self.effects, []
        return effects

    @property
    def elapsed(self) -> float:
        """The run's working time: from its start until now (or until it stopped), less the
        time it spent paused or cut off by a crash before it was resumed."""
        return self.working_time(self.started_at, self.stopped_at)

    def working_time(self, start: float, end: float | None) -> float:
        """The run's working time from ``start`` to ``end`` (None: now, or when it stopped):
        the span less its gaps (a wait for a follow-up is one, from when it began). A time a
        log of format 1 did not keep reads as 0, and the gap up to its resume takes it out
        again."""
        if end is None:
            end = self.stopped_at if self.stopped_at is not None else self.now
        state = self.follow_ups
        if state is not None and state.waiting_since is not None:
            return working_time(start, end, (*self.gaps, (state.waiting_since, end)))
        return working_time(start, end, self.gaps)

    def policy(self, source: str, calls: bool) -> ConvergencePolicy:
        """The convergence policy of a fan-out from ``source`` (calls: its branches answer it)."""
        key = (source, calls)
        found = self._policies.get(key)
        if found is None:
            found = policy_for(self.analysis, source, calls, self.config.convergence_policy)
            self._policies[key] = found
        return found

    # ---- the run: start, pause, resume, end --------------------------------------------------

    def add_context(self, values: Mapping[str, Any]) -> None:
        """Add to the run's context (at its start, or a resume): agents and edge conditions
        see a read-only copy, made again here, so nothing else ever changes it."""
        self.context.update(values)
        self.shared_context = SharedContext(self.context)

    def _start(self, item: inp.RunStart) -> None:
        self.add_context(item.context)
        self.config = item.config
        self.error_config = item.error_config
        self.max_steps = item.max_steps
        self.started_at = item.at
        self.follow_ups_note = item.follow_ups_note
        self.shared_budget_questions = item.shared_budget_questions
        rounds.begin(self, item.follow_up_timeout, item.task)
        entries = self.analysis.entries
        self.stream.emit(
            ev.RunStarted(
                run_id=self.run_id,
                at=self.now,
                task=item.task,
                entries=entries,
                max_steps=self.max_steps,
            )
        )
        task_input = StepInput(InputKind.TASK, item.task, USER)
        if len(entries) == 1:
            self.root = lifecycle.new_branch(self, entries[0], task_input)
            self.invocations[entries[0]] += 1
        else:
            self.root = lifecycle.new_branch(self, USER, None)
            items = [(entry, task_input, False) for entry in entries]
            convergence.fan_out(self, self.root, USER, frozenset({USER}), items)
            rounds.entered(self, self.root)

    def _pause_request(self, item: inp.PauseRequest) -> None:
        self.pause_reason = item.reason
        self.stream.emit(ev.PauseRequested(run_id=self.run_id, at=self.now, reason=item.reason))

    def _end(self, item: inp.RunEnd) -> None:
        self.stopped_at = self.now
        if item.paused:
            self.paused = True
            self.stream.emit(
                ev.RunPaused(
                    run_id=self.run_id,
                    at=self.now,
                    reason=self.pause_reason,
                    total_steps=self.steps,
                    duration=self.elapsed,
                )
            )
            return
        success, error = self.outcome()
        self.stream.emit(
            ev.RunCompleted(
                run_id=self.run_id,
                at=self.now,
                success=success,
                total_steps=self.steps,
                duration=self.elapsed,
                error=error,
            )
        )

    def _resume(self, item: inp.RunResume) -> None:
        # a crash stopped it after its last input; a pause, where it ended
        stopped = self.stopped_at if self.stopped_at is not None else self.last_at
        self.gaps.append((stopped, self.now))
        self.stopped_at = None
        self.paused = False
        self.pause_reason = None
        self.add_context(item.context)
        self.stream.emit(
            ev.RunResumed(run_id=self.run_id, at=self.now, context_keys=tuple(item.context))
        )

    def _checkpoint(self, item: inp.Checkpoint) -> None:
        self.checkpoint_ids.append(item.checkpoint_id)
        self.stream.emit(
            ev.CheckpointCreated(
                run_id=self.run_id, at=self.now, checkpoint_id=item.checkpoint_id, name=item.name
            )
        )

    def outcome(self) -> tuple[bool, str | None]:
        """Whether the run succeeded, and its error (None for a success or a pause)."""
        root = self.root
        success = (
            not self.paused
            and self.finished
            and self.error is None
            and root is not None
            and root.status is BranchStatus.COMPLETED
        )
        return success, str(self.error) if self.error is not None else None

    def _abort(self, item: inp.RunAbort) -> None:
        culprit = self.branches[item.branch_id] if item.branch_id is not None else None
        self._stop(item.error, culprit)

    def _stop(self, error: OrchestraError, culprit: Branch | None) -> None:
        """End the whole run now: ``culprit`` fails, the rest is cancelled."""
        if self.finished:
            return
        self.error = error
        if culprit is not None and not culprit.ended:
            lifecycle.mark_failed(self, culprit, error)
        self._finish_run()

    def _finish_run(self) -> None:
        self.finished = True
        for branch in self.branches.values():
            if not branch.ended:
                lifecycle.cancel(self, branch)
        root = self.root
        if self.error is None and root is not None and root.status is BranchStatus.FAILED:
            self.error = root.error
        self.effects.append(RunFinished())

    def round_over(self, branch: Branch, response: Any) -> bool:
        """The branch gave a final response with nothing above it: True when that ends a round
        of a conversation with follow-ups (the root then waits for the user), not the branch."""
        return rounds.round_over(self, branch, response)

    def branch_ended(self, branch: Branch) -> None:
        if branch.fan_out is not None:
            convergence.child_ended(self, branch)
        elif branch is self.root:
            self._finish_run()

    # ---- one agent step ----------------------------------------------------------------------

    def _begin_step(self, item: inp.StepBegin) -> None:
        """The branch's next step begins; a step begun and never finished (the run stopped
        while it was in flight) is taken again as the same step: it is not counted twice."""
        branch = self.branches[item.branch_id]
        if self.finished or branch.status is not BranchStatus.RUNNING or branch.input is None:
            return
        reopened = branch.step_open
        if not reopened:
            if rounds.steps_in_round(self) >= self.max_steps:
                self._stop(rounds.step_limit_error(self, branch), branch)
                return
            config = self.config
            if (config.budget or config.branch_budget or config.agent_budgets) and budgets.stop(
                self, branch
            ):
                return
            self.steps += 1
            branch.steps += 1
            branch.step_number = self.steps
            branch.step_open = True
        agent = branch.agent
        stack = branch.call_stack
        caller = stack[-1].caller if stack else None
        can_finish = bool(stack) or self.analysis.is_exit(agent)
        allowed = self._permissions(agent, can_finish, caller)
        branch.allowed = allowed
        messages = branch.conversations.get(agent)
        if messages is None:
            messages = branch.conversations[agent] = []
        if self.config.steering_mode == "always" and branch.steps > 1 and not reopened:
            messages.append(Message("user", f"[Orchestra] You may now: {allowed.menu()}."))
        branch.step_base = len(messages)
        info = StepInfo(
            agent,
            branch.id,
            branch.step_number,
            allowed.actions,
            allowed.peers,
            allowed.parallel_groups,
            can_finish,
            allowed.can_ask_user,
            allowed.tools,
            self.shared_context,
        )
        self.stream.emit(
            ev.StepStarted(
                run_id=self.run_id,
                at=self.now,
                branch_id=branch.id,
                agent=agent,
                step=branch.step_number,
                branch_step=branch.steps,
                retaken=reopened,
            )
        )
        request = StepRequest(branch.input, messages, info, self.shared_context, self.error_config)
        self.effects.append(TakeStep(branch.id, request))

    def _permissions(self, agent: str, can_finish: bool, caller: str | None) -> Permissions:
        key = (agent, can_finish, caller)
        allowed = self._allowed.get(key)
        if allowed is None:
            tools = self._tools.get(agent, ())
            allowed = self._allowed[key] = permissions(
                self.analysis, agent, can_finish, tools, caller
            )
        return allowed

    def _step_finished(self, branch: Branch, messages: tuple[Message, ...]) -> bool:
        """Close the branch's step: its agent's conversation is what it was when the step
        began plus what the step added (live, the agent appended those already; replayed, they
        come from the log). False when the step's result is no longer needed."""
        conversation = branch.conversations.setdefault(branch.agent, [])
        del conversation[branch.step_base :]
        conversation.extend(messages)
        branch.step_open = False
        return not self.finished and branch.status is BranchStatus.RUNNING

    def _step_result(self, item: inp.StepResult) -> None:
        branch = self.branches[item.branch_id]
        if not self._step_finished(branch, item.messages):
            return  # cancelled or failed while the step ran
        outcome = item.outcome
        action = self._decided(branch, outcome)
        if action is not None:
            branch.retries = 0
            usage = outcome.usage
            self.stream.emit(
                ev.StepCompleted(
                    run_id=self.run_id,
                    at=self.now,
                    branch_id=branch.id,
                    agent=branch.agent,
                    step=branch.step_number,
                    duration=item.duration,
                    action=action,
                    prompt_tokens=usage.prompt_tokens if usage else 0,
                    completion_tokens=usage.completion_tokens if usage else 0,
                    cost_usd=usage.cost_usd if usage else None,
                    finish_reason=usage.finish_reason if usage else None,
                )
            )
            moves.take(self, branch, action)
        lifecycle.step_taken(self, branch)

    def _decided(self, branch: Branch, outcome: StepOutcome) -> Action | None:
        """The action the step decided, or None when it was unusable (the agent is steered,
        or its branch failed)."""
        agent = branch.agent
        allowed = branch.allowed
        assert allowed is not None
        if outcome.problem is not None:
            steering.steer(self, branch, outcome.problem, outcome)
            return None
        action = outcome.action
        try:
            if action is None and outcome.by_code:
                # route_value only takes edges whose conditions it has checked
                in_call = bool(branch.call_stack)
                action = route_value(
                    self.analysis, agent, outcome.value, in_call, self.shared_context
                )
                if action is None:
                    lifecycle.fail(
                        self, branch, no_route_error(self.analysis, agent, outcome.value)
                    )
                return action
            action = reply_action(outcome, allowed.can_finish)  # a plain reply: its final response
            if action is None:  # where the agent may not finish
                steering.steer(self, branch, f"the reply has no action; {PROTOCOL_HINT}", outcome)
                return None
            by_model = not outcome.by_code
            problem = action_problem(
                self.analysis, agent, action, allowed, self.shared_context, by_model
            )
        except ConditionError as error:
            lifecycle.fail(self, branch, error)
            return None
        if problem is None:
            return action
        if outcome.by_code:
            refused = ActionError(f"agent {agent!r} returned an action it may not take: {problem}")
            lifecycle.fail(self, branch, refused)
        else:
            steering.steer(self, branch, problem, outcome)
        return None

    def _step_error(self, item: inp.StepError) -> None:
        """The agent's step raised (or timed out): route the error or fail the branch."""
        branch = self.branches[item.branch_id]
        if not self._step_finished(branch, item.messages):
            return
        self.stream.emit(
            ev.StepFailed(
                run_id=self.run_id,
                at=self.now,
                branch_id=branch.id,
                agent=branch.agent,
                step=branch.step_number,
                error_type=type(item.error).__name__,
                error=str(item.error),
            )
        )
        self._route_error(branch, item.error)
        lifecycle.step_taken(self, branch)

    def _route_error(self, branch: Branch, error: OrchestraError) -> None:
        agent = branch.agent
        if self.error_config.enable_error_routing and not isinstance(error, LimitExceededError):
            target = error_route(self.analysis, agent)
            if target is not None:
                report: dict[str, Any] = {"failed_agent": agent, "error": str(error)}
                if self.error_config.preserve_error_context:
                    report["error_type"] = type(error).__name__
                    report["input"] = branch.input.content if branch.input else None
                if branch.call_stack and branch.call_stack[-1].caller == target:
                    lifecycle.answer(self, branch, report)  # the callee's answer
                else:
                    moves.invoke(self, branch, (Invocation(target, report),))
                return
        lifecycle.fail(self, branch, error)

    def _model_retry(self, item: inp.ModelRetry) -> None:
        branch = self.branches[item.branch_id]
        self.stream.emit(
            ev.ModelCallRetried(
                run_id=self.run_id,
                at=self.now,
                branch_id=branch.id,
                agent=branch.agent,
                attempt=item.attempt,
                delay=item.delay,
                error=item.error,
                error_type=item.error_type,
            )
        )

    # ---- tools, answers, failures, timeouts --------------------------------------------------

    def _tool_start(self, item: inp.ToolStart) -> None:
        branch = self.branches[item.branch_id]
        branch.tool_results.setdefault(item.call_id, None)
        self.stream.emit(
            ev.ToolCallStarted(
                run_id=self.run_id,
                at=self.now,
                branch_id=branch.id,
                agent=branch.agent,
                tool=item.name,
                call_id=item.call_id,
            )
        )

    def _tool_result(self, item: inp.ToolResult) -> None:
        branch = self.branches[item.branch_id]
        found = branch.tool_results
        found[item.call_id] = {
            "name": item.name,
            "call_id": item.call_id,
            "ok": item.ok,
            "result": item.result,
        }
        if all(found.get(call.call_id) is not None for call in branch.pending_tools):
            lifecycle.behind_the_others(self, branch)  # its task wakes when its last tool is done
        self.stream.emit(
            ev.ToolCallCompleted(
                run_id=self.run_id,
                at=self.now,
                branch_id=branch.id,
                agent=branch.agent,
                tool=item.name,
                call_id=item.call_id,
                ok=item.ok,
                duration=item.duration,
            )
        )

    def _tools_done(self, item: inp.ToolsDone) -> None:
        branch = self.branches[item.branch_id]
        if self.finished or branch.ended:
            return
        found = branch.tool_results
        results = [found[call.call_id] for call in branch.pending_tools]
        if any(result is None for result in results):
            raise ValueError(f"branch {branch.id}: a tool call finished with no result")
        branch.pending_tools = ()
        branch.tool_results = {}
        done: list[dict[str, Any]] = results  # type: ignore[assignment]
        deferred = branch.after_tools
        if deferred is None:
            branch.input = StepInput(InputKind.TOOL_RESULTS, done, branch.agent)
            return
        branch.after_tools = None
        branch.conversations[branch.agent].extend(tool_result_messages(done))
        moves.take(self, branch, deferred)

    def _user_answer(self, item: inp.UserAnswer) -> None:
        branch = self.branches[item.branch_id]
        if self.finished or branch.status is not BranchStatus.WAITING_USER:
            return
        question_id = branch.question[0] if branch.question else ""
        branch.question = None
        branch.status = BranchStatus.RUNNING
        about_budget = budgets.is_question(question_id)
        follow_up = rounds.is_question(question_id)
        if not (about_budget or follow_up):  # a budget's question leaves its step to be taken
            branch.input = StepInput(InputKind.USER_ANSWER, item.answer, USER)
        self.stream.emit(
            ev.UserInputReceived(
                run_id=self.run_id,
                at=self.now,
                branch_id=branch.id,
                question_id=question_id,
                answer=item.answer,
            )
        )
        if about_budget:
            budgets.answered(self, branch, question_id, item.answer)
        elif follow_up:
            rounds.answered(self, branch, item.answer, item.error)

    def _branch_failure(self, item: inp.BranchFailure) -> None:
        if not self.finished:
            branch = self.branches[item.branch_id]
            lifecycle.fail(self, branch, budgets.failure(self, branch, item.error))

    def _convergence_timeout(self, item: inp.ConvergenceTimeout) -> None:
        fan_out = self.fan_outs[item.fan_out_id]
        if not self.finished and not fan_out.settled:
            convergence.settle(self, fan_out, timed_out=True)


_HANDLERS: dict[type[inp.Record], Callable[[Engine, Any], None]] = {
    inp.RunStart: Engine._start,
    inp.StepBegin: Engine._begin_step,
    inp.StepResult: Engine._step_result,
    inp.StepError: Engine._step_error,
    inp.ModelRetry: Engine._model_retry,
    inp.ToolStart: Engine._tool_start,
    inp.ToolResult: Engine._tool_result,
    inp.ToolsDone: Engine._tools_done,
    inp.UserAnswer: Engine._user_answer,
    inp.BranchFailure: Engine._branch_failure,
    inp.ConvergenceTimeout: Engine._convergence_timeout,
    inp.RunAbort: Engine._abort,
    inp.PauseRequest: Engine._pause_request,
    inp.RunEnd: Engine._end,
    inp.RunResume: Engine._resume,
    inp.Checkpoint: Engine._checkpoint,
}
"""How the engine applies each kind of input: one table for every run (a table of bound methods
per engine would be a reference cycle, leaving each finished run to the garbage collector)."""
