"""Model adapters: overhead per call on loopback, and the offline model's speed.

Run: ``.venv/bin/python bench/models.py``. Prints a table and rewrites the "Models" section of
``bench/results.md``.

* Adapter overhead: an agent step through the OpenAI / Anthropic adapter against a loopback
  server that answers at once (so there is no model time), next to a bare HTTP round trip to
  the same server; the difference is what the adapter and SDK add per call.
* Offline model: load time of the bundled SmolLM2-135M GGUF, and tokens per second of plain and
  schema-constrained generation, in-process on the CPU.
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
from servers import Scripted, ScriptedHTTPServer  # type: ignore[import-not-found]

from orchestra.agents.contract import InputKind, StepInput, StepRequest
from orchestra.models import StepInfo
from orchestra.models.config import ModelConfig
from orchestra.models.local import bundled_model_path, load

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
    report("Models", "", asyncio.run(adapters()) + offline_model())


if __name__ == "__main__":
    main()
