"""Generated workflows, paused at generated steps: resumed with their snapshot, resumed without
it, and run without a pause, they give the same run.

Each example is a tree of function agents: a lead that calls its children in parallel, and
below it children that answer, fail, hand the work on, or call children of their own in
parallel under a generated convergence policy; or a lead that hands the work to children in
parallel which all hand theirs on to one node where they meet. One run goes through uninterrupted; another is
paused at the generated steps (by an agent, as a person would pause it mid-step) and resumed
until it ends, and beside it a copy of its log — which has no snapshot — is resumed too. At
every pause the result read back from the log, with the snapshot and without, is the paused
result exactly (times and events included); at the end all three runs agree on everything but
their timings.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import crash_copy, quiet
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_replay import exactly, timeless

from orchestra import Action, AgentRegistry, FunctionAgent, Orchestra, OrchestraResult
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import FileStorageBackend, StateManager

POLICIES: list[Any] = ["all", "any", {"k": 1, "on_insufficient": "proceed"}, 0.5]


@dataclass(frozen=True)
class Node:
    """An agent of a generated workflow: ``kind`` says what it does with its work."""

    name: str
    kind: str  # answer, fail, handoff (to its one child), fan_out (calls its children),
    # meet (hands the work to its children, which all hand theirs to its last child)
    children: tuple[Node, ...] = ()
    policy: Any = None


@st.composite
def trees(draw: st.DrawFn) -> Node:
    names = iter(f"N{i}" for i in range(100))

    def node(depth: int) -> Node:
        kinds = ["answer", "answer", "fail"] + (["handoff", "fan_out"] if depth < 2 else [])
        kind = draw(st.sampled_from(kinds))
        name = next(names)
        if kind == "handoff":
            return Node(name, kind, (Node(next(names), "answer"),))
        if kind == "fan_out":
            children = tuple(node(depth + 1) for _ in range(draw(st.integers(1, 3))))
            return Node(name, kind, children, draw(st.sampled_from(POLICIES)))
        return Node(name, kind)

    if draw(st.booleans()):
        children = tuple(node(1) for _ in range(draw(st.integers(1, 3))))
        return Node("Lead", "fan_out", children, draw(st.sampled_from(POLICIES)))
    kinds = st.sampled_from(["answer", "answer", "fail"])
    senders = tuple(Node(next(names), draw(kinds)) for _ in range(draw(st.integers(2, 3))))
    meeting = Node("Meet", "fan_out", (), draw(st.sampled_from(POLICIES)))
    return Node("Lead", "meet", (*senders, meeting))


def nodes_of(root: Node) -> list[Node]:
    return [root, *(n for child in root.children for n in nodes_of(child))]


def topology(root: Node) -> dict[str, Any]:
    edges, rules, metadata = [], [], {}
    if root.kind == "meet":
        *senders, meeting = root.children
        edges = [f"Lead -> {n.name}" for n in senders] + [f"{n.name} -> Meet" for n in senders]
        rules = [f"parallel({', '.join(n.name for n in senders)})"]
        metadata["Meet"] = {"convergence_policy": meeting.policy}
    for node in nodes_of(root) if root.kind != "meet" else ():
        names = [child.name for child in node.children]
        if node.kind == "handoff":
            edges.append(f"{node.name} -> {names[0]}")
        for name in names if node.kind == "fan_out" else ():
            edges.append(f"{node.name} <-> {name}")
        if node.kind == "fan_out" and len(names) > 1:
            rules.append(f"parallel({', '.join(names)})")
        if node.policy is not None:
            metadata[node.name] = {"convergence_policy": node.policy}
    return {
        "nodes": [{"name": n.name, "metadata": metadata.get(n.name, {})} for n in nodes_of(root)],
        "edges": edges,
        "rules": rules,
        "entry_point": "Lead",
    }


class Team:
    """The agents of one workflow; ``pause_at`` (step counts) makes the one taking that step
    pause its session, as a person watching would."""

    def __init__(self, root: Node, pause_at: frozenset[int]) -> None:
        self.root = root
        self.pause_at = pause_at
        self.steps = 0
        self.instance: OrchestraInstance | None = None
        self.session = ""

    def registry(self) -> AgentRegistry:
        return AgentRegistry(
            [FunctionAgent(n.name, self._behaviour(n), register=False) for n in nodes_of(self.root)]
        )

    def _behaviour(self, node: Node) -> Any:
        async def step(work: Any, context: Any) -> Any:
            self.steps += 1
            if self.steps in self.pause_at and self.instance is not None:
                await self.instance.pause_session(self.session, f"at step {self.steps}")
            return decide(node, work)

        return step


def decide(node: Node, work: Any) -> Any:
    if node.kind == "meet":
        senders = node.children[:-1]
        return Action.invoke_parallel([(child.name, f"{work}/{child.name}") for child in senders])
    if node.kind == "answer":
        return f"{node.name}<{work}>"
    if node.kind == "fail":
        raise ValueError(f"{node.name} failed on {work}")
    if node.kind == "handoff":
        return Action.invoke(node.children[0].name, f"{node.name}>{work}")
    if isinstance(work, list):  # what its parallel calls gave
        return Action.final([item.get("response", item.get("error")) for item in work])
    return Action.invoke_parallel([(child.name, f"{work}/{child.name}") for child in node.children])


async def uninterrupted(root: Node) -> OrchestraResult:
    team = Team(root, frozenset())
    return await Orchestra.run(
        "task", topology(root), agent_registry=team.registry(), execution_config=quiet()
    )


def durable(team: Team, storage: FileStorageBackend, session: str) -> OrchestraInstance:
    team.session = session
    team.instance = OrchestraInstance(
        topology(team.root),
        agent_registry=team.registry(),
        initial_config=quiet(),
        state_manager=StateManager(storage, auto_save_interval=3600),  # snapshots at pauses
    )
    return team.instance


async def paused_and_resumed(root: Node, pause_at: frozenset[int], folder: Path) -> None:
    storage = FileStorageBackend(folder)
    try:
        main = Team(root, pause_at)
        orchestra = durable(main, storage, "main")
        result = await asyncio.wait_for(orchestra.execute("task", {"session_id": "main"}), 10)
        copy_team = Team(root, pause_at)
        copy = durable(copy_team, storage, "copy")
        copied, pauses = False, 0
        while result.metadata.get("paused"):
            pauses += 1
            assert await storage.read_snapshot("main") is not None
            stored = await orchestra.get_result("main")
            assert stored is not None and exactly(stored) == exactly(result)
            if not copied:  # a log without a snapshot, from here on a run of its own
                await crash_copy(storage, "main", "copy", len(await storage.read("main")))
                copy_team.steps, copied = main.steps, True
                from_log = await copy.get_result("copy")
                assert from_log is not None and exactly(from_log, "main") == exactly(result)
                copy_result = await asyncio.wait_for(copy.resume_session("copy"), 10)
                while copy_result.metadata.get("paused"):
                    copy_result = await asyncio.wait_for(copy.resume_session("copy"), 10)
            result = await asyncio.wait_for(orchestra.resume_session("main"), 10)
        event(f"paused {pauses} times, {root.kind}, {'success' if result.success else 'failure'}")
        if copied:
            assert timeless(copy_result) == timeless(result)
        again = await orchestra.get_result("main")
        assert again is not None and exactly(again) == exactly(result)
        assert timeless(result) == timeless(await uninterrupted(root))
    finally:
        storage.close()


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(trees(), st.lists(st.integers(1, 8), min_size=1, max_size=3, unique=True).map(frozenset))
def test_paused_resumed_with_or_without_snapshot_equals_uninterrupted(
    root: Node, pause_at: frozenset[int]
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(paused_and_resumed(root, pause_at, Path(folder)))
