"""The ``"otlp"`` exporter: a MetricsCollector's numbers as OpenTelemetry metrics, sent over
OTLP/HTTP (the ``orchestra[otel]`` extra: this module is imported only when it is chosen).

A bridge, not a second count: each counter and the gauge is an OpenTelemetry *observable*
instrument whose callback reads the collector's prometheus-client registry when the SDK
collects (every ``export_interval`` seconds, and at ``close``), so OpenTelemetry sees exactly
what ``get_metric`` and ``/metrics`` see and a step pays nothing for it. OpenTelemetry has no
observable histogram, so each histogram series also records into an OpenTelemetry histogram
with Prometheus's bucket bounds: the only numbers kept twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from prometheus_client import Counter, Gauge
from prometheus_client import Histogram as PrometheusHistogram

from .exporters import CLOSE_WAIT
from .metrics import SPECS, MetricsCollector
from .run_watch import Series

NAME_PREFIX = "orchestra."
"""Every metric's OpenTelemetry name starts with it (``steps`` is ``orchestra.steps``)."""

BUCKETS = tuple(bound for bound in PrometheusHistogram.DEFAULT_BUCKETS if bound != float("inf"))
"""A histogram's bucket bounds, as the Prometheus exporter's (OpenTelemetry's default ones are
for milliseconds)."""


class OtlpExporter:
    """The collector's metrics as OpenTelemetry instruments of ``provider``; ``own`` when the
    provider was made here (its reader exports over OTLP/HTTP), so ``close`` shuts it down."""

    def __init__(self, collector: MetricsCollector, provider: MeterProvider, own: bool) -> None:
        self._provider = provider
        self._own = own
        meter = provider.get_meter("orchestra")
        self._histograms: dict[str, Histogram] = {}
        for name, spec in SPECS.items():
            full = NAME_PREFIX + name
            if spec.kind is Counter:
                read = _reader(collector, name, "_total", spec.whole)
                meter.create_observable_counter(full, [read], description=spec.doc)
            elif spec.kind is Gauge:
                read = _reader(collector, name, "", spec.whole)
                meter.create_observable_up_down_counter(full, [read], description=spec.doc)
            else:
                self._histograms[name] = meter.create_histogram(
                    full,
                    unit="s",
                    description=spec.doc,
                    explicit_bucket_boundaries_advisory=BUCKETS,
                )

    def mirrored(self, name: str, series: Series, attributes: dict[str, str]) -> Series:
        """A histogram series that records to the OpenTelemetry histogram too."""
        return _Mirrored(series, self._histograms[name], attributes)

    def close(self) -> None:
        """A last export, then (a provider made here) its reader and exporter shut down."""
        if self._own and isinstance(self._provider, SdkMeterProvider):
            # bounded: an endpoint that does not answer is retried until then, not for 10 s
            self._provider.shutdown(timeout_millis=CLOSE_WAIT * 1000)
        elif hasattr(self._provider, "force_flush"):
            self._provider.force_flush()


def start_otlp(
    collector: MetricsCollector, endpoint: str | None, provider: MeterProvider | None
) -> OtlpExporter:
    """The exporter for ``collector``: into ``provider``'s readers, or (None) exporting over
    OTLP/HTTP every ``export_interval`` seconds to ``endpoint`` (None: where the standard
    ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` variables say,
    else ``http://localhost:4318/v1/metrics``)."""
    if provider is not None:
        return OtlpExporter(collector, provider, own=False)
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=endpoint),
        export_interval_millis=collector.export_interval * 1000,
    )
    return OtlpExporter(collector, SdkMeterProvider(metric_readers=[reader]), own=True)


def _reader(
    collector: MetricsCollector, name: str, suffix: str, whole: bool
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """An observable instrument's callback: the metric's values in the collector's registry."""

    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(int(value) if whole else value, labels)
            for labels, value in collector.samples(name, suffix)
        ]

    return observe


class _Mirrored:
    __slots__ = ("attributes", "histogram", "series")

    def __init__(self, series: Series, histogram: Histogram, attributes: dict[str, str]) -> None:
        self.series = series
        self.histogram = histogram
        self.attributes = attributes

    def observe(self, amount: float) -> None:
        self.series.observe(amount)
        self.histogram.record(amount, self.attributes)
