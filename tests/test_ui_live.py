"""Live updates (docs/ui.md, "Live updates"): they follow a store named by a relative path
(the default store is one), the store watcher outlives an error, and each part is built once
per change whatever the number of clients, every client sent the same bytes."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import httpx2
import pytest
from helpers import WAIT, start_cli
from test_ui import BEGIN, events_of, start, step, write

from orchestra.agents.contract import Action
from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.ui import live
from orchestra.ui.catalog import Catalog
from orchestra.ui.live import StoreWatcher, event_stream

HEARD_WITHIN = live.KEEP_ALIVE_SECONDS / 2
"""A change reaches a client in about 0.1 s; without a watcher, only at the next keep-alive."""


async def test_live_updates_follow_a_store_named_by_a_relative_path(tmp_path: Path) -> None:
    """``orchestra ui --store rel.db``: the watcher once died at its first client (a relative
    path has no file URI), and no client heard of a change again."""
    backend = SQLiteStorageBackend(tmp_path / "rel.db")
    manager = StateManager(backend, auto_save_interval=0)
    await (await write(manager, "live", start(), BEGIN)).close()
    server = start_cli("ui", "--store", "rel.db", "--port", "0", cwd=tmp_path)
    try:
        assert server.stdout is not None
        await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 60)
        opened = await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 60)
        found = re.search(r"open (http://127\.0\.0\.1:\d+/)#token=(\S+)", opened)
        assert found, opened
        bearer = {"Authorization": f"Bearer {found.group(2)}"}
        async with (
            httpx2.AsyncClient(base_url=found.group(1), trust_env=False, timeout=60) as client,
            client.stream("GET", "/api/events?session=live", headers=bearer) as response,
        ):
            events = events_of(response)
            first = dict([await anext(events), await anext(events)])
            assert first["session"]["version"] == 2
            writer = await write(manager, "live", step(Action.final("done")))
            # the watcher's wake, not the rebuild every keep-alive (15 s) brings
            name, data = await asyncio.wait_for(anext(events), HEARD_WITHIN)
            while name != "session":  # the list changed too
                name, data = await asyncio.wait_for(anext(events), HEARD_WITHIN)
            assert data["version"] == 3
            await writer.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        backend.close()


async def test_the_watcher_outlives_an_error_and_still_wakes_its_listeners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "sessions.db"
    backend = SQLiteStorageBackend(store)
    manager = StateManager(backend, auto_save_interval=0)
    await (await write(manager, "s", start())).close()
    failures = [OSError("the disk hiccuped")]
    asked = live._data_version

    def flaky(connection: object) -> int | None:
        if failures:
            raise failures.pop()
        return asked(connection)  # type: ignore[arg-type]

    monkeypatch.setattr(live, "_data_version", flaky)
    watcher = StoreWatcher(store, None)
    try:
        with caplog.at_level(logging.WARNING), watcher.listening() as changed:
            await asyncio.wait_for(changed.wait(), WAIT)  # the first look, after the error
            changed.clear()
            await (await write(manager, "s", BEGIN)).close()
            await asyncio.wait_for(changed.wait(), WAIT)
    finally:
        backend.close()
    assert not failures and "OSError" in caplog.text


async def test_each_part_is_built_once_per_change_whatever_the_clients(tmp_path: Path) -> None:
    """Five clients: the sessions list is built at most once for each change the watcher saw
    (it once was built by every client at every change), and each client is sent the same
    bytes."""
    store = tmp_path / "sessions.db"
    backend = SQLiteStorageBackend(store)
    manager = StateManager(backend, auto_save_interval=0)
    await (await write(manager, "s", start())).close()
    watcher, catalog = StoreWatcher(store, None), Catalog(store)
    builds = 0

    async def sessions() -> list[dict[str, Any]]:
        nonlocal builds
        builds += 1
        return await catalog.sessions(None)

    streams = [event_stream(watcher, [("sessions", "sessions", sessions)]) for _ in range(5)]
    try:
        first = {await anext(stream) for stream in streams}
        await (await write(manager, "s", BEGIN)).close()
        then = {await asyncio.wait_for(anext(stream), WAIT) for stream in streams}
        assert len(first) == len(then) == 1 and first != then
        assert b'"version":2' in then.pop()
        assert builds <= watcher.generation
    finally:
        for stream in streams:
            await stream.aclose()
        catalog.close()
        backend.close()


async def test_a_writer_gone_without_a_word_is_seen_within_about_a_second(tmp_path: Path) -> None:
    """A run whose process was killed changes nothing in the store: its session read
    ``running`` to every page until some other change came (the watcher now asks, every
    ``WRITERS_SECONDS``, whether the writers it saw are still there)."""
    store = tmp_path / "sessions.db"
    backend = SQLiteStorageBackend(store)
    manager = StateManager(backend, auto_save_interval=0)
    writer = await write(manager, "s", start(), BEGIN)  # held, as a run in progress holds it
    catalog = Catalog(store)
    watcher = StoreWatcher(store, None, catalog.writer_gone)
    stream = event_stream(watcher, [("sessions", "sessions", lambda: catalog.sessions(None))])
    try:
        assert b'"status":"running"' in await anext(stream)
        writer.record(step(Action.final("ok")))  # a change it sees, so it has looked since
        await writer.flush()
        assert b'"version":3' in await asyncio.wait_for(anext(stream), WAIT)
        await backend.release("s")  # as the kernel lets go of a killed process's lock
        then = await asyncio.wait_for(anext(stream), WAIT)
        assert b'"status":"interrupted"' in then
    finally:
        await stream.aclose()
        await writer.close()
        catalog.close()
        backend.close()
