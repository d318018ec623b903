"""The building blocks of a topology: nodes (agents, or the special ``User``) and directed edges."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

from orchestra.errors import TopologyError

USER = "User"
"""The reserved node that stands for the person (or program) that started the run.

``User -> X`` makes ``X`` an entry that receives the task; ``X -> User`` lets ``X`` deliver
the final answer and ask the user questions. It needs no agent and may be left out of the
node list: naming it in an edge is enough.
"""

_NAME_PATTERN = re.compile(r"^\w(?:[\w.\- ]*[\w.])?$")
NAME_RULE = (
    "a node name is letters, digits and '_', optionally with '.', '-' or inner spaces "
    "(e.g. 'Researcher', 'web_search.v2', 'Data Analyst')"
)


@runtime_checkable
class NamedAgent(Protocol):
    """Anything with a ``name`` can stand in a topology for the node of that name."""

    @property
    def name(self) -> str: ...


def check_name(name: object, where: str) -> str:
    """Return ``name`` if it is a usable node name, else raise a TopologyError saying where."""
    if not isinstance(name, str):
        raise TopologyError.single(
            "invalid_name", repr(name), f"{where}: node names are strings, got {name!r}"
        )
    try:
        if type(name) is str and len(name) <= CACHED_TEXT_LIMIT:  # as cacheable(), inline
            _known_name(name)
        elif not _NAME_PATTERN.fullmatch(name):
            raise ValueError(name)
    except ValueError:
        raise TopologyError.single(
            "invalid_name", name, f"{where}: {name!r} is not a valid node name; {NAME_RULE}"
        ) from None
    return name


CACHED_TEXT_LIMIT = 128
"""The longest name or edge text the topology caches keep (a longer one is read anew each
time: what a cache holds stays small whatever a client sends)."""

CACHED_PARTS_LIMIT = 128
"""The most nodes and edges (a dict: list items) of a topology the topology caches keep: the
setup they save only counts for small topologies, and a big one is not held in memory."""


def cacheable(text: object) -> bool:
    """Whether the caches may keep ``text``: an exact ``str`` (a subclass, equal to a str of
    the same characters, may differ in its type, repr or format: it is read anew) no longer
    than :data:`CACHED_TEXT_LIMIT`."""
    return type(text) is str and len(text) <= CACHED_TEXT_LIMIT


@lru_cache(maxsize=4096)
def _known_name(name: str) -> None:
    """Return if ``name`` is valid, remembered: every topology a run builds checks each of its
    names several times (a string cannot change). An invalid one raises ValueError, which the
    cache does not keep, so a rejected name is never held."""
    if not _NAME_PATTERN.fullmatch(name):
        raise ValueError(name)


@dataclass(frozen=True)
class Node:
    """A place in the topology where work can be.

    ``agent`` is optional: a node given only by name is bound to the agent registered under
    that name when the run starts, so topologies can be written before their agents exist.
    ``metadata`` carries per-node settings (e.g. a convergence policy) and free user data.
    """

    name: str
    agent: Any = field(default=None, compare=False, repr=False)
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        check_name(self.name, "Node")
        agent_name = getattr(self.agent, "name", self.name)
        if self.agent is not None and agent_name != self.name:
            raise TopologyError.single(
                "agent_name_mismatch",
                self.name,
                f"node {self.name!r} was given an agent named {agent_name!r}; "
                "a node's agent must carry the node's name",
            )
        if not isinstance(self.metadata, Mapping):
            raise TopologyError.single(
                "invalid_metadata", self.name, f"node {self.name!r}: metadata must be a mapping"
            )
        object.__setattr__(self, "metadata", dict(self.metadata))

    @property
    def is_user(self) -> bool:
        return self.name == USER


@dataclass(frozen=True)
class Edge:
    """Permission for ``source`` to hand work to ``target``.

    ``Edge("A", "B")`` is one way. ``bidirectional=True`` is shorthand for the two edges
    ``A -> B`` and ``B -> A``; a topology stores them as two directed edges. Endpoints are
    node names. ``metadata["condition"]`` restricts when the edge
    may be taken (see :mod:`orchestra.coordination.topology.conditions`).
    """

    source: str
    target: str
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)
    bidirectional: bool = False

    def __post_init__(self) -> None:
        check_name(self.source, "Edge source")
        check_name(self.target, "Edge target")
        if not isinstance(self.metadata, Mapping):
            raise TopologyError.single(
                "invalid_metadata", self.arrow, f"edge {self.arrow!r}: metadata must be a mapping"
            )
        object.__setattr__(self, "metadata", dict(self.metadata))

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.target)

    @property
    def condition(self) -> Any:
        return self.metadata.get("condition")

    @property
    def arrow(self) -> str:
        return f"{self.source} {'<->' if self.bidirectional else '->'} {self.target}"

    def directed(self) -> tuple[Edge, ...]:
        """The one-way edges this edge stands for (two when bidirectional)."""
        forward = Edge(self.source, self.target, self.metadata)
        if not self.bidirectional:
            return (forward,)
        return (forward, Edge(self.target, self.source, self.metadata))

    def __str__(self) -> str:
        return self.arrow
