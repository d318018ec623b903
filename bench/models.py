"""Model adapters: overhead per call on loopback, and the offline model's speed.

Run: ``.venv/bin/python bench/models.py``. Prints a table and rewrites the "Models" section of
``bench/results.md``.

* Adapter overhead: an agent step through the OpenAI / Anthropic adapter against a loopback
  server that answers at once (so there is no model time), next to a bare HTTP round trip to
  the same server; the difference is what the adapter and SDK add per call.
* Offline model: load time of the bundled SmolLM2-135M GGUF, and tokens per second of plain and
  schema-constrained generation, in-process on the CPU.
* Time to first token (TTFT): a streamed reply through each adapter, from the call to its
  first piece of text, next to the time to the whole reply: for OpenAI and Anthropic against
  the loopback server streaming a reply of ``STREAM_PIECES`` events ``STREAM_PACE`` apart (as a
  model writing), for SmolLM2 generating in-process.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import httpx2 as httpx  # the HTTP client the SDKs themselves use here
from engine import report  # type: ignore[import-not-found]
from servers import (  # type: ignore[import-not-found]
    Scripted,
    ScriptedHTTPServer,
    chat_stream,
    messages_stream,
)

from orchestra.agents.contract import InputKind, StepInput, StepRequest
from orchestra.models import Message, StepInfo
from orchestra.models.config import ModelConfig
from orchestra.models.local import LocalModel, bundled_model_path, load

CALLS = 300
INFO = StepInfo("Bench", "b0", 1, ("final_response",), (), (), True, False)

OPENAI_REPLY = {
    "id": "c",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}
ANTHROPIC_REPLY = {
    "id": "m",
    "type": "message",
    "role": "assistant",
    "model": "m",
    "content": [{"type": "text", "text": "ok"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 5, "output_tokens": 1},
}


STREAM_PIECES = 50
STREAM_PACE = 0.002  # seconds between two events of a streamed reply
STREAMS = 30
STREAMED_TEXT = "word " * STREAM_PIECES


def paced(scripted: Scripted) -> Scripted:
    scripted.pace = STREAM_PACE
    return scripted


async def ttft_ms(model: Any, calls: int, script: Any = None) -> tuple[float, float]:
    """Median ms from a streamed call to its first piece of text, and to its whole reply;
    ``script()``, when given, queues the server's stream for each call."""
    first, whole = [], []
    messages = [Message("user", "Write a long paragraph about the history of computing.")]
    for _ in range(calls):
        if script is not None:
            script()
        arrived: list[float] = []
        started = time.perf_counter()
        await model.stream(messages, INFO, lambda text, at=arrived: at.append(time.perf_counter()))
        whole.append(time.perf_counter() - started)
        first.append(arrived[0] - started)
    return statistics.median(first) * 1000, statistics.median(whole) * 1000


async def time_to_first_token() -> list[tuple[str, str]]:
    rows = []
    openai_reply = {
        **OPENAI_REPLY,
        "choices": [{**OPENAI_REPLY["choices"][0], "message": {"content": STREAMED_TEXT}}],
    }
    anthropic_reply = {**ANTHROPIC_REPLY, "content": [{"type": "text", "text": STREAMED_TEXT}]}
    with ScriptedHTTPServer() as server:
        url = server.url
        for name, config, stream in (
            (
                "OpenAI",
                ModelConfig(provider="openai", name="m", base_url=f"{url}/v1", api_key="k"),
                lambda: chat_stream(openai_reply, size=5),
            ),
            (
                "Anthropic",
                ModelConfig(provider="anthropic", name="m", base_url=url, api_key="k"),
                lambda: messages_stream(anthropic_reply, size=5),
            ),
        ):
            first, whole = await ttft_ms(
                config.build(), STREAMS, lambda s=stream: server.script(paced(s()))
            )
            rows.append(
                (
                    f"TTFT via {name} adapter, loopback stream of {STREAM_PIECES} pieces "
                    f"{STREAM_PACE * 1000:g} ms apart",
                    f"{first:.2f} ms (whole reply {whole:.1f} ms)",
                )
            )
    local = LocalModel(ModelConfig(provider="local", name="smollm2", max_tokens=128))
    first, whole = await ttft_ms(local, 3)
    rows.append(
        ("TTFT via local SmolLM2-135M, 128 tokens", f"{first:.1f} ms (whole reply {whole:.0f} ms)")
    )
    return rows


async def per_call_ms(
    server: ScriptedHTTPServer, reply: Any, config: ModelConfig
) -> tuple[float, float]:
    """Median ms per adapter call, and per bare POST of the same body size."""
    from orchestra.agents import Agent

    agent = Agent("Bench", config, register=False)
    server.responses.clear()
    server.script(*(Scripted(200, reply) for _ in range(CALLS + 20)))
    adapter = []
    for _ in range(CALLS):
        request = StepRequest(StepInput(InputKind.TASK, "hello"), [], INFO, {})
        started = time.perf_counter()
        await agent.step(request)
        adapter.append(time.perf_counter() - started)
    server.responses.clear()
    server.script(*(Scripted(200, reply) for _ in range(CALLS + 20)))
    bare = []
    async with httpx.AsyncClient() as client:
        for _ in range(CALLS):
            started = time.perf_counter()
            response = await client.post(
                f"{server.url}/bare", json={"messages": [{"role": "user", "content": "hello"}]}
            )
            response.json()
            bare.append(time.perf_counter() - started)
    return statistics.median(adapter[20:]) * 1000, statistics.median(bare[20:]) * 1000


def offline_model() -> list[tuple[str, str]]:
    started = time.perf_counter()
    model, _ = load(bundled_model_path())
    loaded = time.perf_counter() - started
    prompt = [{"role": "user", "content": "Write a long paragraph about the history of computing."}]
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        out = model.create_chat_completion(messages=prompt, max_tokens=128, temperature=0)
        rates.append(out["usage"]["completion_tokens"] / (time.perf_counter() - started))
    schema = {
        "type": "object",
        "properties": {"response": {"type": "string"}},
        "required": ["response"],
    }
    started = time.perf_counter()
    out = model.create_chat_completion(
        messages=prompt,
        max_tokens=128,
        temperature=0,
        response_format={"type": "json_object", "schema": schema},
    )
    constrained = out["usage"]["completion_tokens"] / (time.perf_counter() - started)
    return [
        ("SmolLM2-135M (bundled GGUF) load time", f"{loaded:.2f} s"),
        ("SmolLM2-135M plain generation", f"{max(rates):.0f} tokens/s"),
        ("SmolLM2-135M JSON-schema constrained generation", f"{constrained:.0f} tokens/s"),
    ]


async def adapters() -> list[tuple[str, str]]:
    rows = []
    with ScriptedHTTPServer() as server:
        openai_ms, bare_ms = await per_call_ms(
            server,
            OPENAI_REPLY,
            ModelConfig(provider="openai", name="m", base_url=f"{server.url}/v1"),
        )
        anthropic_ms, _ = await per_call_ms(
            server,
            ANTHROPIC_REPLY,
            ModelConfig(provider="anthropic", name="m", base_url=server.url, api_key="k"),
        )
    rows.append(("bare HTTP POST round trip to the loopback server", f"{bare_ms:.2f} ms"))
    rows.append(
        (
            "agent step via OpenAI adapter (no model time)",
            f"{openai_ms:.2f} ms (adapter adds {openai_ms - bare_ms:.2f} ms)",
        )
    )
    rows.append(
        (
            "agent step via Anthropic adapter (no model time)",
            f"{anthropic_ms:.2f} ms (adapter adds {anthropic_ms - bare_ms:.2f} ms)",
        )
    )
    return rows


def main() -> None:
    rows = asyncio.run(adapters()) + offline_model()
    report("Models", "", rows + asyncio.run(time_to_first_token()))


if __name__ == "__main__":
    main()
