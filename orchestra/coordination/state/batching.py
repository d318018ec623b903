"""Sending the appends of many sessions to a server together (pipelining, group commit).

With many sessions on one event loop, each append paying its own round trip (Redis) or its
own commit (PostgreSQL: one WAL flush each) is what bounds throughput. A :class:`Batches`
sends an append at once when nothing is in flight on its loop; appends that come while a
round trip is in flight wait for it to end, then go together in the next one. There is no
timer: a lone session pays no added latency, and a batch is whatever was queued when the
previous round trip ended.

Each append keeps its own answer: the sender returns one result (or exception) per item, so
one refused append fails alone. A sender that raises (a lost connection) fails every append
of its batch; their writers send them again as they were, and the servers recognise an exact
repeat of a stored append (see ``StorageBackend.append``), so each is stored once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from .backends import PerLoop

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Queue(Generic[Item, Result]):
    """One event loop's appends waiting for the round trip in flight to end."""

    def __init__(self) -> None:
        self.busy = False
        self.waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self.sender: asyncio.Task[None] | None = None  # held: the loop keeps tasks weakly


class Batches(Generic[Item, Result]):
    """One sender per event loop (the backends' clients are bound to a loop). ``send`` takes
    a batch and returns, in order, each item's result or the exception it failed with."""

    def __init__(self, send: Callable[[list[Item]], Awaitable[list[Result | Exception]]]) -> None:
        self._send = send
        self._queues = PerLoop()

    async def submit(self, item: Item) -> Result:
        """Send ``item`` now if nothing is in flight, else with the next batch."""
        queue: _Queue[Item, Result] = self._queues.get() or self._queues.put(_Queue())
        if queue.busy:
            future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
            queue.waiting.append((item, future))
            return await future
        queue.busy = True
        try:
            (result,) = await self._send([item])
        finally:
            self._hand_on(queue)
        if isinstance(result, Exception):
            raise result
        return result

    def _hand_on(self, queue: _Queue[Item, Result]) -> None:
        """After a round trip: a task sends what queued meanwhile (the caller returns now)."""
        if queue.waiting:
            queue.sender = asyncio.get_running_loop().create_task(self._drain(queue))
        else:
            queue.busy = False

    async def _drain(self, queue: _Queue[Item, Result]) -> None:
        try:
            while queue.waiting:
                batch = [(item, future) for item, future in queue.waiting if not future.done()]
                queue.waiting = []
                if batch:
                    await self._send_batch(batch)
        finally:
            queue.busy, queue.sender = False, None
            for _, future in queue.waiting:  # cancelled (the loop closing): nothing was sent
                future.cancel()
            queue.waiting = []

    async def _send_batch(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._send([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as error:
            results = [error] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # its caller was cancelled while it was in flight
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
