"""The bundled demo: research in parallel, then write a report.

Until the offline language model lands, the agents' "models" are small functions that play
their parts through the same interface a real model uses (``FunctionModel``), so the demo shows
the real engine — parallel branches, convergence, hand-off, status lines — with no network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestra.agents import Agent, AgentRegistry
from orchestra.coordination.config import ExecutionConfig, StatusConfig, VerbosityLevel
from orchestra.coordination.orchestra import Orchestra
from orchestra.coordination.results import OrchestraResult
from orchestra.coordination.topology import Topology
from orchestra.models import FunctionModel, Message, StepInfo

DEMO_TOPOLOGY = {
    "nodes": ["User", "Coordinator", "WebResearcher", "PaperResearcher", "Writer"],
    "edges": [
        "User -> Coordinator",
        "Coordinator <-> WebResearcher",
        "Coordinator <-> PaperResearcher",
        "Coordinator -> Writer",
        "Writer -> User",
    ],
    "rules": ["parallel(WebResearcher, PaperResearcher)", "max_steps(20)"],
}


def _last_input(messages: Sequence[Message]) -> str:
    return next((m.content for m in reversed(messages) if m.role == "user"), "")


def _coordinator(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
    last = _last_input(messages)
    if last.startswith("[Results of the parallel branches"):
        return {
            "next_action": "invoke_agent",
            "action_input": [{"agent_name": "Writer", "request": last.split("\n", 1)[1]}],
        }
    topic = last.split("\n", 1)[-1]
    return {
        "next_action": "invoke_agent",
        "action_input": [
            {"agent_name": "WebResearcher", "request": f"Recent developments in: {topic}"},
            {"agent_name": "PaperResearcher", "request": f"Key papers on: {topic}"},
        ],
    }


def _researcher(findings: list[str]) -> FunctionModel:
    def reply(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
        return {"next_action": "final_response", "action_input": {"response": findings}}

    return FunctionModel(reply)


def _writer(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
    import json

    results = json.loads(_last_input(messages).split("\n", 1)[1])
    lines = ["# Report", ""]
    for item in results:
        lines.append(f"## From {item['agent']}")
        lines += [f"- {finding}" for finding in item.get("response", [])]
        lines.append("")
    return {"next_action": "final_response", "action_input": {"response": "\n".join(lines)}}


def demo_registry() -> AgentRegistry:
    return AgentRegistry(
        [
            Agent("Coordinator", FunctionModel(_coordinator), register=False),
            Agent(
                "WebResearcher",
                _researcher(
                    ["Agents coordinate through typed actions", "Evaluation moves offline"]
                ),
                register=False,
            ),
            Agent(
                "PaperResearcher",
                _researcher(["Parallel branches cut latency", "Durable logs make runs resumable"]),
                register=False,
            ),
            Agent("Writer", FunctionModel(_writer), register=False),
        ]
    )


async def run_demo(
    task: str, verbosity: VerbosityLevel = VerbosityLevel.VERBOSE
) -> OrchestraResult:
    return await Orchestra.run(
        task=task,
        topology=Topology.from_dict(DEMO_TOPOLOGY),
        agent_registry=demo_registry(),
        execution_config=ExecutionConfig(status=StatusConfig.from_verbosity(verbosity)),
    )
