"""Live updates: ``GET /api/events``, Server-Sent Events that follow the store as it changes.

One :class:`StoreWatcher` per app sees every change: a thread of its own polls SQLite's
``PRAGMA data_version`` (it changes whenever another connection commits: a run of this process
or of any other, ``orchestra run --store`` in a terminal) and the run host's ``version`` (what
the store does not show: a question asked or answered), every :data:`POLL_SECONDS`, and only
while a client listens. It wakes every listener by setting its own event (never waiting on any
client), so a slow client holds up nobody: each rebuilds its state (off the event loop, through
the catalog) and writes at its own pace, and one that fell behind sends only the latest state.
A disconnect ends the client's generator, which stops listening; the last to leave stops the
thread. A run that dies without a word (its process killed) changes nothing in the store, so
every :data:`WRITERS_SECONDS` the watcher also asks whether a session that a writer held at the
last build lost it (``writers_gone``: the catalog's probe, which takes no lock), and wakes the
listeners when one did: the session shows as interrupted within about that.
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
WRITERS_SECONDS = 1.0
"""How often the watcher asks whether a writer it saw went away without a word (a crash)."""
KEEP_ALIVE_SECONDS = 15.0
"""A comment line this often keeps proxies and the page's reader from giving up."""

log = logging.getLogger(__name__)


class StoreWatcher:
    """Wakes every listener when the store at ``store`` (or ``host``) changes (see module)."""

    def __init__(
        self,
        store: Path,
        host: RunHostView | None,
        writers_gone: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store.absolute()  # a relative path has no file URI (and cwd may change)
        self.host = host
        self.writers_gone = writers_gone
        self._listeners: dict[asyncio.Event, asyncio.AbstractEventLoop] = {}
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.stopping = False
        self.generation = 0  # counts the changes seen (and each start of the thread)
        self._parts: dict[str, tuple[int, asyncio.Future[bytes]]] = {}

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
                self.generation += 1  # what changed while nobody listened was not seen
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
                    self._parts.clear()

    async def part(self, key: str, name: str, build: Build) -> bytes:
        """The event ``name`` with what ``build`` makes, as sent: built once per change seen
        (per ``generation``) whoever asks, every client sent the same bytes. A build begun
        after a change reads the store as that change left it; a later change bumps the
        generation, and the next ask builds again. (Each client's build, per change, once
        made the list's cost grow with the clients as well as the sessions.)"""
        generation = self.generation
        found = self._parts.get(key)
        if found is None or found[0] != generation:
            self._parts = {k: v for k, v in self._parts.items() if v[0] == generation}
            found = self._parts[key] = (generation, asyncio.ensure_future(_built(name, build)))
        return await asyncio.shield(found[1])  # a client that leaves cancels nobody's build

    def _watch(self, stop: threading.Event) -> None:
        """Poll until stopped. An error (whatever raised it) is logged and the store asked
        again at the next poll, over a new connection: a watcher that died would leave every
        client of the server without another event."""
        connection: sqlite3.Connection | None = None
        seen: tuple[int | None, int | None] = (None, None)
        polls_per_probe = max(1, round(WRITERS_SECONDS / POLL_SECONDS))
        polls = 0
        while not stop.wait(POLL_SECONDS):
            polls += 1
            try:
                connection = connection or _connect(self.store)
                now = (_data_version(connection), self.host.version if self.host else None)
                if polls % polls_per_probe == 0 and self.writers_gone and self.writers_gone():
                    self._wake()
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
            self.generation += 1
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
    watcher: StoreWatcher, parts: list[tuple[str, str, Build]]
) -> AsyncIterator[bytes]:
    """The SSE body: each of ``parts`` (what it is, shared by every client that sends the
    same; its event name; how to build its data) sent at once, then again whenever what it
    builds changed; a keep-alive comment when all is still. It ends when the watcher stops
    (the server is exiting)."""
    sent: dict[str, bytes] = {}
    with watcher.listening() as changed:
        while not watcher.stopping:
            changed.clear()  # before building: a change while it builds wakes it again
            for key, name, build in parts:
                message = await watcher.part(key, name, build)
                if sent.get(name) != message:
                    sent[name] = message
                    yield message
            try:
                await asyncio.wait_for(changed.wait(), KEEP_ALIVE_SECONDS)
            except TimeoutError:
                yield b": keep-alive\n\n"


async def _built(name: str, build: Build) -> bytes:
    """The event ``name``, its data one line of JSON; an error (the session deleted, damaged)
    as ``{"error": ...}``, so the page says why rather than the stream ending."""
    try:
        value = await build()
    except OrchestraError as error:
        value = {"error": str(error)}
    return f"event: {name}\ndata: {json.dumps(value, separators=(',', ':'))}\n\n".encode()
