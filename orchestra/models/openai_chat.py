"""The OpenAI Chat Completions protocol: OpenAI and every compatible server (via ``base_url``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from orchestra.errors import ModelAPIError

from .base import Message, ModelReply, StepInfo, ToolCall, ToolSpec, Usage
from .config import ModelConfig, missing_extra
from .pricing import cost_usd
from .protocol import action_schema, answer_only, coordination_tools, reply_from_tool_calls

RETRYABLE_STATUS = frozenset({408, 409, 429})


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from a ``Retry-After`` (or ``retry-after-ms``) header, when present and numeric."""
    if headers is None:
        return None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return float(milliseconds) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to backoff


def is_retryable(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


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
        where = f", base_url={self.config.base_url!r}" if self.config.base_url else ""
        return f"OpenAIChatModel({self.config.name!r}{where})"

    def request(self, messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
        """The request body (without transport options) for this step."""
        body: dict[str, Any] = {"model": self.config.name, "messages": to_chat_messages(messages)}
        if self.config.temperature is not None:
            body["temperature"] = self.config.temperature
        if self.config.max_tokens is not None:
            body["max_tokens"] = self.config.max_tokens
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
        try:
            response = await self._client.chat.completions.create(**self.request(messages, info))
        except self._openai.APIStatusError as error:
            raise ModelAPIError(
                _error_text(error),
                provider=self.provider,
                model=self.config.name,
                status=error.status_code,
                retryable=is_retryable(error.status_code),
                retry_after=retry_after_seconds(error.response.headers),
            ) from None
        except self._openai.APITimeoutError:
            raise self._error(f"no answer within {self.config.timeout}s", retryable=True) from None
        except self._openai.APIConnectionError as error:
            where = self.config.base_url or "the OpenAI API"
            raise self._error(
                f"cannot reach {where}: {error.__cause__ or error}", retryable=True
            ) from None
        except (self._openai.APIError, ValueError) as error:
            raise self._error(f"malformed response: {error}", retryable=False) from None
        try:
            return self._reply(response)
        except (AttributeError, IndexError, TypeError, KeyError) as error:
            raise self._error(f"malformed response: {error}", retryable=False) from None

    def _reply(self, response: Any) -> ModelReply:
        message = response.choices[0].message
        usage = None
        if response.usage is not None:
            prompt, completion = response.usage.prompt_tokens, response.usage.completion_tokens
            usage = Usage(
                prompt, completion, cost_usd("openai", self.config.name, prompt, completion)
            )
        if not message.tool_calls:
            return ModelReply(content=message.content, usage=usage)
        calls = []
        for call in message.tool_calls:
            try:
                arguments = json.loads(call.function.arguments or "{}")
            except json.JSONDecodeError:
                raw = f"{call.function.name}({call.function.arguments})"
                return ModelReply(
                    content=message.content or raw,
                    usage=usage,
                    problem=f"the arguments of tool call {call.function.name!r} are not valid JSON",
                )
            calls.append(
                ToolCall(
                    call.function.name, arguments if isinstance(arguments, dict) else {}, call.id
                )
            )
        return reply_from_tool_calls(message.content, calls, usage)

    def _error(self, message: str, retryable: bool) -> ModelAPIError:
        return ModelAPIError(
            message, provider=self.provider, model=self.config.name, retryable=retryable
        )


def _error_text(error: Any) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        detail = body.get("error", body)
        if isinstance(detail, dict) and "message" in detail:
            return str(detail["message"])
        return json.dumps(detail)[:500]
    return str(getattr(error, "message", error))[:500]
