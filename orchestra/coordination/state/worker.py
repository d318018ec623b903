"""A dedicated thread for a backend's blocking calls (file and SQLite I/O).

``asyncio.to_thread`` goes through the default executor: a queue, a concurrent future wrapped
into an asyncio one, and a copied context, about 80 µs a round trip on a small VM. A durable
step pays that on every fsync, so the embedded backends instead hand their calls to a thread of
their own: a job is a queue entry, its result comes back with one ``call_soon_threadsafe``.
Calls run one at a time, in the order they were made, which also orders a session's appends.
The thread exits when idle and is started again by the next call, so a backend left unused
holds no thread, and one backend may serve several event loops.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from orchestra.threads import settle_soon

T = TypeVar("T")
IDLE_SECONDS = 5.0

_Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop, "Completion[Any]"]


class BlockingWorker:
    """Runs blocking callables in order, on one thread, for coroutines on any event loop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._guard = threading.Lock()
        self._running = False

    def submit(self, function: Callable[..., T], *args: Any) -> Completion[T]:
        """Queue ``function(*args)`` now; the returned future (of the running loop) gets its
        result. The call is queued before this returns, so the thread wakes while the caller
        goes on with its own work."""
        loop = asyncio.get_running_loop()
        future: Completion[T] = Completion(loop=loop)
        with self._guard:
            self._jobs.put((function, args, loop, future))
            if not self._running:
                self._running = True
                threading.Thread(target=self._work, name=self.name, daemon=True).start()
        return future

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        return await self.submit(function, *args)

    def _work(self) -> None:
        while True:
            try:
                function, args, loop, future = self._jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._guard:
                    if self._jobs.empty():
                        self._running = False
                        return
                continue
            try:
                result = function(*args)
            except BaseException as error:  # handed to the awaiting coroutine
                settle_soon(loop, future, None, error)
            else:
                if isinstance(result, Deferred):
                    result.hand(loop, future)
                else:
                    settle_soon(loop, future, result, None)


class Deferred:
    """What a job returns when its outcome is not known yet: the worker hands it the future
    to settle later (a group commit settles many appends with one sync), and goes on."""

    def hand(self, loop: asyncio.AbstractEventLoop, future: Completion[Any]) -> None:
        raise NotImplementedError


class Completion(asyncio.Future[T]):
    """The outcome of a call handed to a worker thread. It cannot be cancelled: the call runs
    anyway (blocking I/O cannot be interrupted, and a later call must not overtake it), so a
    task cancelled while awaiting it is cancelled once the call is over, and knows its outcome
    until then. Awaiting it therefore needs no ``asyncio.shield`` (and its extra turn of the
    event loop)."""

    def cancel(self, msg: Any = None) -> bool:
        return False
