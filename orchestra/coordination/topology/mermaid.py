"""Mermaid flowcharts of topologies, for docs, notebooks and the CLI."""

from __future__ import annotations

from orchestra.errors import TopologyError

from .conditions import describe_condition
from .model import USER, Edge
from .topology import Topology

_ENTITIES = {
    "#": "#35;",
    '"': "#quot;",
    "&": "#amp;",
    "<": "#lt;",
    ">": "#gt;",
    "|": "#124;",
    "`": "#96;",
    "%": "#37;",
    "{": "#123;",
    "}": "#125;",
    "\n": "<br>",
}


def mermaid_label(text: str) -> str:
    """``text`` as the inside of a quoted Mermaid string that shows ``text``, on one line.

    A quote ends the string and a line break the statement; Mermaid reads ``#name;`` and
    ``#code;`` as entities and a label as HTML, and a backtick after the opening quote starts
    a markdown string. Mermaid also obeys a ``%%{init: ...}%%`` directive found anywhere in
    the text, even inside a quoted label, and lets it change its configuration (theme, CSS).
    So those characters, ``|`` (which delimits edge text), ``%``, ``{`` and ``}`` are written as
    entities, a newline as ``<br>``, and any other character that is not printable (a carriage
    return, a line or paragraph separator, a control) as its numeric entity.
    """
    return "".join(_ENTITIES.get(char) or _printable(char) for char in text)


def _printable(char: str) -> str:
    return char if char.isprintable() else f"#{ord(char)};"


def _arrow(edge: Edge, both_ways: bool) -> str:
    condition = describe_condition(edge.condition)
    arrow = "<-->" if both_ways else "-->"
    return f'{arrow}|"{mermaid_label(condition)}"|' if condition else arrow


def render_mermaid(topology: Topology) -> str:
    """Draw ``topology``. Node ids are generated, so any node name draws safely.

    When the topology is valid, entries are drawn as rounded boxes with a bold border, exits
    as stadiums, convergence points as hexagons and ``User`` as a circle. A pair of edges
    with equal metadata in both directions is drawn once, as ``<-->``.
    """
    try:
        analysis = topology.analyze()
    except TopologyError:
        analysis = None
    ids = {name: f"n{index}" for index, name in enumerate(topology.node_names)}
    lines = ["flowchart TD"]
    for name, node_id in ids.items():
        text = mermaid_label(name)
        if name == USER:
            lines.append(f'    {node_id}(("{text}"))')
        elif analysis and analysis.is_convergence_point(name):
            lines.append(f'    {node_id}{{{{"{text}"}}}}')
        elif analysis and analysis.is_exit(name):
            lines.append(f'    {node_id}(["{text}"])')
        else:
            lines.append(f'    {node_id}["{text}"]')
    drawn: set[tuple[str, str]] = set()
    for edge in topology.edges:
        if edge.key in drawn:
            continue
        reverse = topology.edge(edge.target, edge.source)
        both_ways = (
            edge.source != edge.target and reverse is not None and reverse.metadata == edge.metadata
        )
        drawn.add(edge.key)
        if both_ways:
            drawn.add((edge.target, edge.source))
        source, target = ids.get(edge.source), ids.get(edge.target)
        if source and target:
            lines.append(f"    {source} {_arrow(edge, both_ways)} {target}")
    if analysis:
        lines.append("    classDef entry stroke-width:3px")
        lines.append(f"    class {','.join(ids[name] for name in analysis.entries)} entry")
    return "\n".join(lines)
