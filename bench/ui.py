"""The web inspector in a real browser: page load (navigation start to the sessions list
rendered, for 10 and 1000 sessions) and event-to-page latency (a record appended to the store,
by a new session or by a step of a running one, to the change shown in the page), median and
p95 over N.

Run: ``.venv/bin/python bench/ui.py [N]`` (after ``python3 dev.py test`` installed Chromium and
Playwright). Prints a table and rewrites the "UI" section of ``bench/results.md``. The latency
needs the server's live stream (``/api/events``); without it those rows say so.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from browser import Server, T, launch, started, ui_server, write_sessions  # type: ignore[import-not-found]
from engine import report  # type: ignore[import-not-found]
from playwright.sync_api import Browser, Page, sync_playwright

from orchestra.agents.contract import Action, StepOutcome
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.models.base import Usage

# Stamps (epoch ms, the browser's clock: the machine's) when the list first shows ``want``
# rows, and when a row or a steps cell it names changes: no polling from the outside.
OBSERVER = """
window.__seen = {};
window.__rendered = null;
new MutationObserver(() => {
  const rows = document.querySelectorAll('#sessions tbody tr');
  if (window.__rendered === null && rows.length >= (window.__want || 1)) {
    window.__rendered = performance.now();
  }
  for (const row of rows) {
    const key = row.dataset.session + ':' + row.children[5].textContent;
    if (!(key in window.__seen)) window.__seen[key] = performance.timeOrigin + performance.now();
  }
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):.0f} ms, p95 {percentile(values, 0.95):.0f} ms "
        f"(N = {len(values)})"
    )


def page_load(browser: Browser, server: Server, sessions: int, n: int) -> list[float]:
    """Milliseconds from navigation start to ``sessions`` rows in the list, each load in a
    fresh context (no cache)."""
    times = []
    for _ in range(n):
        context = browser.new_context()
        context.add_init_script(f"window.__want = {sessions};" + OBSERVER)
        page = context.new_page()
        page.goto(server.page_url)
        page.locator("#sessions tbody tr").nth(sessions - 1).wait_for(timeout=60_000)
        times.append(page.evaluate("window.__rendered"))
        context.close()
    return times


class Writer:
    """The store written from a thread of its own (sync Playwright holds this one's loop)."""

    def __init__(self, store: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.backend = SQLiteStorageBackend(store)
        self.manager = StateManager(self.backend, auto_save_interval=0)

    def do(self, work: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        return asyncio.run_coroutine_threadsafe(work(), self.loop).result()

    def close(self) -> None:
        self.backend.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


def seen(page: Page, session: str, steps: int) -> float:
    """When the page first showed ``session``'s row with ``steps`` steps (epoch ms)."""
    row = page.locator(f"tr[data-session='{session}']")
    row.locator("td").nth(5).filter(has_text=re.compile(f"^{steps}$")).wait_for(timeout=30_000)
    return float(page.evaluate(f"window.__seen['{session}:{steps}']"))


def new_session_latency(page: Page, writer: Writer, n: int) -> list[float]:
    """A session written (durably) by another writer, to its row in the page."""
    times = []
    for index in range(n):

        async def write(session: str = f"new-{index}") -> float:
            log, _ = await writer.manager.open(session)
            log.record(started("x"))
            await log.flush()
            at = time.time() * 1000
            await log.close()
            return at

        at = writer.do(write)
        times.append(seen(page, f"new-{index}", 0) - at)
    return times


def step_latency(page: Page, writer: Writer, n: int) -> list[float]:
    """A step of a running session (its writer held open), to its steps count in the page."""
    log = writer.do(lambda: _opened(writer, "running"))
    seen(page, "running", 0)
    times = []
    for index in range(1, n + 1):
        at = writer.do(lambda log=log: _step(log))
        times.append(seen(page, "running", index) - at)
    writer.do(log.close)
    return times


async def _opened(writer: Writer, session: str) -> Any:
    log, _ = await writer.manager.open(session)
    log.record(started("a long run"))
    await log.flush()
    return log


async def _step(log: Any) -> float:
    usage = Usage(prompt_tokens=10, completion_tokens=5, cost_usd=None)
    log.record(inp.StepBegin(at=T, branch_id="b0"))
    outcome = StepOutcome(action=Action.invoke("A", "go on"), usage=usage)
    log.record(inp.StepResult(at=T, branch_id="b0", outcome=outcome, messages=(), duration=0.1))
    await log.flush()
    return time.time() * 1000


@contextmanager
def store_of(sessions: int) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sessions.db"
        write_sessions(path, {f"s{i:04d}": f"task {i}" for i in range(sessions)})
        yield path


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    rows = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        for sessions in (10, 1000):
            with store_of(sessions) as store, ui_server(store) as server:
                times = page_load(browser, server, sessions, n)
            rows.append(
                (f"page load, {sessions} sessions (navigation start to the list)", summary(times))
            )
        with store_of(10) as store, ui_server(store) as server:
            context = browser.new_context()
            context.add_init_script(OBSERVER)
            page = context.new_page()
            page.goto(server.page_url)
            page.locator("#live").filter(has_text="live").wait_for()
            if page.locator("#live").text_content() != "live":
                rows.append(("event to page", "not measured: the server has no /api/events"))
            else:
                writer = Writer(store)
                try:
                    rows.append(
                        (
                            "event to page: a new session's record",
                            summary(new_session_latency(page, writer, n)),
                        )
                    )
                    rows.append(
                        (
                            "event to page: a step of a running session",
                            summary(step_latency(page, writer, n)),
                        )
                    )
                finally:
                    writer.close()
            context.close()
        browser.close()
    report("UI", f", Chromium headless, N = {n}", rows)


if __name__ == "__main__":
    main()
