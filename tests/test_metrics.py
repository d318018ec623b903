"""MetricsCollector: every metric's value after real runs, the /metrics endpoint scraped over
loopback and parsed by prometheus-client's own parser, a paused and resumed durable run counted
once, many runs at once on one collector, the console table, and configuration errors."""

from __future__ import annotations

import asyncio
import io
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import FAST, fn, invoke, llm, quiet, run, spokes
from prometheus_client.parser import text_string_to_metric_families

from orchestra import AgentRegistry, ScriptedModel, tool
from orchestra.agents.base import BaseAgent
from orchestra.agents.contract import StepOutcome, StepRequest
from orchestra.coordination.monitoring import MetricsCollector
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.errors import ConfigurationError, ModelAPIError
from orchestra.models.base import ModelReply, Usage

WAIT = 5.0


@pytest.fixture
def metrics() -> Iterator[MetricsCollector]:
    with MetricsCollector(exporters=["prometheus"], prometheus_port=0) as collector:
        yield collector


@tool
def measure(what: str) -> int:
    """Measure something.

    Args:
        what: the thing
    """
    return len(what)


def used(content: str, prompt: int, completion: int, cost: float | None) -> ModelReply:
    return ModelReply(content=content, usage=Usage(prompt, completion, cost))


def measuring_hub() -> ScriptedModel:
    """Hub: a call retried, a rejected reply, a tool call, a fan-out to A and B, an answer."""
    return ScriptedModel(
        [
            ModelAPIError("busy", provider="test", model="m", status=503, retryable=True),
            {"next_action": "no_such_action"},
            ModelReply(
                action={
                    "next_action": "call_tool",
                    "action_input": [{"name": "measure", "arguments": {"what": "rope"}}],
                },
                usage=Usage(100, 10, 0.25),
            ),
            ModelReply(action=invoke(("A", "x"), ("B", "y")), usage=Usage(200, 20, 0.5)),
            used("4 long", 300, 30, None),
        ]
    )


def failing(value: Any, context: Any) -> str:
    raise ValueError("A broke")


async def measured_run(metrics: MetricsCollector) -> None:
    topology = spokes("A", "B")
    agents = [
        llm("Hub", measuring_hub(), tools=[measure]),
        fn("A", lambda value, context: "a"),
        fn("B", lambda value, context: "b"),
    ]
    result = await run("go", topology, agents, error_config=FAST, metrics_collector=metrics)
    assert result.success, result.error


async def test_every_metric_after_a_run(metrics: MetricsCollector) -> None:
    await measured_run(metrics)
    hub = {"agent": "Hub", "model": "ScriptedModel"}
    expected = {
        "api_calls": 5,  # 3 replies used, 1 rejected, 1 retried
        "prompt_tokens": 600,
        "completion_tokens": 60,
        "total_tokens": 660,
        "retries": 1,
        "steps": 5,  # Hub 3, A 1, B 1
        "errors": 0,
        "tool_calls": 1,
        "runs": 1,
        "active_branches": 0,
        "step_seconds": 5,
        "model_call_seconds": 5,  # each reply used, rejected or retried
        "tool_call_seconds": 1,
        "convergence_wait_seconds": 1,
        "budget_exceeded": 0,
    }
    assert {name: metrics.get_metric(name) for name in expected} == expected
    assert metrics.get_metric("cost_usd") == pytest.approx(0.75)
    assert metrics.get_metric("api_calls", **hub) == 5
    assert metrics.get_metric("api_calls", agent="A") == 0  # a code agent calls no model
    assert metrics.get_metric("tool_calls", tool="measure", outcome="ok") == 1
    assert metrics.get_metric("runs", outcome="succeeded") == 1
    assert metrics.get_metric("convergence_wait_seconds", agent="Hub") == 1
    snapshot = metrics.snapshot()
    assert set(snapshot) == {*expected, "cost_usd"}
    assert snapshot["step_seconds"]["type"] == "histogram"
    assert {row["labels"]["agent"] for row in snapshot["step_seconds"]["values"]} >= {"Hub", "A"}


async def test_a_failed_branch_is_counted_by_error_type(metrics: MetricsCollector) -> None:
    hub = ScriptedModel([invoke(("A", "x"))])
    agents = [llm("Hub", hub), fn("A", failing)]
    result = await run("go", spokes("A"), agents, metrics_collector=metrics)
    assert not result.success
    assert metrics.get_metric("errors", agent="A") == 1
    [row] = metrics.snapshot()["errors"]["values"]
    assert row == {"labels": {"agent": "A", "type": "AgentStepError"}, "value": 1}
    assert metrics.get_metric("runs", outcome="failed") == 1


async def test_the_prometheus_endpoint_serves_the_registry(metrics: MetricsCollector) -> None:
    await measured_run(metrics)
    url = metrics.prometheus_url
    assert url is not None and url.startswith("http://127.0.0.1:")
    text = await asyncio.to_thread(_get, url)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    [tokens] = [s for s in families["orchestra_total_tokens"].samples if s.name.endswith("_total")]
    assert tokens.labels == {"agent": "Hub", "model": "ScriptedModel"} and tokens.value == 660
    assert families["orchestra_step_seconds"].type == "histogram"
    assert families["orchestra_active_branches"].samples[0].value == 0


async def test_close_stops_the_endpoint() -> None:
    collector = MetricsCollector(exporters=["prometheus"], prometheus_port=0)
    url = collector.prometheus_url
    assert url is not None
    collector.close()
    assert collector.prometheus_url is None
    with pytest.raises(OSError):
        await asyncio.to_thread(_get, url)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        return str(response.read().decode())


# ---- a resumed run is counted once ------------------------------------------------------------


async def test_a_paused_and_resumed_run_counts_nothing_twice(tmp_path: Path) -> None:
    """Hub retries a call, calls a tool and fans out to A and B; B fails, A holds until the
    run is asked to pause. The resume replays all that (marked replayed), converges and
    answers: every count is that of one straight run."""
    holding = asyncio.Event()
    go_on = asyncio.Event()

    async def held(value: Any, context: Any) -> str:
        holding.set()
        await go_on.wait()
        return "a"

    hub = ScriptedModel(
        [
            ModelAPIError("busy", provider="test", model="m", status=503, retryable=True),
            ModelReply(
                action={
                    "next_action": "call_tool",
                    "action_input": [{"name": "measure", "arguments": {"what": "rope"}}],
                },
                usage=Usage(100, 10, None),
            ),
            ModelReply(action=invoke(("A", "x"), ("B", "y")), usage=Usage(200, 20, None)),
            used("done", 300, 30, None),
        ]
    )
    registry = AgentRegistry([llm("Hub", hub, tools=[measure]), fn("A", held), fn("B", failing)])
    with MetricsCollector(exporters=[]) as metrics:
        orchestra = OrchestraInstance(
            spokes("A", "B"),
            agent_registry=registry,
            initial_config=quiet(convergence_policy="any"),
            state_manager=StateManager(SQLiteStorageBackend(tmp_path / "s.db")),
            metrics_collector=metrics,
        )
        running = asyncio.create_task(orchestra.execute("go", context={"session_id": "p"}))
        await asyncio.wait_for(holding.wait(), WAIT)
        assert await orchestra.pause_session("p")
        go_on.set()
        paused = await asyncio.wait_for(running, WAIT)
        assert paused.metadata.get("paused") is True, paused.error
        before = {name: metrics.get_metric(name) for name in ("steps", "tool_calls", "retries")}
        assert before == {"steps": 3, "tool_calls": 1, "retries": 1}  # Hub 2, A 1
        assert metrics.get_metric("active_branches") == 0

        resumed = await asyncio.wait_for(orchestra.resume_session("p"), WAIT)
        assert resumed.success, resumed.error
        assert any(event.replayed for event in resumed.events)
        once = {
            "steps": 4,  # Hub 3, A 1 (B failed)
            "api_calls": 4,  # Hub's 3 steps and its retry
            "total_tokens": 660,
            "tool_calls": 1,
            "tool_call_seconds": 1,
            "retries": 1,
            "errors": 1,
            "convergence_wait_seconds": 1,
            "active_branches": 0,
        }
        assert {name: metrics.get_metric(name) for name in once} == once
        assert metrics.get_metric("steps", agent="A") == 1
        assert metrics.get_metric("errors", agent="B") == 1
        assert metrics.get_metric("runs", outcome="paused") == 1
        assert metrics.get_metric("runs", outcome="succeeded") == 1
        assert metrics.get_metric("runs") == 2
        # reading the stored result rebuilds the run from its log: nothing is counted
        await orchestra.get_result("p")
        assert {name: metrics.get_metric(name) for name in once} == once


# ---- many runs, one collector ----------------------------------------------------------------


async def test_many_concurrent_runs_on_one_collector() -> None:
    """Twenty runs at once, each held until all have started: the gauge sees all their
    branches open at once, and every count is twenty times one run's."""
    runs = 20
    started = 0
    all_in = asyncio.Event()

    async def work(value: Any, context: Any) -> str:
        nonlocal started
        started += 1
        if started == runs:  # every run is in this step: each has its branch open
            seen.append(metrics.get_metric("active_branches"))
            all_in.set()
        await all_in.wait()
        return "done"

    seen: list[int] = []

    async def one(index: int) -> None:
        model = ScriptedModel([used("ok", 1, 2, None)])
        agents = [fn("Work", work), llm("Check", model)]
        topology = {"nodes": ["Work", "Check"], "edges": ["Work -> Check"]}
        result = await run(f"task {index}", topology, agents, metrics_collector=metrics)
        assert result.success, result.error

    with MetricsCollector(exporters=[]) as metrics:
        await asyncio.wait_for(asyncio.gather(*map(one, range(runs))), WAIT)
        assert seen == [runs]
        assert metrics.get_metric("runs", outcome="succeeded") == runs
        assert metrics.get_metric("steps") == 2 * runs
        assert metrics.get_metric("total_tokens", agent="Check") == 3 * runs
        assert metrics.get_metric("active_branches") == 0


# ---- the console table -----------------------------------------------------------------------


class Written(io.StringIO):
    """A stream that says, on the test's event loop, when something was written to it, and
    which threads wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.written = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.threads: set[int] = set()

    def write(self, text: str) -> int:
        self.threads.add(threading.get_ident())
        written = super().write(text)
        self.loop.call_soon_threadsafe(self.written.set)
        return written


async def test_the_console_table_while_a_run_is_active_and_at_its_end() -> None:
    """With a tiny interval the table is printed while the run waits (the agent goes on only
    once it was), and once more when the run ends."""
    stream = Written()
    tables: list[str] = []

    async def wait_for_a_table(value: Any, context: Any) -> str:
        await stream.written.wait()
        tables.append(stream.getvalue())
        return "done"

    metrics = MetricsCollector(exporters=["console"], export_interval=0.001, console_stream=stream)
    model = ScriptedModel([used("ok", 4, 2, 0.125)])
    agents = [fn("Wait", wait_for_a_table), llm("Ask", model)]
    topology = {"nodes": ["Wait", "Ask"], "edges": ["Wait -> Ask"]}
    result = await run("go", topology, agents, metrics_collector=metrics)
    assert result.success, result.error
    await asyncio.to_thread(metrics.close)  # the table the run's end asked for is printed first
    assert "Orchestra metrics" in tables[0] and "active_branches" in tables[0]
    final = stream.getvalue()[len(tables[0]) :]
    assert final.count("Orchestra metrics") >= 1
    last = final[final.rindex("Orchestra metrics") :]
    assert "runs" in last and "outcome=succeeded" in last and "0.125000" in last
    assert threading.get_ident() not in stream.threads  # never drawn on the event loop


# ---- off, and configuration errors -----------------------------------------------------------


async def test_a_disabled_collector_collects_and_serves_nothing() -> None:
    metrics = MetricsCollector(enabled=False, prometheus_port=0)
    assert metrics.prometheus_url is None
    result = await run(
        "go", {"nodes": ["A"], "edges": []}, [fn("A", lambda v, c: "a")], metrics_collector=metrics
    )
    assert result.success
    assert metrics.get_metric("steps") == 0 and metrics.get_metric("runs") == 0


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"exporters": ["prometheus", "statsd"]}, "unknown exporter 'statsd'"),
        ({"otlp_endpoint": "http://127.0.0.1:4318/v1/metrics"}, "'otlp' is not among"),
        ({"exporters": ["otlp"], "otlp_endpoint": "127.0.0.1:4318"}, "otlp_endpoint must be"),
        ({"exporters": ["otlp"], "otlp_endpoint": "http://h", "meter_provider": 1}, "not both"),
        ({"exporters": "console"}, "exporters must be a list"),
        ({"export_interval": 0}, "export_interval"),
        ({"export_interval": -5}, "export_interval"),
        ({"enabled": "yes"}, "enabled"),
        ({"prometheus_port": 70000}, "prometheus_port"),
        ({"prometheus_host": ""}, "prometheus_host"),
    ],
)
def test_bad_settings_name_the_field(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        MetricsCollector(**settings)


def test_a_port_in_use_names_the_field() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError, match=f"prometheus_port.*127.0.0.1:{port}"):
            MetricsCollector(exporters=["prometheus"], prometheus_port=port)


def test_unknown_metrics_and_labels_are_named(metrics: MetricsCollector) -> None:
    with pytest.raises(ConfigurationError, match="no metric 'tokens'"):
        metrics.get_metric("tokens")
    with pytest.raises(ConfigurationError, match="'steps' has no label 'model'"):
        metrics.get_metric("steps", model="gpt")


async def test_the_collector_must_be_a_metrics_collector() -> None:
    with pytest.raises(TypeError, match="metrics_collector must be MetricsCollector"):
        await run("go", {"nodes": ["A"], "edges": []}, [], metrics_collector={"on": True})


def test_the_port_left_out_is_the_environments(monkeypatch: pytest.MonkeyPatch) -> None:
    """9464 fixed in code made a second test run on one machine fail to bind."""
    monkeypatch.setenv("ORCHESTRA_PROMETHEUS_PORT", "0")
    with MetricsCollector(exporters=["prometheus"]) as metrics:
        assert metrics.prometheus_url is not None
        assert not metrics.prometheus_url.endswith(":9464/metrics")
    monkeypatch.setenv("ORCHESTRA_PROMETHEUS_PORT", "nine")
    with pytest.raises(ConfigurationError, match="ORCHESTRA_PROMETHEUS_PORT='nine'"):
        MetricsCollector(exporters=["prometheus"])


@pytest.mark.parametrize("cost", [-0.01, float("nan"), float("inf")])
async def test_usage_no_counter_can_take_is_left_out_and_the_run_still_counted(
    metrics: MetricsCollector, cost: float
) -> None:
    """A negative cost made the counter raise: the stream dropped the run's watch and nothing
    after that step was counted (its branches stayed active for good); NaN spoiled the total."""
    model = ScriptedModel([used("x", -3, 5, cost)])
    agents = [llm("Hub", model)]
    hub = {"nodes": ["Hub"], "edges": ["User -> Hub", "Hub -> User"]}
    await run("go", hub, agents, metrics_collector=metrics)
    assert metrics.get_metric("cost_usd") == 0.0
    assert metrics.get_metric("prompt_tokens") == 0 and metrics.get_metric("total_tokens") == 5
    assert metrics.get_metric("runs") == 1 and metrics.get_metric("active_branches") == 0


async def test_usage_a_custom_agent_reports_is_counted(metrics: MetricsCollector) -> None:
    """Only Agent's usage was counted: a BaseAgent of one's own that reports usage was taken
    for code, its tokens and cost dropped."""

    class Reporting(BaseAgent):
        name = "Own"

        async def step(self, request: StepRequest) -> StepOutcome:
            return StepOutcome(value="done", by_code=True, usage=Usage(7, 3, 0.125))

    await run("go", {"nodes": ["Own"], "edges": []}, [Reporting()], metrics_collector=metrics)
    assert metrics.get_metric("total_tokens") == 10 and metrics.get_metric("cost_usd") == 0.125
    assert metrics.get_metric("api_calls") == 0


async def test_a_closed_collector_prints_no_more_tables() -> None:
    """close() stopped the ticker, but the next run started it again."""
    stream = io.StringIO()
    collector = MetricsCollector(exporters=["console"], console_stream=stream)
    collector.close()
    await run(
        "go", {"nodes": ["A"], "edges": []}, [fn("A", lambda v, c: v)], metrics_collector=collector
    )
    assert stream.getvalue() == "" and collector.get_metric("steps") == 1


def test_a_process_that_collects_no_metrics_does_not_import_prometheus_client() -> None:
    """Importing orchestra imported prometheus-client (some 40 ms) for every process."""
    code = (
        "import sys, orchestra\n"
        "from orchestra.coordination.orchestra import Orchestra\n"
        "from orchestra.coordination.monitoring import StatusPrinter\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
        "from orchestra.coordination.monitoring import MetricsCollector\n"
        "assert 'prometheus_client' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
