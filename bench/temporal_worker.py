"""A worker process for ``bench/temporal.py``: hosts the bench's workflows (chains of function
agents, a hub fanning out to a worker) on a task queue of a Temporal server, until SIGTERM.

The same module builds them for the bench's embedded runs and for the client's setups, so the
client's version of each workflow is the one hosted here. With ``--counters PATH`` it times
what runs in the worker (each workflow activation's thread CPU, ``Engine.apply``, the journal,
the step activity) and writes the totals to PATH as JSON when it stops.

Run: ``python bench/temporal_worker.py --address HOST:PORT --queue Q --chain 50 --chain 5``.
It prints ``ready`` once it polls.
"""

from __future__ import annotations

import argparse
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


async def serve(address: str, queue: str, chains: list[int]) -> None:
    from temporalio.client import Client

    from orchestra.temporal import Hosting, worker

    client = await Client.connect(address)
    hosting = Hosting()
    for length in chains:
        hosting.add(*chain(length))
    hosting.add(*fan_out())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with worker(client, queue, hosting):
        print(READY, flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--chain", type=int, action="append", default=[])
    parser.add_argument("--counters", type=Path)
    arguments = parser.parse_args()
    counters = count_in_worker() if arguments.counters else None
    asyncio.run(serve(arguments.address, arguments.queue, arguments.chain))
    if counters is not None:
        arguments.counters.write_text(json.dumps(counters.totals))


if __name__ == "__main__":
    sys.exit(main())
