"""The time an input happened: the one clock of the engine's edge (the core reads none; it
only reckons with the times inputs carry, as ``working_time`` does)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, TypeVar

from orchestra.errors import OrchestraError

T = TypeVar("T")

_WALL_AT_START = time.time() - time.perf_counter()


def now() -> float:
    """Wall-clock seconds that never step back within a process: the wall clock read once,
    then advanced by the monotonic clock."""
    return _WALL_AT_START + time.perf_counter()


class Clock(Protocol):
    """What the runner reads time from: the embedded runner the process's clocks; inside a
    Temporal workflow its deterministic time (``orchestra.temporal``), so a replayed workflow
    stamps its inputs as the first execution did. Given to the runner, never found in a
    context variable: nothing on the hot path pays for a lookup."""

    def now(self) -> float:
        """Seconds since the epoch that never step back: an input's ``at``."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, for durations (a step's, a tool call's)."""


class WallClock:
    """The process's clocks: :func:`now` and ``time.perf_counter``."""

    __slots__ = ()

    now = staticmethod(now)
    monotonic = staticmethod(time.perf_counter)


WALL: Clock = WallClock()
"""The embedded runner's clock."""


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
