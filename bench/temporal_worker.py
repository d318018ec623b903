"""The bench's workflows (chains of function agents, a hub fanning out to a worker), hosted
by the worker processes of ``bench/temporal.py``: ``orchestra worker --module temporal_worker``
(with bench/ on the path) hosts ``hosting``. The bench builds its embedded runs and its
client's setups from the same functions, so the client's version of each is the one hosted.

Run as a script, ``python bench/temporal_worker.py ADDRESS QUEUE COUNTERS``, it is such a
worker that also times what runs in it (each workflow activation's thread CPU,
``Engine.apply``, the journal, the step activity) and writes the totals to the file COUNTERS
as JSON when SIGTERM stops it (``orchestra worker`` exits without the interpreter's teardown:
nothing of its own runs after). It prints ``ready`` once it polls.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestra.agents import AgentRegistry, FunctionAgent
from orchestra.agents.contract import Action
from orchestra.coordination.topology import Topology
from orchestra.temporal import Hosting

CHAINS = (50, 5, 3)
"""The chain lengths the bench runs (``--quick``: 5 and 3)."""

READY = "ready"


async def same(item: Any, context: Any) -> Any:
    return item


async def hub(item: Any, context: Any) -> Any:
    """Fans out to ``int(item)`` workers (the task says how many), then ends with how many
    came back."""
    if isinstance(item, list):
        return Action.final(len(item))
    return Action.invoke_parallel(("Worker", index) for index in range(int(item)))


def chain(length: int) -> tuple[Topology, AgentRegistry]:
    """``length`` function agents in a line, each handing its input on: one step each."""
    names = [f"F{index}" for index in range(length)]
    edges = [f"{a} -> {b}" for a, b in itertools.pairwise(names)]
    registry = AgentRegistry([FunctionAgent(name, same, register=False) for name in names])
    return Topology(nodes=names, edges=edges, entry_point=names[0]), registry


def fan_out() -> tuple[Topology, AgentRegistry]:
    """A hub that fans out to a worker (as many branches as its task says) and collects."""
    registry = AgentRegistry(
        [FunctionAgent("Hub", hub, register=False), FunctionAgent("Worker", same, register=False)]
    )
    topology = Topology(nodes=["Hub", "Worker"], edges=["Hub <-> Worker"], entry_point="Hub")
    return topology, registry


class Counters:
    """Calls and seconds per timed function, in this process."""

    def __init__(self) -> None:
        self.totals: dict[str, list[float]] = {}

    def add(self, key: str, seconds: float) -> None:
        total = self.totals.setdefault(key, [0, 0.0])
        total[0] += 1
        total[1] += seconds

    def time_sync(self, owner: Any, name: str, key: str, clock: Callable[[], float]) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(key, clock() - started)

        setattr(owner, name, timed)

    def time_async(self, owner: Any, name: str, key: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                self.add(key, time.perf_counter() - started)

        setattr(owner, name, timed)


def count_in_worker() -> Counters:
    """Time the worker's parts: a workflow activation (the SDK's workflow code and ours, on
    its thread: thread CPU), within it ``Engine.apply`` and the journal's records, and the
    step activity (wall: it awaits the agent)."""
    from temporalio.worker._workflow_instance import _WorkflowInstanceImpl

    from orchestra.coordination.engine.core import Engine
    from orchestra.temporal.activities import Activities
    from orchestra.temporal.seams import RecordsJournal

    counters = Counters()
    counters.time_sync(_WorkflowInstanceImpl, "activate", "activation", time.thread_time)
    counters.time_sync(Engine, "apply", "engine_apply", time.thread_time)
    counters.time_sync(RecordsJournal, "record", "journal_record", time.thread_time)
    counters.time_async(Activities, "step", "step_activity")
    return counters


def hosted() -> Hosting:
    """Every chain of ``CHAINS`` and the fan-out."""
    hosting = Hosting()
    for length in CHAINS:
        hosting.add(*chain(length))
    hosting.add(*fan_out())
    return hosting


hosting = hosted()


async def serve(address: str, queue: str) -> None:
    from temporalio.client import Client

    from orchestra.temporal import worker

    client = await Client.connect(address)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with worker(client, queue, hosting):
        print(READY, flush=True)
        await stop.wait()


def main() -> None:
    address, queue, counters_file = sys.argv[1:]
    counters = count_in_worker()
    asyncio.run(serve(address, queue))
    Path(counters_file).write_text(json.dumps(counters.totals))


if __name__ == "__main__":
    main()
