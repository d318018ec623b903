"""A dedicated thread for a backend's blocking calls (file and SQLite I/O).

``asyncio.to_thread`` goes through the default executor: a queue, a concurrent future wrapped
into an asyncio one, and a copied context, about 80 µs a round trip on a small VM. A durable
step pays that on every fsync, so the embedded backends instead hand their calls to a thread of
their own: a job is a queue entry, its result comes back with one ``call_soon_threadsafe``.
Calls run one at a time, in the order they were made, which also orders a session's appends.
The thread exits when idle and is started again by the next call, so a backend left unused
holds no thread, and one backend may serve several event loops.

Grouped calls (``submit_grouped``) let a backend commit many sessions' appends at once: the
thread hands every grouped job queued back to back at the moment it gets to the first one to a
single call. It never waits for more to come, so a lone caller's job runs as soon as the thread
is free; the next job of another kind waits until the group is done, so order is kept.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from orchestra.threads import settle_all_soon, settle_soon

T = TypeVar("T")
IDLE_SECONDS = 5.0
GROUP_JOBS = 256  # the most jobs one grouped call takes
GROUP_SIZE = 4 << 20  # and the most size (the caller's measure: bytes), past its first job

GroupRun = Callable[[list[Any]], list[BaseException | None]]
"""Runs a group of items; returns each item's error, or None where it succeeded."""

# function, args, loop, future; a grouped job's function is its GroupRun, its args (item, size)
_Job = tuple[
    Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop, "Completion[Any]", bool
]


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
        self._queue((function, args, loop, future, False))
        return future

    def submit_grouped(self, run: GroupRun, item: Any, size: int) -> Completion[None]:
        """Queue ``item`` for ``run``, which is called with it and every other item queued for
        the same ``run`` right behind it (up to :data:`GROUP_JOBS` items and :data:`GROUP_SIZE`
        of ``size``): one call for what would otherwise be many. The future gets ``item``'s
        own outcome."""
        loop = asyncio.get_running_loop()
        future: Completion[None] = Completion(loop=loop)
        self._queue((run, (item, size), loop, future, True))
        return future

    def _queue(self, job: _Job) -> None:
        with self._guard:
            self._jobs.put(job)
            if not self._running:
                self._running = True
                threading.Thread(target=self._work, name=self.name, daemon=True).start()

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        return await self.submit(function, *args)

    def _work(self) -> None:
        job: _Job | None = None  # taken from the queue, not yet run
        while True:
            if job is None:
                try:
                    job = self._jobs.get(timeout=IDLE_SECONDS)
                except queue.Empty:
                    with self._guard:
                        if self._jobs.empty():
                            self._running = False
                            return
                    continue
            if job[4]:
                job = self._run_group(job)
                continue
            function, args, loop, future, _ = job
            job = None
            try:
                result = function(*args)
            except BaseException as error:  # handed to the awaiting coroutine
                settle_soon(loop, future, None, error)
            else:
                if isinstance(result, Deferred):
                    result.hand(loop, future)
                else:
                    settle_soon(loop, future, result, None)

    def _run_group(self, first: _Job) -> _Job | None:
        """Run ``first`` with the grouped jobs queued right behind it for the same function;
        returns the job that ended the group (another kind, or one past its bounds), if any,
        to be run next."""
        run = first[0]
        group = [first]
        size = 0
        following: _Job | None = None
        while len(group) < GROUP_JOBS and not self._jobs.empty():  # this thread alone takes
            following = self._jobs.get_nowait()
            size += following[1][1] if following[4] else 0
            if following[0] != run or size > GROUP_SIZE:
                break
            group.append(following)
            following = None
        try:
            errors = run([job[1][0] for job in group])
        except BaseException as failure:  # every item's outcome
            errors = [failure] * len(group)
        settle_all_soon(
            (loop, future, None, error)
            for (_, _, loop, future, _), error in zip(group, errors, strict=True)
        )
        return following


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
