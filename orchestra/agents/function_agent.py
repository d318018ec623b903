"""A plain Python function as a node of the topology."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from orchestra.threads import call_sync

from .base import BaseAgent
from .contract import Action, StepOutcome, StepRequest
from .registry import register_by_default

NodeFunction = Callable[[Any, Mapping[str, Any]], Any | Awaitable[Any]]


class FunctionAgent(BaseAgent):
    """``fn(input, context)``, sync or async, as an agent.

    Routing is code-decided: unless ``fn`` returns an :class:`Action`, its value is handed
    along the agent's outgoing edges whose conditions hold (one: a hand-off or call; several:
    parallel branches), returned to the agent that called it, or — at an exit — becomes the
    final response. Return ``Labeled(value, "label")`` to satisfy label conditions, or an
    ``Action`` (``Action.final(v)``, ``Action.invoke("B", v)``) to decide explicitly.

    A sync ``fn`` runs in a daemon thread (:mod:`orchestra.threads`), so it holds no other
    branch and every timeout applies to it; a coroutine function runs on the event loop.
    """

    def __init__(self, name: str, fn: NodeFunction, *, register: bool = True) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"FunctionAgent name must be a non-empty string, got {name!r}")
        if not callable(fn):
            raise TypeError(f"FunctionAgent {name!r}: fn must be callable, got {fn!r}")
        self.name = name
        self.fn = fn
        self._is_async = inspect.iscoroutinefunction(fn)
        if register:
            register_by_default(self)

    def __repr__(self) -> str:
        return f"FunctionAgent(name={self.name!r}, fn={getattr(self.fn, '__name__', self.fn)!r})"

    async def step(self, request: StepRequest) -> StepOutcome:
        if self._is_async:
            value = await self.fn(request.input.content, request.context)
        else:
            value = await call_sync(self.fn, request.input.content, request.context)
        if isinstance(value, Action):
            return StepOutcome(action=value, by_code=True)
        return StepOutcome(value=value, by_code=True)
