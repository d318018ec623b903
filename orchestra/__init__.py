"""Orchestra: durable, fast, observable multi-agent LLM workflows.

The everyday names are importable from here; everything else lives in the subpackages laid
out as on the API page (``orchestra.coordination``, ``orchestra.coordination.topology``, ...).
"""

from .coordination.topology import (
    USER,
    Edge,
    Labeled,
    Node,
    PatternConfig,
    Rule,
    Topology,
    TopologyAnalysis,
)
from .errors import ConditionError, OrchestraError, TopologyError, TopologyProblem

__version__ = "0.1.0"

__all__ = [
    "USER",
    "ConditionError",
    "Edge",
    "Labeled",
    "Node",
    "OrchestraError",
    "PatternConfig",
    "Rule",
    "Topology",
    "TopologyAnalysis",
    "TopologyError",
    "TopologyProblem",
    "__version__",
]
