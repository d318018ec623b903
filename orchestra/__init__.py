"""Orchestra: durable, fast, observable multi-agent LLM workflows.

The everyday names are importable from here; everything else lives in the subpackages laid
out as on the API page (``orchestra.coordination``, ``orchestra.coordination.topology``, ...).
"""

from .agents import Agent, AgentPool, AgentRegistry, BaseAgent, FunctionAgent
from .communication import ProgrammaticChannel, ScriptedUser, TerminalChannel
from .coordination import (
    Action,
    BranchResult,
    Budget,
    CommunicationConfig,
    ConvergencePolicy,
    Edge,
    ErrorHandlingConfig,
    ExecutionConfig,
    Invocation,
    Labeled,
    Node,
    Orchestra,
    OrchestraResult,
    PatternConfig,
    StatusConfig,
    Topology,
    TracingConfig,
    VerbosityLevel,
)
from .coordination.topology import USER, Rule, TopologyAnalysis
from .errors import ConditionError, OrchestraError, TopologyError, TopologyProblem
from .models import FunctionModel, ModelConfig, ScriptedModel
from .tools import Tool, tool

__version__ = "0.1.0"

__all__ = [
    "USER",
    "Action",
    "Agent",
    "AgentPool",
    "AgentRegistry",
    "BaseAgent",
    "BranchResult",
    "Budget",
    "CommunicationConfig",
    "ConditionError",
    "ConvergencePolicy",
    "Edge",
    "ErrorHandlingConfig",
    "ExecutionConfig",
    "FunctionAgent",
    "FunctionModel",
    "Invocation",
    "Labeled",
    "ModelConfig",
    "Node",
    "Orchestra",
    "OrchestraError",
    "OrchestraResult",
    "PatternConfig",
    "ProgrammaticChannel",
    "Rule",
    "ScriptedModel",
    "ScriptedUser",
    "StatusConfig",
    "TerminalChannel",
    "Tool",
    "Topology",
    "TopologyAnalysis",
    "TopologyError",
    "TopologyProblem",
    "TracingConfig",
    "VerbosityLevel",
    "__version__",
    "tool",
]
