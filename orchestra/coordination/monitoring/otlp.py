"""The ``"otlp"`` exporter: a MetricsCollector's numbers as OpenTelemetry metrics, sent over
OTLP/HTTP (the ``orchestra[otel]`` extra: this module is imported only when it is chosen).

A bridge, not a second count: each counter and the gauge is an OpenTelemetry *observable*
instrument whose callback reads the collector's prometheus-client registry when the SDK
collects (every ``export_interval`` seconds, and at ``close``), so OpenTelemetry sees exactly
what ``get_metric`` and ``/metrics`` see. OpenTelemetry has no observable histogram, so each
histogram observation is also queued (a step pays a deque append, about 0.1 µs) and recorded
into an OpenTelemetry histogram with the collector's bucket bounds when the SDK collects, on
its reader's thread: recording on the step's path cost about 5 µs an observation.

The instruments are made once per provider (the SDK hands back a second instrument of a name
as the first, dropping the new callbacks), and read the one collector that uses the provider.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any
from weakref import WeakKeyDictionary

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from prometheus_client import Counter, Gauge

from orchestra.errors import ConfigurationError

from .exporters import CLOSE_WAIT
from .metrics import SPECS, MetricsCollector
from .run_watch import Series

NAME_PREFIX = "orchestra."
"""Every metric's OpenTelemetry name starts with it (``steps`` is ``orchestra.steps``)."""

PENDING_LIMIT = 1_000_000
"""Histogram observations held between two collections at most (about 100 MB); beyond it the
oldest are dropped from OpenTelemetry (never from the Prometheus side). A provider whose reader
never collects would otherwise hold every observation for good."""

Pending = deque[tuple[Histogram, dict[str, str], float]]


class _Instruments:
    """The collector's instruments on one provider, and the collector they read (None: none,
    and the callbacks observe nothing)."""

    def __init__(self, provider: MeterProvider) -> None:
        self.collector: MetricsCollector | None = None
        self.pending: Pending = deque(maxlen=PENDING_LIMIT)
        self.histograms: dict[str, Histogram] = {}
        meter = provider.get_meter("orchestra")
        for name, spec in SPECS.items():
            full = NAME_PREFIX + name
            if spec.kind is Counter:
                read = self._reader(name, "_total", spec.whole)
                meter.create_observable_counter(full, [read], description=spec.doc)
            elif spec.kind is Gauge:
                # the queued histogram observations are recorded from a callback: the SDK runs
                # every callback before it reads the histograms' storage, for each reader
                read = self._reader(name, "", spec.whole)
                meter.create_observable_up_down_counter(
                    full, [self._record_pending, read], description=spec.doc
                )
            else:
                self.histograms[name] = meter.create_histogram(
                    full,
                    unit="s",
                    description=spec.doc,
                    explicit_bucket_boundaries_advisory=spec.buckets,
                )

    def _reader(
        self, name: str, suffix: str, whole: bool
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """An observable instrument's callback: the metric's values in the registry of the
        collector using the provider now."""

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            collector = self.collector
            if collector is None:
                return []
            return [
                Observation(int(value) if whole else value, labels)
                for labels, value in collector.samples(name, suffix)
            ]

        return observe

    def _record_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        """Record the queued histogram observations (into every reader's storage: a second
        reader gets them at its next collection)."""
        pending = self.pending
        while pending:
            try:
                histogram, attributes, amount = pending.popleft()
            except IndexError:  # another reader's thread took the last one
                break
            histogram.record(amount, attributes)
        return []


_BY_PROVIDER: WeakKeyDictionary[Any, _Instruments] = WeakKeyDictionary()
_BY_PROVIDER_LOCK = threading.Lock()


class OtlpExporter:
    """The collector's metrics as OpenTelemetry instruments of ``provider``; ``own`` when the
    provider was made here (its reader exports over OTLP/HTTP), so ``close`` shuts it down."""

    def __init__(self, collector: MetricsCollector, provider: MeterProvider, own: bool) -> None:
        with _BY_PROVIDER_LOCK:
            instruments = _BY_PROVIDER.get(provider)
            if instruments is None:
                instruments = _BY_PROVIDER[provider] = _Instruments(provider)
            elif instruments.collector is not None:
                raise ConfigurationError(
                    "meter_provider is used by another MetricsCollector that is not closed: "
                    "close that one first, or give each collector a provider of its own (two "
                    "collectors' instruments of one name cannot both be exported)"
                )
            instruments.collector = collector
        self._provider = provider
        self._own = own
        self._instruments = instruments
        self.closed = False

    def mirrored(self, name: str, series: Series, attributes: dict[str, str]) -> Series:
        """A histogram series whose observations go to the OpenTelemetry histogram too."""
        return _Mirrored(series, self, self._instruments.histograms[name], attributes)

    def close(self) -> None:
        """A last export, then (a provider made here) its reader and exporter shut down; a
        provider of the application's own is flushed and no longer reads this collector."""
        self.closed = True  # an observation after this is not exported
        if self._own and isinstance(self._provider, SdkMeterProvider):
            # bounded: an endpoint that does not answer is retried until then, not for 10 s
            self._provider.shutdown(timeout_millis=CLOSE_WAIT * 1000)
        elif hasattr(self._provider, "force_flush"):
            self._provider.force_flush()
        with _BY_PROVIDER_LOCK:
            self._instruments.collector = None


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


class _Mirrored:
    """A histogram series whose observations are also queued for the OpenTelemetry side (the
    step pays an append; the SDK's record is done when it collects)."""

    __slots__ = ("attributes", "exporter", "histogram", "pending", "series")

    def __init__(
        self,
        series: Series,
        exporter: OtlpExporter,
        histogram: Histogram,
        attributes: dict[str, str],
    ) -> None:
        self.series = series
        self.exporter = exporter
        self.histogram = histogram
        self.attributes = attributes
        self.pending = exporter._instruments.pending

    def observe(self, amount: float) -> None:
        self.series.observe(amount)
        if not self.exporter.closed:
            self.pending.append((self.histogram, self.attributes, amount))
