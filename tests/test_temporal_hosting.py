"""What a Temporal worker hosts (``orchestra.temporal.Hosting``) and the version that keys it:
changed by what a session's replay depends on (its topology, its agents' tools and their
idempotent flags), not by what it does not (a prompt)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import fn, quiet, run_cli

from orchestra import Action, Agent, AgentRegistry, ErrorHandlingConfig, FunctionModel, Topology
from orchestra import tool as make_tool
from orchestra.communication.channels import CommunicationManager
from orchestra.coordination.wiring import prepare
from orchestra.errors import ConfigurationError
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


# ---- two workflows of one shape ---------------------------------------------------------------

WRITER = Topology(nodes=["Writer"], edges=[])


def _greeter(greeting: str) -> AgentRegistry:
    if greeting == "Hello":
        return AgentRegistry([fn("Writer", lambda value, context: Action.final(f"Hello {value}"))])
    return AgentRegistry([fn("Writer", lambda value, context: Action.final(f"Bonjour {value}"))])


def test_a_second_workflow_of_a_hosted_version_with_other_agents_is_refused() -> None:
    """Two one-agent workflows with one node name and no tools share a version: a worker
    hosting both would run one's sessions with the other's agents. The second is refused,
    naming both sources and the version; the first stays hosted."""
    hosting = Hosting()
    english = hosting.add(WRITER, _greeter("Hello"), source="english.py")
    with pytest.raises(ConfigurationError) as refused:
        hosting.add(WRITER, _greeter("Bonjour"), source="french.py")
    message = str(refused.value)
    assert f"french.py and english.py are both workflow version {english}" in message
    assert "their agents differ" in message and "'workflow'" in message
    assert hosting.versions == [english]
    other = Hosting()
    other.add(WRITER, _greeter("Bonjour"), source="french.py")
    with pytest.raises(ConfigurationError, match=r"french.py \(from module m\) and english.py"):
        hosting.include(other, source="module m")


def test_the_same_workflow_hosted_twice_is_one_version() -> None:
    """A file hosted from a module and as a file, say: the same agents, nothing refused."""
    registry = _greeter("Hello")
    hosting = Hosting()
    first = hosting.add(WRITER, registry, source="a")
    assert hosting.add(WRITER, registry, source="b") == first
    twice = Hosting()
    twice.add(WRITER, registry)
    assert hosting.include(twice) == [first]
    assert hosting.versions == [first]


def test_a_workflow_named_in_its_topology_has_a_version_of_its_own() -> None:
    named = Topology(nodes=["Writer"], edges=[], metadata={"workflow": "french"})
    hosting = Hosting()
    english = hosting.add(WRITER, _greeter("Hello"))
    french = hosting.add(named, _greeter("Bonjour"))
    assert french != english
    assert sorted([english, french]) == hosting.versions


def test_a_workflow_files_name_is_part_of_its_version(tmp_path: Path) -> None:
    """Files of one shape with other names are other workflows; the same file name with a
    changed prompt is a new release of one workflow (the same version: its sessions go on
    with it), which one worker cannot host beside the old one."""
    text = FLOW.read_text()
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old, new, other = (
        tmp_path / "old/research.yaml",
        tmp_path / "new/research.yaml",
        tmp_path / "other.yaml",
    )
    old.write_text(text)
    new.write_text(text.replace("three short facts", "four short facts"))
    other.write_text(text)
    assert Hosting().add_file(old) == Hosting().add_file(new) == Hosting().add_file(FLOW)
    assert Hosting().add_file(other) != Hosting().add_file(old)
    hosting = Hosting()
    version = hosting.add_file(old)
    with pytest.raises(ConfigurationError) as refused:
        hosting.add_file(new)
    assert f"{new} and {old} are both workflow version {version}" in str(refused.value)


def test_the_worker_refuses_two_files_of_one_version_with_other_agents(tmp_path: Path) -> None:
    text = FLOW.read_text()
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old, new = tmp_path / "old/research.yaml", tmp_path / "new/research.yaml"
    old.write_text(text)
    new.write_text(text.replace("three short facts", "four short facts"))
    result = run_cli("worker", "--temporal", "127.0.0.1:7233", str(old), str(new))
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1, output
    assert f"{new} and {old} are both workflow version" in output
    assert "Traceback" not in output and "worker ready" not in output
