"""Where a MetricsCollector's numbers go: a Prometheus ``/metrics`` endpoint and a console table.

Both read the collector's own prometheus-client registry (never the process-wide default one,
so two collectors, or a collector and the application's own metrics, never mix).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TextIO
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestra.errors import ConfigurationError

from .text import printable

LABEL_LIMIT = 80
"""Characters of a label value (an agent's or a tool's name) shown in the console table."""


class PrometheusEndpoint:
    """``/metrics`` served over HTTP by prometheus-client's own server, on a daemon thread (it
    never runs on the event loop)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as error:
            raise ConfigurationError(
                f"prometheus_port: cannot serve /metrics on {host}:{port} ({error.strerror or error}); "
                "pick another port, or 0 for a free one"
            ) from None
        self.host = host
        self.port: int = self._server.server_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        server: WSGIServer = self._server
        server.shutdown()
        server.server_close()
        self._thread.join()


class ConsoleTable:
    """Prints the collector's numbers as a rich table: every ``interval`` seconds while runs
    are active (an asyncio task that only sleeps between prints), and once when asked (at a
    run's end)."""

    def __init__(
        self, rows: Callable[[], list[tuple[str, str, str]]], interval: float, stream: TextIO
    ) -> None:
        self._rows = rows
        self._interval = interval
        self._console = Console(file=stream, highlight=False, soft_wrap=False)
        self._ticker: asyncio.Task[None] | None = None
        self._lock = threading.Lock()  # runs on several threads' loops print whole tables

    def print(self) -> None:
        table = Table(title="Orchestra metrics", title_justify="left")
        table.add_column("metric")
        table.add_column("labels")
        table.add_column("value", justify="right")
        for name, labels, value in self._rows():
            # Text, not markup: a label is an agent's or a tool's name, which markup would read
            table.add_row(name, Text(printable(labels, LABEL_LIMIT)), value)
        with self._lock:
            self._console.print(table)

    def start(self) -> None:
        """Print every interval from now on, on the running event loop (if not already)."""
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.print()
