"""Engine overhead: µs per agent step (watched in no way, by the status display, by a
MetricsCollector, by tracing, through ``Orchestra.stream``), µs per follow-up round of a
conversation, 1000-way fan-out wall time, ping-pong scaling.

Run: ``.venv/bin/python bench/engine.py`` (after ``python3 dev.py test`` or ``demo`` made the
venv). Prints a table and rewrites the "Engine" section of ``bench/results.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from orchestra.agents import Agent, AgentRegistry, FunctionAgent
from orchestra.communication import ScriptedUser
from orchestra.coordination.config import (
    Budget,
    CommunicationConfig,
    ExecutionConfig,
    StatusConfig,
    TracingConfig,
)
from orchestra.coordination.monitoring import MetricsCollector
from orchestra.coordination.orchestra import Orchestra
from orchestra.coordination.topology import Topology
from orchestra.models import FunctionModel, Message, StepInfo

QUIET = ExecutionConfig(status=StatusConfig.from_verbosity(0))
CHAIN = 10


def ring_topology(names: list[str]) -> Topology:
    edges = [f"{a} -> {b}" for a, b in zip(names, names[1:] + names[:1], strict=True)]
    return Topology(nodes=names, edges=edges, entry_point=names[0])


async def chain_run(
    steps: int,
    metrics: MetricsCollector | None = None,
    config: ExecutionConfig = QUIET,
    streamed: bool = False,
) -> tuple[float, int]:
    """A ring of 10 LLM agents on zero-latency models, handing work on ``steps`` times
    (counted by ``metrics`` when given; ``config`` says what else watches it; ``streamed``:
    through ``Orchestra.stream``, every event drained, each reply streamed in deltas)."""
    names = [f"A{i}" for i in range(CHAIN)]
    successor = dict(zip(names, names[1:] + names[:1], strict=True))
    budget = {"left": steps}
    hand_over: dict[str, dict[str, Any]] = {
        name: {
            "next_action": "invoke_agent",
            "action_input": [{"agent_name": successor[name], "request": "go"}],
        }
        for name in names
    }
    finish = {"next_action": "final_response", "action_input": {"response": "done"}}

    def decide(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
        budget["left"] -= 1
        if budget["left"] <= 0 and info.can_finish:
            return finish
        return hand_over[info.agent_name]

    model = FunctionModel(decide)
    registry = AgentRegistry([Agent(n, model, register=False) for n in names])
    arguments: dict[str, Any] = {
        "agent_registry": registry,
        "execution_config": config,
        "max_steps": steps + CHAIN + 1,
        "metrics_collector": metrics,
    }
    started = time.perf_counter()
    if streamed:
        async with Orchestra.stream("bench", ring_topology(names), **arguments) as events:
            async for _ in events:
                pass
        result = events.result
        assert result is not None
    else:
        result = await Orchestra.run("bench", ring_topology(names), **arguments)
    elapsed = time.perf_counter() - started
    assert result.success, result.error
    return elapsed, result.total_steps


async def conversation_run(rounds: int) -> float:
    """One agent answering a task and then ``rounds`` follow-ups from a scripted user: the
    wall time per follow-up round (each a step, a question and its journaled answer)."""
    model = FunctionModel(
        lambda messages, info: {"next_action": "final_response", "action_input": {"response": "ok"}}
    )
    registry = AgentRegistry([Agent("Chat", model, register=False)])
    user = ScriptedUser([f"follow-up {n}" for n in range(rounds)])
    started = time.perf_counter()
    result = await Orchestra.run(
        "bench",
        {"nodes": ["Chat"], "edges": []},
        agent_registry=registry,
        execution_config=QUIET,
        communication_config=CommunicationConfig(channel=user),
        allow_follow_ups=True,
    )
    elapsed = time.perf_counter() - started
    assert result.success and len(result.follow_ups) == rounds, result.error
    return elapsed / (rounds + 1)


async def same(item: Any, context: Any) -> Any:
    return item


async def function_chain_run(steps: int, function: Any = same) -> tuple[float, int]:
    """The same ring with function agents (no prompt or conversation at all): coroutine
    functions run on the event loop, plain ones each on a thread (so timeouts can stop them)."""
    names = [f"F{i}" for i in range(CHAIN)]
    registry = AgentRegistry([FunctionAgent(n, function, register=False) for n in names])
    started = time.perf_counter()
    result = await Orchestra.run(
        "bench",
        ring_topology(names),
        agent_registry=registry,
        execution_config=QUIET,
        max_steps=steps,
    )
    elapsed = time.perf_counter() - started
    assert not result.success and result.metadata["error_type"] == "StepLimitError"
    return elapsed, result.total_steps


async def fan_out_run(children: int, delay: float, state_manager: Any = None) -> float:
    """A hub fans out to ``children`` branches of one worker that each await ``delay``
    (persisted by ``state_manager`` when one is given)."""

    async def work(item: Any, context: Any) -> str:
        await asyncio.sleep(delay)
        return f"done {item}"

    def hub(item: Any, context: Any) -> Any:
        from orchestra.agents.contract import Action

        if isinstance(item, list):
            return Action.final(len(item))
        return Action.invoke_parallel(("Worker", i) for i in range(children))

    registry = AgentRegistry(
        [FunctionAgent("Hub", hub, register=False), FunctionAgent("Worker", work, register=False)]
    )
    topology = Topology(nodes=["Hub", "Worker"], edges=["Hub <-> Worker"], entry_point="Hub")
    started = time.perf_counter()
    result = await Orchestra.run(
        "bench",
        topology,
        agent_registry=registry,
        execution_config=QUIET,
        max_steps=children + 2,
        state_manager=state_manager,
    )
    elapsed = time.perf_counter() - started
    assert result.success and result.final_response == children, result.error
    return elapsed


async def ping_pong_run(steps: int) -> float:
    """Ping calls Pong, Pong answers, for ``steps`` steps: both conversations keep growing."""
    budget = {"left": steps}

    def decide(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
        budget["left"] -= 1
        if info.agent_name == "Pong" or budget["left"] <= 0:
            return {"next_action": "final_response", "action_input": {"response": budget["left"]}}
        return {
            "next_action": "invoke_agent",
            "action_input": [{"agent_name": "Pong", "request": budget["left"]}],
        }

    model = FunctionModel(decide)
    registry = AgentRegistry(
        [Agent("Ping", model, register=False), Agent("Pong", model, register=False)]
    )
    topology = Topology(
        nodes=["Ping", "Pong"], edges=["Ping -> Pong", "Pong -> Ping"], entry_point="Ping"
    )
    started = time.perf_counter()
    result = await Orchestra.run(
        "bench", topology, agent_registry=registry, execution_config=QUIET, max_steps=steps + 4
    )
    elapsed = time.perf_counter() - started
    assert result.success, result.error
    return elapsed / result.total_steps


class _Terminal:
    """A stream that says it is a terminal and throws away what is written: the live status
    view draws to it (from its own thread, eight frames a second) as to a real one."""

    def __init__(self) -> None:
        self._sink = open(os.devnull, "w")  # noqa: SIM115 - kept for the whole bench

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return self._sink.write(text)

    def flush(self) -> None:
        self._sink.flush()

    def fileno(self) -> int:
        return self._sink.fileno()


@contextlib.contextmanager
def stderr_to(stream: Any) -> Iterator[None]:
    with contextlib.redirect_stderr(stream):
        yield
    from orchestra.coordination.monitoring.live import close_displays

    close_displays()


def traced() -> ExecutionConfig:
    """Tracing on, into an SDK provider whose batch processor hands spans to an exporter that
    drops them: every span is built and ended, nothing leaves the process."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Dropped(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    # a queue that holds a whole run's spans: none is dropped unbuilt when the exporter's
    # thread falls behind
    provider.add_span_processor(BatchSpanProcessor(Dropped(), max_queue_size=200_000))
    return QUIET.model_copy(update={"tracing": TracingConfig(tracer_provider=provider)})


def per_step(samples: list[tuple[float, int]]) -> float:
    return min(elapsed / count for elapsed, count in samples) * 1e6


def best_of(runs: int, make: Any) -> Any:
    samples = []
    for _ in range(runs):
        gc.collect()
        samples.append(asyncio.run(make()))
    return samples


def main() -> None:
    rows: list[tuple[str, str]] = []
    steps = 20_000
    plain = best_of(5, lambda: chain_run(steps))
    rows.append(
        (
            f"10-agent LLM chain, zero-latency models, {steps} steps (nothing watching)",
            f"{per_step(plain):.1f} µs/step",
        )
    )
    normal = QUIET.model_copy(update={"status": StatusConfig.from_verbosity(1)})
    with open(os.devnull, "w") as sink, stderr_to(sink):
        lines = best_of(5, lambda: chain_run(steps, config=normal))
    rows.append(
        (
            "the same, status lines printed (NORMAL, not a terminal)",
            f"{per_step(lines):.1f} µs/step",
        )
    )
    with stderr_to(_Terminal()):
        live = best_of(5, lambda: chain_run(steps, config=normal))
    rows.append(
        ("the same, live status view (NORMAL, on a terminal)", f"{per_step(live):.1f} µs/step")
    )
    with MetricsCollector(exporters=[]) as metrics:
        counted = best_of(5, lambda: chain_run(steps, metrics))
    rows.append(
        (
            "the same with a MetricsCollector attached (no exporter)",
            f"{per_step(counted):.1f} µs/step",
        )
    )
    roomy = Budget(max_tokens=10**12, max_cost_usd=1e9, max_steps=10**9, max_duration=1e9)
    budgeted = best_of(
        5, lambda: chain_run(steps, config=QUIET.model_copy(update={"budget": roomy}))
    )
    rows.append(
        (
            "the same with a run budget on every field (never reached)",
            f"{per_step(budgeted):.1f} µs/step",
        )
    )
    spans = best_of(5, lambda: chain_run(steps, config=traced()))
    rows.append(
        (
            "the same traced (OpenTelemetry SDK, batch processor, spans dropped)",
            f"{per_step(spans):.1f} µs/step",
        )
    )
    drained = best_of(5, lambda: chain_run(steps, streamed=True))
    rows.append(
        (
            "the same through Orchestra.stream (every event and delta drained)",
            f"{per_step(drained):.1f} µs/step",
        )
    )
    for rounds in (10, 500):
        chat = best_of(5, lambda rounds=rounds: conversation_run(rounds))
        rows.append(
            (
                f"a conversation of {rounds} follow-ups (1 agent, scripted user), per round",
                f"{min(chat) * 1e6:.1f} µs/round",
            )
        )
    functions = best_of(5, lambda: function_chain_run(steps))
    per_step_fn = min(elapsed / count for elapsed, count in functions) * 1e6
    rows.append((f"10-agent function chain, {steps} steps", f"{per_step_fn:.1f} µs/step"))
    threaded = best_of(5, lambda: function_chain_run(steps // 4, lambda item, context: item))
    per_step_sync = min(elapsed / count for elapsed, count in threaded) * 1e6
    rows.append(
        (
            f"the same with sync functions (each step on a thread), {steps // 4} steps",
            f"{per_step_sync:.1f} µs/step",
        )
    )
    fan = best_of(5, lambda: fan_out_run(1000, 0.1))
    rows.append(
        (
            "1000-way fan-out, each child awaits 100 ms (wall)",
            f"{min(fan):.3f} s (median {statistics.median(fan):.3f} s)",
        )
    )
    for n in (50, 200, 800):
        pp = best_of(5, lambda n=n: ping_pong_run(n))
        rows.append((f"ping-pong, N = {n} steps", f"{min(pp) * 1e6:.1f} µs/step"))
    report("Engine", "", rows)


def report(
    section: str, note: str, rows: list[tuple[str, str]], write: bool = True, remarks: str = ""
) -> None:
    """Print a benchmark's table and (``write``) rewrite its section of bench/results.md, with
    ``remarks`` (how to read it) under the table."""
    machine = (
        f"{platform.python_implementation()} {platform.python_version()} on "
        f"{platform.machine()}, {platform.system()}"
    )
    width = max(len(name) for name, _ in rows)
    print(f"{section} benchmark ({machine}){note}")
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")
    if remarks:
        print(remarks)
    if write:
        write_results(section, machine, rows, remarks)


def write_results(
    section: str, machine: str, rows: list[tuple[str, str]], remarks: str = ""
) -> None:
    """Replace this benchmark's section of bench/results.md, keeping the others."""
    path = Path(__file__).with_name("results.md")
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    body = [
        f"## {section}",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with {machine}.",
        "",
        "| measurement | result |",
        "|---|---|",
    ]
    body += [f"| {name} | {value} |" for name, value in rows]
    block = "\n".join(body) + "\n" + (f"\n{remarks}\n" if remarks else "")
    parts = text.split(f"## {section}\n")
    if len(parts) == 2:
        rest = parts[1].split("\n## ", 1)
        tail = "\n## " + rest[1] if len(rest) == 2 else ""
        text = parts[0] + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
