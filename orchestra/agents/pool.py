"""Several interchangeable instances of one agent, leased to parallel branches."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable

from orchestra.errors import ConfigurationError

from .base import BaseAgent
from .registry import register_by_default, registration_suppressed


class AgentPool:
    """``size`` instances built by ``factory`` (a no-argument callable or an agent class).

    Register the pool (it registers itself in the global registry, like an agent) and use its
    name in the topology: each branch that reaches that node leases its own instance for as
    long as the branch lives, so instances never share state across parallel branches. A
    branch waits when every instance is leased. Leases are always returned when their branch
    ends, however the run ends; ``cleanup()`` then calls each instance's own ``cleanup``.
    """

    def __init__(
        self, factory: Callable[[], BaseAgent], size: int, *, register: bool = True
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigurationError(f"AgentPool size must be a positive integer, got {size!r}")
        with registration_suppressed():
            instances = [factory() for _ in range(size)]
        names = {instance.name for instance in instances}
        if len(names) != 1:
            raise ConfigurationError(
                f"AgentPool instances must all share one name, got {sorted(names)}"
            )
        self.name: str = names.pop()
        self.size = size
        self.instances: tuple[BaseAgent, ...] = tuple(instances)
        self._free: asyncio.Queue[BaseAgent] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._leased: set[int] = set()
        self.waiting = 0  # branches waiting for an instance (a measure of the pool's pressure)
        self.closed = False
        if register:
            register_by_default(self)

    def __repr__(self) -> str:
        return (
            f"AgentPool(name={self.name!r}, size={self.size}, available={self.available}, "
            f"waiting={self.waiting})"
        )

    def _queue(self) -> asyncio.Queue[BaseAgent]:
        """The free instances, as a queue of the running event loop (a pool outlives loops:
        each ``asyncio.run`` gets a fresh queue of the instances not on loan)."""
        loop = asyncio.get_running_loop()
        if self._free is None or self._loop is not loop:
            self._free, self._loop = asyncio.Queue(), loop
            for instance in self.instances:
                if id(instance) not in self._leased:
                    self._free.put_nowait(instance)
        return self._free

    @property
    def available(self) -> int:
        return self.size - len(self._leased)

    async def acquire(self) -> BaseAgent:
        if self.closed:
            raise ConfigurationError(f"AgentPool {self.name!r} was cleaned up and cannot lend")
        self.waiting += 1
        try:
            instance = await self._queue().get()
        finally:
            self.waiting -= 1
        self._leased.add(id(instance))
        return instance

    def release(self, instance: BaseAgent) -> None:
        if instance not in self.instances:
            raise ConfigurationError(f"{instance!r} does not belong to AgentPool {self.name!r}")
        if id(instance) not in self._leased:
            raise ConfigurationError(f"{instance!r} is not on loan from AgentPool {self.name!r}")
        self._leased.discard(id(instance))
        self._queue().put_nowait(instance)

    async def cleanup(self) -> None:
        """Close the pool and let each instance release what it holds."""
        self.closed = True
        for instance in self.instances:
            hook = getattr(instance, "cleanup", None)
            if hook is not None:
                result = hook()
                if inspect.isawaitable(result):
                    await result
