"""The :class:`Topology` container: nodes, directed edges, rules and metadata."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from orchestra.errors import TopologyError, TopologyProblem

from .model import USER, Edge, Node, check_name
from .parsing import coerce_edge_fields, coerce_node, split_topology_dict
from .rules import Rule, coerce_rule

if TYPE_CHECKING:
    from .analysis import TopologyAnalysis

T = TypeVar("T")

NodeLike = str | Node | Mapping[str, Any] | Any
EdgeLike = str | Edge | tuple[str, str] | Mapping[str, Any]
RuleLike = str | Rule


def _collect(problems: list[TopologyProblem], action: Callable[[], T]) -> T | None:
    """Run ``action``; record its TopologyError's problems instead of stopping at the first."""
    try:
        return action()
    except TopologyError as error:
        problems.extend(error.problems)
        return None


def _collect_each(
    problems: list[TopologyProblem],
    insert: Callable[[Any, str], object],
    items: list[Any],
    field: str,
) -> None:
    """``insert`` each item (``where`` it is: ``field[index]``), recording every item's
    problems (as :func:`_collect`, with no closure made per item: topologies are often built
    for each run)."""
    for index, item in enumerate(items):
        try:
            insert(item, f"{field}[{index}]")
        except TopologyError as error:
            problems.extend(error.problems)


class Topology:
    """Which agent may hand work to which, plus the rules the run obeys.

    Construction parses every input form and reports all parse problems at once; structural
    checks (reachability, entries, exits, ...) run in :meth:`validate`, so a topology may be
    assembled step by step with the mutators before it is complete. A bidirectional edge is
    stored as its two directed edges. Naming ``User`` in an edge adds the ``User`` node.
    """

    def __init__(
        self,
        nodes: Iterable[NodeLike] | None = None,
        edges: Iterable[EdgeLike] | None = None,
        rules: Iterable[RuleLike] | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        entry_point: str | None = None,
        exit_points: Iterable[str] | None = None,
    ) -> None:
        self._nodes: dict[str, Node] = {}
        self._edges: dict[tuple[str, str], Edge] = {}
        self._rules: list[Rule] = []
        self._analysis: TopologyAnalysis | None = None
        problems: list[TopologyProblem] = []
        self.metadata: dict[str, Any] = _collect(problems, partial(_metadata, metadata)) or {}
        node_items = _collect(problems, partial(_as_list, nodes, "nodes")) or []
        edge_items = _collect(problems, partial(_as_list, edges, "edges")) or []
        rule_items = _collect(problems, partial(_as_list, rules, "rules")) or []
        _collect_each(problems, self._insert_node, node_items, "nodes")
        _collect_each(problems, self._insert_edge, edge_items, "edges")
        for rule in rule_items:
            parsed = _collect(problems, partial(coerce_rule, rule))
            if parsed is not None:
                self._rules.append(parsed)
        self._entry_point = _collect(problems, partial(_optional_name, entry_point, "entry_point"))
        self._exit_points = _collect(problems, partial(_exit_names, exit_points)) or ()
        if problems:
            raise TopologyError(problems)

    # ---- construction from dicts -------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Topology:
        """Build from ``{"nodes", "edges", "rules", "metadata", "entry_point", "exit_points"}``
        or the alias form ``{"agents", "flows", ...}``. Unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise TypeError(f"Topology.from_dict needs a mapping, got {type(data).__name__}")
        return cls(**split_topology_dict(data))

    @classmethod
    def coerce(cls, topology: Topology | Mapping[str, Any]) -> Topology:
        """The Topology a public API argument stands for (a Topology or a topology dict)."""
        if isinstance(topology, Topology):
            return topology
        if isinstance(topology, Mapping):
            return cls.from_dict(topology)
        raise TypeError(
            f"topology must be a Topology or a dict with 'nodes' and 'edges', "
            f"got {type(topology).__name__}"
        )

    def to_dict(self) -> dict[str, Any]:
        """A plain-data form that :meth:`from_dict` reads back (agent objects become names)."""
        data: dict[str, Any] = {
            "nodes": [
                {"name": n.name, "metadata": dict(n.metadata)} if n.metadata else n.name
                for n in self._nodes.values()
            ],
            "edges": [
                {"source": e.source, "target": e.target, "metadata": dict(e.metadata)}
                if e.metadata
                else e.arrow
                for e in self._edges.values()
            ],
            "rules": [rule.to_text() for rule in self._rules],
            "metadata": dict(self.metadata),
        }
        if self.entry_point is not None:
            data["entry_point"] = self.entry_point
        if self.exit_points:
            data["exit_points"] = list(self.exit_points)
        return data

    # ---- reading -----------------------------------------------------------------------------

    @property
    def entry_point(self) -> str | None:
        """The agent that receives the task, when set explicitly (see docs: Entry)."""
        return self._entry_point

    @entry_point.setter
    def entry_point(self, name: str | None) -> None:
        self._entry_point = _optional_name(name, "entry_point")
        self._analysis = None

    @property
    def exit_points(self) -> tuple[str, ...]:
        """The agents that may finish, when set explicitly (see docs: Exits)."""
        return self._exit_points

    @exit_points.setter
    def exit_points(self, names: Iterable[str] | None) -> None:
        self._exit_points = _exit_names(names)
        self._analysis = None

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(self._nodes.values())

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(self._nodes)

    @property
    def edges(self) -> tuple[Edge, ...]:
        return tuple(self._edges.values())

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(self._rules)

    def node(self, name: str) -> Node:
        try:
            return self._nodes[name]
        except KeyError:
            raise self._missing_node(name) from None

    def edge(self, source: str, target: str) -> Edge | None:
        return self._edges.get((source, target))

    def __contains__(self, name: object) -> bool:
        return name in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def __repr__(self) -> str:
        return (
            f"Topology(nodes={list(self._nodes)}, edges={[e.arrow for e in self._edges.values()]}, "
            f"rules={[r.to_text() for r in self._rules]})"
        )

    # ---- mutation ----------------------------------------------------------------------------

    def add_node(self, node: NodeLike) -> Node:
        """Add a node (name, Node, agent or mapping); a name already present is an error."""
        added = self._insert_node(node, "add_node")
        self._analysis = None
        return added

    def add_edge(self, edge: EdgeLike) -> tuple[Edge, ...]:
        """Add an edge in any accepted form; returns the directed edges it stands for."""
        added = self._insert_edge(edge, "add_edge")
        self._analysis = None
        return added

    def add_rule(self, rule: RuleLike) -> Rule:
        parsed = coerce_rule(rule)
        self._rules.append(parsed)
        self._analysis = None
        return parsed

    def remove_node(self, name: str) -> Node:
        """Remove a node and every edge into or out of it."""
        node = self.node(name)
        del self._nodes[name]
        for key in [key for key in self._edges if name in key]:
            del self._edges[key]
        self._analysis = None
        return node

    def remove_edge(self, source: str, target: str) -> Edge:
        """Remove the directed edge ``source -> target`` (one half of a bidirectional pair)."""
        try:
            edge = self._edges.pop((source, target))
        except KeyError:
            raise TopologyError.single(
                "missing_edge", f"{source} -> {target}", f"there is no edge '{source} -> {target}'"
            ) from None
        self._analysis = None
        return edge

    def remove_rule(self, rule: RuleLike) -> Rule:
        parsed = coerce_rule(rule)
        if parsed not in self._rules:
            raise TopologyError.single(
                "missing_rule", parsed.to_text(), f"there is no rule {parsed.to_text()!r}"
            )
        self._rules.remove(parsed)
        self._analysis = None
        return parsed

    # ---- checking ----------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise one TopologyError naming every structural problem, or return quietly."""
        self.analyze()

    def analyze(self) -> TopologyAnalysis:
        """Validate, then precompute everything the engine asks of the graph (cached)."""
        if self._analysis is None:
            from .analysis import TopologyAnalysis

            self._analysis = TopologyAnalysis.build(self)
        return self._analysis

    def to_mermaid(self) -> str:
        """A Mermaid flowchart; entries, exits and convergence points are marked when valid."""
        from .mermaid import render_mermaid

        return render_mermaid(self)

    # ---- internals ---------------------------------------------------------------------------

    def _insert_node(self, item: NodeLike, where: str) -> Node:
        node = coerce_node(item, where)
        if node.name in self._nodes:
            raise TopologyError.single(
                "duplicate_node", node.name, f"{where}: node {node.name!r} is declared twice"
            )
        if node.is_user and node.agent is not None:
            raise TopologyError.single(
                "user_with_agent",
                USER,
                f"{where}: the User node stands for the caller; it cannot have an agent",
            )
        self._nodes[node.name] = node
        return node

    def _insert_edge(self, item: EdgeLike, where: str) -> tuple[Edge, ...]:
        if isinstance(item, Edge):
            directed = item.directed()
        else:  # a one-way edge is made once; a two-way one is checked as the user wrote it
            source, target, metadata, both = coerce_edge_fields(item, where)
            declared = Edge(source, target, metadata, bidirectional=both)
            directed = declared.directed() if both else (declared,)
        for edge in directed:
            if edge.key in self._edges:
                raise TopologyError.single(
                    "duplicate_edge", edge.arrow, f"{where}: edge {edge.arrow!r} is declared twice"
                )
        for edge in directed:
            self._edges[edge.key] = edge
        if USER in directed[0].key and USER not in self._nodes:
            self._nodes[USER] = Node(USER)
        return directed

    def _missing_node(self, name: str) -> TopologyError:
        return TopologyError.single(
            "missing_node",
            name,
            f"there is no node {name!r}; nodes: {', '.join(self._nodes) or '(none)'}",
        )


def _as_list(items: Iterable[T] | None, field: str) -> list[T]:
    if items is None:
        return []
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
        raise TopologyError.single(
            "invalid_field", field, f"{field!r} must be a list, got {type(items).__name__}"
        )
    return list(items)


def _metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TopologyError.single(
            "invalid_field",
            "metadata",
            f"'metadata' must be a mapping, got {type(metadata).__name__}",
        )
    return dict(metadata)


def _optional_name(name: str | None, field: str) -> str | None:
    return None if name is None else check_name(name, field)


def _exit_names(names: Iterable[str] | None) -> tuple[str, ...]:
    return tuple(check_name(name, "exit_points") for name in _as_list(names, "exit_points"))
