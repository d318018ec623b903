"""One :class:`Topology` for every run given the same plain topology dict.

``Orchestra.run`` takes a topology as a dict, and a service passes the same one (or an equal
one made afresh) to every run: building it costs more than the rest of a short run's setup.
A *plain* dict (nodes, edges and rules as strings, an entry point, exit points, no metadata)
is read into an immutable key, and the topology built from that key is kept in a small
bounded cache, shared by the runs. A key is taken anew from the dict at each run, so a dict
changed between runs gives its new topology; the shared topology is the run's own business
(the engine's setup), never handed to the user, and never changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from .model import CACHED_PARTS_LIMIT, CACHED_TEXT_LIMIT, cacheable
from .topology import Topology

SHARED_CACHE_SIZE = 256
"""Plain topology dicts whose topology is kept (the least recently used goes first)."""

_LISTS = frozenset({"nodes", "agents", "edges", "flows", "rules", "exit_points"})

DictKey = tuple[tuple[str, "str | tuple[str, ...] | None"], ...]


def dict_key(data: Mapping[str, Any]) -> DictKey | None:
    """The plain dict ``data`` as an immutable value: its keys in order, each list as a tuple
    of its strings; None for any other dict (an agent object, a mapping, metadata, an unknown
    key, a string the caches do not keep, more than :data:`CACHED_PARTS_LIMIT` list items:
    built afresh, and an error reported as ever)."""
    if type(data) is not dict:
        return None
    parts: list[tuple[str, str | tuple[str, ...] | None]] = []
    items = 0
    for name, value in data.items():
        if name in _LISTS and type(value) in (list, tuple):
            items += len(value)
            if items > CACHED_PARTS_LIMIT:
                return None
            if not all(type(item) is str and len(item) <= CACHED_TEXT_LIMIT for item in value):
                return None  # as cacheable(), inline: a dict is read at each run
            parts.append((name, tuple(value)))
        elif name == "entry_point" and (value is None or cacheable(value)):
            parts.append((name, value))
        elif not (name == "metadata" and (value is None or (type(value) is dict and not value))):
            return None
    return tuple(parts)


def shared_topology(data: Mapping[str, Any]) -> Topology:
    """The topology ``data`` stands for: shared with every run of an equal plain dict, else
    built afresh (TopologyError naming every problem, as :meth:`Topology.coerce`)."""
    key = dict_key(data)
    if key is None:
        return Topology.coerce(data)
    return _built(key)


@lru_cache(maxsize=SHARED_CACHE_SIZE)
def _built(key: DictKey) -> Topology:
    """Built from ``key``, never from the user's dict (which the cache does not keep); its
    first run analyses it, and the topology keeps its analysis for the next ones. One that
    cannot be built raises and is not kept."""
    return Topology.from_dict(
        {name: list(value) if isinstance(value, tuple) else value for name, value in key}
    )
