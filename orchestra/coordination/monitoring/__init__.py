"""Watching runs: the status display and metrics (tracing arrives in a later release)."""

from .metrics import MetricsCollector
from .status import StatusPrinter

__all__ = ["MetricsCollector", "StatusPrinter"]
