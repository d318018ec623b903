"""Agents: LLM-backed, plain functions, registries and pools."""

from .agent import Agent
from .base import BaseAgent, InputKind, StepInput, StepOutcome, StepRequest
from .function_agent import FunctionAgent
from .pool import AgentPool
from .registry import AgentRegistry, AgentReplacedWarning

__all__ = [
    "Agent",
    "AgentPool",
    "AgentRegistry",
    "AgentReplacedWarning",
    "BaseAgent",
    "FunctionAgent",
    "InputKind",
    "StepInput",
    "StepOutcome",
    "StepRequest",
]
