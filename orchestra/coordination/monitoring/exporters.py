"""Where a MetricsCollector's numbers go: a Prometheus ``/metrics`` endpoint and a console table
(the OTLP exporter, which needs an optional extra, is in ``otlp.py``).

Both read the collector's own prometheus-client registry (never the process-wide default one,
so two collectors, or a collector and the application's own metrics, never mix). Each works on
a thread of its own, never on an event loop, and stops promptly when closed.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import TextIO
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestra.errors import ConfigurationError
from orchestra.text import printable

LABEL_LIMIT = 40
"""Characters of each label value (an agent's or a tool's name) shown in the console table:
each value is cut on its own, so a long agent name never hides the tool or the outcome."""

CLOSE_WAIT = 5.0
"""Seconds ``close`` waits at most for an exporter's thread (one printing a large table to a
slow stream); a thread still busy then is a daemon and is left to finish."""

Rows = Callable[[], list[tuple[str, Mapping[str, str], str]]]
"""The console table's rows: metric, labels, value."""

_log = logging.getLogger(__name__)


class PrometheusEndpoint:
    """``/metrics`` served over HTTP by prometheus-client's WSGI app, on a daemon thread (it
    never runs on the event loop). The thread waits on the listening socket and on a wake-up
    socket together: ``close`` wakes it at once (``serve_forever`` noticed a shutdown only at
    its next half-second poll, so closing took up to 0.5 s)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        except socket.gaierror as error:
            raise ConfigurationError(
                f"prometheus_host: cannot resolve {host!r} ({error.strerror or error}); "
                "give a host name or address of this machine, e.g. 127.0.0.1"
            ) from None
        try:
            server_class = type("Server", (ThreadingWSGIServer,), {"address_family": family})
            self._server: WSGIServer = make_server(
                host, port, make_wsgi_app(registry), server_class, handler_class=_Silent
            )
        except OSError as error:
            raise ConfigurationError(
                f"prometheus_port: cannot serve /metrics on {host}:{port} ({error.strerror or error}); "
                "pick another port, or 0 for a free one"
            ) from None
        self.host = host
        self.port: int = self._server.server_port
        self._wake, self._woken = socket.socketpair()
        self._thread = threading.Thread(
            target=self._serve, name="orchestra-prometheus", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._server, selectors.EVENT_READ)
            selector.register(self._woken, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if self._woken in ready:
                    return
                self._server.handle_request()  # ready: takes it without waiting

    def close(self) -> None:
        self._wake.send(b"x")
        self._thread.join(CLOSE_WAIT)
        self._server.server_close()
        self._wake.close()
        self._woken.close()


class _Silent(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """A scrape is not news: nothing is written to stderr."""


class ConsoleTable:
    """Prints the collector's numbers as a rich table from a thread of its own: every
    ``interval`` seconds while runs are active (``ticking``), and once when asked (at a run's
    end). Asks that come while a table is due or being drawn are one table: many runs ending
    at once print one table, not one each. The thread starts with the first need for it."""

    def __init__(self, rows: Rows, interval: float, stream: TextIO) -> None:
        self._rows = rows
        self._interval = interval
        self._console = _Console(file=stream, highlight=False, soft_wrap=False)
        self._changed = threading.Condition()
        self._asked = False
        self._next_tick: float | None = None  # when the next periodic table is due, if ticking
        self._closed = False
        self._thread: threading.Thread | None = None

    def ticking(self, on: bool) -> None:
        """Print every interval from now on (if not already), or no more."""
        with self._changed:
            if not on:
                self._next_tick = None
            elif self._next_tick is None:
                self._next_tick = time.monotonic() + self._interval
            self._wake()

    def ask(self) -> None:
        """Print one table soon (with any others asked for meanwhile)."""
        with self._changed:
            self._asked = True
            self._wake()

    def close(self) -> None:
        """No more periodic tables; a table asked for is still printed (a run's last), then
        the thread ends (waited for at most ``CLOSE_WAIT`` seconds). Safe to call again."""
        with self._changed:
            self._closed = True
            self._changed.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_WAIT)

    def _wake(self) -> None:
        if self._closed:
            return
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._print_when_due, name="orchestra-metrics-console", daemon=True
            )
            self._thread.start()
        self._changed.notify()

    def _print_when_due(self) -> None:
        """Print each table when due. A table that cannot be printed (a closed pipe, a full
        disk, a closed file) stops the console for good, said once in the log, never on the
        stream that failed: the thread never dies silently, and the next table would fail too."""
        while self._due():
            try:
                self._print()
            except Exception as error:
                with self._changed:
                    self._closed = True
                _log.warning(
                    "metrics console: printing the table failed (%s: %s); no more tables are "
                    "printed (the numbers are still collected)",
                    type(error).__name__,
                    error,
                )
                return

    def _due(self) -> bool:
        """Wait until a table is due: True to print one, False once closed."""
        with self._changed:
            while True:
                if self._asked:
                    self._asked = False
                    return True
                if self._closed:
                    return False
                if self._next_tick is None:
                    self._changed.wait()
                    continue
                left = self._next_tick - time.monotonic()
                if left <= 0:
                    self._next_tick = time.monotonic() + self._interval
                    return True
                self._changed.wait(left)

    def _print(self) -> None:
        table = Table(title="Orchestra metrics", title_justify="left")
        table.add_column("metric")
        table.add_column("labels")
        table.add_column("value", justify="right")
        for name, labels, value in self._rows():
            shown = ", ".join(
                f"{key}={printable(text, LABEL_LIMIT)}" for key, text in labels.items()
            )
            # Text, not markup: a label is an agent's or a tool's name, which markup would read
            table.add_row(name, Text(shown), value)
        self._console.print(table)


class _Console(Console):
    """A rich Console whose broken pipe is an ordinary error for ``ConsoleTable`` to handle:
    rich's own ``on_broken_pipe`` points the process's fd 1 at /dev/null and raises
    ``SystemExit``, silencing the host application's stdout from the metrics thread."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError("the console stream's reader has gone")
