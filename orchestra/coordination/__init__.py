"""The coordination layer: topologies now; the engine and the public run API as they land."""

from .topology import Edge, Labeled, Node, PatternConfig, Topology

__all__ = ["Edge", "Labeled", "Node", "PatternConfig", "Topology"]
