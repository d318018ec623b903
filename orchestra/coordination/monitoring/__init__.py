"""Watching runs: the status display and metrics (tracing arrives in a later release).

``MetricsCollector`` is loaded when first named: it brings prometheus-client, which a run that
collects no metrics need not import."""

from typing import TYPE_CHECKING, Any

from .status import StatusPrinter

if TYPE_CHECKING:
    from .metrics import MetricsCollector

__all__ = ["MetricsCollector", "StatusPrinter"]


def __getattr__(name: str) -> Any:
    if name == "MetricsCollector":
        from .metrics import MetricsCollector

        return MetricsCollector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
