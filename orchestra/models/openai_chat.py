"""The OpenAI Chat Completions protocol: OpenAI and every compatible server (via ``base_url``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .base import Message, ModelReply, StepInfo, ToolCall, ToolSpec, Usage
from .config import ModelConfig, missing_extra
from .pricing import cost_usd
from .protocol import (
    UnreadableJSON,
    action_schema,
    answer_only,
    coordination_tools,
    read_json,
    reply_from_tool_calls,
)
from .sdk_calls import call_sdk
from .secrets import redact


def to_chat_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Our conversation in the Chat Completions shape.

    Tool calls the conversation never answered (coordination calls: their answer arrives as
    the next input) get a short tool result, since the protocol requires one per call. Tool
    results that answer no native call (the JSON protocol's ``call_tool``) become user turns.
    """
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for message in messages:
        if message.role == "tool" and message.tool_call_id in pending:
            pending.remove(message.tool_call_id)
            out.append(
                {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
            )
            continue
        out += [
            {"role": "tool", "tool_call_id": call_id, "content": "accepted"} for call_id in pending
        ]
        pending = []
        if message.role == "assistant" and message.tool_calls:
            out.append(
                {
                    "role": "assistant",
                    "content": message.content or None,
                    "tool_calls": [
                        {
                            "id": call.call_id,
                            "type": "function",
                            "function": {
                                "name": call.name,
                                "arguments": json.dumps(call.arguments),
                            },
                        }
                        for call in message.tool_calls
                    ],
                }
            )
            pending = [call.call_id for call in message.tool_calls]
        elif message.role == "tool":
            out.append({"role": "user", "content": f"[Tool result]\n{message.content}"})
        else:
            out.append({"role": message.role, "content": message.content})
    return out


def function_tools(specs: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": s.name,
                "description": s.description,
                "parameters": dict(s.parameters),
            },
        }
        for s in specs
    ]


class OpenAIChatModel:
    """An adapter for ``POST /chat/completions`` through the official ``openai`` SDK.

    The SDK's own retries are off: Orchestra retries per ``ErrorHandlingConfig`` and reports
    each retry as an event.
    """

    provider = "openai"

    def __init__(self, config: ModelConfig) -> None:
        try:
            import openai
        except ImportError:
            raise missing_extra("openai", "openai") from None
        self.config = config
        self.uses_native_tools = config.format == "tools"
        self._openai = openai
        self._client = openai.AsyncOpenAI(
            api_key=config.resolved_api_key(),
            base_url=config.base_url,
            timeout=config.timeout,
            max_retries=0,
        )

    def __repr__(self) -> str:
        url = self.config.base_url
        where = f", base_url={redact(url)!r}" if url else ""
        return f"OpenAIChatModel({self.config.name!r}{where})"

    def request(self, messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
        """The request body (without transport options) for this step."""
        body: dict[str, Any] = {"model": self.config.name, "messages": to_chat_messages(messages)}
        if self.config.temperature is not None:
            body["temperature"] = self.config.temperature
        if self.config.max_tokens is not None:
            body["max_tokens"] = self.config.max_tokens
        if self.config.seed is not None:
            body["seed"] = self.config.seed  # OpenAI (best effort), llama.cpp's server, vLLM
        fmt = "text" if answer_only(info) else self.config.format
        if fmt == "tools":
            body["tools"] = function_tools([*coordination_tools(info), *info.tools])
        elif fmt == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "orchestra_action", "schema": action_schema(info)},
            }
        elif fmt == "json_object":
            body["response_format"] = {"type": "json_object", "schema": action_schema(info)}
        return body

    async def complete(self, messages: Sequence[Message], info: StepInfo) -> ModelReply:
        body = self.request(messages, info)
        return await call_sdk(
            self._openai,
            self.provider,
            self.config,
            lambda: self._client.chat.completions.create(**body),
            self._reply,
        )

    def _reply(self, response: Any) -> ModelReply:
        message = response.choices[0].message
        finish = response.choices[0].finish_reason
        usage = None if finish is None else Usage(finish_reason=finish)
        if response.usage is not None:
            # some OpenAI-compatible servers send null counts
            prompt = response.usage.prompt_tokens or 0
            completion = response.usage.completion_tokens or 0
            usage = Usage(
                prompt, completion, cost_usd("openai", self.config.name, prompt, completion), finish
            )
        if not message.tool_calls:
            return ModelReply(content=message.content, usage=usage)
        calls = []
        for call in message.tool_calls:
            try:
                arguments = read_json(call.function.arguments or "{}")
            except UnreadableJSON as error:
                raw = f"{call.function.name}({call.function.arguments})"
                return ModelReply(
                    content=message.content or raw,
                    usage=usage,
                    problem=f"the arguments of tool call {call.function.name!r} {error}",
                )
            calls.append(
                ToolCall(
                    call.function.name, arguments if isinstance(arguments, dict) else {}, call.id
                )
            )
        return reply_from_tool_calls(message.content, calls, usage)
