"""The contract between the engine and every agent: what a step gets, what it decides.

An agent's step receives a :class:`StepRequest` (its input, its conversation, what it may do)
and returns a :class:`StepOutcome`: an :class:`Action` (hand work to peers, answer, ask the
user, call tools) or, for code, a plain value the engine routes. These types sit below both
the engine and the agents, so neither imports the other's internals.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, NoReturn

from orchestra.models.base import Message, StepInfo, ToolCall, Usage, with_unique_ids
from orchestra.models.retry import DeltaReport, RetryPolicy, RetryReport
from orchestra.text import cut

PROTOCOL_HINT = (
    'reply with one JSON object {"next_action": ..., "action_input": ...} where next_action is '
    "invoke_agent, final_response, ask_user or call_tool"
)
"""How a reply must look, said to an agent whose reply could not be used."""


class SharedContext(dict[str, Any]):
    """The run's context as agents and edge conditions see it: a dict (``json.dumps``, copies,
    ``dict(context)`` and returning it from a step work as with any dict) that cannot be
    changed. A change made in place would be journaled nowhere, so a resumed or replayed run
    would not see it; ``resume_session(additional_context=...)`` adds to it, the engine alone
    writes it. Nested values are the engine's too: read them, never change them."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(
            "the run's context is read-only (a change would not survive a resume): keep what "
            "changes in what the step returns, or pass additional_context to resume_session"
        )

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return copy.deepcopy(dict(self), memo)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


class ActionKind(StrEnum):
    INVOKE = "invoke_agent"
    FINAL = "final_response"
    ASK_USER = "ask_user"
    CALL_TOOL = "call_tool"


@dataclass(slots=True, frozen=True)
class Invocation:
    """Hand ``request`` to ``agent_name``; ``label`` satisfies a label condition on the edge."""

    agent_name: str
    request: Any = None
    label: str | None = None

    def payload(self) -> dict[str, Any]:
        """What edge conditions see: the invocation item as the protocol writes it."""
        item: dict[str, Any] = {"agent_name": self.agent_name, "request": self.request}
        if self.label is not None:
            item["label"] = self.label
        return item


@dataclass(slots=True, frozen=True)
class Action:
    """What an agent decided: invoke peers, answer, ask the user, or call tools."""

    kind: ActionKind
    invocations: tuple[Invocation, ...] = ()
    response: Any = None
    question: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    timeout: float | None = None  # ask_user: seconds the user has to answer (None: the channel's)

    @classmethod
    def invoke(cls, agent_name: str, request: Any = None, *, label: str | None = None) -> Action:
        """Hand the work to one agent (a call if it has an edge back, else a hand-off)."""
        return cls(ActionKind.INVOKE, invocations=(Invocation(agent_name, request, label),))

    @classmethod
    def invoke_parallel(cls, invocations: Iterable[Invocation | tuple[str, Any]]) -> Action:
        """Run several invocations as parallel branches."""
        items = tuple(
            item if isinstance(item, Invocation) else Invocation(item[0], item[1])
            for item in invocations
        )
        return cls(ActionKind.INVOKE, invocations=items)

    @classmethod
    def final(cls, response: Any) -> Action:
        return cls(ActionKind.FINAL, response=response)

    @classmethod
    def ask_user(cls, question: str, timeout: float | None = None) -> Action:
        """Ask the user; ``timeout`` (seconds) bounds this question in place of the channel's
        ``user_timeout`` (what happens then is the run's ``on_user_timeout``)."""
        return cls(ActionKind.ASK_USER, question=question, timeout=timeout)

    @classmethod
    def call_tools(cls, calls: Iterable[ToolCall]) -> Action:
        return cls(ActionKind.CALL_TOOL, tool_calls=tuple(calls))

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(item.agent_name for item in self.invocations)

    def to_protocol(self) -> dict[str, Any]:
        """The JSON action protocol form (what an LLM would have written)."""
        if self.kind is ActionKind.INVOKE:
            body: Any = [item.payload() for item in self.invocations]
        elif self.kind is ActionKind.FINAL:
            body = {"response": self.response}
        elif self.kind is ActionKind.ASK_USER:
            body = {"question": self.question}
        else:
            body = [
                {
                    "name": c.name,
                    "arguments": dict(c.arguments),
                    **({"id": c.call_id} if c.call_id else {}),
                }
                for c in self.tool_calls
            ]
        return {"next_action": self.kind.value, "action_input": body}

    def describe(self) -> str:
        if self.kind is ActionKind.INVOKE:
            return f"invoke_agent({', '.join(self.targets)})"
        if self.kind is ActionKind.CALL_TOOL:
            return f"call_tool({', '.join(c.name for c in self.tool_calls)})"
        return self.kind.value


def timeout_problem(timeout: object, name: str = "ask_user's timeout") -> str | None:
    """What is wrong with a time limit called ``name`` (None when it is fine: absent, or a
    positive, finite number of seconds). The one check of every timeout a caller gives: an
    integer too large for a float is refused here, never an OverflowError where it is used."""
    if timeout is None:
        return None
    wrong = f"{name} must be a positive, finite number of seconds, got "
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        return f"{wrong}{type(timeout).__name__} {cut(repr(timeout), 80)}"
    try:
        seconds = float(timeout)
    except OverflowError:
        return f"{wrong}an integer of {int(timeout).bit_length()} bits, too large for a float"
    return None if 0 < seconds < math.inf else f"{wrong}{timeout!r}"


def render(value: Any) -> str:
    """Text for a model (or a page): strings as they are, anything else as JSON where it can be
    (a value JSON cannot write, such as a dict keyed by tuples: its ``str``)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        return str(value)


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
    FOLLOW_UP = "follow_up"  # the user's follow-up after the run's last final response
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


@dataclass(slots=True)
class StepRequest:
    """Everything an agent gets for one step.

    ``messages`` is this agent's conversation in this branch, owned by the engine: an LLM agent
    *appends* what it says and hears (never changes what is there: the system prompt is not
    part of it), so later steps, and resumed sessions, see the history. What a step appended is
    journaled with its outcome and replayed from there. ``retry`` says how model calls are
    retried; ``report_retry(branch_id, agent, attempt, delay, error)`` turns each retry into an
    event. ``on_delta(text, attempt)``, set only while someone listens for replies as they are
    written, takes the reply's text piece by piece (an agent that cannot stream ignores it).
    """

    input: StepInput
    messages: list[Message]
    info: StepInfo
    context: Mapping[str, Any]
    retry: RetryPolicy | None = None
    report_retry: RetryReport | None = None
    on_delta: DeltaReport | None = None


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


def reply_action(outcome: StepOutcome, may_finish: bool) -> Action | None:
    """The action a step stands for: the one it set; for a model's usable reply with none, a
    final response with the reply as its content where the agent ``may_finish`` (None where it
    may not: the engine steers it, asking again); None for code that returned a value (routed
    along its edges) or an unusable reply. One rule for the engine and for a reader of the log,
    which keeps ``by_code`` and so can tell a plain reply from a value."""
    if outcome.action is not None or outcome.by_code or outcome.problem is not None:
        return outcome.action
    return Action.final(outcome.reply) if may_finish else None


def as_taken(outcome: StepOutcome) -> StepOutcome:
    """The outcome as the run records and takes it: each tool call with an id of its own (a
    result is matched to its call by id; an agent building calls by hand may give none, or one
    twice), and the run's context, where the step hands it on as it got it, as the plain dict
    a rebuilt run reads back from the log (the next agent may change its input)."""
    if type(outcome.value) is SharedContext:
        outcome.value = dict(outcome.value)
    action = outcome.action
    if action is None:
        return outcome
    changes: dict[str, Any] = {}
    if action.tool_calls:
        unique = with_unique_ids(action.tool_calls)
        if unique != action.tool_calls:
            changes["tool_calls"] = unique
    if type(action.response) is SharedContext:
        changes["response"] = dict(action.response)
    if any(type(item.request) is SharedContext for item in action.invocations):
        changes["invocations"] = tuple(
            replace(item, request=dict(item.request))
            if type(item.request) is SharedContext
            else item
            for item in action.invocations
        )
    if changes:
        outcome.action = replace(action, **changes)
    return outcome
