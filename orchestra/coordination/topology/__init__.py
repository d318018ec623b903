"""Topologies: which agent may hand work to which, in what shape, under which rules."""

from .analysis import TopologyAnalysis
from .conditions import Condition, Labeled, labels_of
from .model import USER, Edge, NamedAgent, Node
from .patterns import PatternConfig
from .rules import BudgetRule, MaxAgents, MaxSteps, Parallel, PingPong, Rule, Timeout, parse_rule
from .topology import Topology

__all__ = [
    "USER",
    "BudgetRule",
    "Condition",
    "Edge",
    "Labeled",
    "MaxAgents",
    "MaxSteps",
    "NamedAgent",
    "Node",
    "Parallel",
    "PatternConfig",
    "PingPong",
    "Rule",
    "Timeout",
    "Topology",
    "TopologyAnalysis",
    "labels_of",
    "parse_rule",
]
