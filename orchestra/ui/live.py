"""Live updates: ``GET /api/events``, Server-Sent Events that follow the store as it changes.

One :class:`StoreWatcher` per app sees every change: a thread of its own polls SQLite's
``PRAGMA data_version`` (it changes whenever another connection commits: a run of this process
or of any other, ``orchestra run --store`` in a terminal) and the run host's ``version`` (what
the store does not show: a question asked or answered), every :data:`POLL_SECONDS`, and only
while a client listens. It wakes every listener by setting its own event (never waiting on any
client), so a slow client holds up nobody: each rebuilds its state (off the event loop, through
the catalog) and writes at its own pace, and one that fell behind sends only the latest state.
A disconnect ends the client's generator, which stops listening; the last to leave stops the
thread. A run that dies without a word (its process killed) changes nothing the watcher sees:
its session shows as interrupted at the next change, or when the page is loaded again.
When the server begins to exit it stops the watcher (:meth:`StoreWatcher.stop`), which ends
every stream: the server waits for open responses to finish before it shuts down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from orchestra.errors import OrchestraError

from .views import RunHostView

POLL_SECONDS = 0.05
"""How often the store is asked whether it changed (an event reaches the page within about
this, and the time to rebuild what it shows)."""
KEEP_ALIVE_SECONDS = 15.0
"""A comment line this often keeps proxies and the page's reader from giving up."""

log = logging.getLogger(__name__)


class StoreWatcher:
    """Wakes every listener when the store at ``store`` (or ``host``) changes (see module)."""

    def __init__(self, store: Path, host: RunHostView | None) -> None:
        self.store = store.absolute()  # a relative path has no file URI (and cwd may change)
        self.host = host
        self._listeners: dict[asyncio.Event, asyncio.AbstractEventLoop] = {}
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.stopping = False

    def stop(self) -> None:
        """End every stream, and any begun later: the server is exiting, and waits for every
        open response to finish first (a stream never would)."""
        self.stopping = True
        self._wake()

    @contextmanager
    def listening(self) -> Iterator[asyncio.Event]:
        """An event set at each change until the block ends."""
        changed = asyncio.Event()
        with self._guard:
            self._listeners[changed] = asyncio.get_running_loop()
            if self._thread is None:
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._watch, args=(self._stop,), name="orchestra-ui-watch", daemon=True
                )
                self._thread.start()
        try:
            yield changed
        finally:
            with self._guard:
                del self._listeners[changed]
                if not self._listeners and self._thread is not None:
                    self._stop.set()
                    self._thread = None

    def _watch(self, stop: threading.Event) -> None:
        """Poll until stopped. An error (whatever raised it) is logged and the store asked
        again at the next poll, over a new connection: a watcher that died would leave every
        client of the server without another event."""
        connection: sqlite3.Connection | None = None
        seen: tuple[int | None, int | None] = (None, None)
        while not stop.wait(POLL_SECONDS):
            try:
                connection = connection or _connect(self.store)
                now = (_data_version(connection), self.host.version if self.host else None)
            except Exception as error:
                log.warning(
                    "the store watcher failed (%s: %s); it tries again", type(error).__name__, error
                )
                _closed(connection)
                connection = None
                continue
            if now != seen:
                seen = now
                self._wake()
        _closed(connection)

    def _wake(self) -> None:
        with self._guard:
            listeners = list(self._listeners.items())
        for event, loop in listeners:
            with suppress(RuntimeError):  # its loop is closed: it is leaving
                loop.call_soon_threadsafe(event.set)


def _connect(store: Path) -> sqlite3.Connection | None:
    """A read-only connection of the watcher's own (None while the store does not exist)."""
    try:
        return sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error:
        return None


def _closed(connection: sqlite3.Connection | None) -> None:
    if connection is not None:
        with suppress(sqlite3.Error):
            connection.close()


def _data_version(connection: sqlite3.Connection | None) -> int | None:
    if connection is None:
        return None
    try:
        row = connection.execute("PRAGMA data_version").fetchone()
    except sqlite3.Error:
        return None
    return int(row[0]) if row else None


Build = Callable[[], Awaitable[Any]]


async def event_stream(
    watcher: StoreWatcher, parts: list[tuple[str, Build]]
) -> AsyncIterator[bytes]:
    """The SSE body: each of ``parts`` (an event name, and how to build its data) sent at
    once, then again whenever what it builds changed; a keep-alive comment when all is still.
    It ends when the watcher stops (the server is exiting)."""
    sent: dict[str, str] = {}
    with watcher.listening() as changed:
        while not watcher.stopping:
            changed.clear()  # before building: a change while it builds wakes it again
            for name, build in parts:
                data = await _built(build)
                if sent.get(name) != data:
                    sent[name] = data
                    yield f"event: {name}\ndata: {data}\n\n".encode()
            try:
                await asyncio.wait_for(changed.wait(), KEEP_ALIVE_SECONDS)
            except TimeoutError:
                yield b": keep-alive\n\n"


async def _built(build: Build) -> str:
    """The part's data as one line of JSON; an error (the session deleted, damaged) as
    ``{"error": ...}``, so the page says why rather than the stream ending."""
    try:
        value = await build()
    except OrchestraError as error:
        value = {"error": str(error)}
    return json.dumps(value, separators=(",", ":"))
