"""What every agent is to the engine: a name and an async ``step``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from orchestra.models.base import ToolCall, ToolSpec

from .contract import StepOutcome, StepRequest


class BaseAgent(ABC):
    """Base class of every agent. Subclass it to plug in your own kind of agent."""

    name: str

    @abstractmethod
    async def step(self, request: StepRequest) -> StepOutcome:
        """Take one step: read the input (and conversation), decide what to do."""

    @property
    def tool_specs(self) -> tuple[ToolSpec, ...]:
        """The tools this agent offers its model (name, description, argument schema)."""
        return ()

    def is_idempotent(self, tool: str) -> bool:
        """Whether running ``tool`` twice with the same arguments is harmless."""
        return False

    async def call_tool(self, call: ToolCall) -> Any:
        """Run one of this agent's tools; raise to report a tool error to the model."""
        raise LookupError(f"agent {self.name!r} has no tool {call.name!r}")
