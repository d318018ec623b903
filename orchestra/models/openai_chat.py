"""The OpenAI Chat Completions protocol: OpenAI and every compatible server (via ``base_url``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from orchestra.errors import ModelAPIError

from .base import DeltaSink, Message, ModelReply, StepInfo, ToolCall, ToolSpec, Usage
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
from .sdk_calls import call_sdk, error_text
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

    async def stream(
        self, messages: Sequence[Message], info: StepInfo, on_delta: DeltaSink
    ) -> ModelReply:
        """The reply ``complete`` would give, asked for as a stream (with its usage in the
        last chunk): each piece of its text goes to ``on_delta`` as it arrives."""
        body = self.request(messages, info)
        return await call_sdk(
            self._openai,
            self.provider,
            self.config,
            lambda: self._streamed(body, on_delta),
            self._reply_of_stream,
        )

    async def _streamed(self, body: dict[str, Any], on_delta: DeltaSink) -> StreamedChat:
        chunks = await self._open_stream(body)
        streamed = StreamedChat()
        async with chunks:
            async for chunk in chunks:
                text = streamed.add(chunk)
                if text:
                    on_delta(text)
        if streamed.finish_reason is None:
            raise ModelAPIError(
                "the stream ended before the reply did (no finish_reason)",
                provider=self.provider,
                model=self.config.name,
                retryable=True,
            )
        return streamed

    async def _open_stream(self, body: dict[str, Any]) -> Any:
        """The stream, asked to end with the usage (``include_usage``); asked again without
        when the server refuses that option (older compatible servers and Azure API versions
        answer 400 naming it), and never again for this base URL in this process."""
        where = self.config.base_url or ""
        if where not in _REFUSE_STREAM_OPTIONS:
            try:
                return await self._client.chat.completions.create(
                    **body, stream=True, stream_options={"include_usage": True}
                )
            except self._openai.BadRequestError as error:
                if "stream_options" not in error_text(error):
                    raise
            _REFUSE_STREAM_OPTIONS.add(where)  # out of the handler: the error holds the key
        return await self._client.chat.completions.create(**body, stream=True)

    def _reply(self, response: Any) -> ModelReply:
        message = response.choices[0].message
        calls = [
            (call.id, call.function.name, call.function.arguments)
            for call in message.tool_calls or ()
        ]
        counts = response.usage
        return self._reply_of(
            message.content,
            calls,
            response.choices[0].finish_reason,
            None if counts is None else (counts.prompt_tokens, counts.completion_tokens),
        )

    def _reply_of_stream(self, streamed: StreamedChat) -> ModelReply:
        calls = [(call[0], call[1], "".join(call[2])) for call in streamed.calls.values()]
        content = "".join(streamed.content) if streamed.content else None
        return self._reply_of(content, calls, streamed.finish_reason, streamed.usage)

    def _reply_of(
        self,
        content: str | None,
        tool_calls: Sequence[tuple[str | None, str, str | None]],
        finish: str | None,
        counts: tuple[int | None, int | None] | None,
    ) -> ModelReply:
        """The reply, from the parts a response (or the chunks of a stream) gave."""
        usage = None if finish is None else Usage(finish_reason=finish)
        if counts is not None:
            # some OpenAI-compatible servers send null counts
            prompt, completion = counts[0] or 0, counts[1] or 0
            usage = Usage(
                prompt, completion, cost_usd("openai", self.config.name, prompt, completion), finish
            )
        elif usage is not None:
            self._no_usage()
        if not tool_calls:
            return ModelReply(content=content, usage=usage)
        calls = []
        for call_id, name, raw in tool_calls:
            try:
                arguments = read_json(raw or "{}")
            except UnreadableJSON as error:
                return ModelReply(
                    content=content or f"{name}({raw})",
                    usage=usage,
                    problem=f"the arguments of tool call {name!r} {error}",
                )
            calls.append(
                ToolCall(name, arguments if isinstance(arguments, dict) else {}, call_id or "")
            )
        return reply_from_tool_calls(content, calls, usage)

    def _no_usage(self) -> None:
        """Said once per model and server: a reply that came with no usage counts 0 tokens,
        which budgets, metrics and cost then read as if measured."""
        seen = (self.config.base_url, self.config.name)
        if seen in _SAID_NO_USAGE:
            return
        _SAID_NO_USAGE.add(seen)
        server = redact(self.config.base_url) if self.config.base_url else "the OpenAI API"
        _log.warning(
            "openai model %r: %s reports no token usage (a streamed reply has none when the "
            "server ignores stream_options.include_usage); its replies count 0 tokens in "
            "budgets, metrics and cost. ModelConfig(stream=False) keeps it on plain requests",
            self.config.name,
            server,
        )


_REFUSE_STREAM_OPTIONS: set[str] = set()
"""The base URLs ("" for OpenAI's own) whose server refused ``stream_options``."""
_SAID_NO_USAGE: set[tuple[str | None, str]] = set()
_log = logging.getLogger(__name__)


class StreamedChat:
    """A streamed reply put together from its chunks: the text, each tool call by its index
    (id, name, pieces of its arguments), the finish reason and the usage of the last chunk.
    (The SDK's ``ChatCompletionStreamState`` re-dumps the whole message at every chunk, which
    grows with the square of a long reply, and refuses a reply cut by ``max_tokens``.)"""

    __slots__ = ("calls", "content", "finish_reason", "usage")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.calls: dict[int, tuple[str | None, str, list[str]]] = {}
        self.finish_reason: str | None = None
        self.usage: tuple[int | None, int | None] | None = None

    def add(self, chunk: Any) -> str:
        """Take ``chunk`` in; returns the text it adds: its content, and the pieces of its tool
        calls' arguments (the JSON of an action, in the "tools" format, is written there)."""
        if chunk.usage is not None:
            self.usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        text = ""
        for choice in chunk.choices:
            if choice.index != 0:  # one choice is asked for; another is no part of the reply
                continue
            delta = choice.delta
            if delta.content:
                text = delta.content
                self.content.append(text)
            for call in delta.tool_calls or ():
                text += self._add_call(call)
            if choice.finish_reason is not None:
                self.finish_reason = choice.finish_reason
        return text

    def _add_call(self, call: Any) -> str:
        """Take a piece of a tool call in, as the SDK's own accumulator does: its id, name and
        arguments are each the concatenation of their pieces at its index (some servers send
        the id first and the name later, or the name in pieces); returns its arguments' piece."""
        function = call.function
        call_id, name, arguments = self.calls.get(call.index, (None, "", []))
        call_id = _joined(call_id or "", call.id) or None
        name = _joined(name, function and function.name)
        piece = (function and function.arguments) or ""
        if piece:
            arguments.append(piece)
        self.calls[call.index] = (call_id, name, arguments)
        return piece


def _joined(known: str, piece: str | None) -> str:
    """``known`` and the next ``piece`` of it; a piece that is all of ``known`` again (some
    servers repeat the whole id or name in every chunk) adds nothing."""
    if not piece or piece == known:
        return known
    return known + piece
