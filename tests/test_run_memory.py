"""What a finished run leaves in memory: nothing. A service runs many sessions at once, each
ending while others go on; a run's state (its conversations, events, branches) held until the
cyclic garbage collector finds it makes the collector's full rounds, which walk every live
object, both more frequent and longer for every session still running."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import final, quiet

from orchestra import Agent, AgentRegistry, Orchestra, ScriptedModel
from orchestra.coordination.state import FileStorageBackend, StateManager

RING = {"nodes": ["A", "B", "C"], "edges": ["A -> B", "B -> C", "C -> A"], "entry_point": "A"}


def hand_on(peer: str) -> dict[str, object]:
    return {"next_action": "invoke_agent", "action_input": [{"agent_name": peer, "request": "go"}]}


async def run_ring(manager: StateManager | None) -> tuple[bool, weakref.ref[Agent]]:
    """Run the ring; whether it succeeded, and a weak reference to one of its agents, which
    only the run holds once this returns."""
    first = Agent("A", ScriptedModel([hand_on("B"), final("done")]), register=False)
    registry = AgentRegistry(
        [
            first,
            Agent("B", ScriptedModel([hand_on("C")]), register=False),
            Agent("C", ScriptedModel([hand_on("A")]), register=False),
        ]
    )
    result = await Orchestra.run(
        "task",
        RING,
        agent_registry=registry,
        context={"session_id": "s1"},
        execution_config=quiet(),
        state_manager=manager,
    )
    return result.success, weakref.ref(first)


@pytest.fixture
def no_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("durable", [False, True], ids=["no persistence", "file, durable"])
def test_a_finished_run_is_freed_without_the_garbage_collector(
    tmp_path: Path, durable: bool, no_collector: None
) -> None:
    backend = FileStorageBackend(tmp_path / "state") if durable else None
    manager = None if backend is None else StateManager(backend, auto_save_interval=0)
    succeeded, agent = asyncio.run(run_ring(manager))
    assert succeeded
    assert agent() is None, "the finished run is still in memory, awaiting the cyclic collector"
    if backend is not None:
        backend.close()
