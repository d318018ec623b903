"""What a run returns: OrchestraResult and its BranchResults, exactly as the API page lists.

A result is built from the engine's state alone (:func:`result_of`), never from a clock or the
process that ran it: a run rebuilt from its session log gives the result the live run gave.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from orchestra.errors import OrchestraError

from .engine.branches import Branch, BranchStatus
from .engine.core import Engine
from .engine.events import (
    ActionRejected,
    BranchFailed,
    Event,
    ModelCallRetried,
    RunStarted,
    StepCompleted,
    StepStarted,
)


@dataclass
class BranchResult:
    """One branch: a line of work that ran on its own (the root, or one of a fan-out).

    ``status`` is completed, arrived (delivered to a convergence point), failed or cancelled
    (no longer needed); ``agents`` the agents it ran, in order; ``result`` what it produced.
    """

    branch_id: str
    status: str
    step_count: int
    duration: float
    error: str | None = None
    agents: list[str] = field(default_factory=list)
    result: Any = None
    parent_branch_id: str | None = None
    error_type: str | None = None

    @property
    def success(self) -> bool:
        return self.status in ("completed", "arrived")


@dataclass
class FollowUp:
    """One follow-up round of a conversation (``allow_follow_ups``): the user's ``question``,
    the round's ``final_response`` (None while it is unfinished, or when it failed), its own
    ``steps`` and working ``duration``, and whether it succeeded (``error`` says why not)."""

    question: Any
    final_response: Any
    steps: int
    duration: float
    success: bool
    error: str | None = None


@dataclass
class _Tally:
    steps: int = 0
    seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None

    def add(self, step: StepCompleted) -> None:
        self.seconds += step.duration
        self.prompt_tokens += step.prompt_tokens
        self.completion_tokens += step.completion_tokens
        if step.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + step.cost_usd

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cost_usd": self.cost_usd,
        }


@dataclass
class OrchestraResult:
    """The outcome of a run."""

    success: bool
    final_response: Any
    branch_results: list[BranchResult]
    total_steps: int
    total_duration: float
    metadata: dict[str, Any]
    error: str | None = None
    session_id: str | None = None
    checkpoint_ids: list[str] = field(default_factory=list)
    follow_ups: list[FollowUp] = field(default_factory=list)
    events: list[Event] = field(default_factory=list, repr=False, compare=False)

    def get_branch_by_id(self, branch_id: str) -> BranchResult | None:
        return next((b for b in self.branch_results if b.branch_id == branch_id), None)

    def get_successful_branches(self) -> list[BranchResult]:
        return [b for b in self.branch_results if b.success]

    def get_failed_branches(self) -> list[BranchResult]:
        return [b for b in self.branch_results if b.status == "failed"]

    def get_final_response_as_text(self) -> str:
        """The final response as text: strings as they are, anything else as indented JSON."""
        response = self.final_response
        if response is None:
            return ""
        if isinstance(response, str):
            return response
        return json.dumps(response, indent=2, ensure_ascii=False, default=str)

    def get_conversation(self) -> list[dict[str, Any]]:
        """Every round of the run, in order: ``{"round", "question", "response"}``, the first
        round's question being the task (its round is ``metadata["first_round"]``, with or
        without follow-ups). A run without follow-ups has one round: its task and final
        response (a run that could not start has no task: its question is None)."""
        first = self.metadata.get("first_round")
        if first is None:
            return [{"round": 1, "question": None, "response": self.final_response}]
        rounds = [{"round": 1, "question": first["task"], "response": first["response"]}]
        for number, item in enumerate(self.follow_ups, start=2):
            rounds.append(
                {"round": number, "question": item.question, "response": item.final_response}
            )
        return rounds

    def was_agent_invoked(self, agent_name: str) -> bool:
        return self.get_agent_invocation_count(agent_name) > 0

    def get_agent_invocation_count(self, agent_name: str) -> int:
        """How many times work was handed to the agent (the task, a request, a fan-out branch,
        or converged results). Steering retries and tool follow-ups are not invocations."""
        counts: dict[str, int] = self.metadata.get("invocations", {})
        return counts.get(agent_name, 0)

    def get_execution_trace(self) -> list[dict[str, Any]]:
        """Every agent step in order: who, in which branch, what it decided, how long it took."""
        trace: list[dict[str, Any]] = []
        for event in self.events:
            if isinstance(event, StepCompleted):
                trace.append(
                    {
                        "step": event.step,
                        "branch_id": event.branch_id,
                        "agent": event.agent,
                        "action": event.action.describe(),
                        "duration": event.duration,
                    }
                )
            elif isinstance(event, ActionRejected):
                trace.append(
                    {
                        "step": event.step,
                        "branch_id": event.branch_id,
                        "agent": event.agent,
                        "action": "rejected",
                        "problem": event.problem,
                    }
                )
            elif isinstance(event, BranchFailed):
                trace.append(
                    {
                        "branch_id": event.branch_id,
                        "agent": event.agent,
                        "action": "failed",
                        "error": event.error,
                    }
                )
        return trace

    def get_metrics(self) -> dict[str, Any]:
        """Counts, timings, tokens and cost: for the run, per agent and per branch.

        ``cost_usd`` sums the calls whose price is known (None when none is: scripted and
        local models cost nothing that a price table knows).
        """
        agents: dict[str, _Tally] = {}
        branches: dict[str, _Tally] = {}
        run = _Tally()
        rejected = retries = 0
        for event in self.events:
            if isinstance(event, StepStarted) and not event.retaken:
                agents.setdefault(event.agent, _Tally()).steps += 1
                branches.setdefault(event.branch_id, _Tally()).steps += 1
            elif isinstance(event, StepCompleted):
                for tally in (agents[event.agent], branches[event.branch_id], run):
                    tally.add(event)
            elif isinstance(event, ActionRejected):
                rejected += 1
            elif isinstance(event, ModelCallRetried):
                retries += 1
        return {
            "total_steps": self.total_steps,
            "total_duration": self.total_duration,
            "branches": len(self.branch_results),
            "failed_branches": len(self.get_failed_branches()),
            "rejected_actions": rejected,
            "model_retries": retries,
            **run.usage(),
            "agents": {
                name: {
                    "steps": tally.steps,
                    "invocations": self.get_agent_invocation_count(name),
                    "time_in_agent": tally.seconds,
                    **tally.usage(),
                }
                for name, tally in agents.items()
            },
            "usage_by_branch": {
                branch_id: {"steps": tally.steps, **tally.usage()}
                for branch_id, tally in branches.items()
            },
        }

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable data; :meth:`from_json` reads it back into an equal result."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "events"}
        data["branch_results"] = [
            {f.name: getattr(branch, f.name) for f in fields(branch)}
            for branch in self.branch_results
        ]
        data["follow_ups"] = [
            {f.name: getattr(item, f.name) for f in fields(item)} for item in self.follow_ups
        ]
        plain: dict[str, Any] = json.loads(json.dumps(data, default=str))
        return plain

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OrchestraResult:
        values = dict(data)
        values["branch_results"] = [BranchResult(**b) for b in data["branch_results"]]
        values["follow_ups"] = [FollowUp(**item) for item in data.get("follow_ups", [])]
        return cls(**values)


def result_of(engine: Engine, session_id: str) -> OrchestraResult:
    """The result of the run ``engine`` holds, as of the last input it applied."""
    root = engine.root
    success, error = engine.outcome()
    metadata: dict[str, Any] = {
        "invocations": dict(engine.invocations),
        "entries": list(engine.analysis.entries),
    }
    if engine.paused:
        metadata["paused"] = True
        metadata["pause_reason"] = engine.pause_reason
    if engine.error is not None:
        metadata["error_type"] = type(engine.error).__name__
    if engine.stream.observer_errors:
        metadata["observer_errors"] = list(engine.stream.observer_errors)
    if engine.follow_ups_note is not None:
        metadata["follow_ups"] = engine.follow_ups_note
    final_response = root.result if success and root is not None else None
    follow_ups = _follow_ups(engine, metadata)
    if "first_round" not in metadata:  # a run without follow-ups: its one round (its time is
        # total_duration, kept out of metadata, which a resumed run has in common with its live one)
        metadata["first_round"] = {
            "task": next((e.task for e in engine.stream.events if isinstance(e, RunStarted)), None),
            "response": final_response,
            "steps": engine.steps,
            "success": success,
            "error": error,
        }
    return OrchestraResult(
        success=success,
        final_response=final_response,
        branch_results=[_branch_result(b, engine) for b in engine.branches.values()],
        total_steps=engine.steps,
        total_duration=engine.elapsed,
        metadata=metadata,
        error=error,
        session_id=session_id,
        checkpoint_ids=list(engine.checkpoint_ids),
        follow_ups=follow_ups,
        events=engine.stream.events,
    )


def _follow_ups(engine: Engine, metadata: dict[str, Any]) -> list[FollowUp]:
    """The follow-up rounds of a conversation (its first round goes into ``metadata``)."""
    state = engine.follow_ups
    if state is None:
        return []
    if state.error is not None:
        metadata["follow_up_error"] = state.error
    found = [
        FollowUp(
            question=item.question,
            final_response=item.response,
            steps=item.steps if item.ended_at is not None else engine.steps - item.first_step,
            duration=engine.working_time(item.started_at, item.ended_at),
            success=item.ended_at is not None,
            error=None if item.ended_at is not None else _round_error(engine),
        )
        for item in state.rounds
    ]
    first = found.pop(0)
    metadata["first_round"] = {
        "task": first.question,
        "response": first.final_response,
        "steps": first.steps,
        "duration": first.duration,
        "success": first.success,
        "error": first.error,
    }
    return found


def _round_error(engine: Engine) -> str | None:
    """Why a round that has no response did not finish: the run's error (None while it is
    paused or in progress)."""
    return str(engine.error) if engine.error is not None else None


def _branch_result(branch: Branch, engine: Engine) -> BranchResult:
    return BranchResult(
        branch_id=branch.id,
        status=branch.status.value,
        step_count=branch.steps,
        duration=engine.working_time(branch.created_at, branch.ended_at),
        error=str(branch.error) if branch.error else None,
        agents=list(branch.visited),
        result=branch.result,
        parent_branch_id=branch.parent.id if branch.parent else None,
        error_type=type(branch.error).__name__ if branch.error else None,
    )


def failed_before_start(error: OrchestraError, session_id: str, duration: float) -> OrchestraResult:
    """The result of a run that could not start (its topology or agents are wrong)."""
    return OrchestraResult(
        success=False,
        final_response=None,
        branch_results=[],
        total_steps=0,
        total_duration=duration,
        metadata={"error_type": type(error).__name__, "invocations": {}},
        error=str(error),
        session_id=session_id,
    )


__all__ = [
    "BranchResult",
    "BranchStatus",
    "FollowUp",
    "OrchestraResult",
    "failed_before_start",
    "result_of",
]
