"""What every agent is to the engine: a name and an async ``step``."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from orchestra.coordination.config import ErrorHandlingConfig
from orchestra.coordination.engine.actions import Action
from orchestra.models.base import Message, StepInfo, ToolCall, ToolSpec, Usage


def render(value: Any) -> str:
    """Text for a model: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def tool_result_messages(results: list[dict[str, Any]]) -> list[Message]:
    """Tool results as conversation entries, one per call, answering the call's id."""
    return [
        Message(
            "tool",
            f"{'ok' if item['ok'] else 'error'}: {render(item['result'])}",
            name=item["name"],
            tool_call_id=item["call_id"],
        )
        for item in results
    ]


class InputKind(StrEnum):
    """Why an agent is stepping: what its ``input`` is."""

    TASK = "task"  # the run's task (entry agents)
    REQUEST = "request"  # another agent invoked it
    RESPONSE = "response"  # a callee answered it
    RESULTS = "results"  # parallel branches it waited for converged
    USER_ANSWER = "user_answer"  # the user answered its question
    TOOL_RESULTS = "tool_results"  # its tool calls finished
    STEERING = "steering"  # its last reply could not be used


@dataclass(slots=True)
class StepInput:
    """The input of one agent step. ``sender`` is the agent (or "User") it came from.

    For ``RESULTS`` the content is a list of ``{"agent", "branch_id", "status", "response"
    | "error"}`` dicts; for ``TOOL_RESULTS`` a list of ``{"name", "call_id", "ok", "result"}``.
    """

    kind: InputKind
    content: Any
    sender: str | None = None


RetryReporter = Callable[[str, str, int, float, str], None]


@dataclass(slots=True)
class StepRequest:
    """Everything an agent gets for one step.

    ``messages`` is this agent's conversation in this branch, owned by the engine: an LLM agent
    appends what it says and hears, so later steps (and resumed sessions) see the history.
    ``error_config`` sets how model calls are retried; ``report_retry(branch_id, agent,
    attempt, delay, error)`` turns each retry into an event.
    """

    input: StepInput
    messages: list[Message]
    info: StepInfo
    context: Mapping[str, Any]
    error_config: ErrorHandlingConfig | None = None
    report_retry: RetryReporter | None = None


@dataclass(slots=True)
class StepOutcome:
    """What one step produced.

    An LLM agent sets ``action`` (or ``problem`` when its reply was unusable, with ``reply`` the
    text to quote). Code (``by_code``) either sets ``action`` explicitly or leaves it None and
    sets ``value``: the engine then routes ``value`` along the agent's edges. Code's actions
    are not steered: an action code may not take fails its branch at once.
    """

    action: Action | None = None
    value: Any = None
    reply: str = ""
    problem: str | None = None
    usage: Usage | None = None
    by_code: bool = False


class BaseAgent(ABC):
    """Base class of every agent. Subclass it to plug in your own kind of agent."""

    name: str

    @abstractmethod
    async def step(self, request: StepRequest) -> StepOutcome:
        """Take one step: read the input (and conversation), decide what to do."""

    @property
    def tool_specs(self) -> tuple[ToolSpec, ...]:
        """The tools this agent offers its model (name, description, argument schema)."""
        return ()

    def is_idempotent(self, tool: str) -> bool:
        """Whether running ``tool`` twice with the same arguments is harmless."""
        return False

    async def call_tool(self, call: ToolCall) -> Any:
        """Run one of this agent's tools; raise to report a tool error to the model."""
        raise LookupError(f"agent {self.name!r} has no tool {call.name!r}")
