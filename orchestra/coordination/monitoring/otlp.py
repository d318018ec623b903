"""The ``"otlp"`` exporter: a MetricsCollector's numbers as OpenTelemetry metrics, sent over
OTLP/HTTP (the ``orchestra[otel]`` extra: this module is imported only when it is chosen).

A bridge, not a second count: each counter and the gauge is an OpenTelemetry *observable*
instrument whose callback reads the collector's prometheus-client registry when the SDK
collects (every ``export_interval`` seconds, and at ``close``), so OpenTelemetry sees exactly
what ``get_metric`` and ``/metrics`` see. OpenTelemetry has no observable histogram, so each
histogram observation is also queued (a step pays a deque append) and recorded into an
OpenTelemetry histogram with the collector's bucket bounds when the SDK collects, on its
reader's thread: recording on the step's path cost about 5 µs an observation. The queue is
bounded (``PENDING_LIMIT``); the SDK's histogram has no bulk record, so a queue aggregated
into bucket counts could not be handed over without inventing values.

A provider serves one collector for its whole life: the SDK keeps each counter stream's last
value per provider, so a second collector counting from 0 would send the counters backwards,
and the SDK would hand it the first one's instruments (same names), dropping its callbacks.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from prometheus_client import Counter, Gauge

from orchestra.errors import ConfigurationError

from .exporters import CLOSE_WAIT
from .metrics import SPECS, MetricsCollector
from .run_watch import Series

logger = logging.getLogger(__name__)

NAME_PREFIX = "orchestra."
"""Every metric's OpenTelemetry name starts with it (``steps`` is ``orchestra.steps``)."""

PENDING_LIMIT = 100_000
"""Histogram observations held between two collections at most (about 7 MB; recording them
all takes about half a second, well inside ``close``'s 5 s). Beyond it, observations are left
out of OpenTelemetry (never out of the Prometheus side) until the next collection, with one
WARNING: a reader that never collects (a no-op provider) would otherwise hold them all."""

_USED: weakref.WeakSet[Any] = weakref.WeakSet()
"""The providers a collector has used (closed or not)."""
_USED_LOCK = threading.Lock()


class _Instruments:
    """The collector's instruments on its provider. The collector is held weakly, so the
    provider does not keep a dropped one alive: gone, or released at ``close``, the callbacks
    observe nothing (what it counted since the last export is not sent; close it)."""

    def __init__(self, collector: MetricsCollector, provider: MeterProvider) -> None:
        self._collector: weakref.ref[MetricsCollector] | None = weakref.ref(collector)
        self.pending: deque[tuple[Histogram, dict[str, str], float]] = deque()
        self.queueing = True
        self.dropping = False  # the WARNING about a full queue was logged
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
        """An observable instrument's callback: the metric's values in the collector's
        registry."""

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            reference = self._collector
            collector = reference() if reference is not None else None
            if collector is None:
                return []
            return [
                Observation(int(value) if whole else value, labels)
                for labels, value in collector.samples(name, suffix)
            ]

        return observe

    def queue(self, histogram: Histogram, attributes: dict[str, str], amount: float) -> None:
        """An observation for the next collection, unless the queue is full or closed."""
        if not self.queueing:
            return
        if len(self.pending) < PENDING_LIMIT:
            self.pending.append((histogram, attributes, amount))
        elif not self.dropping:
            self.dropping = True
            logger.warning(
                "OTLP metrics: %d histogram observations are waiting for the meter provider's "
                "next collection; more are left out of OTLP until it collects (get_metric and "
                "/metrics count them all). Collect more often (export_interval) or check that "
                "the provider has a reader.",
                PENDING_LIMIT,
            )

    def _record_pending(self, options: CallbackOptions | None = None) -> Iterable[Observation]:
        """Record the observations queued so far (into every reader's storage: a second
        reader gets them at its next collection). Those queued meanwhile wait for the next
        collection: a drain chasing a busy event loop's appends would hold up the export."""
        pending = self.pending
        for _ in range(len(pending)):
            try:
                histogram, attributes, amount = pending.popleft()
            except IndexError:  # another reader's thread took the last one
                break
            histogram.record(amount, attributes)
        return []

    def stop_queueing(self) -> None:
        """No more observations; those queued are recorded now, on the caller's thread, so
        the last collection only exports (its timeout then bounds the whole of it)."""
        self.queueing = False
        self._record_pending()

    def release(self) -> None:
        """The collector is no longer read (the provider keeps the instruments)."""
        self._collector = None
        self.pending.clear()


class OtlpExporter:
    """The collector's metrics as OpenTelemetry instruments of ``provider``; ``own`` when the
    provider was made here (its reader exports over OTLP/HTTP), so ``close`` shuts it down."""

    def __init__(self, collector: MetricsCollector, provider: MeterProvider, own: bool) -> None:
        with _USED_LOCK:
            if provider in _USED:
                raise ConfigurationError(
                    "meter_provider has already served a MetricsCollector (closed or not): a "
                    "provider serves one collector for its whole life, since a new collector's "
                    "counts, starting from 0, would send its counters backwards; give each "
                    "collector a MeterProvider of its own"
                )
            _USED.add(provider)
        self._provider = provider
        self._own = own
        self._instruments = _Instruments(collector, provider)

    def mirrored(self, name: str, series: Series, attributes: dict[str, str]) -> Series:
        """A histogram series whose observations go to the OpenTelemetry histogram too."""
        return _Mirrored(series, self._instruments, self._instruments.histograms[name], attributes)

    def close(self) -> None:
        """A last export, then (a provider made here) its reader and exporter shut down; a
        provider of the application's own is flushed and no longer reads this collector.
        Either is bounded by ``CLOSE_WAIT`` (an endpoint that does not answer is retried until
        then, not for the SDK's 10 s)."""
        instruments = self._instruments
        instruments.stop_queueing()
        timeout = CLOSE_WAIT * 1000
        if isinstance(self._provider, SdkMeterProvider):
            if self._own:
                self._provider.shutdown(timeout_millis=timeout)
            else:
                self._provider.force_flush(timeout_millis=timeout)
        elif hasattr(self._provider, "force_flush"):
            self._provider.force_flush()
        instruments.release()


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

    __slots__ = ("attributes", "histogram", "instruments", "series")

    def __init__(
        self,
        series: Series,
        instruments: _Instruments,
        histogram: Histogram,
        attributes: dict[str, str],
    ) -> None:
        self.series = series
        self.instruments = instruments
        self.histogram = histogram
        self.attributes = attributes

    def observe(self, amount: float) -> None:
        self.series.observe(amount)
        self.instruments.queue(self.histogram, self.attributes, amount)
