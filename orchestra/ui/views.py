"""A session's page as plain data: ``GET /api/sessions/{id}`` (SessionView) and
``GET /api/sessions/{id}/steps/{position}`` (StepDetail), built from its log (see ``fold``) and
the topology fingerprint its last run recorded (see ``graph``), never from the workflow's code.

Questions come from the log; one is ``answerable`` only when a run this inspector hosts waits
for it (:class:`RunHostView`), and the host's own questions for the session are listed even
when the log does not show them (a budget question, which is no record of its own).
"""

from __future__ import annotations

from typing import Any, Protocol, TypedDict

from orchestra.agents.contract import ActionKind, render, reply_action
from orchestra.coordination.engine import inputs as inp
from orchestra.errors import SessionNotFoundError

from .fold import (
    TEXT_CHARS,
    BranchView,
    Fold,
    QuestionView,
    RunView,
    StepView,
    action_name,
    action_targets,
)
from .graph import Graph, session_graph
from .shown import shown

STEPS_SHOWN = 500
"""The latest steps a SessionView lists (``steps_total`` says how many in all)."""
MESSAGE_CHARS = 20_000
"""Characters of a message, tool result or answer a StepDetail keeps."""


class RunHostView(Protocol):
    """What the read side needs of the inspector's run host (``orchestra.ui.host.RunHost``)."""

    @property
    def version(self) -> int:
        """Bumps on every change the store does not show (a question asked or answered)."""

    def hosts(self, session_id: str) -> bool:
        """Whether a run of this process is running the session now."""

    def questions(self, session_id: str) -> list[dict[str, Any]]:
        """The questions pending on the host's channel for the session:
        ``{"id", "branch", "agent", "text", "kind", "response"}`` each (``response``: a
        follow-up offer's, the round's final response; else None)."""


class CheckpointView(TypedDict):
    id: str
    name: str
    position: int
    abandoned: bool


class RestoreView(TypedDict):
    position: int
    checkpoint: str
    to: int


class SessionView(TypedDict):
    summary: dict[str, Any]
    version: int
    graph: Graph | None
    active: list[str]
    runs: list[RunView]
    branches: list[BranchView]
    steps: list[StepView]
    steps_total: int
    questions: list[QuestionView]
    checkpoints: list[CheckpointView]
    restores: list[RestoreView]


def session_view(fold: Fold, summary: dict[str, Any], host: RunHostView | None) -> SessionView:
    """The session's page, from its fold; ``summary``: its row of the sessions list."""
    log = fold.log
    last = log.last_run
    steps = [step.view for step in fold.steps]
    return SessionView(
        summary=summary,
        version=log.length,
        graph=session_graph(last.start.topology) if last is not None else None,
        active=fold.active(),
        runs=fold.runs,
        branches=[branch.view for branch in fold.branches.values()],
        steps=steps[-STEPS_SHOWN:],
        steps_total=len(steps),
        questions=_questions(fold, host),
        checkpoints=_checkpoints(fold),
        restores=_restores(fold),
    )


def _questions(fold: Fold, host: RunHostView | None) -> list[QuestionView]:
    """The log's pending questions, each answerable when the host waits for one of its
    branch; the host's others added."""
    found = fold.questions()
    if host is None:
        return found
    hosted = {str(q.get("branch")): q for q in host.questions(fold.session_id)}
    for question in found:
        mine = hosted.pop(question["branch"], None)
        if mine is not None:
            question["id"] = str(mine.get("id"))
            question["answerable"] = True
            question["response"] = _response(mine)
    for mine in hosted.values():
        found.append(
            QuestionView(
                id=str(mine.get("id")),
                branch=str(mine.get("branch")),
                agent=shown(mine.get("agent") or "", 200),
                text=shown(mine.get("text") or "", TEXT_CHARS, one_line=False),
                kind=str(mine.get("kind") or "agent"),
                answerable=True,
                response=_response(mine),
            )
        )
    return found


def _response(hosted: dict[str, Any]) -> str | None:
    """A hosted follow-up offer's response, as a step's detail shows a message."""
    response = hosted.get("response")
    return None if response is None else shown(str(response), MESSAGE_CHARS, one_line=False)


def _checkpoints(fold: Fold) -> list[CheckpointView]:
    positions = fold.log.positions
    found = []
    for entry in fold.log.checkpoints.values():
        record: inp.Checkpoint = entry.record  # type: ignore[assignment]
        found.append(
            CheckpointView(
                id=shown(record.checkpoint_id, 300),
                name=shown(record.name, 300),
                position=record.position,
                abandoned=record.position not in positions,  # what it keeps was cut
            )
        )
    return found


def _restores(fold: Fold) -> list[RestoreView]:
    return [
        RestoreView(position=position, checkpoint=shown(checkpoint, 300), to=to)
        for position, checkpoint, to in fold.restores
    ]


def step_detail(fold: Fold, position: int) -> dict[str, Any]:
    """The step that began at ``position``: what it added, decided and cost; its tool
    results and retries. SessionNotFoundError (a 404) when no step began there."""
    step = next((s for s in fold.steps if s.view["position"] == position), None)
    if step is None:
        raise SessionNotFoundError(f"session {fold.session_id!r} has no step at record {position}")
    view = step.view
    result = step.result
    usage = result.outcome.usage if isinstance(result, inp.StepResult) else None
    return {
        "position": view["position"],
        "run": view["run"],
        "branch": view["branch"],
        "agent": view["agent"],
        "started": view["started"],
        "duration": view["duration"],
        "messages": [
            {"role": str(m.role), "content": shown(m.content, MESSAGE_CHARS, one_line=False)}
            for m in (result.messages if result is not None else ())
        ],
        "action": _action(result, step.may_finish) if isinstance(result, inp.StepResult) else None,
        "tool_results": [_tool_result(r) for r in step.tools],
        "retries": [
            {"attempt": r.attempt, "error": shown(r.error, TEXT_CHARS)} for r in step.retries
        ],
        "tokens": {
            "prompt": usage.prompt_tokens if usage else 0,
            "completion": usage.completion_tokens if usage else 0,
            "total": usage.total_tokens if usage else 0,
        },
        "cost_usd": view["cost_usd"],
        "error": view["error"],
        "abandoned": view["abandoned"],
        "cut_off": view["cut_off"],
    }


def _action(result: inp.StepResult, may_finish: bool) -> dict[str, Any] | None:
    """The action the step stands for (a model's plain reply: its final response, where its
    agent ``may_finish``), named as the view names it; None for a code step that returned a
    value, an unusable reply, or a plain one the engine steered."""
    action = reply_action(result.outcome, may_finish)
    if action is None:
        return None
    content = action.response if action.kind is ActionKind.FINAL else action.question or None
    return {
        "kind": action_name(action),
        "targets": action_targets(action),
        "content": None
        if content is None
        else shown(render(content), MESSAGE_CHARS, one_line=False),
        "tool_calls": [
            {
                "id": shown(call.call_id, 200),
                "name": shown(call.name, 200),
                "arguments": shown(render(dict(call.arguments)), MESSAGE_CHARS, one_line=False),
            }
            for call in action.tool_calls
        ],
    }


def _tool_result(record: inp.ToolResult) -> dict[str, Any]:
    return {
        "call_id": shown(record.call_id, 200),
        "name": shown(record.name, 200),
        "ok": record.ok,
        "result": shown(render(record.result), MESSAGE_CHARS, one_line=False),
        "duration": record.duration,
    }
