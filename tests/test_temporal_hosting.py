"""What a Temporal worker hosts (``orchestra.temporal.Hosting``) and the version that keys it:
changed by what a session's replay depends on (its topology, its agents' tools and their
idempotent flags), not by what it does not (a prompt)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import fn, quiet

from orchestra import Action, Agent, AgentRegistry, ErrorHandlingConfig, FunctionModel, Topology
from orchestra import tool as make_tool
from orchestra.communication.channels import CommunicationManager
from orchestra.coordination.wiring import prepare
from orchestra.temporal import Hosting, version_of
from orchestra.workflow import load_workflow

FLOW = Path(__file__).resolve().parent.parent / "orchestra" / "flows" / "research.yaml"
TOPOLOGY = Topology(nodes=["Clerk", "Done"], edges=["Clerk -> Done"])


def _version(topology: Topology, idempotent: bool, instruction: str = "Be brief.") -> str:
    def stamp(text: str) -> str:
        """Stamp a text.

        Args:
            text: what to stamp
        """
        return text

    clerk = Agent(
        "Clerk",
        FunctionModel(lambda messages, info: {"next_action": "final_response"}),
        instruction=instruction,
        tools=[make_tool(stamp, idempotent=idempotent)],
        register=False,
    )
    done = fn("Done", lambda value, context: Action.final(value))
    return _of(topology, AgentRegistry([clerk, done]))


def _of(topology: Any, registry: AgentRegistry) -> str:
    setup = prepare(topology, registry, quiet(), ErrorHandlingConfig(), CommunicationManager(), 100)
    return version_of(setup)


def test_the_version_follows_the_topology_and_the_tools_not_the_prompts() -> None:
    first = _version(TOPOLOGY, idempotent=False)
    assert len(first) == 16 and int(first, 16) >= 0
    assert _version(TOPOLOGY, idempotent=False, instruction="Be thorough.") == first
    assert _version(TOPOLOGY, idempotent=True) != first
    changed = Topology(nodes=["Clerk", "Done"], edges=["Clerk <-> Done"], entry_point="Clerk")
    assert _version(changed, idempotent=False) != first


def test_a_workflow_file_is_hosted_under_the_version_its_run_computes() -> None:
    hosting = Hosting()
    version = hosting.add_file(FLOW)
    loaded = load_workflow(FLOW)
    assert version == _of(loaded.topology, loaded.registry)
    assert hosting.versions == [version]
    hosted = hosting.get(version)
    assert hosted is not None and hosted.version == version


def test_a_refusal_names_the_session_the_versions_and_what_changed() -> None:
    hosting = Hosting()
    hosted = hosting.add(TOPOLOGY, AgentRegistry([fn("Clerk", str), fn("Done", str)]))
    started = ["fingerprint 2", "node Clerk", "node Done", "edges Clerk -> Done, Clerk"]
    message = hosting.refusal("s1", "0123456789abcdef", started, running=True)
    assert "session 's1'" in message and "0123456789abcdef" in message and hosted in message
    assert "-edges Clerk -> Done, Clerk" in message
    assert "+edges Clerk -> Done" in message
    assert "The session waits" in message and "to finish it" in message
    new = hosting.refusal("s1", "0123456789abcdef", started, running=False)
    assert "start the session again" in new and "waits" not in new
