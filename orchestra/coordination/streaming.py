"""``Orchestra.stream``: a run's events, deltas included, for a caller that renders them itself.

The run is a task of its own, started when the ``async with`` block is entered; its events are
put on a queue as they are emitted (the engine's path only appends to it) and handed out by
``async for``. Leaving the block ends the run there: a run still going is cancelled, and the
block is left only once its task has finished, so nothing of it is left behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType

from .engine.events import Event, Subscriber
from .results import OrchestraResult

_END = object()


class RunStream:
    """The events of one run (see ``Orchestra.stream``): iterate them inside
    ``async with``; ``result`` is the run's result once it ended (None before, and for a run
    that was cancelled: a block left early)."""

    def __init__(self, launch: Callable[[Subscriber | None], Awaitable[OrchestraResult]]) -> None:
        self._launch = launch
        self._queue: asyncio.Queue[Event | object] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.result: OrchestraResult | None = None

    async def __aenter__(self) -> RunStream:
        if self._task is not None:
            raise TypeError("a RunStream runs its run once: call Orchestra.stream again")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="orchestra-stream")
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task = self._task
        assert task is not None
        if not task.done():
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the caller itself is cancelled, not only the run

    async def _run(self) -> None:
        try:
            self.result = await self._launch(self._queue.put_nowait)
        finally:
            self._queue.put_nowait(_END)

    def __aiter__(self) -> RunStream:
        if self._task is None:
            raise TypeError(
                "iterate a run's events inside its block: "
                "async with Orchestra.stream(...) as events: async for event in events: ..."
            )
        return self

    async def __anext__(self) -> Event:
        assert self._task is not None
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # a second loop over a finished run ends at once
            await self._task  # misuse found as the run started is raised here
            raise StopAsyncIteration
        assert isinstance(item, Event)
        return item
