"""Many concurrent durable sessions in one process, for the SIGKILL-under-load test.

Usage: python load_crash_workflow.py MODE SESSIONS [BACKEND ROOT [TRIP FINISHED STALL]]

Every session is a hub that fans out to workers for a few rounds; how many rounds (0 to 3) and
how wide each is (1 to 3 workers) come from the session's number, and every worker's value
names its session, round and lane: sessions differ, and a record given to the wrong session
would show in its result. All agents are ``async def`` functions deciding from their input
alone, so a step taken again after a crash decides as it did.

MODE:
- ``reference``: every session run with no persistence; prints one JSON object, each session's
  summary by its id.
- ``run``: every session run at once, each step durable (``auto_save_interval=0``), in storage
  BACKEND under ROOT (``storage_backends.open_backend``). Once TRIP steps have been taken,
  every session has taken one (so every session's header is durable: a step starts only once
  what it depends on is) and FINISHED sessions have finished (their end durable), it prints
  ``tripped``; from STALL steps on, steps wait forever, so the parent's SIGKILL finds sessions
  unfinished (the sessions of a single step, which take no more, still finish meanwhile).
- ``resume``: lists the sessions of that storage, resumes every one at once (one whose last run
  finished returns its stored result and writes nothing) and prints, as JSON, each session's
  state before the resume, its summary after, and whether a finished one's log kept its length.

``run`` and ``resume`` also write, to ROOT/calls-MODE, a line as each step's agent starts
(``start SESSION KEY``) and one as it returns its decision (``done SESSION KEY``), written at
once (a SIGKILL loses none): the test tells from them which steps were durable at the kill.

``run`` and ``resume`` run under a limit of 1024 open files (``RLIMIT_NOFILE``; the hard one
too, but for SQLite): a backend that needs a descriptor per running session fails them.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import sys
from pathlib import Path
from typing import Any

from helpers import timing_free
from storage_backends import close_backend, open_backend

from orchestra import AgentRegistry, ExecutionConfig, FunctionAgent, OrchestraResult, StatusConfig
from orchestra.agents.contract import Action
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import StateManager
from orchestra.coordination.state.manager import run_state

OPEN_FILES = 1024
MODE, SESSIONS = sys.argv[1], int(sys.argv[2])
taken: dict[str, Any] = {"steps": 0, "sessions": set(), "finished": 0, "tripped": False}
ledger = {"calls": -1}  # the descriptor of ROOT/calls-MODE


def note(line: str) -> None:
    if ledger["calls"] >= 0:
        os.write(ledger["calls"], line.encode() + b"\n")


def session_id(number: int) -> str:
    return f"load-{number:04d}"


def widths(number: int) -> list[int]:
    """The session's rounds of workers: how many rounds and how wide each is, by its number."""
    seeded = random.Random(number)
    return [seeded.randint(1, 3) for _ in range(seeded.randrange(4))]


def trip() -> None:
    """Say ``tripped`` (once) when the ``run`` mode has gone as far as the parent waits for."""
    if MODE != "run":
        return
    due = taken["steps"] >= int(sys.argv[5]) and taken["finished"] >= int(sys.argv[6])
    if due and not taken["tripped"] and len(taken["sessions"]) == SESSIONS:
        taken["tripped"] = True
        print("tripped", flush=True)


async def watch(number: int, key: str) -> None:
    """Note a step about to be taken; count it, trip, and later stall, the ``run`` mode."""
    note(f"start {number} {key}")
    if MODE != "run":
        return
    taken["steps"] += 1
    taken["sessions"].add(number)
    trip()
    if taken["steps"] >= int(sys.argv[7]):
        await asyncio.Event().wait()  # until the SIGKILL


async def hub(item: Any, context: Any) -> Action:
    """The task (``{"session", "widths"}``) or a round's results: the next round, or the end
    (the results of a round of one worker are its response, of a wider round a list)."""
    if isinstance(item, dict) and "round" not in item:
        number, rounds, done = item["session"], item["widths"], 0
        values: list[str] = []
    else:  # one worker's response, or each branch's (with its status) from a wider round
        results = [arrived["response"] for arrived in item] if isinstance(item, list) else [item]
        number, rounds = results[0]["session"], results[0]["widths"]
        done = results[0]["round"] + 1
        values = sorted({value for result in results for value in result["values"]})
    key = f"hub{done}"
    await watch(number, key)
    if done == len(rounds):
        action = Action.final({"session": number, "values": values})
    else:
        action = Action.invoke_parallel(
            (
                "Worker",
                {
                    "session": number,
                    "widths": rounds,
                    "round": done,
                    "lane": lane,
                    "values": values,
                },
            )
            for lane in range(rounds[done])
        )
    note(f"done {number} {key}")
    return action


async def worker(item: dict[str, Any], context: Any) -> dict[str, Any]:
    number, key = item["session"], f"r{item['round']}l{item['lane']}"
    await watch(number, key)
    note(f"done {number} {key}")
    return {**item, "values": [*item["values"], f"s{number}{key}"]}


def instance(state_manager: StateManager | None) -> OrchestraInstance:
    registry = AgentRegistry(
        [FunctionAgent("Hub", hub, register=False), FunctionAgent("Worker", worker, register=False)]
    )
    return OrchestraInstance(
        {"nodes": ["Hub", "Worker"], "edges": ["Hub <-> Worker"], "entry_point": "Hub"},
        agent_registry=registry,
        initial_config=ExecutionConfig(status=StatusConfig.from_verbosity(0)),
        state_manager=state_manager,
    )


def summary(result: OrchestraResult) -> dict[str, Any]:
    """What test_load_crash compares: the response and what does not depend on timing."""
    assert result.success, result.error
    return {"response": result.final_response, **timing_free(result)}


async def run_all(orchestra: OrchestraInstance) -> dict[str, Any]:
    async def one(number: int) -> Any:
        task = {"session": number, "widths": widths(number)}
        result = await orchestra.execute(task, context={"session_id": session_id(number)})
        taken["finished"] += 1
        trip()
        return summary(result)

    results = await asyncio.gather(*(one(number) for number in range(SESSIONS)))
    return {session_id(number): result for number, result in enumerate(results)}


async def resume_all(manager: StateManager, orchestra: OrchestraInstance) -> dict[str, Any]:
    """What a user restarting a service would do with what exists today: list the sessions,
    read how each one's last run stands, and resume them all."""
    names = sorted(await manager.list_sessions())
    before = {name: await manager.load(name) for name in names}

    async def one(name: str) -> Any:
        return summary(await orchestra.resume_session(name))

    results = await asyncio.gather(*(one(name) for name in names))
    kept = {}
    for name in names:
        if run_state(before[name]) == "finished":
            kept[name] = (await manager.load(name)).length == before[name].length
    return {
        "states": {name: run_state(log) for name, log in before.items()},
        "results": dict(zip(names, results, strict=True)),
        "kept": kept,
    }


async def main() -> None:
    if MODE == "reference":
        print(json.dumps(await run_all(instance(None))))
        return
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    soft = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    if sys.argv[3] != "sqlite":  # the file backend would raise it too, and never close a segment
        hard = soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    root = Path(sys.argv[4])
    ledger["calls"] = os.open(root / f"calls-{MODE}", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    storage = open_backend(sys.argv[3], root)
    manager = StateManager(storage, auto_save_interval=0)
    try:
        if MODE == "run":
            await run_all(instance(manager))
            print("finished", flush=True)
        else:
            print(json.dumps(await resume_all(manager, instance(manager))))
    finally:
        close_backend(storage)


asyncio.run(main())
