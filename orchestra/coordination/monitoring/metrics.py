"""MetricsCollector: counters, a gauge and histograms read from runs' event streams.

A collector never touches the engine: each run it is given to subscribes one small observer
(``run_watch.RunWatch``) to the run's event stream, as the status display does. The numbers live
in a prometheus-client registry of the collector's own, which ``get_metric``, ``snapshot``, the
``/metrics`` endpoint, the console table and the OTLP exporter all read. Events replayed from a
session's log (a resumed run catching up) are never counted: they were counted when they
happened.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from orchestra.agents.base import BaseAgent
from orchestra.agents.pool import AgentPool
from orchestra.errors import ConfigurationError

from .agent_models import model_name
from .exporters import ConsoleTable, PrometheusEndpoint
from .run_watch import RunWatch, Series

if TYPE_CHECKING:  # the OpenTelemetry SDK is imported only when "otlp" is chosen
    from .otlp import OtlpExporter

EXPORTERS = ("prometheus", "console", "otlp")
PREFIX = "orchestra_"
"""Every metric's Prometheus name starts with it (``steps`` is ``orchestra_steps_total``)."""


@dataclass(frozen=True)
class _Spec:
    kind: type[MetricWrapperBase]
    labels: tuple[str, ...]
    doc: str
    whole: bool = True  # its values are counts (get_metric gives an int)
    buckets: tuple[float, ...] = ()  # a histogram's bucket bounds, for Prometheus and OTLP alike


_MODEL = ("agent", "model")
CALL_BUCKETS = tuple(0.01 * 2**power for power in range(16))
"""Steps and model calls, 0.01 s to 327.68 s doubling (OpenTelemetry's GenAI semantic
conventions advise these up to 81.92 s; a slow model's long answer takes minutes)."""
TOOL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30, 60)
"""Tool calls: Prometheus's defaults (most tools are quick), and 30 s and 60 s for slow ones."""
WAIT_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
"""A fan-out's convergence wait: its branches' whole work, up to an hour."""
SPECS: dict[str, _Spec] = {
    "api_calls": _Spec(
        Counter, _MODEL, "Model calls begun: each step of a model-backed agent, each retry"
    ),
    "prompt_tokens": _Spec(Counter, _MODEL, "Prompt tokens of the model replies used"),
    "completion_tokens": _Spec(Counter, _MODEL, "Completion tokens of the model replies used"),
    "total_tokens": _Spec(Counter, _MODEL, "Prompt plus completion tokens"),
    "cost_usd": _Spec(
        Counter, _MODEL, "Cost in US dollars, where the model's price is known", False
    ),
    "steps": _Spec(Counter, ("agent",), "Agent steps completed"),
    "tool_calls": _Spec(Counter, ("agent", "tool", "outcome"), "Tool calls finished"),
    "retries": _Spec(Counter, _MODEL, "Model calls retried after a passing failure"),
    "errors": _Spec(
        Counter,
        ("agent", "type"),
        "Failures, by error type: failed steps (routed on or not) and branches failed otherwise",
    ),
    "runs": _Spec(
        Counter, ("outcome",), "Runs stopped: succeeded, failed, paused, cancelled or halted"
    ),
    "budget_exceeded": _Spec(
        Counter,
        ("scope", "limit"),
        "Spent budgets that stopped a run's work (once per question to the user), by scope "
        "(run, branch or agent) and limit",
    ),
    "active_branches": _Spec(Gauge, (), "Branches open in active runs"),
    "step_seconds": _Spec(Histogram, ("agent",), "Agent step latency", buckets=CALL_BUCKETS),
    "model_call_seconds": _Spec(
        Histogram,
        _MODEL,
        "Model call latency, each attempt on its own (retries apart)",
        buckets=CALL_BUCKETS,
    ),
    "tool_call_seconds": _Spec(
        Histogram, ("agent", "tool"), "Tool call latency", buckets=TOOL_BUCKETS
    ),
    "convergence_wait_seconds": _Spec(
        Histogram,
        ("agent",),
        "Fan-out start to convergence (working time), by the agent that fanned out",
        buckets=WAIT_BUCKETS,
    ),
}
"""The metrics, by the name ``get_metric`` takes (docs/observability.md has the table)."""

_SUFFIX = {Counter: "_total", Gauge: "", Histogram: "_count"}


DEFAULT_PORT = 9464
PORT_VARIABLE = "ORCHESTRA_PROMETHEUS_PORT"
MAX_INTERVAL = 86400.0
"""The longest ``export_interval``, a day: a longer wait overflows the platform's timer."""
OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def _default_port() -> int:
    """The port from the environment (read only when the endpoint is served), else 9464."""
    text = os.environ.get(PORT_VARIABLE)
    if text is None:
        return DEFAULT_PORT
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigurationError(
            f"{PORT_VARIABLE}={text!r} is not a port number from 0 to 65535 (0 picks a free one)"
        )
    return port


class MetricsCollector:
    """Counts what runs do, for any number of runs at once (pass it to ``Orchestra.run`` or
    ``OrchestraInstance`` as ``metrics_collector``).

    The ``"prometheus"`` exporter serves ``/metrics`` on ``prometheus_host:prometheus_port``
    from the moment the collector is made (port 0 picks a free port; ``prometheus_url`` says
    which) until :meth:`close`. Without a ``prometheus_port``, the port is
    ``ORCHESTRA_PROMETHEUS_PORT`` from the environment, else 9464 (OpenTelemetry's
    Prometheus exporter's): a deployment chooses it without changing code. The ``"console"``
    exporter prints a table to ``console_stream`` (default stderr) every ``export_interval``
    seconds while runs are active, and once when runs end. The ``"otlp"`` exporter (the
    ``orchestra[otel]`` extra) sends the numbers as OpenTelemetry metrics every
    ``export_interval`` seconds and at :meth:`close`, over OTLP/HTTP to ``otlp_endpoint`` (else
    the standard ``OTEL_EXPORTER_OTLP_*`` variables say where), or to the readers of a
    ``meter_provider`` of your own. ``enabled=False`` collects nothing, serves nothing and is
    never subscribed. A ``with`` (or ``async with``) block closes it at its end.
    """

    def __init__(
        self,
        enabled: bool = True,
        export_interval: float = 60,
        exporters: Iterable[str] = ("prometheus", "console"),
        prometheus_host: str = "127.0.0.1",
        prometheus_port: int | None = None,
        *,
        console_stream: TextIO | None = None,
        otlp_endpoint: str | None = None,
        meter_provider: Any = None,
    ) -> None:
        chosen = _check(enabled, export_interval, exporters, prometheus_host, prometheus_port)
        _check_otlp(otlp_endpoint, meter_provider, "otlp" in chosen, enabled)
        if prometheus_port is None and enabled and "prometheus" in chosen:
            prometheus_port = _default_port()
        self.enabled = enabled
        self.export_interval = float(export_interval)
        self.exporters = chosen
        self.registry = CollectorRegistry(auto_describe=True)
        self._metrics: dict[str, MetricWrapperBase] = {
            name: _metric(name, spec, self.registry) for name, spec in SPECS.items()
        }
        self._series: dict[tuple[str, tuple[str, ...]], Series] = {}
        self._active: set[RunWatch] = set()
        self._activity = threading.Lock()  # runs starting and ending on several loops' threads
        self._closing = threading.Lock()
        self._endpoint: PrometheusEndpoint | None = None
        self._console: ConsoleTable | None = None
        self._otlp: OtlpExporter | None = None
        if not enabled:
            return
        try:
            # the endpoint first: a port in use fails before an OTLP exporter is made (whose
            # shutdown would try a last export, up to 5 s against an endpoint that is down)
            if "prometheus" in chosen:
                port = DEFAULT_PORT if prometheus_port is None else prometheus_port
                self._endpoint = PrometheusEndpoint(self.registry, prometheus_host, port)
            if "console" in chosen:
                stream = console_stream or sys.stderr
                self._console = ConsoleTable(self._rows, self.export_interval, stream)
            if "otlp" in chosen:
                self._otlp = _otlp_exporter(self, otlp_endpoint, meter_provider)
        except ConfigurationError:
            self.close()
            raise

    @property
    def prometheus_url(self) -> str | None:
        """The ``/metrics`` URL, or None without the prometheus exporter (or once closed)."""
        endpoint = self._endpoint
        return endpoint.url if endpoint is not None else None

    def get_metric(self, name: str, **labels: Any) -> float:
        """The current value of metric ``name``: for a labelled metric, the sum over the label
        values not given; for a histogram, the number of observations (``snapshot`` has their
        sum too). Counts are ints, ``cost_usd`` a float."""
        spec = _spec(name)
        unknown = sorted(set(labels) - set(spec.labels))
        if unknown:
            raise ConfigurationError(
                f"metric {name!r} has no label {unknown[0]!r}; its labels: "
                f"{', '.join(spec.labels) or 'none'}"
            )
        wanted = {key: str(value) for key, value in labels.items()}
        total = sum(
            value
            for sample_labels, value in self.samples(name, _SUFFIX[spec.kind])
            if all(sample_labels.get(key) == value for key, value in wanted.items())
        )
        return int(total) if spec.whole else total

    def snapshot(self) -> dict[str, Any]:
        """Every metric as plain data: its type, labels, total and a value per label set (for
        a histogram, ``count`` and ``sum`` per label set)."""
        return {name: self._plain(name, spec) for name, spec in SPECS.items()}

    def close(self) -> None:
        """Stop the exporters: the ``/metrics`` endpoint at once, the console after the table
        a run's end asked for, the OTLP exporter after a last export. The numbers stay
        readable. Safe to call again and from any thread; it waits for the exporters' threads
        (the OTLP export over the network included), so from async code use ``async with`` or
        ``await asyncio.to_thread(metrics.close)``."""
        with self._closing:
            endpoint, console, otlp = self._endpoint, self._console, self._otlp
            self._endpoint = self._console = self._otlp = None  # a run after close() sends nothing
        if endpoint is not None:
            endpoint.close()
        if console is not None:
            console.close()
        if otlp is not None:
            otlp.close()

    def __enter__(self) -> MetricsCollector:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> MetricsCollector:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.close)  # it waits for threads: never on the event loop

    def watch(self, agents: Mapping[str, BaseAgent | AgentPool]) -> RunWatch:
        """A subscriber for one run's event stream (``agents``: the run's, by node name, to
        label model calls with their model); ``stop`` it when the run stops for a reason no
        event reports (cancelled, halted)."""
        return RunWatch(self, {name: model_name(agent) for name, agent in agents.items()})

    # ---- what the watches call ---------------------------------------------------------------

    def series(self, name: str, values: tuple[str, ...]) -> Series:
        """Metric ``name``'s series for these label values, made once and kept (with the
        OTLP exporter, a histogram's records to its OpenTelemetry histogram too)."""
        key = (name, values)
        found = self._series.get(key)
        if found is None:
            found = self._metrics[name].labels(*values)
            otlp = self._otlp
            if otlp is not None and SPECS[name].kind is Histogram:
                found = otlp.mirrored(
                    name, found, dict(zip(SPECS[name].labels, values, strict=True))
                )
            found = self._series.setdefault(key, found)
        return found

    @staticmethod
    def labelled_by_model(name: str) -> bool:
        return SPECS[name].labels == _MODEL

    def _branches(self, change: int) -> None:
        self._metrics["active_branches"].inc(change)  # type: ignore[attr-defined]

    def _run_active(self, watch: RunWatch, active: bool) -> None:
        """A run became active or stopped. The set and the console's ticking change together
        under one lock: else a run ending on one thread could stop the ticking just after a run
        starting on another had started it, and that run would get no periodic table."""
        with self._activity:
            if active:
                self._active.add(watch)
            else:
                self._active.discard(watch)
            console = self._console
            if console is None:
                return
            console.ticking(bool(self._active))
        if not active:
            console.ask()  # runs ending together print one table

    # ---- reading the registry ----------------------------------------------------------------

    def samples(self, name: str, suffix: str) -> list[tuple[dict[str, str], float]]:
        full = PREFIX + name + suffix
        return [
            (sample.labels, sample.value)
            for family in self._metrics[name].collect()
            for sample in family.samples
            if sample.name == full
        ]

    def _plain(self, name: str, spec: _Spec) -> dict[str, Any]:
        kind = spec.kind.__name__.lower()
        values: list[dict[str, Any]]
        if spec.kind is Histogram:
            sums = {_key(labels): value for labels, value in self.samples(name, "_sum")}
            counts = self.samples(name, "_count")
            values = [
                {"labels": labels, "count": int(count), "sum": sums.get(_key(labels), 0.0)}
                for labels, count in counts
            ]
            total: float = int(sum(count for _, count in counts))
        else:
            samples = self.samples(name, _SUFFIX[spec.kind])
            values = [
                {"labels": labels, "value": int(value) if spec.whole else value}
                for labels, value in samples
            ]
            total = sum(value for _, value in samples)
            total = int(total) if spec.whole else total
        return {"type": kind, "labels": list(spec.labels), "total": total, "values": values}

    def _rows(self) -> list[tuple[str, Mapping[str, str], str]]:
        """The console table's rows: a row per metric and label set that has a value."""
        rows: list[tuple[str, Mapping[str, str], str]] = []
        for name, data in self.snapshot().items():
            for item in data["values"]:
                labels = item["labels"]
                if "count" in item:
                    value = f"{item['count']} ({item['sum']:.3f} s)"
                elif name == "cost_usd":
                    value = f"{item['value']:.6f}"
                else:
                    value = str(item["value"])
                rows.append((name, labels, value))
        return rows


def _otlp_exporter(
    collector: MetricsCollector, endpoint: str | None, meter_provider: Any
) -> OtlpExporter:
    """The OTLP exporter, its SDK imported only now (the optional extra ``orchestra[otel]``)."""
    try:
        from .otlp import start_otlp
    except ImportError as error:
        raise ConfigurationError(
            "exporters: 'otlp' needs the OpenTelemetry SDK and its OTLP/HTTP exporter, which "
            f"are not installed ({error}); install the extra: pip install 'orchestra[otel]'"
        ) from None
    return start_otlp(collector, endpoint, meter_provider)


def _metric(name: str, spec: _Spec, registry: CollectorRegistry) -> MetricWrapperBase:
    if spec.kind is Histogram:
        return Histogram(
            PREFIX + name, spec.doc, spec.labels, registry=registry, buckets=spec.buckets
        )
    return spec.kind(PREFIX + name, spec.doc, spec.labels, registry=registry)


def _spec(name: str) -> _Spec:
    spec = SPECS.get(name)
    if spec is None:
        raise ConfigurationError(f"no metric {name!r}; the metrics are: {', '.join(SPECS)}")
    return spec


def _key(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def _check(
    enabled: object, interval: object, exporters: object, host: object, port: object
) -> tuple[str, ...]:
    """The exporters chosen; ConfigurationError naming the first field that is wrong."""
    if not isinstance(enabled, bool):
        raise ConfigurationError(f"enabled must be True or False, got {enabled!r}")
    if (
        isinstance(interval, bool)
        or not isinstance(interval, int | float)
        or not 0 < interval <= MAX_INTERVAL
    ):
        raise ConfigurationError(
            f"export_interval must be a number of seconds above 0 and at most {MAX_INTERVAL:g} "
            f"(a day), got {interval!r}"
        )
    if isinstance(exporters, str) or not isinstance(exporters, Iterable):
        raise ConfigurationError(f"exporters must be a list of names, got {exporters!r}")
    chosen = tuple(exporters)
    for name in chosen:
        if name not in EXPORTERS:
            raise ConfigurationError(
                f"exporters: unknown exporter {name!r}; the exporters are: {', '.join(EXPORTERS)}"
            )
    if not isinstance(host, str) or not host:
        raise ConfigurationError(f"prometheus_host must be a host name or address, got {host!r}")
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535
    ):
        raise ConfigurationError(
            f"prometheus_port must be a port number from 0 to 65535, got {port!r}"
        )
    return chosen


def _check_otlp(endpoint: object, meter_provider: object, chosen: bool, enabled: bool) -> None:
    """ConfigurationError for an OTLP setting that is wrong or would be ignored (the URL is
    not repeated: it may hold a credential)."""
    if endpoint is not None and meter_provider is not None:
        raise ConfigurationError(
            "give otlp_endpoint or meter_provider, not both: a meter_provider's own readers "
            "say where its metrics go"
        )
    if (endpoint is not None or meter_provider is not None) and not chosen:
        field = "otlp_endpoint" if endpoint is not None else "meter_provider"
        raise ConfigurationError(f"{field} is given but 'otlp' is not among the exporters")
    if endpoint is not None and (
        not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://"))
    ):
        raise ConfigurationError(
            "otlp_endpoint must be the http:// or https:// URL metrics are posted to "
            "(e.g. http://127.0.0.1:4318/v1/metrics)"
        )
    if chosen and enabled and meter_provider is None:
        _no_credential(*_otlp_url(endpoint))


def _otlp_url(endpoint: object) -> tuple[str, object]:
    """The URL the OTLP exporter will post to, and where it comes from, in the SDK's order:
    the parameter, else the first endpoint variable that is not empty (None: the SDK's
    default). Only that one is checked: the generic variable may serve traces and logs alone."""
    if endpoint is not None:
        return "otlp_endpoint", endpoint
    for variable in OTLP_ENDPOINT_VARIABLES:
        url = os.environ.get(variable)
        if url:
            return variable, url
    return "otlp_endpoint", None


def _no_credential(field: str, url: object) -> None:
    """ConfigurationError for an OTLP URL with a user name, password or query: the SDK writes
    the URL (its query included) into its log at every failed export, so a credential there
    would be logged. Headers are never logged."""
    if not isinstance(url, str):
        return
    try:
        parts = urlsplit(url)
        userinfo = "@" in parts.netloc
    except ValueError:
        return  # not a URL the SDK can post to either; it reports that itself, without the URL
    if userinfo or parts.query:
        raise ConfigurationError(
            f"{field} must not hold a user name, password or query string (the OpenTelemetry "
            "SDK logs the URL when an export fails); pass credentials as headers instead: "
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS or OTEL_EXPORTER_OTLP_HEADERS"
        )
