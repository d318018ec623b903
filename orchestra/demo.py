"""The bundled demo workflow (``orchestra demo``): parallel research, then a report.

The workflow itself is ``flows/research.yaml``, loaded like any user workflow; this module
holds its one piece of code, the coordinator's routing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestra.agents.contract import Action
from orchestra.coordination.topology import Edge, PatternConfig, Topology

DEMO_FLOW = Path(__file__).with_name("flows") / "research.yaml"
DEMO_MAX_TOKENS = 160  # keeps the offline model's demo to seconds


def coordinate(work: Any, context: Mapping[str, Any]) -> Action:
    """Send the topic to both researchers at once; send their converged notes to the writer."""
    if isinstance(work, list):
        notes = "\n\n".join(
            f"{item['agent']}:\n{item.get('response') or item.get('error')}" for item in work
        )
        return Action.invoke("Writer", f"Write the report from these notes:\n\n{notes}")
    return Action.invoke_parallel(
        [
            ("WebResearcher", f"Research recent developments: {work}"),
            ("PaperResearcher", f"Research academic findings: {work}"),
        ]
    )


def spec_topologies() -> dict[str, Topology]:
    """The topologies of the API page's examples, each in the form the page writes it."""
    return {
        "One node (dict form)": Topology.from_dict({"nodes": ["Summarizer"], "edges": []}),
        "Hub and spoke, parallel spokes": PatternConfig.hub_and_spoke(
            hub="Coordinator",
            spokes=["TechAnalyst", "FinanceAnalyst", "Reporter"],
            parallel_spokes=True,
        ),
        "Pipeline (ETL)": PatternConfig.pipeline(
            stages=[
                {"name": "extract", "agents": ["Extractor"]},
                {"name": "transform", "agents": ["Transformer"]},
                {"name": "load", "agents": ["Loader"]},
            ]
        ),
        "Pattern 1: conditional execution": Topology(
            nodes=["Validator", "ProcessorA", "ProcessorB", "Finalizer"],
            edges=[
                "Validator -> ProcessorA",
                "Validator -> ProcessorB",
                Edge("ProcessorA", "Finalizer", metadata={"condition": "valid"}),
                Edge("ProcessorB", "Finalizer", metadata={"condition": "invalid"}),
            ],
        ),
        "Pattern 4: error recovery": Topology.from_dict(
            {
                "nodes": ["User", "MainProcessor", "ErrorHandler", "Fallback"],
                "edges": [
                    "User -> MainProcessor",
                    "MainProcessor -> User",
                    "MainProcessor -> ErrorHandler",
                    "ErrorHandler -> User",
                    "ErrorHandler -> Fallback",
                    "Fallback -> User",
                ],
            }
        ),
    }
