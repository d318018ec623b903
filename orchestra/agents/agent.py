"""The LLM-backed agent."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

from orchestra.errors import ToolError
from orchestra.models.base import Message, Model, ModelReply, StepInfo, ToolCall, ToolSpec
from orchestra.models.config import ModelConfig
from orchestra.models.protocol import answer_only, describe_peers
from orchestra.models.retry import complete_with_retries
from orchestra.tools.tool import Tool, as_tool

from .base import BaseAgent
from .contract import (
    Action,
    InputKind,
    StepInput,
    StepOutcome,
    StepRequest,
    render,
    tool_result_messages,
)
from .registry import register_by_default
from .replies import ActionParseError, checked_tool_calls, parse_action, parse_reply

NOT_SHOWN = frozenset({"session_id"})
"""Context keys that address the run rather than describe its work, left out of the system
prompt: a model shown a generated session id answered differently in each session, so the
same workflow on the same task was no longer repeatable (the bundled demo asked the user in
one run of ten)."""


class _NoRetries:
    max_retries = 0
    retry_initial_delay = 0.0
    retry_max_delay = 0.0


_NO_RETRIES = _NoRetries()


_INPUT_HEADINGS = {
    InputKind.TASK: "Task",
    InputKind.REQUEST: "Request from {sender}",
    InputKind.RESPONSE: "Response from {sender}",
    InputKind.RESULTS: "Results of the parallel branches you started",
    InputKind.USER_ANSWER: "The user answered",
    InputKind.FOLLOW_UP: "Follow-up from the user",
    InputKind.STEERING: "Orchestra",
}


def input_messages(step_input: StepInput) -> list[Message]:
    """How an input appears in the conversation (tool results: one message per call)."""
    if step_input.kind is InputKind.TOOL_RESULTS:
        return tool_result_messages(step_input.content)
    heading = _INPUT_HEADINGS[step_input.kind].format(sender=step_input.sender)
    return [Message("user", f"[{heading}]\n{render(step_input.content)}", name=step_input.sender)]


def protocol_prompt(info: StepInfo, native_tools: bool) -> str:
    """The part of the system prompt that says what the agent may do now."""
    if answer_only(info):
        return "Answer in plain text."
    if native_tools:
        return (
            "Act by calling tools: invoke_agent to hand work to a peer, final_response to "
            "answer, ask_user to ask the user, or your own tools. Call at most one of "
            "invoke_agent, final_response and ask_user per reply."
        )
    lines = [
        "Reply with exactly one JSON object: "
        '{"next_action": <action>, "action_input": <input>}. Actions available now:'
    ]
    if info.peers:
        peers = describe_peers(info)
        lines.append(
            '- invoke_agent: [{"agent_name": <peer>, "request": <what they should do>}]. '
            f"Peers: {peers}."
        )
        for group in info.parallel_groups:
            lines.append(f"  You may invoke these together, in parallel: {', '.join(group)}.")
    if info.can_finish:
        lines.append('- final_response: {"response": <your answer>}')
    if info.can_ask_user:
        lines.append('- ask_user: {"question": <question for the user>}')
    if info.tools:
        lines.append(
            '- call_tool: [{"name": <tool>, "arguments": {...}}]. '
            f"Tools: {', '.join(info.tool_names)}."
        )
    return "\n".join(lines)


class Agent(BaseAgent):
    """An agent whose decisions come from a model.

    ``model`` is a :class:`ModelConfig` (an adapter is built from it) or any object with the
    model interface (``ScriptedModel``, ``FunctionModel``, your own). ``tools`` are Python
    callables or :class:`~orchestra.tools.Tool` objects the model may call. The agent registers
    itself in the global registry unless ``register=False``.
    """

    def __init__(
        self,
        name: str,
        model: Model | ModelConfig,
        instruction: str = "",
        tools: Iterable[Tool | Callable[..., Any]] | None = None,
        *,
        description: str = "",
        register: bool = True,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"Agent name must be a non-empty string, got {name!r}")
        if isinstance(model, ModelConfig):
            model = model.build()
        if not callable(getattr(model, "complete", None)):
            raise TypeError(
                f"Agent {name!r}: model must be a ModelConfig or have an async "
                f"complete(messages, info) method, got {type(model).__name__}"
            )
        self.name = name
        self.model: Model = model
        self.instruction = instruction
        self.description = description
        self.tools: dict[str, Tool] = {}
        for item in tools or ():
            if not callable(item):
                raise TypeError(f"Agent {name!r}: tools must be callables, got {item!r}")
            converted: Tool = as_tool(item)
            self.tools[converted.name] = converted
        self._tool_specs = tuple(t.spec for t in self.tools.values())
        self._native_tools = bool(getattr(model, "uses_native_tools", False))
        self._prompts: dict[tuple[Any, ...], tuple[Mapping[str, Any], str]] = {}
        if register:
            register_by_default(self)

    def __repr__(self) -> str:
        return f"Agent(name={self.name!r}, model={self.model!r})"

    @property
    def tool_specs(self) -> tuple[ToolSpec, ...]:
        return self._tool_specs

    def system_prompt(self, info: StepInfo, context: Mapping[str, Any]) -> str:
        """Built once per situation and run, then reused by every step of that run.

        The cache holds the run's context object itself, so a later run (a different context)
        rebuilds the prompt, and at most one run's prompts are kept per situation.
        """
        key = (info.peers, info.parallel_groups, info.can_finish, info.can_ask_user)
        cached = self._prompts.get(key)
        if cached is not None and cached[0] is context:
            return cached[1]
        parts = [
            f"You are {self.name}.",
            self.instruction,
            protocol_prompt(info, self._native_tools),
        ]
        shown = {key: value for key, value in context.items() if key not in NOT_SHOWN}
        if shown:
            parts.append(f"Shared context:\n{render(shown)}")
        prompt = "\n\n".join(part for part in parts if part)
        self._prompts[key] = (context, prompt)
        return prompt

    async def step(self, request: StepRequest) -> StepOutcome:
        messages = request.messages
        system = Message("system", self.system_prompt(request.info, request.context))
        messages.extend(input_messages(request.input))
        reply = await complete_with_retries(
            self.model,
            Prompt(system, messages),
            request.info,
            request.retry or _NO_RETRIES,
            request.report_retry,
            request.on_delta,
        )
        text = _text_of(reply)
        problem, action = reply.problem, None
        if problem is None:
            try:
                action = _action_of(reply)
            except ActionParseError as error:
                problem = str(error)
        if problem is not None:
            text = _kept_of_rejected(text)
        messages.append(
            Message("assistant", reply.content or "", name=self.name, tool_calls=reply.native_calls)
            if reply.native_calls
            else Message("assistant", text, name=self.name)
        )
        if problem is not None:
            return StepOutcome(reply=text, problem=problem, usage=reply.usage)
        return StepOutcome(action=action, reply=text, usage=reply.usage)

    def is_idempotent(self, tool: str) -> bool:
        found = self.tools.get(tool)
        return found is not None and found.idempotent

    async def call_tool(self, call: ToolCall) -> Any:
        tool = self.tools.get(call.name)
        if tool is None:
            raise ToolError(
                f"agent {self.name!r} has no tool {call.name!r}; tools: {', '.join(self.tools)}"
            )
        return await tool.run(call.arguments)


REJECTED_REPLY_KEPT = 10_000
"""Characters of a reply that cannot be used kept in the conversation (and the session log).
The model is shown its reply when it is steered, and a few thousand characters show what went
wrong; a garbage reply of megabytes, kept whole, would fill the model's context and the log
(a record holds the reply twice: a 34 MB one failed its step as too large to store)."""


def _text_of(reply: ModelReply) -> str:
    """The reply as text kept in the conversation: its content, else its action as JSON; a
    reply of tool calls alone has none (empty, not the JSON word ``null``)."""
    if reply.content is not None:
        return reply.content
    return "" if reply.action is None else render(reply.action)


def _kept_of_rejected(text: str) -> str:
    if len(text) <= REJECTED_REPLY_KEPT:
        return text
    left = len(text) - REJECTED_REPLY_KEPT
    return f"{text[:REJECTED_REPLY_KEPT]}\n[{left:,} more characters of this reply were cut]"


class Prompt(Sequence[Message]):
    """What the model is shown: the system prompt, then the conversation. A view, not a copy
    (a long conversation costs nothing to show): the system prompt is made afresh each step
    from what the agent may do now and the run's context, and is never stored with the
    conversation, which only ever grows."""

    __slots__ = ("_conversation", "_system")

    def __init__(self, system: Message, conversation: list[Message]) -> None:
        self._system = system
        self._conversation = conversation

    def __len__(self) -> int:
        return len(self._conversation) + 1

    @overload
    def __getitem__(self, index: int) -> Message: ...

    @overload
    def __getitem__(self, index: slice) -> list[Message]: ...

    def __getitem__(self, index: int | slice) -> Message | list[Message]:
        if isinstance(index, slice):
            return list(self)[index]
        if index == 0 or index == -len(self):
            return self._system
        if index < 0:
            return self._conversation[index]
        return self._conversation[index - 1]

    def __iter__(self) -> Iterator[Message]:
        yield self._system
        yield from self._conversation


def _action_of(reply: ModelReply) -> Action | None:
    """The reply's action, with its own tool calls attached (they run before the action)."""
    if reply.action is not None:
        action: Action | None = parse_action(reply.action)
    else:
        action = parse_reply(reply.content, None) if not reply.tool_calls else None
    if not reply.tool_calls:
        return action
    calls = checked_tool_calls(reply.tool_calls)
    if action is None:
        return Action.call_tools(calls)
    return dataclasses.replace(action, tool_calls=calls)
