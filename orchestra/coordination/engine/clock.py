"""The time an input happened: the one clock of the engine's edge (the core reads none; it
only reckons with the times inputs carry, as ``working_time`` does)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from orchestra.errors import OrchestraError

T = TypeVar("T")

_WALL_AT_START = time.time() - time.perf_counter()


def now() -> float:
    """Wall-clock seconds that never step back within a process: the wall clock read once,
    then advanced by the monotonic clock."""
    return _WALL_AT_START + time.perf_counter()


def working_time(start: float, end: float, gaps: Iterable[tuple[float, float]]) -> float:
    """The time from ``start`` to ``end`` less the parts of it inside ``gaps`` (the spans a
    run stood still: paused, or cut off by a crash, until resumed; waiting for a follow-up).
    Gaps may overlap (a pause while a follow-up is awaited): time inside several counts once."""
    idle = 0.0
    counted = start  # idle time before this is counted already
    for since, until in sorted(gaps):
        since, until = max(since, counted), min(until, end)
        if until > since:
            idle += until - since
            counted = until
    return end - start - idle


async def within(
    seconds: float | None, work: Awaitable[T], overrun: Callable[[], OrchestraError]
) -> T:
    """``work``'s result, unless ``seconds`` pass first: then ``overrun()``'s error. A
    TimeoutError raised inside the work (its own limit: an HTTP client's, a tool's ``timeout``)
    is its failure as it is, not this limit's."""
    limit = asyncio.timeout(seconds)
    try:
        async with limit:
            return await work
    except TimeoutError:
        if not limit.expired():
            raise
        raise overrun() from None
