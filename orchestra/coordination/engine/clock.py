"""The time an input happened: the one clock of the engine's edge (the core reads none; it
only reckons with the times inputs carry, as ``working_time`` does)."""

from __future__ import annotations

import time
from collections.abc import Iterable

_WALL_AT_START = time.time() - time.perf_counter()


def now() -> float:
    """Wall-clock seconds that never step back within a process: the wall clock read once,
    then advanced by the monotonic clock."""
    return _WALL_AT_START + time.perf_counter()


def working_time(start: float, end: float, gaps: Iterable[tuple[float, float]]) -> float:
    """The time from ``start`` to ``end`` less the parts of it inside ``gaps`` (the spans a
    run stood still: paused, or cut off by a crash, until resumed)."""
    idle = sum(max(0.0, min(end, until) - max(start, since)) for since, until in gaps)
    return end - start - idle
