"""What the engine asks of a topology, computed once so every question is a dictionary lookup.

Built by :meth:`Topology.analyze` from a valid topology. Nothing here changes after
construction (its mappings are read-only views: a cached analysis's are shared by every
topology of its shape): the engine may share one analysis between any number of concurrent
runs.

A run's setup analyses its topology, and a service starting many short runs often builds the
same topology afresh for each (from a dict, or a function that makes it). The analysis of a
*plain* topology (no node or edge metadata: only names, edges, rules, entry and exits) is a
function of those values alone, so it is kept, by that immutable value, in a small bounded
cache (:func:`plain_key`); each topology still gets its own nodes and edges in its analysis.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from orchestra.errors import TopologyError

from .model import CACHED_PARTS_LIMIT, CACHED_TEXT_LIMIT, USER, Edge, Node, cacheable
from .rules import BudgetRule, MaxAgents, MaxSteps, Parallel, PingPong, Rule, Timeout
from .topology import Topology
from .validation import Structure, inspect_structure

PlainKey = tuple[  # a plain topology's shape: see plain_key
    tuple[str, ...],  # nodes, in order
    tuple[tuple[str, str], ...],  # directed edges, in order
    tuple[Rule, ...],
    tuple[str, ...],  # the rules' reprs
    str | None,  # entry point
    tuple[str, ...],  # exit points
]


@dataclass(frozen=True)
class TopologyAnalysis:
    """Roles and relations of a valid topology.

    * ``entries``: the agents that receive the task (several only through ``User -> X`` edges,
      in which case the task fans out to all of them in parallel).
    * ``exits``: the agents whose ``final_response`` may end the workflow.
    * ``convergence_points``: agents where parallel branches from one fan-out meet; such an
      agent runs once, on the aggregate of the branches that reach it.
    * a *call* is an invocation whose target has an edge back to the caller: the callee's
      final response returns to the caller instead of ending the branch.
    """

    agents: tuple[str, ...]
    entries: tuple[str, ...]
    exits: frozenset[str]
    convergence_points: Mapping[str, frozenset[str]]
    parallel_groups: tuple[tuple[str, ...], ...]
    max_steps: int | None
    timeout: float | None
    max_agents: int | None
    ping_pong_rounds: int | None
    budget_rules: tuple[BudgetRule, ...]  # what a budget's error names as its limit's source
    _nodes: Mapping[str, Node]
    _edges: Mapping[tuple[str, str], Edge]
    _successors: Mapping[str, tuple[str, ...]]
    _predecessors: Mapping[str, tuple[str, ...]]
    _out_edges: Mapping[str, tuple[Edge, ...]]
    _user_facing: frozenset[str]
    _parallel_membership: Mapping[str, frozenset[int]]
    shape: PlainKey | None = field(default=None, compare=False, repr=False)
    """The topology's :func:`plain_key` when it is plain: analyses with equal shapes are alike
    but for the identity of their nodes' and edges' objects (None: not plain)."""

    @classmethod
    def build(cls, topology: Topology) -> TopologyAnalysis:
        """The analysis of ``topology`` (TopologyError naming every problem when invalid); a
        plain topology's from the cache, bound to its own node and edge objects."""
        key = plain_key(topology)
        if key is None:
            return cls._inspect(topology)
        return plain_analysis(key)._bound(topology)

    @classmethod
    def _inspect(cls, topology: Topology) -> TopologyAnalysis:
        structure = inspect_structure(topology)
        if structure.problems:
            raise TopologyError(structure.problems)
        groups = tuple(rule.agents for rule in topology.rules if isinstance(rule, Parallel))
        membership: dict[str, set[int]] = {}
        for number, group in enumerate(groups):
            for name in group:
                membership.setdefault(name, set()).add(number)
        singles = {type(rule): rule for rule in topology.rules if not isinstance(rule, Parallel)}
        max_steps, timeout = singles.get(MaxSteps), singles.get(Timeout)
        max_agents, ping_pong = singles.get(MaxAgents), singles.get(PingPong)
        out_edges: dict[str, list[Edge]] = {name: [] for name in topology.node_names}
        for edge in structure.edges.values():
            out_edges[edge.source].append(edge)
        return cls(
            agents=structure.agents,
            entries=structure.entries,
            exits=structure.exits,
            convergence_points=MappingProxyType(_convergence_points(structure)),
            parallel_groups=groups,
            max_steps=max_steps.steps if isinstance(max_steps, MaxSteps) else None,
            timeout=timeout.seconds if isinstance(timeout, Timeout) else None,
            max_agents=max_agents.agents if isinstance(max_agents, MaxAgents) else None,
            ping_pong_rounds=ping_pong.rounds if isinstance(ping_pong, PingPong) else None,
            budget_rules=tuple(rule for rule in topology.rules if isinstance(rule, BudgetRule)),
            _nodes={node.name: node for node in topology.nodes},
            _edges=dict(structure.edges),
            _successors=MappingProxyType({k: tuple(v) for k, v in structure.successors.items()}),
            _predecessors=MappingProxyType(
                {k: tuple(v) for k, v in structure.predecessors.items()}
            ),
            _out_edges={k: tuple(v) for k, v in out_edges.items()},
            _user_facing=frozenset(structure.user_sources),
            _parallel_membership=MappingProxyType({k: frozenset(v) for k, v in membership.items()}),
        )

    def _bound(self, topology: Topology) -> TopologyAnalysis:
        """This analysis of a plain topology, for ``topology`` of the same shape: its nodes and
        edges are the objects ``node`` and ``edge`` give (all of its edges: it is valid)."""
        out_edges: dict[str, list[Edge]] = {name: [] for name in topology.node_names}
        edges = topology.edges
        for edge in edges:
            out_edges[edge.source].append(edge)
        return replace(
            self,
            _nodes={node.name: node for node in topology.nodes},
            _edges={edge.key: edge for edge in edges},
            _out_edges={k: tuple(v) for k, v in out_edges.items()},
        )

    @property
    def plain_shape(self) -> PlainKey | None:
        """:attr:`shape`, while this analysis's nodes and edges still have no metadata (a
        node's metadata dict changed in place after the analysis is read as it now is)."""
        if self.shape is None:
            return None
        if any(node.metadata for node in self._nodes.values()):
            return None
        if any(edge.metadata for edge in self._edges.values()):
            return None
        return self.shape

    # ---- single-node questions ---------------------------------------------------------------

    @property
    def entry(self) -> str:
        """The entry agent; when the task fans out to several, the first of them."""
        return self.entries[0]

    def node(self, name: str) -> Node:
        return self._nodes[name]

    @property
    def node_names(self) -> tuple[str, ...]:
        """Every node, ``User`` included where the topology has it."""
        return tuple(self._nodes)

    def has_node(self, name: str) -> bool:
        return name in self._nodes

    def successors(self, name: str) -> tuple[str, ...]:
        """Agents ``name`` may invoke (``User`` excluded: see :meth:`talks_to_user`)."""
        return self._successors[name]

    def predecessors(self, name: str) -> tuple[str, ...]:
        return self._predecessors[name]

    def out_edges(self, name: str) -> tuple[Edge, ...]:
        """Every edge leaving ``name``, including one to ``User``."""
        return self._out_edges[name]

    def edge(self, source: str, target: str) -> Edge | None:
        return self._edges.get((source, target))

    def is_entry(self, name: str) -> bool:
        return name in self.entries

    def is_exit(self, name: str) -> bool:
        return name in self.exits

    def talks_to_user(self, name: str) -> bool:
        """Whether ``name`` has an edge to ``User``: it may ask the user and answer them."""
        return name in self._user_facing

    def is_call(self, caller: str, callee: str) -> bool:
        """Whether ``caller`` may invoke ``callee`` as a call: both edges exist, so the answer
        comes back to the caller."""
        if caller == callee or USER in (caller, callee):
            return False
        return (caller, callee) in self._edges and (callee, caller) in self._edges

    def is_convergence_point(self, name: str) -> bool:
        return name in self.convergence_points

    # ---- group questions ---------------------------------------------------------------------

    def may_invoke_in_parallel(self, targets: Iterable[str]) -> bool:
        """Whether one ``parallel(...)`` rule lists every one of ``targets``."""
        common: frozenset[int] | None = None
        for target in targets:
            groups = self._parallel_membership.get(target, frozenset())
            common = groups if common is None else common & groups
            if not common:
                return False
        return common is not None

    def summary(self) -> dict[str, Any]:
        """Plain data describing the roles, for display and debugging."""
        return {
            "entries": list(self.entries),
            "exits": sorted(self.exits),
            "convergence_points": sorted(self.convergence_points),
            "talks_to_user": sorted(self._user_facing),
            "parallel_groups": [list(group) for group in self.parallel_groups],
            "calls": sorted(f"{s} -> {t}" for (s, t) in self._edges if self.is_call(s, t)),
        }


PLAIN_CACHE_SIZE = 256
"""Plain topologies whose analysis is kept (the least recently used goes first)."""

_RULE_TYPES = frozenset({MaxSteps, Timeout, MaxAgents, Parallel, PingPong, BudgetRule})


def plain_key(topology: Topology) -> PlainKey | None:
    """Everything the analysis of ``topology`` reads, as an immutable value, when no node or
    edge has metadata (which may hold anything, mutable values included: such a topology is
    analysed afresh, as is one with a rule of a class of its own). Rules are frozen values,
    kept with their reprs so that rules equal but for a number's type (``Timeout(1)``,
    ``Timeout(1.0)``) never share an analysis. Every name must be a short exact ``str``: a
    subclass (a ``str`` Enum member) is equal to the plain name and hashes alike, but its
    analysis and fingerprint are not the plain name's. A big topology is analysed afresh."""
    nodes, edges, rules = topology.nodes, topology.edges, topology.rules
    if len(nodes) + len(edges) > CACHED_PARTS_LIMIT:
        return None
    limit = CACHED_TEXT_LIMIT  # names checked as cacheable() does, inline: read at each run
    if not all(
        type(node.name) is str and len(node.name) <= limit and not node.metadata for node in nodes
    ):
        return None
    if not all(
        type(edge.source) is str and type(edge.target) is str and not edge.metadata
        for edge in edges
    ):  # their lengths: an endpoint that is no node's name makes it invalid (never kept)
        return None
    entry, exits = topology.entry_point, topology.exit_points
    if not ((entry is None or cacheable(entry)) and all(map(cacheable, exits))):
        return None
    if not all(_plain_rule(rule) for rule in rules):
        return None
    return (
        tuple(node.name for node in nodes),
        tuple(edge.key for edge in edges),
        rules,
        tuple(map(repr, rules)),
        topology.entry_point,
        topology.exit_points,
    )


def _plain_rule(rule: Rule) -> bool:
    """Whether ``rule`` may be part of a cache's key: one of ours (a subclass may hold
    anything), hashable (a budget's limits may be lists, as read from JSON), naming agents
    and limits by exact ``str``."""
    if type(rule) not in _RULE_TYPES:
        return False
    try:
        hash(rule)
    except TypeError:
        return False
    if isinstance(rule, Parallel):
        return all(map(cacheable, rule.agents))
    if isinstance(rule, BudgetRule):
        return cacheable(rule.scope) and all(
            type(pair) is tuple
            and len(pair) == 2
            and cacheable(pair[0])
            and type(pair[1]) in (int, float)
            for pair in rule.limits
        )
    return True


@lru_cache(maxsize=PLAIN_CACHE_SIZE)
def plain_analysis(key: PlainKey) -> TopologyAnalysis:
    """The analysis of the plain topology ``key`` stands for, built from a topology of its own
    (the cache keeps no user's topology, node, edge or agent alive, and sees none change; only
    names and rules, immutable values). An invalid one raises and is not kept."""
    names, edges, rules, _, entry, exits = key
    private = Topology(names, edges, rules, entry_point=entry, exit_points=exits)
    return replace(TopologyAnalysis._inspect(private), shape=key)


def _convergence_points(structure: Structure) -> dict[str, frozenset[str]]:
    """Map each convergence point to the fan-out sources whose branches meet there.

    For a fan-out source F with successors S1..Sk, every node reachable from Si (without
    passing back through F) is tagged with up to two branch labels. A node N is a convergence
    point of F when two of its forward predecessors carry different labels. Edges that return
    a call (``N -> P`` with ``P -> N``) are not forward: a caller collecting its callees'
    answers is not a convergence point. Each fan-out costs O(V + E).
    """
    forward_preds = {
        name: [p for p in preds if (name, p) not in structure.edges]
        for name, preds in structure.predecessors.items()
    }
    fan_outs: list[tuple[str, tuple[str, ...]]] = [
        (name, tuple(succ)) for name, succ in structure.successors.items() if len(succ) > 1
    ]
    if len(structure.entries) > 1:
        fan_outs.append((USER, structure.entries))
    points: dict[str, set[str]] = {}
    for source, branches in fan_outs:
        labels = _branch_labels(source, branches, structure.successors)
        for name, preds in forward_preds.items():
            if name != source and len(preds) > 1 and _meets(preds, labels):
                points.setdefault(name, set()).add(source)
    return {name: frozenset(sources) for name, sources in points.items()}


def _branch_labels(
    source: str, branches: tuple[str, ...], successors: Mapping[str, list[str]]
) -> dict[str, set[int]]:
    labels: dict[str, set[int]] = {source: {-1}}
    queue: deque[tuple[str, int]] = deque()
    for label, start in enumerate(branches):
        labels.setdefault(start, set()).add(label)
        queue.append((start, label))
    while queue:
        node, label = queue.popleft()
        for nxt in successors[node]:
            held = labels.setdefault(nxt, set())
            if nxt != source and label not in held and len(held) < 2:
                held.add(label)
                queue.append((nxt, label))
    return labels


def _meets(preds: list[str], labels: Mapping[str, set[int]]) -> bool:
    """Whether two different predecessors carry two different branch labels."""
    seen: set[int] = set()
    for pred in preds:
        held = labels.get(pred)
        if not held:
            continue
        if seen and not (len(seen) == 1 and held == seen):
            return True
        seen |= held
    return False
