"""A real ``orchestra ui`` server and a real browser for the inspector's end-to-end tests and
``bench/ui.py``: Debian's Chromium (``dev.py test`` installs it) driven by Playwright, without
``playwright install``'s download."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from helpers import start_cli
from playwright.sync_api import Browser, Playwright

from orchestra.coordination.config import ErrorHandlingConfig, ExecutionConfig
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.state import SQLiteStorageBackend, StateManager

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
T = 1_700_000_000.0


def launch(playwright: Playwright) -> Browser:
    """Chromium with a fresh profile (Playwright makes a temporary user data dir per launch)."""
    if not CHROMIUM.exists():
        raise RuntimeError(
            f"the browser tests need Chromium at {CHROMIUM}: python3 dev.py test installs it "
            "(as root), or apt-get install chromium"
        )
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(FLAGS))


@dataclass(frozen=True)
class Server:
    """A running ``orchestra ui``: the address it printed, the token, its process."""

    url: str
    token: str
    process: subprocess.Popen[str]

    @property
    def page_url(self) -> str:
        """The address to open, as printed: the token in its fragment."""
        return f"{self.url}#token={self.token}"


@contextmanager
def ui_server(store: Path, *args: str) -> Iterator[Server]:
    """``orchestra ui --store STORE --port 0 ARGS`` until the block ends, once it printed the
    address to open."""
    process = start_cli("ui", "--store", str(store), "--port", "0", *args, cwd=store.parent)
    try:
        assert process.stdout is not None
        said = [process.stdout.readline()]  # "listening on ...", "started session ...", "open ..."
        while said[-1] and not said[-1].startswith("open "):
            said.append(process.stdout.readline())
        found = re.search(r"open (http://\S+/)#token=(\S+)", said[-1])
        assert found, said
        yield Server(found.group(1), found.group(2), process)
    finally:
        process.terminate()
        process.wait(timeout=30)


def write_sessions(
    store: Path, tasks: dict[str, object], *, ended: bool = True, topology: tuple[str, ...] = ("A",)
) -> None:
    """A run with no step for each session id in ``tasks``, with that task and ``topology``
    (its fingerprint): finished, or (``ended`` false) cut off as a crash leaves it
    (``interrupted``)."""

    async def write() -> None:
        backend = SQLiteStorageBackend(store)
        manager = StateManager(backend, auto_save_interval=0)
        try:
            for session, task in tasks.items():
                writer, _ = await manager.open(session)
                writer.record(started(task, topology))
                if ended:
                    writer.record(inp.RunEnd(at=T + 2, paused=False, success=True, error=None))
                await writer.flush()
                await writer.close()
        finally:
            backend.close()

    # on a thread of its own: sync Playwright keeps an event loop running on this one
    with ThreadPoolExecutor(1) as worker:
        worker.submit(lambda: asyncio.run(write())).result()


def started(task: object, topology: tuple[str, ...] = ("A",)) -> inp.RunStart:
    return inp.RunStart(
        at=T,
        task=task,
        context={},
        max_steps=10,
        config=ExecutionConfig(),
        error_config=ErrorHandlingConfig(),
        topology=topology,
    )
