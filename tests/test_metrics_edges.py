"""MetricsCollector at its edges: a console stream that fails, export_interval's bounds, one
collector per meter_provider, failed steps counted as errors, bucket bounds for LLM work, no
credential in an OTLP URL, the console's ticking under concurrent runs, each label cut on its
own, configuration errors that name the right thing, and OTLP histograms recorded off the
event loop."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any

import pytest
from helpers import fn, llm, run
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics import _internal as sdk_internal
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from test_metrics import measured_run

from orchestra import ErrorHandlingConfig, ScriptedModel
from orchestra.coordination.monitoring import MetricsCollector
from orchestra.coordination.monitoring import metrics as metrics_module
from orchestra.coordination.monitoring.exporters import ConsoleTable
from orchestra.coordination.monitoring.metrics import CALL_BUCKETS, TOOL_BUCKETS, WAIT_BUCKETS
from orchestra.errors import ConfigurationError, ModelAPIError

# ---- 1: a console stream that fails ------------------------------------------------------------


class Failing(io.StringIO):
    """A stream whose every write fails as ``error`` says."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise self.error


def _rows() -> list[tuple[str, Mapping[str, str], str]]:
    return [("steps", {"agent": "A"}, "1")]


@pytest.mark.parametrize(
    "error", [BrokenPipeError(32, "Broken pipe"), ValueError("I/O operation on closed file")]
)
def test_a_failing_console_stream_stops_the_console_and_leaves_stdout_alone(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    """rich answered a broken pipe by pointing fd 1 at /dev/null and raising SystemExit, which
    ended the console's thread without a word; any other error ended it silently too."""
    before = os.fstat(1)
    stream = Failing(error)
    console = ConsoleTable(_rows, 60, stream)
    with caplog.at_level(logging.WARNING):
        console.ask()
        thread = console._thread
        assert thread is not None
        thread.join(5)
        assert not thread.is_alive()
        console.ask()  # stopped for good: no second try on the failed stream
        console.close()
    after = os.fstat(1)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    assert stream.writes == 1 and console._thread is thread
    [record] = [r for r in caplog.records if "metrics console" in r.getMessage()]
    assert type(error).__name__ in record.getMessage()


# ---- 2: export_interval -------------------------------------------------------------------------


@pytest.mark.parametrize("interval", [float("inf"), 1e10, float("nan"), 86401])
def test_an_export_interval_no_timer_takes_is_refused(interval: float) -> None:
    """inf passed validation, then the console's thread died on an OverflowError."""
    with pytest.raises(ConfigurationError, match=r"export_interval must be .* at most 86400"):
        MetricsCollector(exporters=["console"], export_interval=interval)


def test_a_day_is_a_valid_export_interval() -> None:
    MetricsCollector(exporters=["console"], export_interval=86400).close()


# ---- 3: one meter_provider ---------------------------------------------------------------------


def _points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def test_one_collector_per_provider_and_a_closed_one_is_no_longer_read() -> None:
    """The SDK handed the second collector the first one's instruments, dropping its
    callbacks: it was never exported, and the closed first one went on being exported. A
    provider now serves one collector for its life (tests/test_metrics_errors_and_otlp.py)."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    first = MetricsCollector(exporters=["otlp"], meter_provider=provider)
    first.series("steps", ("A",)).inc()
    with pytest.raises(ConfigurationError, match="meter_provider has already served"):
        MetricsCollector(exporters=["otlp"], meter_provider=provider)
    assert [p.value for p in _points(reader, "orchestra.steps")] == [1]
    first.close()
    first.series("steps", ("A",)).inc()
    assert [p.value for p in _points(reader, "orchestra.steps")] == [1]  # the SDK's last point
    provider.shutdown()


# ---- 4: failed steps are errors ----------------------------------------------------------------


async def test_a_failed_step_handed_on_by_error_routing_is_an_error() -> None:
    """Only BranchFailed was counted: a workflow recovering from every model failure through
    an on_error edge showed no error at all."""
    topology = {
        "nodes": ["A", "Fallback"],
        "edges": [{"source": "A", "target": "Fallback", "metadata": {"on_error": True}}],
    }
    config = ErrorHandlingConfig(
        enable_error_routing=True, max_retries=0, retry_initial_delay=0, retry_max_delay=0
    )
    bad = ModelAPIError("bad request", provider="t", model="m", status=400, retryable=False)
    agents = [llm("A", ScriptedModel([bad])), fn("Fallback", lambda value, context: "recovered")]
    with MetricsCollector(exporters=[]) as metrics:
        result = await run("go", topology, agents, metrics_collector=metrics, error_config=config)
        assert result.success
        [row] = metrics.snapshot()["errors"]["values"]
        assert row == {"labels": {"agent": "A", "type": "ModelAPIError"}, "value": 1}


# ---- 5: buckets --------------------------------------------------------------------------------


def test_histogram_buckets_reach_llm_steps_and_long_fan_outs() -> None:
    """Prometheus's defaults stopped at 10 s: every model step and fan-out landed in +Inf."""
    with MetricsCollector(exporters=[]) as metrics:
        metrics.series("step_seconds", ("A",)).observe(95)
        metrics.series("convergence_wait_seconds", ("Hub",)).observe(240)
        bounds = {
            (name, float(labels["le"])): value
            for name in ("step_seconds", "convergence_wait_seconds")
            for labels, value in metrics.samples(name, "_bucket")
        }
    assert bounds[("step_seconds", 81.92)] == 0 and bounds[("step_seconds", 163.84)] == 1
    assert bounds[("convergence_wait_seconds", 120)] == 0
    assert bounds[("convergence_wait_seconds", 300)] == 1
    assert CALL_BUCKETS[0] == 0.01 and CALL_BUCKETS[-1] == pytest.approx(327.68)
    assert TOOL_BUCKETS[-1] == 60 and WAIT_BUCKETS[-1] == 3600


# ---- 6: credentials in the OTLP URL ------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:4318/v1/metrics?api_key=SECRET123",
        "http://user:SECRET123@127.0.0.1:4318/v1/metrics",
    ],
)
def test_a_credential_in_the_otlp_url_is_refused_without_repeating_it(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK logs the URL, query included, at every failed export."""
    with pytest.raises(ConfigurationError, match="otlp_endpoint must not hold") as caught:
        MetricsCollector(exporters=["otlp"], otlp_endpoint=url)
    assert "SECRET123" not in str(caught.value)
    assert "OTEL_EXPORTER_OTLP_HEADERS" in str(caught.value)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_OTLP_ENDPOINT must not") as env:
        MetricsCollector(exporters=["otlp"])
    assert "SECRET123" not in str(env.value)


# ---- 7: the console's ticking under runs on several threads -----------------------------------


class Ticks:
    """A console that records ``ticking`` calls; the first ``ticking(False)`` lets another
    thread start a run while it is in progress (the window of the race)."""

    def __init__(self, collector: MetricsCollector) -> None:
        self.collector = collector
        self.calls: list[bool] = []
        self.raced = False

    def ticking(self, on: bool) -> None:
        if not on and not self.raced:
            self.raced = True
            other = threading.Thread(target=self.collector._run_active, args=(object(), True))
            other.start()
            # with the lock, the other run waits for this call: the join times out, and only
            # afterwards does it start the ticking; without it, its True came before this False
            other.join(0.5)
            self.thread = other
        self.calls.append(on)

    def ask(self) -> None:
        """No table is drawn here."""


def test_a_run_ending_never_stops_the_ticking_of_a_run_starting_meanwhile() -> None:
    with MetricsCollector(exporters=[]) as metrics:
        ticks = Ticks(metrics)
        metrics._console = ticks  # type: ignore[assignment]
        ending = object()
        metrics._run_active(ending, True)  # type: ignore[arg-type]
        metrics._run_active(ending, False)  # type: ignore[arg-type]
        ticks.thread.join(5)
        metrics._console = None
    assert ticks.calls == [True, False, True]  # the run still active ticks


# ---- 9: each label cut on its own --------------------------------------------------------------


def test_each_label_is_cut_on_its_own_so_rows_stay_apart() -> None:
    stream = io.StringIO()
    agent = "Customer_Support_Escalation_Specialist_For_Enterprise_Accounts_EMEA"
    metrics = MetricsCollector(exporters=["console"], console_stream=stream)
    metrics.series("tool_calls", (agent, "lookup_order", "ok")).inc(7)
    metrics.series("tool_calls", (agent, "lookup_order", "error")).inc(3)
    assert metrics._console is not None
    metrics._console.ask()
    metrics.close()
    text = stream.getvalue()  # a long row wraps onto more lines
    assert text.count("tool=lookup_order") == 2
    assert "outcome=ok" in text and "outcome=error" in text
    assert "(27 more characters)" in text  # the agent's name, cut to 40


# ---- 10: configuration errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings", [{"exporters": ["console"]}, {"enabled": False}], ids=["no prometheus", "off"]
)
def test_the_port_variable_is_read_only_when_the_endpoint_is_served(
    settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRA_PROMETHEUS_PORT", "nine")
    MetricsCollector(**settings).close()


def test_a_port_variable_out_of_range_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRA_PROMETHEUS_PORT", "-1")
    with pytest.raises(ConfigurationError, match="ORCHESTRA_PROMETHEUS_PORT='-1'"):
        MetricsCollector(exporters=["prometheus"])


def test_a_host_that_does_not_resolve_names_prometheus_host() -> None:
    with pytest.raises(ConfigurationError, match=r"^prometheus_host: cannot resolve"):
        MetricsCollector(exporters=["prometheus"], prometheus_host="no-such-host.invalid")


def test_a_port_in_use_fails_before_an_otlp_exporter_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The OTLP exporter was made first; the cleanup's last export then waited 5 s for an
    endpoint that was down."""
    made: list[object] = []
    monkeypatch.setattr(metrics_module, "_otlp_exporter", lambda *args: made.append(args))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError, match="prometheus_port"):
            MetricsCollector(exporters=["prometheus", "otlp"], prometheus_port=port)
    assert made == []


# ---- 8: OTLP histograms are recorded off the event loop ----------------------------------------


async def test_otlp_histograms_are_recorded_at_collection_never_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Recording each observation into the SDK's histogram on the step's path cost more than
    the whole collector; with two readers, each still gets every observation."""
    on_loop: list[bool] = []
    record = sdk_internal.instrument._Histogram.record

    def watched(self: Any, amount: float, *args: Any, **kwargs: Any) -> None:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        record(self, amount, *args, **kwargs)

    monkeypatch.setattr(sdk_internal.instrument._Histogram, "record", watched)
    readers = [InMemoryMetricReader(), InMemoryMetricReader()]
    provider = MeterProvider(metric_readers=readers)
    with MetricsCollector(exporters=["otlp"], meter_provider=provider) as metrics:
        await measured_run(metrics)
        assert on_loop == []  # nothing recorded on the engine's path
        counts = [  # an in-memory reader collects on the caller's thread: not on the loop
            {
                dict(p.attributes or {})["agent"]: p.count
                for p in await asyncio.to_thread(_points, reader, "orchestra.step_seconds")
            }
            for reader in readers
        ]
        assert (
            counts[0]["Hub"] == counts[1]["Hub"] == metrics.get_metric("step_seconds", agent="Hub")
        )
    assert on_loop and not any(on_loop)
    provider.shutdown()
