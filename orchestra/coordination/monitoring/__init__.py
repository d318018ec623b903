"""Watching runs: the status display (metrics and tracing arrive in later releases)."""

from .status import StatusPrinter

__all__ = ["StatusPrinter"]
