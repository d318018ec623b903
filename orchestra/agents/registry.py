"""Where agents are found by name when a run starts."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from .base import BaseAgent
    from .pool import AgentPool

Registrable = Union["BaseAgent", "AgentPool"]

_auto_register: ContextVar[bool] = ContextVar("orchestra_auto_register", default=True)


class AgentReplacedWarning(UserWarning):
    """An agent was registered under a name that another agent already had."""


class AgentRegistry:
    """Agents (and agent pools) by name.

    ``AgentRegistry.default()`` is the global registry: agents register there when constructed,
    so the spec's ``Orchestra.run(task, topology)`` finds them. Pass your own
    ``AgentRegistry([a, b])`` as ``agent_registry=`` to isolate runs (recommended in tests and
    servers). Registering a name again replaces the old agent with an AgentReplacedWarning.
    """

    _default: AgentRegistry | None = None

    def __init__(self, agents: Iterable[Registrable] = ()) -> None:
        self._agents: dict[str, Registrable] = {}
        for agent in agents:
            self._add(agent, stacklevel=4)

    @classmethod
    def default(cls) -> AgentRegistry:
        if cls._default is None:
            cls._default = cls()
        return cls._default

    def register(self, agent: Registrable) -> None:
        self._add(agent, stacklevel=3)

    def _add(self, agent: Registrable, stacklevel: int) -> None:
        """``stacklevel`` points the replacement warning at the user's line."""
        name = getattr(agent, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"cannot register {agent!r}: it has no name")
        old = self._agents.get(name)
        if old is not None and old is not agent:
            warnings.warn(
                f"agent {name!r} replaces an earlier agent of the same name in the registry",
                AgentReplacedWarning,
                stacklevel=stacklevel,
            )
        self._agents[name] = agent

    def unregister(self, name: str) -> None:
        self._agents.pop(name, None)

    def get(self, name: str) -> Registrable | None:
        return self._agents.get(name)

    def clear(self) -> None:
        self._agents.clear()

    def names(self) -> list[str]:
        return list(self._agents)

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    def __len__(self) -> int:
        return len(self._agents)


def register_by_default(agent: Registrable) -> None:
    """Put a newly built agent in the global registry, unless a pool is building it."""
    if _auto_register.get():
        # user code -> Agent.__init__ -> register_by_default -> _add -> warnings.warn
        AgentRegistry.default()._add(agent, stacklevel=4)


@contextmanager
def registration_suppressed() -> Iterator[None]:
    token = _auto_register.set(False)
    try:
        yield
    finally:
        _auto_register.reset(token)
