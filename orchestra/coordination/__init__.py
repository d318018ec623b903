"""The coordination layer: topologies, the engine and the public run API."""

from ..agents.contract import Action, Invocation
from ..models.base import ToolCall
from .config import (
    Budget,
    CommunicationConfig,
    ConvergencePolicy,
    ErrorHandlingConfig,
    ExecutionConfig,
    StatusConfig,
    TracingConfig,
    VerbosityLevel,
)
from .orchestra import BranchResult, Orchestra, OrchestraResult
from .topology import Edge, Labeled, Node, PatternConfig, Topology

__all__ = [
    "Action",
    "BranchResult",
    "Budget",
    "CommunicationConfig",
    "ConvergencePolicy",
    "Edge",
    "ErrorHandlingConfig",
    "ExecutionConfig",
    "Invocation",
    "Labeled",
    "Node",
    "Orchestra",
    "OrchestraResult",
    "PatternConfig",
    "StatusConfig",
    "ToolCall",
    "Topology",
    "TracingConfig",
    "VerbosityLevel",
]
