"""The "otlp" exporter: the metrics' shape in the OpenTelemetry SDK (its in-memory reader),
a real export over OTLP/HTTP to a loopback server decoded with the official protobuf, and the
error when the extra is not installed."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from test_metrics import measured_run

from orchestra.coordination.monitoring import MetricsCollector
from orchestra.coordination.monitoring.metrics import CALL_BUCKETS
from orchestra.errors import ConfigurationError


async def test_the_metrics_as_opentelemetry_instruments() -> None:
    """Counters are monotonic sums, the gauge a non-monotonic sum, histograms histograms;
    every value is the registry's (one set of numbers)."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with MetricsCollector(exporters=["otlp"], meter_provider=provider) as metrics:
        await measured_run(metrics)
        data = reader.get_metrics_data()
    assert data is not None
    found = {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    calls = found["orchestra.api_calls"].data
    assert calls.is_monotonic
    [point] = calls.data_points
    assert point.value == 5 and dict(point.attributes or {}) == {
        "agent": "Hub",
        "model": "ScriptedModel",
    }
    assert sum(p.value for p in found["orchestra.steps"].data.data_points) == 5
    branches = found["orchestra.active_branches"].data
    assert not branches.is_monotonic
    assert [p.value for p in branches.data_points] == [0]
    steps = {
        dict(p.attributes or {})["agent"]: p
        for p in found["orchestra.step_seconds"].data.data_points
    }
    assert steps["Hub"].count == metrics.get_metric("step_seconds", agent="Hub") == 3
    assert tuple(steps["Hub"].explicit_bounds) == CALL_BUCKETS  # the Prometheus side's
    assert found["orchestra.cost_usd"].data.data_points[0].value == pytest.approx(0.75)
    provider.shutdown()


class Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver's endpoint: keeps each POST's path and body."""

    posts: list[tuple[str, bytes]]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.posts.append((self.path, self.rfile.read(length)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    posts: list[tuple[str, bytes]] = []
    handler = type("Handler", (Receiver,), {"posts": posts})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", posts
    server.shutdown()
    server.server_close()


async def test_an_export_over_otlp_http_decodes_with_the_official_protobuf(
    receiver: tuple[str, list[tuple[str, bytes]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where to send comes from the standard variable (``/v1/metrics`` added to it); close
    exports what was counted."""
    base, posts = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", base)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", raising=False)
    metrics = MetricsCollector(exporters=["otlp"], export_interval=3600)
    await measured_run(metrics)
    metrics.close()
    metrics.close()
    assert posts, "nothing was exported at close"
    path, body = posts[-1]
    assert path == "/v1/metrics"
    request = ExportMetricsServiceRequest()
    request.ParseFromString(body)
    metrics_by_name = {
        metric.name: metric
        for resource in request.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    tokens = metrics_by_name["orchestra.total_tokens"].sum
    assert tokens.is_monotonic and [p.as_int for p in tokens.data_points] == [660]
    labels = {kv.key: kv.value.string_value for kv in tokens.data_points[0].attributes}
    assert labels == {"agent": "Hub", "model": "ScriptedModel"}
    runs = metrics_by_name["orchestra.runs"].sum.data_points
    assert [(p.attributes[0].value.string_value, p.as_int) for p in runs] == [("succeeded", 1)]
    waits = metrics_by_name["orchestra.convergence_wait_seconds"].histogram.data_points
    assert [p.count for p in waits] == [1]


def test_without_the_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "orchestra.coordination.monitoring.otlp", raising=False)
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.metrics", None)
    with pytest.raises(ConfigurationError, match=r"'otlp'.*pip install 'orchestra\[otel\]'"):
        MetricsCollector(exporters=["otlp"])
