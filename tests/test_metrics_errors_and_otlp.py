"""MetricsCollector errors and OTLP lifetimes: errors counted once per failure (a routed step
failure and the branch failure after it are two), one collector per meter_provider for the
provider's life, a bounded OTLP histogram queue drained before close's export, the credential
check on the OTLP URL actually used, a dropped collector freed, and close's bound on a
provider of the application's own."""

from __future__ import annotations

import gc
import logging
import re
import weakref
from pathlib import Path
from typing import Any

import pytest
from helpers import fn, invoke, llm, run, spokes
from opentelemetry.sdk.metrics import MeterProvider, ObservableCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from test_metrics_edges import _points

from orchestra import ErrorHandlingConfig, FunctionModel, ScriptedModel
from orchestra.coordination.monitoring import MetricsCollector, otlp
from orchestra.coordination.monitoring import metrics as metrics_module
from orchestra.coordination.monitoring.metrics import SPECS
from orchestra.errors import ConfigurationError, ModelAPIError

DELTA = AggregationTemporality.DELTA


def _values(reader: InMemoryMetricReader, name: str) -> list[Any]:
    """The values of the metric's points at a collection (none: the reader got no data)."""
    data = reader.get_metrics_data()
    if data is None:
        return []
    return [
        point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


# ---- 1 and 5: a meter_provider serves one collector for its life -------------------------------


def test_a_provider_used_by_a_closed_collector_is_refused_so_counters_never_go_back() -> None:
    """A second collector on the provider started from 0: the delta reader got -97 for a
    monotonic counter, the cumulative one a sum that fell with the same start time."""
    delta = InMemoryMetricReader(preferred_temporality={ObservableCounter: DELTA})
    provider = MeterProvider(metric_readers=[delta])
    with MetricsCollector(exporters=["otlp"], meter_provider=provider) as first:
        first.series("steps", ("A",)).inc(100)
        assert _values(delta, "orchestra.steps") == [100]
    with pytest.raises(ConfigurationError, match="own") as refused:
        MetricsCollector(exporters=["otlp"], meter_provider=provider)
    assert "already served a MetricsCollector (closed or not)" in str(refused.value)
    assert all(value >= 0 for value in _values(delta, "orchestra.steps"))
    provider.shutdown()


def test_a_collector_dropped_without_close_is_freed_and_no_longer_read() -> None:
    """The provider's registry held the collector: its registry (and /metrics thread) lived
    as long as the provider, still exported."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    dropped = MetricsCollector(exporters=["otlp"], meter_provider=provider)
    dropped.series("steps", ("A",)).inc()
    gone = weakref.ref(dropped)
    del dropped
    gc.collect()
    assert gone() is None
    assert _values(reader, "orchestra.steps") == []
    provider.shutdown()


# ---- 3 and 7: the OTLP histogram queue, and close's bound --------------------------------------


def test_a_full_histogram_queue_drops_with_one_warning_and_close_empties_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A provider that never collects held up to a million observations (72 MB), dropped the
    oldest silently, and kept them after close."""
    monkeypatch.setattr(otlp, "PENDING_LIMIT", 5)
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])  # never collected
    metrics = MetricsCollector(exporters=["otlp"], meter_provider=provider)
    series = metrics.series("step_seconds", ("A",))
    instruments = series.instruments
    with caplog.at_level(logging.WARNING, logger=otlp.__name__):
        for _ in range(8):
            series.observe(0.5)
    assert len(instruments.pending) == 5
    assert metrics.get_metric("step_seconds") == 8  # the Prometheus side has them all
    [warning] = [r for r in caplog.records if r.name == otlp.__name__]
    assert "5 histogram observations are waiting" in warning.getMessage()
    metrics.close()
    assert len(instruments.pending) == 0
    provider.shutdown()


def test_close_records_the_queue_before_a_flush_bounded_like_the_docs_say(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The queue was recorded inside the last collection, so a long backlog made the final
    export miss its deadline and nothing was sent; and a provider of the application's own
    was flushed with the SDK's 10 s default, not close's 5 s."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    flushes: list[tuple[int, dict[str, Any]]] = []
    flush = provider.force_flush
    metrics = MetricsCollector(exporters=["otlp"], meter_provider=provider)
    instruments = metrics.series("step_seconds", ("A",)).instruments

    def watched(**kwargs: Any) -> bool:
        flushes.append((len(instruments.pending), kwargs))
        return flush(**kwargs)

    monkeypatch.setattr(provider, "force_flush", watched)
    for _ in range(3):
        metrics.series("step_seconds", ("A",)).observe(0.5)
    metrics.close()
    assert flushes == [(0, {"timeout_millis": 5000})]
    [point] = _points(reader, "orchestra.step_seconds")
    assert point.count == 3
    provider.shutdown()


# ---- 4: the credential check reads the URL actually used ---------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "variables", "refused"),
    [
        # the parameter wins: the generic variable (there for traces) is not read
        (
            "http://127.0.0.1:4318/v1/metrics",
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://u:SECRET@h"},
            None,
        ),
        # the metrics variable wins over the generic one
        (
            None,
            {
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://h/v1/metrics",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://h?key=SECRET",
            },
            None,
        ),
        (
            None,
            {
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://h/v1/metrics?key=SECRET",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://h",
            },
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        ),
        # an empty metrics variable is skipped, as the SDK skips it
        (
            None,
            {
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://h?key=SECRET",
            },
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
    ],
)
def test_only_the_otlp_url_the_exporter_uses_is_checked(
    endpoint: str | None,
    variables: dict[str, str],
    refused: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in metrics_module.OTLP_ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    if refused is None:
        metrics_module._check_otlp(endpoint, None, True, True)
        return
    with pytest.raises(ConfigurationError, match=f"^{refused} must not hold") as caught:
        metrics_module._check_otlp(endpoint, None, True, True)
    assert "SECRET" not in str(caught.value)


def test_a_disabled_collector_checks_no_otlp_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h?tenant=a")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", raising=False)
    MetricsCollector(enabled=False, exporters=["otlp"]).close()


# ---- 2: errors, one count per failure ----------------------------------------------------------


def _errors(metrics: MetricsCollector) -> dict[tuple[str, str], int]:
    return {
        (row["labels"]["agent"], row["labels"]["type"]): row["value"]
        for row in metrics.snapshot()["errors"]["values"]
    }


def _bad() -> ModelAPIError:
    return ModelAPIError("bad request", provider="t", model="m", status=400, retryable=False)


async def test_a_branch_failing_after_a_routed_step_failure_is_its_own_error() -> None:
    """The routed failure marked the branch, and the StepLimitError at the fallback (no step
    started in between) was taken for that failure and never counted."""
    topology = {
        "nodes": ["A", "Fallback"],
        "edges": [{"source": "A", "target": "Fallback", "metadata": {"on_error": True}}],
    }
    config = ErrorHandlingConfig(
        enable_error_routing=True, max_retries=0, retry_initial_delay=0, retry_max_delay=0
    )
    agents = [llm("A", ScriptedModel([_bad()])), fn("Fallback", lambda value, context: "ok")]
    with MetricsCollector(exporters=[]) as metrics:
        result = await run(
            "go", topology, agents, metrics_collector=metrics, error_config=config, max_steps=1
        )
        assert not result.success
        assert _errors(metrics) == {("A", "ModelAPIError"): 1, ("Fallback", "StepLimitError"): 1}


async def test_a_failed_fan_out_counts_the_workers_error_and_the_convergence_error() -> None:
    """As documented: the worker's failed step once (not again for its branch), and the
    parent branch's ConvergenceError, a failure of its own."""

    def hub(messages: object, info: object) -> dict[str, object]:
        return invoke(("W1", "x"), ("W2", "y"))

    agents = [
        llm("Hub", FunctionModel(hub)),
        llm("W1", ScriptedModel([_bad()])),
        fn("W2", lambda value, context: "fine"),
    ]
    with MetricsCollector(exporters=[]) as metrics:
        result = await run(
            "go",
            spokes("W1", "W2"),
            agents,
            metrics_collector=metrics,
            error_config=ErrorHandlingConfig(max_retries=0),
        )
        assert not result.success
        assert _errors(metrics) == {("W1", "ModelAPIError"): 1, ("Hub", "ConvergenceError"): 1}


class Requeuing:
    """A histogram whose every record queues one more observation, as a busy event loop does
    while the reader's thread drains."""

    def __init__(self) -> None:
        self.instruments: Any = None
        self.records = 0

    def record(self, amount: float, attributes: dict[str, str]) -> None:
        self.records += 1
        if self.records < 1000:
            self.instruments.queue(self, attributes, amount)


def test_a_collection_records_what_was_queued_when_it_began() -> None:
    """The drain went on while appends kept coming, holding up the export behind it."""
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    metrics = MetricsCollector(exporters=["otlp"], meter_provider=provider)
    instruments = metrics.series("step_seconds", ("A",)).instruments
    histogram = Requeuing()
    histogram.instruments = instruments
    for _ in range(3):
        instruments.queue(histogram, {"agent": "A"}, 0.5)
    instruments._record_pending()
    assert histogram.records == 3 and len(instruments.pending) == 3
    metrics.close()
    provider.shutdown()


# ---- 7: the docs' sample scrape ----------------------------------------------------------------


def test_the_docs_sample_scrape_has_the_metrics_help_text() -> None:
    """The sample's api_calls HELP line was an old text the code no longer serves."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "observability.md").read_text()
    helps = re.findall(r"^# HELP orchestra_(\w+) (.*)$", page, flags=re.MULTILINE)
    assert helps
    for name, text in helps:
        base = name.removesuffix("_total")
        assert text == SPECS[base].doc, name
