"""Sync user code (a function agent's ``fn``, a sync tool) run off the event loop.

A sync function run on the loop holds every other branch until it returns, and no timeout can
interrupt it. Run in a thread, it is awaited like any coroutine, so ``step_timeout``,
``branch_timeout``, a tool's ``timeout`` and the run's ``timeout`` all apply: the awaiting
coroutine is cancelled and the run goes on.

Python cannot stop a thread, so a call given up on runs on until its function returns, and its
result is dropped. ``asyncio.to_thread`` would make that costly: the default executor's threads
are joined at interpreter exit (a tool abandoned after 1 s of a 30 s sleep kept the process
alive 29 s longer) and an abandoned call holds one of its few workers. Here every thread is a
daemon, never joined, and a call given up on stops counting against the pool's size: a call
waiting for a thread gets a new one rather than waiting for it. An idle thread exits after a
few seconds. Calls given up on while they run are not bounded: each keeps its thread until its
function returns. A call for which no thread can start (the OS refused one) fails at once and
is never run.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

T = TypeVar("T")
IDLE_SECONDS = 5.0
MAX_THREADS = 32
"""Threads running calls nobody gave up on, at most (as ``asyncio.to_thread``'s most): a
1000-way fan-out of sync steps takes turns on them instead of starting 1000 threads."""


class _Job:
    """One call, from its queueing to its end; ``state`` changes under the pool's guard."""

    __slots__ = ("context", "function", "future", "loop", "state")

    def __init__(self, function: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> None:
        self.context = contextvars.copy_context()
        self.function = function
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.state = "queued"  # then "running", "done"; or "given up" (before it ran) or
        # "abandoned" (while it ran)


class DaemonThreads:
    """Daemon threads for blocking calls: at most ``MAX_THREADS`` running calls that are still
    awaited, plus any number running calls given up on (each replaced, when calls wait)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._guard = threading.Lock()
        self._counted = 0  # threads counted against MAX_THREADS: idle, or on a call awaited
        self._idle = 0  # threads waiting for a job, less the jobs queued for them
        self._waiting = 0  # jobs queued for no thread: each takes the next one free

    async def call(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)`` in a thread, with the caller's context variables.
        Cancelling the caller gives the call up: its thread is left to finish on its own, no
        longer counted, and another thread takes the calls that wait."""
        job = _Job(functools.partial(function, *args, **kwargs), asyncio.get_running_loop())
        with self._guard:
            if self._idle:
                self._idle -= 1
            elif self._counted < MAX_THREADS:
                self._start_for(function)
            else:
                self._waiting += 1
            self._jobs.put(job)  # only once a thread is sure to take it
        try:
            return cast(T, await job.future)
        except asyncio.CancelledError:
            self._give_up(job)
            raise

    def _start(self) -> None:
        """A new thread, counted once it runs; raises what ``Thread.start`` raised (the OS
        refused a thread), counting nothing."""
        threading.Thread(target=self._work, name=self.name, daemon=True).start()
        self._counted += 1

    def _start_for(self, function: Callable[..., Any]) -> None:
        """A thread for the caller's call, or a RuntimeError naming the function (the step or
        tool call fails with it): the call is not queued, so it never runs after its caller was
        told it failed."""
        try:
            self._start()
        except RuntimeError as error:
            raise RuntimeError(
                f"could not start a thread to run {_name(function)}: {error}"
            ) from error

    def _give_up(self, job: _Job) -> None:
        with self._guard:
            if job.state == "queued":
                job.state = "given up"  # its thread skips it
            elif job.state == "running":
                job.state = "abandoned"
                self._counted -= 1
                if self._waiting:
                    self._replace()

    def _replace(self) -> None:
        """A thread for a waiting call, in place of one given up on; if none can start, the
        call waits for the next thread that comes free."""
        with contextlib.suppress(RuntimeError):
            self._start()
            self._waiting -= 1

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._guard:
                    if self._jobs.empty():  # else a job was queued for this thread meanwhile
                        self._idle -= 1
                        self._counted -= 1
                        return
                continue
            with self._guard:
                run = job.state == "queued"
                if run:
                    job.state = "running"
            if run:
                _run(job)
            with self._guard:
                if job.state == "abandoned":  # replaced meanwhile: no longer counted
                    return
                job.state = "done"  # a cancel now, as its result arrives, abandons nothing
                if self._waiting:
                    self._waiting -= 1
                else:
                    self._idle += 1


def _run(job: _Job) -> None:
    try:
        result = job.context.run(job.function)
    except (StopIteration, StopAsyncIteration, GeneratorExit) as error:
        # a future cannot raise these as they are: it refuses StopIteration (it would end the
        # awaiting coroutine as if it returned), and a GeneratorExit thrown into a coroutine
        # closes it instead. As a coroutine raising StopIteration does, the call fails with a
        # RuntimeError that names it
        failure = RuntimeError(f"{_name(job.function)} raised {error!r}")
        failure.__cause__ = error
        settle_soon(job.loop, job.future, None, failure)
    except BaseException as error:  # handed to the awaiting coroutine, whatever it is
        settle_soon(job.loop, job.future, None, error)
    else:
        settle_soon(job.loop, job.future, result, None)


def _name(function: Callable[..., Any]) -> str:
    """The user function's name, for errors: a partial's own function's."""
    while isinstance(function, functools.partial):
        function = function.func
    return str(getattr(function, "__name__", None) or repr(function))


def settle_soon(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    error: BaseException | None,
) -> None:
    """From any thread: ``future`` (of ``loop``) gets ``result``, or raises ``error``, unless
    it is done by then (given up)."""
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for this result
        loop.call_soon_threadsafe(_settle, future, result, error)


def settle_all_soon(
    outcomes: Iterable[
        tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Any, BaseException | None]
    ],
) -> None:
    """:func:`settle_soon` for many futures at once (a group commit's appends): one wake-up of
    each loop for all of its futures, not one each (every ``call_soon_threadsafe`` writes to the
    loop's self-pipe: a system call, and a turn of the loop, per future)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, Any]]] = {}
    for loop, future, result, error in outcomes:
        by_loop.setdefault(loop, []).append((future, result, error))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these
            loop.call_soon_threadsafe(_settle_each, settled)


def _settle_each(settled: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in settled:
        _settle(future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave the call up
        return
    if error is None:
        future.set_result(result)
        return
    try:
        future.set_exception(error)
    except Exception as refused:  # no error may leave the caller waiting forever
        failure = RuntimeError(f"{type(error).__name__} cannot be raised into a future: {refused}")
        failure.__cause__ = error
        future.set_exception(failure)


USER_CODE = DaemonThreads("orchestra-sync")
"""The threads that run sync agent functions and sync tools."""


async def call_sync(function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """What the sync ``function`` returns, run on :data:`USER_CODE`'s threads; an awaitable it
    returns (an object whose ``__call__`` is async, say) awaited on the event loop."""
    value = await USER_CODE.call(function, *args, **kwargs)
    if inspect.isawaitable(value):
        value = await value
    return value
