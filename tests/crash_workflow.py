"""A durable workflow run in a subprocess by the crash test: parallel branches and a tool.

Usage: python crash_workflow.py BACKEND STATE COUNT_FILE KILL_AT {run|resume}

BACKEND is file, sqlite, redis or postgres; STATE is a path for the first two and a namespace
for the servers (found through ORCHESTRA_TEST_REDIS_URL / ORCHESTRA_TEST_POSTGRES_DSN).

With KILL_AT = n > 0 the process SIGKILLs itself right after its n-th completed step — a step
boundary — before that step's record is necessarily durable, so the resume starts from whatever
the log holds. With KILL_AT = "n+" it dies at the first step that starts after that (in a
branch that has completed a step): by then the branch's completed steps must be durable, and
it writes "BRANCH COUNT" to COUNT_FILE.durable first, for the test to check against the log.
On success it prints, as JSON, the final response and a summary of the result that does not
depend on timing (see ``summary``): a resumed run must give the summary an uninterrupted run
gives. The tool appends one line per execution to COUNT_FILE.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from helpers import timing_free

from orchestra import (
    Agent,
    AgentRegistry,
    ExecutionConfig,
    FunctionAgent,
    OrchestraResult,
    StatusConfig,
)
from orchestra.coordination.engine import events as ev
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import (
    FileStorageBackend,
    PostgresStorageBackend,
    RedisStorageBackend,
    SQLiteStorageBackend,
    StateManager,
)
from orchestra.models import FunctionModel, Message, StepInfo
from orchestra.tools import tool

BACKEND, STATE, COUNTS, KILL_AT, MODE = sys.argv[1:6]
SESSION = "crash-test"


@tool(idempotent=False)
def log_call(key: str) -> str:
    """Record that the workflow reached a point.

    Args:
        key: which point
    """
    with open(COUNTS, "a") as handle:
        handle.write(key + "\n")
    return f"logged {key}"


def planner(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
    """Decides from the conversation alone, so a repeated call decides the same."""
    last = messages[-1]
    if last.role == "tool" and "logged plan" in last.content:
        return {
            "next_action": "invoke_agent",
            "action_input": [{"agent_name": w, "request": w.lower()} for w in ("W1", "W2", "W3")],
        }
    if last.role == "tool" and "logged report" in last.content:
        results = json.loads(messages[-3].content.split("\n", 1)[1])
        summary = sorted(item["response"] for item in results)
        return {"next_action": "final_response", "action_input": {"response": summary}}
    if last.content.startswith("[Results"):
        return {
            "next_action": "call_tool",
            "action_input": [{"name": "log_call", "arguments": {"key": "report"}}],
        }
    return {
        "next_action": "call_tool",
        "action_input": [{"name": "log_call", "arguments": {"key": "plan"}}],
    }


def worker(delay: float) -> Any:
    async def work(request: Any, context: Any) -> str:
        await asyncio.sleep(delay)  # interleave the branches
        return f"{request}-done"

    return work


def instance() -> OrchestraInstance:
    storage: Any
    if BACKEND == "file":
        storage = FileStorageBackend(STATE)
    elif BACKEND == "sqlite":
        storage = SQLiteStorageBackend(STATE)
    elif BACKEND == "redis":
        storage = RedisStorageBackend(os.environ["ORCHESTRA_TEST_REDIS_URL"], namespace=STATE)
    else:
        storage = PostgresStorageBackend(os.environ["ORCHESTRA_TEST_POSTGRES_DSN"], namespace=STATE)
    registry = AgentRegistry(
        [
            Agent("Planner", FunctionModel(planner), tools=[log_call], register=False),
            FunctionAgent("W1", worker(0.003), register=False),
            FunctionAgent("W2", worker(0.001), register=False),
            FunctionAgent("W3", worker(0.002), register=False),
        ]
    )
    return OrchestraInstance(
        {
            "nodes": ["User", "Planner", "W1", "W2", "W3"],
            "edges": [
                "User -> Planner",
                "Planner <-> W1",
                "Planner <-> W2",
                "Planner <-> W3",
                "Planner -> User",
            ],
            "rules": ["parallel(W1, W2, W3)"],
        },
        agent_registry=registry,
        initial_config=ExecutionConfig(status=StatusConfig.from_verbosity(0)),
        state_manager=StateManager(storage, auto_save_interval=0),
    )


def summary(result: OrchestraResult) -> dict[str, Any]:
    """What the run did, in a form that does not depend on timing (``timing_free``), with
    each tool call's outcome and the events an uninterrupted run has too."""
    return {
        **timing_free(result),
        "tools": sorted(
            (e.branch_id, e.tool, e.ok)
            for e in result.events
            if isinstance(e, ev.ToolCallCompleted)
        ),
        "events": sorted(type(event).__name__ for event in result.events if news(event)),
    }


def news(event: ev.Event) -> bool:
    """An event an uninterrupted run has too: not the resume itself, nor a step a crash cut
    short begun again (the run made its effect again; the step is the same one)."""
    if isinstance(event, ev.StepStarted):
        return not event.retaken
    return not isinstance(event, ev.RunResumed)


async def main() -> None:
    kill_at = int(KILL_AT.rstrip("+"))
    after_durable = KILL_AT.endswith("+")
    completed: Counter[str] = Counter()

    def kill_at_step(event: ev.Event) -> None:
        if isinstance(event, ev.StepCompleted):
            completed[event.branch_id] += 1
            if not after_durable and completed.total() == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        elif (
            isinstance(event, ev.StepStarted)
            and after_durable
            and completed.total() >= kill_at
            and completed[event.branch_id]
        ):
            with open(COUNTS + ".durable", "w") as handle:
                handle.write(f"{event.branch_id} {completed[event.branch_id]}")
            os.kill(os.getpid(), signal.SIGKILL)

    original = ev.EventStream.__init__

    def subscribed(self: ev.EventStream) -> None:
        original(self)
        if kill_at:
            self.subscribe(kill_at_step)

    ev.EventStream.__init__ = subscribed  # type: ignore[method-assign]
    orchestra = instance()
    if MODE == "run":
        result = await orchestra.execute("plan the work", context={"session_id": SESSION})
    else:
        result = await orchestra.resume_session(SESSION)
    if not result.success:
        print(json.dumps({"error": result.error}))
        sys.exit(1)
    print(
        json.dumps({"final": result.final_response, "steps": result.total_steps, **summary(result)})
    )


asyncio.run(main())
