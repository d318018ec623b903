"""Structural checks: who receives the task, who may finish, and whether every node fits.

:func:`inspect_structure` never stops at the first problem: it gathers all of them, each naming
the node, edge or rule at fault, and returns them with the adjacency it built on the way so
the analysis does not build it again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from orchestra.errors import TopologyProblem

from .conditions import condition_problem
from .model import USER, Edge
from .rules import BudgetRule, Parallel
from .topology import Topology


@dataclass
class Structure:
    """The graph of agent nodes (``User`` kept aside) and the roles derived from it."""

    agents: tuple[str, ...]
    successors: dict[str, list[str]]
    predecessors: dict[str, list[str]]
    edges: dict[tuple[str, str], Edge]
    user_targets: list[str] = field(default_factory=list)
    user_sources: list[str] = field(default_factory=list)
    entries: tuple[str, ...] = ()
    exits: frozenset[str] = frozenset()
    problems: list[TopologyProblem] = field(default_factory=list)
    paths_checkable: bool = True

    def add(self, kind: str, subject: str, message: str) -> None:
        self.problems.append(TopologyProblem(kind, subject, message))


def _names(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "(none)"


def inspect_structure(topology: Topology) -> Structure:
    agents = tuple(name for name in topology.node_names if name != USER)
    structure = Structure(
        agents=agents,
        successors={name: [] for name in agents},
        predecessors={name: [] for name in agents},
        edges={},
    )
    if not agents:
        structure.add("empty_topology", "nodes", "the topology has no agent nodes")
    _check_edges(topology, structure)
    _find_entries(topology, structure)
    _find_exits(topology, structure)
    _check_rules(topology, structure)
    if structure.entries and structure.paths_checkable:
        _check_paths(structure)
    return structure


def _check_edges(topology: Topology, structure: Structure) -> None:
    declared = ", ".join(topology.node_names) or "(none)"
    for edge in topology.edges:
        usable = True
        for role, name in (("source", edge.source), ("target", edge.target)):
            if name not in topology:
                usable = False
                structure.add(
                    "dangling_edge",
                    edge.arrow,
                    f"edge {edge.arrow!r}: its {role} {name!r} is not a node (nodes: {declared})",
                )
        if edge.source == USER and edge.target == USER:
            usable = False
            structure.add("user_self_edge", edge.arrow, "edge 'User -> User' means nothing")
        problem = condition_problem(edge.condition)
        if problem:
            structure.add("invalid_condition", edge.arrow, f"edge {edge.arrow!r}: {problem}")
        if not usable:
            continue
        structure.edges[edge.key] = edge
        if edge.source == USER:
            structure.user_targets.append(edge.target)
        elif edge.target == USER:
            structure.user_sources.append(edge.source)
        else:
            structure.successors[edge.source].append(edge.target)
            structure.predecessors[edge.target].append(edge.source)


def _find_entries(topology: Topology, structure: Structure) -> None:
    entry = topology.entry_point
    if entry is not None:
        if entry == USER or entry not in topology:
            structure.add(
                "unknown_entry_point",
                entry,
                f"entry_point {entry!r} is not an agent node (nodes: {_names(structure.agents)})",
            )
        elif structure.user_targets and set(structure.user_targets) != {entry}:
            structure.add(
                "entry_conflict",
                entry,
                f"entry_point {entry!r} disagrees with the User edges, which send the task to "
                f"{_names(structure.user_targets)}; keep one of the two",
            )
        else:
            structure.entries = (entry,)
        return
    if structure.user_targets:
        structure.entries = tuple(structure.user_targets)
        return
    sources = [name for name in structure.agents if not structure.predecessors[name]]
    if len(sources) == 1:
        structure.entries = (sources[0],)
    elif not sources and structure.agents:
        structure.add(
            "no_entry",
            "entry_point",
            "no entry: every node has an incoming edge, so it is unclear who receives the task; "
            "set entry_point or add an edge 'User -> <agent>'",
        )
    elif sources:
        structure.add(
            "several_entries",
            ", ".join(sources),
            f"several possible entries ({', '.join(sources)}) have no incoming edge; set "
            "entry_point to one of them, or add 'User -> <agent>' edges to send the task to each",
        )


def _find_exits(topology: Topology, structure: Structure) -> None:
    if topology.exit_points:
        unknown = [n for n in topology.exit_points if n == USER or n not in topology]
        for name in unknown:
            structure.add(
                "unknown_exit_point",
                name,
                f"exit point {name!r} is not an agent node (nodes: {_names(structure.agents)})",
            )
        structure.exits = frozenset(topology.exit_points) - set(unknown)
        structure.paths_checkable = bool(structure.exits)
        return
    sinks = {name for name in structure.agents if not structure.successors[name]}
    exits = sinks | set(structure.user_sources)
    structure.exits = frozenset(exits) if exits else frozenset(structure.entries)


def _check_rules(topology: Topology, structure: Structure) -> None:
    seen: set[str] = set()
    for rule in topology.rules:
        if isinstance(rule, Parallel):
            for name in rule.agents:
                if name == USER or name not in topology:
                    structure.add(
                        "invalid_rule",
                        rule.to_text(),
                        f"rule {rule.to_text()!r} names {name!r}, which is not an agent node",
                    )
            continue
        if isinstance(rule, BudgetRule):
            _check_budget(topology, structure, rule, seen)
            continue
        if rule.keyword in seen:
            structure.add(
                "invalid_rule",
                rule.keyword,
                f"rule {rule.keyword}(...) is given more than once; keep one",
            )
        seen.add(rule.keyword)


def _check_budget(
    topology: Topology, structure: Structure, rule: BudgetRule, seen: set[str]
) -> None:
    """One budget rule per scope, and an agent's names an agent node."""
    key = f"budget({rule.scope})"
    if key in seen:
        structure.add(
            "invalid_rule", key, f"rule {key} is given more than once; keep one per scope"
        )
    seen.add(key)
    if rule.scope not in ("run", "branch") and (rule.scope == USER or rule.scope not in topology):
        structure.add(
            "invalid_rule",
            rule.to_text(),
            f"rule {rule.to_text()!r} names {rule.scope!r}, which is not an agent node "
            "(a budget's scope is run, branch or an agent)",
        )


def _reach(starts: Iterable[str], neighbours: dict[str, list[str]]) -> set[str]:
    reached = set(starts)
    queue = deque(reached)
    while queue:
        for nxt in neighbours[queue.popleft()]:
            if nxt not in reached:
                reached.add(nxt)
                queue.append(nxt)
    return reached


def _check_paths(structure: Structure) -> None:
    reachable = _reach(structure.entries, structure.successors)
    entries = _names(structure.entries)
    for name in structure.agents:
        if name not in reachable:
            structure.add(
                "unreachable_node",
                name,
                f"node {name!r} is unreachable: no chain of edges leads to it from the entry "
                f"({entries})",
            )
    finishing = _reach(structure.exits, structure.predecessors)
    stuck = [name for name in structure.agents if name in reachable and name not in finishing]
    exits = _names(structure.exits)
    in_cycles: set[str] = set()
    for component in _cycles(stuck, structure.successors):
        in_cycles.update(component)
        structure.add(
            "cycle_without_exit",
            ", ".join(sorted(component)),
            f"cycle with no way out: {_cycle_path(component, structure.successors)}; none of its "
            f"nodes can reach an exit ({exits})",
        )
    for name in stuck:
        if name not in in_cycles:
            structure.add(
                "dead_end",
                name,
                f"node {name!r} can never reach an exit ({exits}); add an edge from it toward an "
                "exit or list it in exit_points",
            )


def _cycles(nodes: list[str], successors: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components of ``nodes`` that contain a cycle (Tarjan, iterative)."""
    inside = set(nodes)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(successors[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next((c for c in children if c in inside), None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(successors[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in successors[node]:
                    found.append(component)
    return found


def _cycle_path(component: list[str], successors: dict[str, list[str]]) -> str:
    """One concrete cycle inside a strongly connected component, as 'A -> B -> A'."""
    members = set(component)
    walk = [min(component)]
    position = {walk[0]: 0}
    while True:
        nxt = next(n for n in successors[walk[-1]] if n in members)
        if nxt in position:
            return " -> ".join([*walk[position[nxt] :], nxt])
        position[nxt] = len(walk)
        walk.append(nxt)
