"""Agents: LLM-backed, plain functions, registries and pools."""

from .agent import Agent
from .base import BaseAgent
from .contract import (
    Action,
    ActionKind,
    InputKind,
    Invocation,
    StepInput,
    StepOutcome,
    StepRequest,
)
from .function_agent import FunctionAgent
from .pool import AgentPool
from .registry import AgentRegistry, AgentReplacedWarning

__all__ = [
    "Action",
    "ActionKind",
    "Agent",
    "AgentPool",
    "AgentRegistry",
    "AgentReplacedWarning",
    "BaseAgent",
    "FunctionAgent",
    "InputKind",
    "Invocation",
    "StepInput",
    "StepOutcome",
    "StepRequest",
]
