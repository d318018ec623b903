"""Sync user code (a function agent's ``fn``, a sync tool) run off the event loop.

A sync function run on the loop holds every other branch until it returns, and no timeout can
interrupt it. Run in a thread, it is awaited like any coroutine, so ``step_timeout``,
``branch_timeout``, a tool's ``timeout`` and the run's ``timeout`` all apply: the awaiting
coroutine is cancelled and the run goes on.

Python cannot stop a thread, so a call given up on runs on until its function returns, and its
result is dropped. ``asyncio.to_thread`` would make that costly: the default executor's threads
are joined at interpreter exit (a tool abandoned after 1 s of a 30 s sleep kept the process
alive 29 s longer) and an abandoned call holds one of its few workers. Here every thread is a
daemon, never joined, and a call never waits for a busy thread: one is started when none is
idle, and an idle one exits after a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
IDLE_SECONDS = 5.0

_Job = tuple[
    contextvars.Context, Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"
]


class DaemonThreads:
    """Daemon threads for blocking calls, as many as are busy at once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._guard = threading.Lock()
        self._idle = 0  # threads waiting for a job, less the jobs queued for them

    async def call(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)`` in a thread, with the caller's context variables.
        Cancelling the caller gives the call up: its thread is left to finish on its own."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job = functools.partial(function, *args, **kwargs)
        with self._guard:
            self._jobs.put((contextvars.copy_context(), job, loop, future))
            if self._idle:
                self._idle -= 1
            else:
                threading.Thread(target=self._work, name=self.name, daemon=True).start()
        return await future

    def _work(self) -> None:
        while True:
            try:
                context, job, loop, future = self._jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._guard:
                    if self._jobs.empty():  # else a job was queued for this thread meanwhile
                        self._idle -= 1
                        return
                continue
            if not future.cancelled():  # given up before it started: not run at all
                _run(context, job, loop, future)
            with self._guard:
                self._idle += 1


def _run(
    context: contextvars.Context,
    job: Callable[[], Any],
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
) -> None:
    try:
        result = context.run(job)
    except BaseException as error:  # handed to the awaiting coroutine, whatever it is
        settle_soon(loop, future, None, error)
    else:
        settle_soon(loop, future, result, None)


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


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave the call up
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


USER_CODE = DaemonThreads("orchestra-sync")
"""The threads that run sync agent functions and sync tools."""
