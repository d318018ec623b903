"""The LLM-backed agent."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from orchestra.coordination.engine.actions import ActionParseError, ToolCall, parse_reply
from orchestra.models.base import Message, Model, StepInfo

from .base import BaseAgent, InputKind, StepInput, StepOutcome, StepRequest
from .registry import register_by_default


def render(value: Any) -> str:
    """Text for a model: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


_INPUT_HEADINGS = {
    InputKind.TASK: "Task",
    InputKind.REQUEST: "Request from {sender}",
    InputKind.RESPONSE: "Response from {sender}",
    InputKind.RESULTS: "Results of the parallel branches you started",
    InputKind.USER_ANSWER: "The user answered",
    InputKind.STEERING: "Orchestra",
}


def input_message(step_input: StepInput) -> Message:
    """How an input appears in the conversation."""
    if step_input.kind is InputKind.TOOL_RESULTS:
        lines = [
            f"{item['name']} ({item['call_id']}): {'ok' if item['ok'] else 'error'}: "
            f"{render(item['result'])}"
            for item in step_input.content
        ]
        return Message("tool", "\n".join(lines), name="tools")
    heading = _INPUT_HEADINGS[step_input.kind].format(sender=step_input.sender)
    return Message("user", f"[{heading}]\n{render(step_input.content)}", name=step_input.sender)


def protocol_prompt(info: StepInfo) -> str:
    """The part of the system prompt that says what the agent may do now."""
    lines = [
        "Reply with exactly one JSON object: "
        '{"next_action": <action>, "action_input": <input>}. Actions available now:'
    ]
    if info.peers:
        peers = ", ".join(
            peer.name
            + (" (answers back to you)" if peer.is_call else "")
            + (f' (add "label": "{peer.label}")' if peer.label else "")
            for peer in info.peers
        )
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
            f"Tools: {', '.join(info.tools)}."
        )
    return "\n".join(lines)


class Agent(BaseAgent):
    """An agent whose decisions come from a model.

    ``model`` is any object with the model interface (``ScriptedModel``, ``FunctionModel``, or
    a provider adapter). ``tools`` are Python callables the model may call by name. The agent
    registers itself in the global registry unless ``register=False``.
    """

    def __init__(
        self,
        name: str,
        model: Model,
        instruction: str = "",
        tools: Iterable[Callable[..., Any]] | None = None,
        *,
        description: str = "",
        register: bool = True,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"Agent name must be a non-empty string, got {name!r}")
        if not callable(getattr(model, "complete", None)):
            raise TypeError(
                f"Agent {name!r}: model must have an async complete(messages, info) method, "
                f"got {type(model).__name__}"
            )
        self.name = name
        self.model = model
        self.instruction = instruction
        self.description = description
        self.tools: dict[str, Callable[..., Any]] = {}
        for tool in tools or ():
            if not callable(tool):
                raise TypeError(f"Agent {name!r}: tools must be callables, got {tool!r}")
            self.tools[getattr(tool, "__name__", repr(tool))] = tool
        self._prompts: dict[tuple[Any, ...], tuple[Mapping[str, Any], str]] = {}
        if register:
            register_by_default(self)

    def __repr__(self) -> str:
        return f"Agent(name={self.name!r}, model={type(self.model).__name__})"

    @property
    def tool_names(self) -> tuple[str, ...]:
        return tuple(self.tools)

    def system_prompt(self, info: StepInfo, context: Mapping[str, Any]) -> str:
        """Built once per situation and run, then reused by every step of that run.

        The cache holds the run's context object itself, so a later run (a different context)
        rebuilds the prompt, and at most one run's prompts are kept per situation.
        """
        key = (info.peers, info.parallel_groups, info.can_finish, info.can_ask_user, info.tools)
        cached = self._prompts.get(key)
        if cached is not None and cached[0] is context:
            return cached[1]
        parts = [f"You are {self.name}.", self.instruction, protocol_prompt(info)]
        if context:
            parts.append(f"Shared context:\n{render(dict(context))}")
        prompt = "\n\n".join(part for part in parts if part)
        self._prompts[key] = (context, prompt)
        return prompt

    async def step(self, request: StepRequest) -> StepOutcome:
        messages = request.messages
        system = Message("system", self.system_prompt(request.info, request.context))
        if messages and messages[0].role == "system":
            messages[0] = system
        else:
            messages.insert(0, system)
        messages.append(input_message(request.input))
        reply = await self.model.complete(messages, request.info)
        text = reply.content if reply.content is not None else render(reply.action)
        messages.append(Message("assistant", text, name=self.name))
        try:
            action = parse_reply(reply.content, reply.action)
        except ActionParseError as error:
            return StepOutcome(reply=text, problem=str(error), usage=reply.usage)
        return StepOutcome(action=action, reply=text, usage=reply.usage)

    async def call_tool(self, call: ToolCall) -> Any:
        tool = self.tools.get(call.name)
        if tool is None:
            raise LookupError(
                f"agent {self.name!r} has no tool {call.name!r}; tools: {', '.join(self.tools)}"
            )
        if inspect.iscoroutinefunction(tool):
            return await tool(**call.arguments)
        return await asyncio.to_thread(tool, **call.arguments)
