"""The Anthropic Messages API through the official ``anthropic`` SDK."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestra.errors import ModelAPIError

from .base import DeltaSink, Message, ModelReply, StepInfo, ToolCall, Usage
from .config import ModelConfig, missing_extra, seed_refused
from .pricing import cost_usd
from .protocol import answer_only, coordination_tools, reply_from_tool_calls
from .sdk_calls import call_sdk

DEFAULT_MAX_TOKENS = 1024


def to_anthropic(messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
    """``(system, messages)`` in the Messages API's shape.

    System messages become the ``system`` parameter; turns of one role are merged (the API
    wants them alternating, starting with the user); every ``tool_use`` is answered by a
    ``tool_result`` in the next user turn — coordination calls get a short one.
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    pending: list[str] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for message in messages:
        if message.role == "system":
            system.append(message.content)
            continue
        if message.role == "tool" and message.tool_call_id in pending:
            pending.remove(message.tool_call_id)
            add("user", [_result(message.tool_call_id, message.content)])
            continue
        if pending:
            add("user", [_result(call_id, "accepted") for call_id in pending])
            pending = []
        if message.role == "assistant":
            blocks: list[dict[str, Any]] = (
                [{"type": "text", "text": message.content}] if message.content else []
            )
            blocks += [
                {"type": "tool_use", "id": c.call_id, "name": c.name, "input": dict(c.arguments)}
                for c in message.tool_calls
            ]
            add("assistant", blocks or [{"type": "text", "text": "(no reply)"}])
            pending = [call.call_id for call in message.tool_calls]
        else:
            text = (
                f"[Tool result]\n{message.content}" if message.role == "tool" else message.content
            )
            add("user", [{"type": "text", "text": text}])
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": "(begin)"}]})
    return "\n\n".join(system), turns


def _written(event: Any) -> str:
    """The piece of the reply a stream event writes: text, or part of a tool call's input."""
    if event.type != "content_block_delta":
        return ""
    delta = event.delta
    if delta.type == "text_delta":
        return str(delta.text)
    return str(delta.partial_json) if delta.type == "input_json_delta" else ""


def _result(call_id: str | None, content: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": call_id, "content": content}


class AnthropicModel:
    """An adapter for ``POST /v1/messages``. Coordination is offered as native tools unless
    ``action_format="text"``; the SDK's own retries are off (Orchestra retries)."""

    provider = "anthropic"

    def __init__(self, config: ModelConfig) -> None:
        try:
            import anthropic
        except ImportError:
            raise missing_extra("anthropic", "anthropic") from None
        if config.seed is not None:  # ModelConfig refuses it; a model_copy() skips that check
            raise seed_refused(self.provider)
        self.config = config
        self.uses_native_tools = config.format == "tools"
        self._anthropic = anthropic
        self._client = anthropic.AsyncAnthropic(
            api_key=config.resolved_api_key(),
            base_url=config.base_url,
            timeout=config.timeout,
            max_retries=0,
        )

    def __repr__(self) -> str:
        return f"AnthropicModel({self.config.name!r})"

    def request(self, messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
        system, turns = to_anthropic(messages)
        body: dict[str, Any] = {
            "model": self.config.name,
            "messages": turns,
            "max_tokens": self.config.max_tokens or DEFAULT_MAX_TOKENS,
        }
        if system:
            body["system"] = system
        if self.config.temperature is not None:
            # through extra_body: SDK releases differ on whether create() names it
            body["extra_body"] = {"temperature": self.config.temperature}
        if self.uses_native_tools and not answer_only(info):
            body["tools"] = [
                {"name": s.name, "description": s.description, "input_schema": dict(s.parameters)}
                for s in [*coordination_tools(info), *info.tools]
            ]
        return body

    async def complete(self, messages: Sequence[Message], info: StepInfo) -> ModelReply:
        body = self.request(messages, info)
        return await call_sdk(
            self._anthropic,
            self.provider,
            self.config,
            lambda: self._client.messages.create(**body),
            self._reply,
        )

    async def stream(
        self, messages: Sequence[Message], info: StepInfo, on_delta: DeltaSink
    ) -> ModelReply:
        """The reply ``complete`` would give, asked for as a stream (the SDK's
        ``messages.stream``, which puts the message together): each piece of its text, and of
        its tool calls' input JSON (an action, in the "tools" format), goes to ``on_delta`` as
        it arrives."""
        body = self.request(messages, info)
        return await call_sdk(
            self._anthropic,
            self.provider,
            self.config,
            lambda: self._streamed(body, on_delta),
            self._reply,
        )

    async def _streamed(self, body: dict[str, Any], on_delta: DeltaSink) -> Any:
        async with self._client.messages.stream(**body) as stream:
            async for event in stream:
                text = _written(event)
                if text:
                    on_delta(text)
            try:
                message = await stream.get_final_message()
            except AssertionError:  # the SDK's way of saying no message_start came
                message = None
        if message is None or message.stop_reason is None:
            raise ModelAPIError(
                "the stream ended before the reply did (no "
                + ("message_start)" if message is None else "stop_reason)"),
                provider=self.provider,
                model=self.config.name,
                retryable=True,
            )
        return message

    def _reply(self, response: Any) -> ModelReply:
        texts, calls = [], []
        for block in response.content:
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use":
                arguments = block.input if isinstance(block.input, dict) else {}
                calls.append(ToolCall(block.name, arguments, block.id))
        prompt, completion = response.usage.input_tokens, response.usage.output_tokens
        usage = Usage(
            prompt,
            completion,
            cost_usd("anthropic", self.config.name, prompt, completion),
            response.stop_reason,
        )
        content = "".join(texts) or None
        if not calls:
            return ModelReply(content=content, usage=usage)
        return reply_from_tool_calls(content, calls, usage)
