"""A session's topology as the inspector draws it: read from the fingerprint its last run
recorded (``RunStart.topology``), never from the topology's code. A stored session is data:
the workflow it names may be gone, changed, or not to be trusted, so nothing it names is
imported.

The fingerprint (see ``wiring.topology_fingerprint``) is a sorted list of lines: ``node X``,
``edges X -> A, B`` (a node's edges out in routing order), ``condition X -> A <text>``,
``entries A, B``, ``exit X``, ``parallel A, B`` and limits. A log of format 1 kept only the
node names and the edges' arrows (``A -> B``, ``A <-> B``). Lines this reader does not know are
left out of the drawing: it shows what it can read.

Node ids in the Mermaid text are generated (``n0``, ``n1``, ...) and every label is a quoted,
escaped Mermaid string, so no node name or condition can write Mermaid syntax of its own.
"""

from __future__ import annotations

from typing import TypedDict

from orchestra.coordination.topology.mermaid import mermaid_label
from orchestra.coordination.wiring import FINGERPRINT

CONDITION_CHARS = 60
"""Characters of an edge's condition its arrow shows."""


class Graph(TypedDict):
    """``SessionView.graph`` (JSON as it is)."""

    mermaid: str
    nodes: list[str]
    entries: list[str]
    exits: list[str]
    node_ids: dict[str, str]


def exits_of(fingerprint: tuple[str, ...]) -> frozenset[str] | None:
    """The exit nodes a run's topology ``fingerprint`` names; None for a format-1 fingerprint,
    which names none (any agent may then be taken to finish)."""
    if fingerprint[:1] != (FINGERPRINT,):
        return None
    return frozenset(line[5:] for line in fingerprint[1:] if line.startswith("exit "))


def session_graph(fingerprint: tuple[str, ...]) -> Graph:
    """The graph a run's topology ``fingerprint`` describes, drawn as a Mermaid flowchart."""
    nodes: list[str] = []
    edges: list[tuple[str, str]] = []
    entries: list[str] = []
    exits: list[str] = []
    if fingerprint[:1] == (FINGERPRINT,):
        lines = fingerprint[1:]
        nodes = [line[5:] for line in lines if line.startswith("node ")]
        for line in lines:
            if line.startswith("edges "):
                source, _, targets = line[6:].partition(" -> ")
                edges += [(source, target) for target in targets.split(", ") if target]
            elif line.startswith("entries "):
                entries = line[8:].split(", ")
            elif line.startswith("exit "):
                exits.append(line[5:])
    else:  # format 1: node names, then arrows
        for line in fingerprint:
            source, arrow, target = _arrow(line)
            if not arrow:
                nodes.append(line)
                continue
            edges.append((source, target))
            if arrow == "<->":
                edges.append((target, source))
    conditions = _conditions(fingerprint, edges)
    return _drawn(nodes, edges, conditions, entries, exits)


def _arrow(line: str) -> tuple[str, str, str]:
    for arrow in (" <-> ", " -> "):
        source, found, target = line.partition(arrow)
        if found:
            return source, arrow.strip(), target
    return line, "", ""


def _conditions(fingerprint: tuple[str, ...], edges: list[tuple[str, str]]) -> dict[int, str]:
    """Each conditional edge's condition text, by the edge's index in ``edges``."""
    found: dict[int, str] = {}
    lines = [line[10:] for line in fingerprint if line.startswith("condition ")]
    for index, (source, target) in enumerate(edges):
        prefix = f"{source} -> {target} "
        for line in lines:
            if line.startswith(prefix):
                text = line[len(prefix) :]
                found[index] = (
                    text if len(text) <= CONDITION_CHARS else f"{text[:CONDITION_CHARS]}…"
                )
    return found


def _drawn(
    nodes: list[str],
    edges: list[tuple[str, str]],
    conditions: dict[int, str],
    entries: list[str],
    exits: list[str],
) -> Graph:
    ids = {name: f"n{index}" for index, name in enumerate(dict.fromkeys(nodes))}
    lines = ["flowchart TD"]
    for name, node_id in ids.items():
        shape = ('(["', '"])') if name in exits else ('["', '"]')
        lines.append(f"    {node_id}{shape[0]}{mermaid_label(name)}{shape[1]}")
    for index, (source, target) in enumerate(edges):
        if source in ids and target in ids:
            text = conditions.get(index)
            arrow = f'-->|"{mermaid_label(text)}"|' if text else "-->"
            lines.append(f"    {ids[source]} {arrow} {ids[target]}")
    shown = [ids[name] for name in entries if name in ids]
    if shown:
        lines.append("    classDef entry stroke-width:3px")
        lines.append(f"    class {','.join(shown)} entry")
    return Graph(
        mermaid="\n".join(lines),
        nodes=list(ids),
        entries=[name for name in entries if name in ids],
        exits=[name for name in exits if name in ids],
        node_ids=ids,
    )
