"""MetricsCollector: counters, a gauge and histograms read from runs' event streams.

A collector never touches the engine: each run it is given to subscribes one small observer
(:class:`_RunWatch`) to the run's event stream, as the status display does. The numbers live in
a prometheus-client registry of the collector's own, which ``get_metric``, ``snapshot``, the
``/metrics`` endpoint and the console table all read. Events replayed from a session's log (a
resumed run catching up) are never counted: they were counted when they happened. They still
tell the observer which branches and fan-outs are open, so the gauge and the convergence wait
of a resumed run are right.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from orchestra.agents.base import BaseAgent
from orchestra.agents.pool import AgentPool
from orchestra.coordination.engine import events as ev
from orchestra.errors import ConfigurationError

from .agent_models import model_name
from .exporters import ConsoleTable, PrometheusEndpoint

EXPORTERS = ("prometheus", "console")
PREFIX = "orchestra_"
"""Every metric's Prometheus name starts with it (``steps`` is ``orchestra_steps_total``)."""


@dataclass(frozen=True)
class _Spec:
    kind: type[MetricWrapperBase]
    labels: tuple[str, ...]
    doc: str
    whole: bool = True  # its values are counts (get_metric gives an int)


_MODEL = ("agent", "model")
SPECS: dict[str, _Spec] = {
    "api_calls": _Spec(
        Counter, _MODEL, "Model calls: replies used, replies rejected, calls retried"
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
    "errors": _Spec(Counter, ("agent", "type"), "Branches failed, by error type"),
    "runs": _Spec(Counter, ("outcome",), "Runs ended: succeeded, failed or paused"),
    "active_branches": _Spec(Gauge, (), "Branches open in active runs"),
    "step_seconds": _Spec(Histogram, ("agent",), "Agent step latency"),
    "tool_call_seconds": _Spec(Histogram, ("agent", "tool"), "Tool call latency"),
    "convergence_wait_seconds": _Spec(
        Histogram, ("agent",), "Fan-out start to convergence, by the agent that fanned out"
    ),
}
"""The metrics, by the name ``get_metric`` takes (docs/observability.md has the table)."""

_SUFFIX = {Counter: "_total", Gauge: "", Histogram: "_count"}


DEFAULT_PORT = 9464
PORT_VARIABLE = "ORCHESTRA_PROMETHEUS_PORT"


def _default_port() -> int:
    text = os.environ.get(PORT_VARIABLE)
    if text is None:
        return DEFAULT_PORT
    try:
        return int(text)
    except ValueError:
        raise ConfigurationError(
            f"{PORT_VARIABLE}={text!r} is not a port number (0 picks a free one)"
        ) from None


class MetricsCollector:
    """Counts what runs do, for any number of runs at once (pass it to ``Orchestra.run`` or
    ``OrchestraInstance`` as ``metrics_collector``).

    The ``"prometheus"`` exporter serves ``/metrics`` on ``prometheus_host:prometheus_port``
    from the moment the collector is made (port 0 picks a free port; ``prometheus_url`` says
    which) until :meth:`close`. Without a ``prometheus_port``, the port is
    ``ORCHESTRA_PROMETHEUS_PORT`` from the environment, else 9464 (OpenTelemetry's
    Prometheus exporter's): a deployment chooses it without changing code. The ``"console"`` exporter prints a table to ``console_stream``
    (default stderr) every ``export_interval`` seconds while runs are active, and once when a
    run ends. ``enabled=False`` collects nothing, serves nothing and is never subscribed.
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
    ) -> None:
        if prometheus_port is None:
            prometheus_port = _default_port()
        chosen = _check(enabled, export_interval, exporters, prometheus_host, prometheus_port)
        self.enabled = enabled
        self.export_interval = float(export_interval)
        self.exporters = chosen
        self.registry = CollectorRegistry(auto_describe=True)
        self._metrics: dict[str, MetricWrapperBase] = {
            name: spec.kind(PREFIX + name, spec.doc, spec.labels, registry=self.registry)
            for name, spec in SPECS.items()
        }
        self._active: set[_RunWatch] = set()
        self._endpoint: PrometheusEndpoint | None = None
        self._console: ConsoleTable | None = None
        if enabled and "console" in chosen:
            stream = console_stream or sys.stderr
            self._console = ConsoleTable(self._rows, self.export_interval, stream)
        if enabled and "prometheus" in chosen:
            self._endpoint = PrometheusEndpoint(self.registry, prometheus_host, prometheus_port)

    @property
    def prometheus_url(self) -> str | None:
        """The ``/metrics`` URL, or None without the prometheus exporter (or once closed)."""
        return self._endpoint.url if self._endpoint is not None else None

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
            for sample_labels, value in self._samples(name, _SUFFIX[spec.kind])
            if all(sample_labels.get(key) == value for key, value in wanted.items())
        )
        return int(total) if spec.whole else total

    def snapshot(self) -> dict[str, Any]:
        """Every metric as plain data: its type, labels, total and a value per label set (for
        a histogram, ``count`` and ``sum`` per label set)."""
        return {name: self._plain(name, spec) for name, spec in SPECS.items()}

    def close(self) -> None:
        """Stop the ``/metrics`` endpoint and the console ticker (the numbers stay readable)."""
        if self._console is not None:
            self._console.stop()
            self._console = None  # a run after close() prints nothing
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None

    def __enter__(self) -> MetricsCollector:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def watch(self, agents: Mapping[str, BaseAgent | AgentPool]) -> ev.Subscriber:
        """A subscriber for one run's event stream (``agents``: the run's, by node name, to
        label model calls with their model)."""
        return _RunWatch(self, {name: model_name(agent) for name, agent in agents.items()})

    # ---- what the watches call ---------------------------------------------------------------

    def _count(self, name: str, amount: float = 1, **labels: str) -> None:
        self._metrics[name].labels(**labels).inc(amount)  # type: ignore[attr-defined]

    def _observe(self, name: str, seconds: float, **labels: str) -> None:
        self._metrics[name].labels(**labels).observe(seconds)  # type: ignore[attr-defined]

    def _branches(self, change: int) -> None:
        self._metrics["active_branches"].inc(change)  # type: ignore[attr-defined]

    def _run_active(self, watch: _RunWatch, active: bool) -> None:
        if active:
            self._active.add(watch)
            if self._console is not None:
                self._console.start()
            return
        self._active.discard(watch)
        if self._console is not None:
            if not self._active:
                self._console.stop()
            self._console.print()

    # ---- reading the registry ----------------------------------------------------------------

    def _samples(self, name: str, suffix: str) -> list[tuple[dict[str, str], float]]:
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
            sums = {_key(labels): value for labels, value in self._samples(name, "_sum")}
            counts = self._samples(name, "_count")
            values = [
                {"labels": labels, "count": int(count), "sum": sums.get(_key(labels), 0.0)}
                for labels, count in counts
            ]
            total: float = int(sum(count for _, count in counts))
        else:
            samples = self._samples(name, _SUFFIX[spec.kind])
            values = [
                {"labels": labels, "value": int(value) if spec.whole else value}
                for labels, value in samples
            ]
            total = sum(value for _, value in samples)
            total = int(total) if spec.whole else total
        return {"type": kind, "labels": list(spec.labels), "total": total, "values": values}

    def _rows(self) -> list[tuple[str, str, str]]:
        """The console table's rows: a row per metric and label set that has a value."""
        rows = []
        for name, data in self.snapshot().items():
            for item in data["values"]:
                labels = ", ".join(f"{key}={value}" for key, value in item["labels"].items())
                if "count" in item:
                    value = f"{item['count']} ({item['sum']:.3f} s)"
                elif name == "cost_usd":
                    value = f"{item['value']:.6f}"
                else:
                    value = str(item["value"])
                rows.append((name, labels, value))
        return rows


class _RunWatch:
    """One run's observer: counts its live events, and follows its branches and fan-outs
    (replayed events included) for the gauge and the convergence wait."""

    __slots__ = ("active", "branches", "collector", "fan_outs", "models")

    def __init__(self, collector: MetricsCollector, models: dict[str, str | None]) -> None:
        self.collector = collector
        self.models = models
        self.active = False
        self.branches: set[str] = set()
        self.fan_outs: dict[str, tuple[str, float]] = {}  # id: (source agent, started at)

    def __call__(self, event: ev.Event) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def model(self, agent: str) -> str:
        return self.models.get(agent) or ""

    def start(self, event: ev.Event) -> None:
        if event.replayed or self.active:
            return
        self.active = True
        self.collector._branches(len(self.branches))
        self.collector._run_active(self, True)

    def end(self, event: ev.Event, outcome: str) -> None:
        if event.replayed or not self.active:
            return
        self.active = False
        self.collector._branches(-len(self.branches))
        self.collector._count("runs", outcome=outcome)
        self.collector._run_active(self, False)

    def branch_opened(self, event: ev.BranchCreated) -> None:
        self.branches.add(event.branch_id)
        if self.active:
            self.collector._branches(1)

    def branch_closed(self, event: ev.BranchCompleted | ev.BranchFailed) -> None:
        if event.branch_id in self.branches:
            self.branches.discard(event.branch_id)
            if self.active:
                self.collector._branches(-1)


def _step(watch: _RunWatch, event: ev.StepCompleted) -> None:
    if event.replayed:
        return
    collector, agent = watch.collector, event.agent
    collector._count("steps", agent=agent)
    collector._observe("step_seconds", event.duration, agent=agent)
    model = watch.model(agent)
    if watch.models.get(agent) is not None:  # code agents call no model
        collector._count("api_calls", agent=agent, model=model)
    # Usage is what the agent reported (a custom agent or model may report any number): only a
    # finite amount above zero is counted. A negative one made the counter raise, and the
    # stream then dropped this run's watch; a NaN cost would have spoiled the total for good.
    prompt, completion = max(event.prompt_tokens, 0), max(event.completion_tokens, 0)
    amounts = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost_usd": event.cost_usd or 0.0,
    }
    for name, amount in amounts.items():
        if math.isfinite(amount) and amount > 0:
            collector._count(name, amount, agent=agent, model=model)


def _model_call_lost(watch: _RunWatch, event: ev.ModelCallRetried | ev.ActionRejected) -> None:
    if event.replayed:
        return
    agent, model = event.agent, watch.model(event.agent)
    watch.collector._count("api_calls", agent=agent, model=model)
    if isinstance(event, ev.ModelCallRetried):
        watch.collector._count("retries", agent=agent, model=model)


def _tool_call(watch: _RunWatch, event: ev.ToolCallCompleted) -> None:
    if event.replayed:
        return
    outcome = "ok" if event.ok else "error"
    watch.collector._count("tool_calls", agent=event.agent, tool=event.tool, outcome=outcome)
    watch.collector._observe(
        "tool_call_seconds", event.duration, agent=event.agent, tool=event.tool
    )


def _branch_failed(watch: _RunWatch, event: ev.BranchFailed) -> None:
    watch.branch_closed(event)
    if not event.replayed:
        watch.collector._count("errors", agent=event.agent, type=event.error_type)


def _fan_out(watch: _RunWatch, event: ev.FanOutStarted) -> None:
    watch.fan_outs[event.fan_out_id] = (event.source, event.at)


def _converged(watch: _RunWatch, event: ev.ConvergenceReached) -> None:
    started = watch.fan_outs.pop(event.fan_out_id, None)
    if started is not None and not event.replayed:
        source, at = started
        watch.collector._observe("convergence_wait_seconds", max(event.at - at, 0.0), agent=source)


def _run_completed(watch: _RunWatch, event: ev.RunCompleted) -> None:
    watch.end(event, "succeeded" if event.success else "failed")


_HANDLERS: dict[type[ev.Event], Callable[[_RunWatch, Any], None]] = {
    ev.RunStarted: _RunWatch.start,
    ev.RunResumed: _RunWatch.start,
    ev.RunPaused: lambda watch, event: watch.end(event, "paused"),
    ev.RunCompleted: _run_completed,
    ev.BranchCreated: _RunWatch.branch_opened,
    ev.BranchCompleted: _RunWatch.branch_closed,
    ev.BranchFailed: _branch_failed,
    ev.StepCompleted: _step,
    ev.ModelCallRetried: _model_call_lost,
    ev.ActionRejected: _model_call_lost,
    ev.ToolCallCompleted: _tool_call,
    ev.FanOutStarted: _fan_out,
    ev.ConvergenceReached: _converged,
}


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
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not interval > 0:
        raise ConfigurationError(
            f"export_interval must be a positive number of seconds, got {interval!r}"
        )
    if isinstance(exporters, str) or not isinstance(exporters, Iterable):
        raise ConfigurationError(f"exporters must be a list of names, got {exporters!r}")
    chosen = tuple(exporters)
    for name in chosen:
        if name == "otlp":
            raise ConfigurationError(
                "exporters: 'otlp' (OpenTelemetry metrics) is not available yet; "
                f"use {' or '.join(map(repr, EXPORTERS))}"
            )
        if name not in EXPORTERS:
            raise ConfigurationError(
                f"exporters: unknown exporter {name!r}; the exporters are: {', '.join(EXPORTERS)}"
            )
    if not isinstance(host, str) or not host:
        raise ConfigurationError(f"prometheus_host must be a host name or address, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigurationError(
            f"prometheus_port must be a port number from 0 to 65535, got {port!r}"
        )
    return chosen
