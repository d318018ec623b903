"""The time an input happened: the one clock of the engine's edge (the core reads none)."""

from __future__ import annotations

import time

_WALL_AT_START = time.time() - time.perf_counter()


def now() -> float:
    """Wall-clock seconds that never step back within a process: the wall clock read once,
    then advanced by the monotonic clock."""
    return _WALL_AT_START + time.perf_counter()
