"""Routing sessions by version: each hosted workflow version has a task queue of its own
(``protocol.version_queue``), polled only by the workers that host it. What the client and
``orchestra worker`` ask Temporal about those queues lives here: whether a worker polls a
version's queue, and which running sessions no worker of a base queue hosts.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.enums.v1 import EventType, TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowHandle

from orchestra.errors import WorkflowVersionError

from .hosting import Hosting
from .protocol import WORKFLOW_NAME, base_queue

POLLER_WAIT = 2.0
"""Seconds a new session waits for a worker to poll its version's queue before it is refused:
enough for a worker started at the same time to begin polling."""

LIVE = timedelta(seconds=90)
"""How recently a worker must have polled a queue to count as polling it: Temporal lists a
poller for minutes after its worker stopped, and a live idle worker polls again about every
minute (its long polls)."""

FIRST_TASK_WAIT = 30.0
"""Seconds a session just started waits for a worker to take its first workflow task: a worker
that stopped less than ``LIVE`` ago still counts as polling, so a session of a version no live
worker hosts is started; none taking it within this, it is terminated (nothing ran in it)
and refused. Generous: workers busy with many sessions take new ones late."""

LISTED = 1000
"""The most running sessions ``unhosted_sessions`` reads."""


async def polled(client: Client, queue: str, wait: float = 0.0) -> bool:
    """Whether a worker polls ``queue`` for workflow tasks (seen within ``LIVE``), asked again
    for up to ``wait`` seconds. Raises temporalio's ``RPCError`` when Temporal refuses."""
    deadline = time.monotonic() + wait
    while True:
        described = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            )
        )
        since = datetime.now(UTC) - LIVE
        if any(poller.last_access_time.ToDatetime(UTC) >= since for poller in described.pollers):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)


async def took_first_task(handle: WorkflowHandle[Any, Any], wait: float) -> bool:
    """Whether a worker took the just-started workflow's first task within ``wait`` seconds
    (its history, long-polled: no waiting past the event). Raises temporalio's ``RPCError``
    when Temporal refuses."""
    events = handle.fetch_history_events(wait_new_event=True)
    try:
        async with asyncio.timeout(wait):
            async for event in events:
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                    return True
    except TimeoutError:
        return False
    return False  # the workflow closed before any task started (terminated meanwhile)


def not_started(
    session_id: str, version: str, task_queue: str, why: str | None = None
) -> WorkflowVersionError:
    """A new session whose version no worker hosts: refused, nothing run. ``why``: what showed
    it (by default: no worker polls its version's queue)."""
    why = why or f"none polls {task_queue}@{version} after {POLLER_WAIT:g} s"
    return WorkflowVersionError(
        f"session {session_id!r} runs workflow version {version}, which no worker on task "
        f"queue {task_queue!r} hosts ({why}); nothing was started: run `orchestra worker` "
        "with its workflow file on that task queue, then start the session again"
    )


def version_differs(session_id: str, queue: str, version: str) -> WorkflowVersionError | None:
    """The error for following a session (its workflow on task queue ``queue``) with a
    workflow of another version than the one it started with; None when they agree (or the
    queue names no version)."""
    _, started = base_queue(queue)
    if not started or started == version:
        return None
    return WorkflowVersionError(
        f"session {session_id!r} runs workflow version {started}, and this workflow is version "
        f"{version} (its name, the file's stem or metadata 'workflow', or its topology, "
        "agents or tools differ); nothing was sent to it: follow it with the workflow file it "
        "started with, under the name it had"
    )


def not_hosted_now(session_id: str, queue: str) -> WorkflowVersionError:
    """A running session no worker hosts any more (its version's queue has no poller): it
    stays running on Temporal, every step it took kept."""
    base, version = base_queue(queue)
    return WorkflowVersionError(
        f"session {session_id!r} runs workflow version {version}; no worker on task queue "
        f"{base!r} hosts it now; run a worker hosting the file it started with: it goes on "
        "from its last step (follow it again with OrchestraInstance.resume_session)"
    )


async def unhosted_sessions(
    client: Client, task_queue: str, hosting: Hosting
) -> dict[str, list[str]]:
    """The running sessions of ``task_queue`` whose version ``hosting`` does not host, by
    version (Temporal's visibility, eventually consistent: a sketch for the operator, read
    up to ``LISTED`` sessions). Raises temporalio's ``RPCError`` when visibility refuses."""
    found: dict[str, list[str]] = {}
    listed = client.list_workflows(
        f'WorkflowType="{WORKFLOW_NAME}" AND ExecutionStatus="Running"', limit=LISTED
    )
    async for execution in listed:
        base, version = base_queue(execution.task_queue)
        if base == task_queue and hosting.get(version) is None:
            found.setdefault(version, []).append(execution.id)
    return found


__all__ = [
    "FIRST_TASK_WAIT",
    "POLLER_WAIT",
    "not_hosted_now",
    "not_started",
    "polled",
    "took_first_task",
    "unhosted_sessions",
    "version_differs",
]
