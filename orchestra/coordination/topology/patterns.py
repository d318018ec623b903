"""Ready-made topologies for the common shapes of multi-agent work.

Every builder accepts agents as names or agent objects and returns an ordinary
:class:`Topology` (valid by construction) whose ``metadata["pattern"]`` names the shape.
``docs/topology.md`` draws each one.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from orchestra.errors import TopologyError

from .model import USER, Edge, NamedAgent
from .rules import Parallel, Rule
from .topology import Topology

AgentLike = str | NamedAgent


def _name(agent: AgentLike) -> str:
    return agent if isinstance(agent, str) else agent.name


def _pattern_error(pattern: str, message: str) -> TopologyError:
    return TopologyError.single("invalid_pattern", pattern, f"{pattern}: {message}")


def _agents(pattern: str, field: str, agents: Iterable[AgentLike], minimum: int) -> list[AgentLike]:
    if isinstance(agents, str):
        raise _pattern_error(
            pattern, f"{field} must be a list of agents, got the string {agents!r}"
        )
    items = list(agents)
    if len(items) < minimum:
        raise _pattern_error(
            pattern, f"{field} needs at least {minimum} agent(s), got {len(items)}"
        )
    return items


def _parallel(agents: Sequence[AgentLike]) -> list[Rule]:
    return [Parallel(tuple(_name(a) for a in agents))] if len(agents) > 1 else []


class PatternConfig:
    """Builders for standard topologies (all static methods)."""

    @staticmethod
    def hub_and_spoke(
        hub: AgentLike, spokes: Iterable[AgentLike], parallel_spokes: bool = False
    ) -> Topology:
        """``hub <-> spoke`` for each spoke. The task enters at the hub, which alone finishes.

        Each spoke is *called*: its answer returns to the hub. With ``parallel_spokes`` the hub
        may consult several spokes at once (a ``parallel(...)`` rule over all spokes);
        otherwise it consults them one at a time.
        """
        spokes = _agents("hub_and_spoke", "spokes", spokes, 1)
        return Topology(
            nodes=[hub, *spokes],
            edges=[Edge(_name(hub), _name(s), bidirectional=True) for s in spokes],
            rules=_parallel(spokes) if parallel_spokes else [],
            metadata={"pattern": "hub_and_spoke", "parallel_spokes": parallel_spokes},
            entry_point=_name(hub),
        )

    @staticmethod
    def pipeline(
        stages: Sequence[Mapping[str, Any]], parallel_within_stage: bool = False
    ) -> Topology:
        """Stages ``{"name": ..., "agents": [...]}`` run in order.

        Sequential (default): every agent of every stage is chained in the order listed; the
        first agent receives the task and the last one finishes. With
        ``parallel_within_stage`` the agents of a stage run side by side: each agent of a
        stage has an edge to each agent of the next, so the next stage's agents are
        convergence points that run once on the whole previous stage's output. A first stage
        of several agents receives the task through ``User`` edges; a last stage of several
        agents finishes with the collected answers of all of them.
        """
        groups = [_stage_agents(index, stage) for index, stage in enumerate(stages)]
        if not groups:
            raise _pattern_error("pipeline", "needs at least one stage")
        nodes: list[AgentLike] = [agent for group in groups for agent in group]
        if not parallel_within_stage:
            names = [_name(agent) for agent in nodes]
            return Topology(
                nodes=nodes,
                edges=[Edge(a, b) for a, b in itertools.pairwise(names)],
                metadata=_pipeline_metadata(stages, parallel_within_stage),
            )
        edges = [
            Edge(_name(a), _name(b))
            for earlier, later in itertools.pairwise(groups)
            for a in earlier
            for b in later
        ]
        if len(groups[0]) > 1:
            edges = [Edge(USER, _name(a)) for a in groups[0]] + edges
        return Topology(
            nodes=nodes,
            edges=edges,
            rules=[rule for group in groups for rule in _parallel(group)],
            metadata=_pipeline_metadata(stages, parallel_within_stage),
        )

    @staticmethod
    def mesh(agents: Iterable[AgentLike]) -> Topology:
        """Every agent may call every other, several at once. The first agent receives the
        task and finishes; any other agent answers whoever called it."""
        members = _agents("mesh", "agents", agents, 2)
        names = [_name(a) for a in members]
        return Topology(
            nodes=members,
            edges=[
                Edge(a, b, bidirectional=True) for i, a in enumerate(names) for b in names[i + 1 :]
            ],
            rules=_parallel(members),
            metadata={"pattern": "mesh"},
            entry_point=names[0],
        )

    @staticmethod
    def hierarchical(tree: Mapping[AgentLike, Iterable[AgentLike]]) -> Topology:
        """``{parent: [children]}``: each parent calls its children (several at once).

        The one parent that is nobody's child is the root: it receives the task and finishes.
        Answers flow back up the tree.
        """
        if not isinstance(tree, Mapping) or not tree:
            raise _pattern_error("hierarchical", "tree must be a non-empty {parent: [children]}")
        nodes: dict[str, AgentLike] = {}
        parent_of: dict[str, str] = {}
        edges: list[Edge] = []
        rules: list[Rule] = []
        for parent, children in tree.items():
            nodes.setdefault(_name(parent), parent)
            kids = _agents("hierarchical", f"children of {_name(parent)!r}", children, 1)
            for child in kids:
                child_name = _name(child)
                if child_name in parent_of:
                    raise _pattern_error(
                        "hierarchical",
                        f"{child_name!r} has two parents ({parent_of[child_name]!r} and "
                        f"{_name(parent)!r}); in a tree each agent has one",
                    )
                parent_of[child_name] = _name(parent)
                nodes.setdefault(child_name, child)
                edges.append(Edge(_name(parent), child_name, bidirectional=True))
            rules += _parallel(kids)
        roots = [name for name in nodes if name not in parent_of]
        if len(roots) != 1:
            raise _pattern_error(
                "hierarchical",
                f"a tree needs exactly one root (a parent nobody lists as a child), "
                f"found {roots or 'none'}",
            )
        return Topology(
            nodes=list(nodes.values()),
            edges=edges,
            rules=rules,
            metadata={"pattern": "hierarchical"},
            entry_point=roots[0],
        )

    @staticmethod
    def star(center: AgentLike, points: Iterable[AgentLike]) -> Topology:
        """Scatter and gather: the task goes to every point at once (``User -> point``), each
        point hands its result to the center (``point -> center``), and the center — the
        convergence point — runs once on all of them and finishes."""
        points = _agents("star", "points", points, 1)
        return Topology(
            nodes=[center, *points],
            edges=[Edge(USER, _name(p)) for p in points]
            + [Edge(_name(p), _name(center)) for p in points],
            metadata={"pattern": "star"},
        )

    @staticmethod
    def ring(agents: Iterable[AgentLike]) -> Topology:
        """``a1 -> a2 -> ... -> an -> a1``. The first agent receives the task; each agent
        hands on to the next; the first agent decides on each lap whether to finish or go
        round again (limits such as ``max_steps`` still apply)."""
        members = _agents("ring", "agents", agents, 2)
        names = [_name(a) for a in members]
        return Topology(
            nodes=members,
            edges=[Edge(a, b) for a, b in zip(names, names[1:] + names[:1], strict=True)],
            metadata={"pattern": "ring"},
            entry_point=names[0],
        )

    @staticmethod
    def broadcast(broadcaster: AgentLike, receivers: Iterable[AgentLike]) -> Topology:
        """The broadcaster hands the work to all receivers at once; each receiver finishes,
        and the workflow's answer collects all of theirs."""
        receivers = _agents("broadcast", "receivers", receivers, 1)
        return Topology(
            nodes=[broadcaster, *receivers],
            edges=[Edge(_name(broadcaster), _name(r)) for r in receivers],
            rules=_parallel(receivers),
            metadata={"pattern": "broadcast"},
        )


def _stage_agents(index: int, stage: Mapping[str, Any]) -> list[AgentLike]:
    where = f"stage {index}"
    if not isinstance(stage, Mapping):
        raise _pattern_error("pipeline", f"{where} must be {{'name': ..., 'agents': [...]}}")
    unknown = [key for key in stage if key not in ("name", "agents")]
    if unknown:
        raise _pattern_error("pipeline", f"{where} has unknown key(s) {', '.join(unknown)}")
    if "agents" not in stage:
        raise _pattern_error("pipeline", f"{where} ({stage.get('name', '?')}) lists no 'agents'")
    return _agents("pipeline", f"{where} ({stage.get('name', '?')}) agents", stage["agents"], 1)


def _pipeline_metadata(stages: Sequence[Mapping[str, Any]], parallel: bool) -> dict[str, Any]:
    return {
        "pattern": "pipeline",
        "stages": [
            {"name": stage.get("name"), "agents": [_name(a) for a in stage["agents"]]}
            for stage in stages
        ],
        "parallel_within_stage": parallel,
    }
