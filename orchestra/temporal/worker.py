"""A worker: polls a task queue for session workflows and their activities, and runs the
agents and tools it hosts."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from typing import Any

from temporalio.client import Client
from temporalio.worker import (
    Interceptor,
    Replayer,
    UnsandboxedWorkflowRunner,
    Worker,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from .activities import Activities
from .hosting import Hosting
from .workflow import HOSTING, SessionWorkflow


class _Hosts(Interceptor):
    """Gives this worker's workflows its hosting (an extern function: per worker, no global)."""

    def __init__(self, hosting: Hosting) -> None:
        self.hosting = hosting

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        input.unsafe_extern_functions[HOSTING] = lambda: self.hosting
        return None


@contextlib.asynccontextmanager
async def worker(
    client: Client, task_queue: str, hosting: Hosting, *, store: Any = None
) -> AsyncIterator[Worker]:
    """A worker for ``task_queue`` hosting ``hosting``'s workflows, polling until the block
    exits (then it finishes the activities it runs and stops)."""
    activities = Activities(hosting)
    running = Worker(
        client,
        task_queue=task_queue,
        workflows=[SessionWorkflow],
        activities=[activities.step, activities.tool],
        workflow_runner=UnsandboxedWorkflowRunner(),
        interceptors=[_Hosts(hosting)],
    )
    async with running:
        yield running


def replayer(hosting: Hosting) -> Replayer:
    """A replayer of session workflows as workers hosting ``hosting`` run them: replay a
    session's history with it to check that a worker of a new release runs it as it ran."""
    return Replayer(
        workflows=[SessionWorkflow],
        workflow_runner=UnsandboxedWorkflowRunner(),
        interceptors=[_Hosts(hosting)],
    )


async def run_worker(
    client: Client, task_queue: str, hosting: Hosting, *, store: Any = None
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
