"""Turning the many ways users write nodes, edges and topology dicts into model objects.

Every function here raises :class:`TopologyError` whose message quotes the offending input
and says where it was found (``edges[2]``, key ``'flow'``), never a bare ``KeyError``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from orchestra.errors import TopologyError, TopologyProblem

from .model import NamedAgent, Node, cacheable, check_name

_ARROW = re.compile(r"<->|->")
EDGE_SYNTAX = "edges are written 'A -> B' (one way) or 'A <-> B' (both ways)"

NODE_KEYS = ("nodes", "agents")
EDGE_KEYS = ("edges", "flows")
TOPOLOGY_KEYS = (*NODE_KEYS, *EDGE_KEYS, "rules", "metadata", "entry_point", "exit_points")


def _problem(kind: str, subject: str, message: str) -> TopologyError:
    return TopologyError.single(kind, subject, message)


def parse_edge_text(text: str) -> tuple[str, str, bool]:
    """Split ``"A -> B"`` / ``"A <-> B"`` into ``(source, target, bidirectional)``."""
    if cacheable(text):
        return _parsed_edge_text(text)
    return _parse_edge_text(text)


@lru_cache(maxsize=4096)
def _parsed_edge_text(text: str) -> tuple[str, str, bool]:
    """A parse remembered: topologies built afresh for each run parse the same edges again
    (an error is raised each time, not remembered)."""
    return _parse_edge_text(text)


def _parse_edge_text(text: str) -> tuple[str, str, bool]:
    arrows = _ARROW.findall(text)
    if len(arrows) != 1:
        what = "no arrow" if not arrows else f"{len(arrows)} arrows"
        raise _problem("invalid_edge", text, f"cannot parse edge {text!r} ({what}); {EDGE_SYNTAX}")
    source, target = (part.strip() for part in _ARROW.split(text))
    for end, name in (("source", source), ("target", target)):
        try:
            check_name(name, end)
        except TopologyError as error:
            raise _problem(
                "invalid_edge", text, f"cannot parse edge {text!r}: {error.problems[0].message}"
            ) from None
    return source, target, arrows[0] == "<->"


def _reject_unknown_keys(item: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = [str(key) for key in item if key not in allowed]
    if unknown:
        raise _problem(
            "unknown_key",
            unknown[0],
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}",
        )


def coerce_node(item: object, where: str) -> Node:
    """A node from a name, a :class:`Node`, an agent object or ``{"name", "metadata"}``."""
    if isinstance(item, Node):
        return item
    if isinstance(item, str):
        return Node(check_name(item, where))
    if isinstance(item, Mapping):
        _reject_unknown_keys(item, ("name", "metadata"), where)
        if "name" not in item:
            raise _problem("invalid_node", where, f"{where}: a node mapping needs a 'name'")
        return Node(check_name(item["name"], where), metadata=item.get("metadata") or {})
    if isinstance(item, NamedAgent):
        return Node(check_name(item.name, where), agent=item)
    raise _problem(
        "invalid_node",
        where,
        f"{where}: a node is a name, a Node, an agent or a mapping with 'name', got {item!r}",
    )


def coerce_edge_fields(item: object, where: str) -> tuple[str, str, Mapping[str, Any], bool]:
    """``(source, target, metadata, bidirectional)`` from any accepted edge form but Edge itself."""
    if isinstance(item, str):
        source, target, both = parse_edge_text(item)
        return source, target, {}, both
    if isinstance(item, tuple | list) and len(item) == 2:
        return check_name(item[0], where), check_name(item[1], where), {}, False
    if isinstance(item, Mapping):
        _reject_unknown_keys(item, ("source", "target", "metadata", "bidirectional"), where)
        missing = [key for key in ("source", "target") if key not in item]
        if missing:
            raise _problem(
                "invalid_edge", where, f"{where}: edge mapping lacks {', '.join(missing)}"
            )
        both = item.get("bidirectional", False)
        if not isinstance(both, bool):
            raise _problem("invalid_edge", where, f"{where}: 'bidirectional' must be true or false")
        return (
            check_name(item["source"], where),
            check_name(item["target"], where),
            item.get("metadata") or {},
            both,
        )
    raise _problem(
        "invalid_edge",
        where,
        f"{where}: an edge is 'A -> B' text, an Edge, a (source, target) pair or a mapping "
        f"with 'source' and 'target', got {item!r}",
    )


def split_topology_dict(data: Mapping[str, Any]) -> dict[str, Any]:
    """Check a topology dict's keys and return its parts under canonical names.

    An unknown key is an error naming it, with the closest known key as a hint: a typo must
    never silently produce an empty topology.
    """
    problems: list[TopologyProblem] = []
    for key in data:
        if key not in TOPOLOGY_KEYS:
            close = difflib.get_close_matches(str(key), TOPOLOGY_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(
                TopologyProblem(
                    "unknown_key",
                    str(key),
                    f"unknown topology key {key!r}{hint}; known keys: {', '.join(TOPOLOGY_KEYS)}",
                )
            )
    for pair in (NODE_KEYS, EDGE_KEYS):
        if all(key in data for key in pair):
            problems.append(
                TopologyProblem(
                    "conflicting_keys",
                    pair[1],
                    f"a topology has {pair[0]!r} or its alias {pair[1]!r}, not both",
                )
            )
    if not any(key in data for key in NODE_KEYS):
        problems.append(
            TopologyProblem("missing_key", "nodes", "a topology dict needs 'nodes' (or 'agents')")
        )
    if problems:
        raise TopologyError(problems)
    return {
        "nodes": data.get("nodes", data.get("agents")),
        "edges": data.get("edges", data.get("flows")),
        "rules": data.get("rules"),
        "metadata": data.get("metadata"),
        "entry_point": data.get("entry_point"),
        "exit_points": data.get("exit_points"),
    }
