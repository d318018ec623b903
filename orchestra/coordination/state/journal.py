"""Between the runner and the log: record each engine input before it is applied, and replay.

The runner calls :class:`Journal` before each engine method it calls; :func:`replay` calls the
same engine methods, in the same order, with the recorded inputs — so the rebuilt state is the
state the run had, conversations included.
"""

from __future__ import annotations

from typing import Any

from orchestra.agents.base import StepOutcome
from orchestra.coordination.engine.core import Engine
from orchestra.coordination.engine.state import Branch, FanOut
from orchestra.errors import OrchestraError, SessionCorruptedError
from orchestra.models.base import Message, ToolCall

from .manager import SessionLog, SessionWriter
from .records import (
    decode,
    decode_error,
    decode_message,
    decode_outcome,
    encode,
    encode_error,
    encode_message,
    encode_outcome,
)


class Journal:
    """Records the engine's inputs for one run of a session."""

    def __init__(self, writer: SessionWriter, log: SessionLog | None) -> None:
        self.writer = writer
        self.tools = dict(log.tools) if log else {}

    async def flush(self) -> None:
        """Everything recorded so far is durable (whatever the policy) when this returns."""
        await self.writer.flush()

    def _record(self, record: dict[str, Any], due: bool = True) -> None:
        """Record an input; a due one must be durable before the run's next effect on the
        world (see ``gate``), and its write starts now. Only a step's beginning is not due by
        itself: it travels with the next record that is."""
        self.writer.record(record)
        if due:
            self.writer.commit()

    async def gate(self) -> None:
        """Wait, before an effect on the world (a model call, a tool, a question), until the
        records it depends on are durable ('every step' policy; otherwise returns at once)."""
        if self.writer.unsettled:
            await self.writer.settled()

    def step(
        self, branch: Branch, outcome: StepOutcome, added: list[Message], duration: float
    ) -> None:
        self._record(
            {
                "t": "step",
                "branch": branch.id,
                "step": branch.step_number,
                "outcome": encode_outcome(outcome),
                "messages": [encode_message(m) for m in added],
                "duration": duration,
            }
        )

    def step_failed(self, branch: Branch, error: BaseException, added: list[Message]) -> None:
        self._record(
            {
                "t": "step_failed",
                "branch": branch.id,
                "step": branch.step_number,
                "error": encode_error(error),
                "messages": [encode_message(m) for m in added],
            }
        )

    def step_begun(self, branch: Branch) -> None:
        self._record({"t": "begin", "branch": branch.id, "step": branch.step_number}, due=False)

    def tool_started(self, branch: Branch, call: ToolCall) -> None:
        record = {
            "t": "tool_started",
            "branch": branch.id,
            "step": branch.step_number,
            "call": call.call_id,
            "name": call.name,
        }
        self._record(record)
        self.tools[(branch.id, branch.step_number, call.call_id)] = record

    def tool_done(self, branch: Branch, call: ToolCall, item: dict[str, Any]) -> None:
        record = {
            "t": "tool_done",
            "branch": branch.id,
            "step": branch.step_number,
            "call": call.call_id,
            "item": encode(item),
        }
        self._record(record)
        self.tools[(branch.id, branch.step_number, call.call_id)] = record

    def recorded_tool(self, branch: Branch, call: ToolCall) -> dict[str, Any] | None:
        """What the log knows of this call: None (never started), started, or done."""
        return self.tools.get((branch.id, branch.step_number, call.call_id))

    def tools_completed(self, branch: Branch, results: list[dict[str, Any]]) -> None:
        self._record({"t": "tools", "branch": branch.id, "results": encode(results)})

    def user_answered(self, branch: Branch, answer: Any) -> None:
        self._record({"t": "answer", "branch": branch.id, "answer": encode(answer)})

    def branch_failed(self, branch: Branch, error: OrchestraError) -> None:
        self._record({"t": "branch_failed", "branch": branch.id, "error": encode_error(error)})

    def convergence_timed_out(self, fan_out: FanOut) -> None:
        self._record({"t": "convergence_timeout", "fan_out": fan_out.id})

    def abort(self, error: OrchestraError, branch: Branch | None) -> None:
        self._record(
            {"t": "abort", "error": encode_error(error), "branch": branch.id if branch else None}
        )


def replay(engine: Engine, records: list[dict[str, Any]], session_id: str) -> None:
    """Apply a run's recorded inputs to a freshly started engine."""
    for record in records:
        kind = record["t"]
        try:
            _apply(engine, kind, record)
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise SessionCorruptedError(
                f"session {session_id!r}: record {record.get('s')} ({kind}) does not fit the "
                f"run being rebuilt ({type(error).__name__}: {error}); was the topology or the "
                "agents' code changed?"
            ) from None
    engine.effects.clear()


def _apply(engine: Engine, kind: str, record: dict[str, Any]) -> None:
    if kind in ("tool_started", "tool_done", "resume", "pause"):
        if kind == "resume":
            engine.context.update(decode(record.get("context") or {}))
        return
    if kind == "abort":
        branch_id = record.get("branch")
        engine.abort(
            decode_error(record["error"]), engine.branches[branch_id] if branch_id else None
        )
        return
    if kind == "convergence_timeout":
        engine.convergence_timed_out(engine.fan_outs[record["fan_out"]])
        return
    branch = engine.branches[record["branch"]]
    if kind == "begin":
        if engine.begin_step(branch) is None:
            raise ValueError(f"branch {branch.id} had no step to take")
        branch.step_number = record["step"]
        return
    if kind in ("step", "step_failed"):
        conversation = branch.conversations.setdefault(branch.agent, [])
        conversation.extend(decode_message(m) for m in record["messages"])
        if kind == "step":
            engine.step_completed(branch, decode_outcome(record["outcome"]), record["duration"])
        else:
            engine.step_failed(branch, decode_error(record["error"]))
    elif kind == "tools":
        engine.tools_completed(branch, decode(record["results"]))
    elif kind == "answer":
        engine.user_answered(branch, decode(record["answer"]))
    elif kind == "branch_failed":
        engine.branch_failed(branch, decode_error(record["error"]))
    else:
        raise ValueError(f"unknown record type {kind!r}")
