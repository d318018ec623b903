"""A worker: polls a task queue for session workflows and their activities, and runs the
agents and tools it hosts."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import (
    Interceptor,
    Replayer,
    UnsandboxedWorkflowRunner,
    Worker,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from orchestra.coordination.state import StateManager
from orchestra.errors import ConfigurationError

from .activities import Activities
from .hosting import Hosting
from .mirror import StoreMirror, no_store
from .protocol import version_queue
from .workflow import HOSTING, MIRRORING, SessionWorkflow

SHUTDOWN_GRACE = 10.0
"""Seconds a stopping worker lets the calls it runs finish before it cancels them."""

HEARTBEAT_THROTTLE = timedelta(seconds=0.5)
"""The longest a worker holds back an activity's heartbeat (temporalio's throttle, otherwise
0.8 x the heartbeat timeout, which leaves a live call a fifth of the timeout to spare): with
a beat every quarter of the timeout, a heartbeat timeout of 1 s or more keeps half of it."""


class _Hosts(Interceptor):
    """Gives this worker's workflows its hosting, and whether it mirrors their logs into a
    store (extern functions: per worker, no global)."""

    def __init__(self, hosting: Hosting, mirroring: bool) -> None:
        self.hosting = hosting
        self.mirroring = mirroring

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        input.unsafe_extern_functions[HOSTING] = lambda: self.hosting
        input.unsafe_extern_functions[MIRRORING] = lambda: self.mirroring
        return None


@contextlib.asynccontextmanager
async def worker(
    client: Client,
    task_queue: str,
    hosting: Hosting,
    *,
    store: StateManager | None = None,
    shutdown_grace: float = SHUTDOWN_GRACE,
) -> AsyncIterator[list[Worker]]:
    """A worker for ``task_queue`` hosting ``hosting``'s workflows, polling until the block
    exits; then it stops taking work and lets the calls it runs finish, for up to
    ``shutdown_grace`` seconds, before it cancels them (a step cancelled so runs again
    elsewhere; a non-idempotent tool cancelled so is in doubt). Each hosted version is served
    on a queue of its own (``version_queue``: its sessions' workflow tasks, steps and tool
    calls), one temporalio ``Worker`` per version sharing the client: a worker is never
    handed a session it does not host, so workers of different releases share ``task_queue``
    safely. What ``hosting`` holds when the block starts is what the worker serves.

    With a ``store``, the log of every session this worker starts is copied into it as the
    session runs (``mirror.py``), so the inspector, ``orchestra sessions`` and ``get_result``
    over that store see it: give the workers of a task queue one store (a shared Redis or
    PostgreSQL one across machines). A worker with none copies nothing, not even for a
    session started on one that had a store."""
    if not hosting.versions:
        raise ConfigurationError(f"a worker on task queue {task_queue!r} hosts no workflow")
    activities = Activities(hosting)
    mirror = no_store if store is None else StoreMirror(store).activity
    hosts = _Hosts(hosting, mirroring=store is not None)
    serving = [
        Worker(
            client,
            task_queue=version_queue(task_queue, version),
            workflows=[SessionWorkflow],
            activities=[activities.step, activities.tool, mirror],
            workflow_runner=UnsandboxedWorkflowRunner(),
            interceptors=[hosts],
            graceful_shutdown_timeout=timedelta(seconds=shutdown_grace),
            max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        )
        for version in hosting.versions
    ]
    async with contextlib.AsyncExitStack() as running:
        for each in serving:
            await running.enter_async_context(each)
        try:
            yield serving
        finally:
            await _stop(serving)


async def _stop(serving: list[Worker]) -> None:
    """Stop every version's worker at once: all stop taking work together, and their running
    calls share one grace (one at a time, a worker hosting N versions would go on taking
    work on the others, and take up to N graces to stop). Each ``Worker``'s own exit then
    finds it stopped."""
    await asyncio.gather(*(each.shutdown() for each in serving))


def replayer(hosting: Hosting) -> Replayer:
    """A replayer of session workflows as workers hosting ``hosting`` run them: replay a
    session's history with it to check that a worker of a new release runs it as it ran."""
    return Replayer(
        workflows=[SessionWorkflow],
        workflow_runner=UnsandboxedWorkflowRunner(),
        interceptors=[_Hosts(hosting, mirroring=False)],
    )


async def run_worker(
    client: Client, task_queue: str, hosting: Hosting, *, store: StateManager | None = None
) -> None:
    """Run a worker until cancelled, or until the process gets SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        async with worker(client, task_queue, hosting, store=store):
            await stop.wait()
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)
