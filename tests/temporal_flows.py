"""Workflows that the process-level Temporal tests (test_temporal_processes.py) run on real
worker processes: ``orchestra worker --module temporal_flows`` hosts ``hosting``, and workflow
files name the function nodes below.

Every agent decides from its conversation alone (a step run again on another worker decides
the same). One step of each workflow waits at a gate: it appends "<agent> started by <pid>"
to the file ``starts`` of the folder ORCHESTRA_TEST_GATES, then waits (polling every 10 ms)
until the file ``open`` exists there — the test kills the worker running it meanwhile. The
tool ``record`` is not idempotent: it appends one line per call to the file ``tools`` there,
so the test counts how often each call really ran.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestra import Agent, AgentRegistry, FunctionAgent, FunctionModel, PatternConfig, Topology
from orchestra.models import Message, StepInfo
from orchestra.temporal import Hosting
from orchestra.tools import tool

GATES = "ORCHESTRA_TEST_GATES"
BRANCHES = ("W1", "W2", "W3", "W4", "W5")


def gates() -> Path:
    return Path(os.environ[GATES])


async def wait_at_gate(who: str) -> None:
    """Say who started the step, in which process; wait until the test opens the gate."""
    with open(gates() / "starts", "a") as starts:
        starts.write(f"{who} started by {os.getpid()}\n")
    while not (gates() / "open").exists():
        await asyncio.sleep(0.01)


@tool(idempotent=False)
def record(key: str) -> str:
    """Record that the workflow got here (not idempotent: each call is one line).

    Args:
        key: where it got
    """
    with open(gates() / "tools", "a") as tools:
        tools.write(f"{key}\n")
    return f"recorded {key}"


def _tool(key: str) -> dict[str, Any]:
    return {
        "next_action": "call_tool",
        "action_input": [{"name": "record", "arguments": {"key": key}}],
    }


def _final(response: Any) -> dict[str, Any]:
    return {"next_action": "final_response", "action_input": {"response": response}}


def _tool_results(messages: Sequence[Message]) -> list[str]:
    return [message.content for message in messages if message.role == "tool"]


# ---- a chain: a tool call, a step killed at the gate, another tool call -----------------------


async def intake(data: Any, context: Mapping[str, Any]) -> str:
    return f"{data}+intake"


async def clerk(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
    done = _tool_results(messages)
    if not done:
        return _tool("before")
    if len(done) == 1:
        await wait_at_gate(info.agent_name)
        return _tool("after")
    return _final(" | ".join(done))


def chain() -> tuple[Topology, AgentRegistry]:
    topology = Topology(nodes=["Intake", "Clerk"], edges=["Intake -> Clerk"])
    return topology, AgentRegistry(
        [
            FunctionAgent("Intake", intake, register=False),
            Agent("Clerk", FunctionModel(clerk), tools=[record], register=False),
        ]
    )


# ---- a fan-out: each branch records, then waits at the gate ----------------------------------


def hub(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
    last = messages[-1].content
    if last.startswith("[Results"):
        results = json.loads(last.split("\n", 1)[1])
        return _final(sorted(item["response"] for item in results))
    return {
        "next_action": "invoke_agent",
        "action_input": [{"agent_name": name, "request": name.lower()} for name in BRANCHES],
    }


async def branch(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
    done = _tool_results(messages)
    if not done:
        return _tool(info.agent_name)
    await wait_at_gate(info.agent_name)
    return _final(f"{info.agent_name}: {done[0]}")


def fan_out() -> tuple[Topology, AgentRegistry]:
    topology = PatternConfig.hub_and_spoke("Hub", list(BRANCHES), parallel_spokes=True)
    agents = [Agent("Hub", FunctionModel(hub), register=False)]
    agents += [
        Agent(name, FunctionModel(branch), tools=[record], register=False) for name in BRANCHES
    ]
    return topology, AgentRegistry(agents)


# ---- function nodes for workflow files --------------------------------------------------------


async def gate_node(data: Any, context: Mapping[str, Any]) -> str:
    await wait_at_gate("Gate")
    return f"{data}+gate"


async def review(data: Any, context: Mapping[str, Any]) -> str:
    return f"{data}+review"


async def publish(data: Any, context: Mapping[str, Any]) -> str:
    return f"{data}+publish"


hosting = Hosting()
hosting.add(*chain())
hosting.add(*fan_out())
