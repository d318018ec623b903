"""Every topology written on the API page parses, validates and draws, in the page's own form."""

from __future__ import annotations

from orchestra.coordination import Edge, PatternConfig, Topology
from orchestra.coordination.topology import Topology as TopologyFromSubpackage


def test_one_node_dict_is_its_own_entry_and_exit() -> None:
    topology = Topology.coerce({"nodes": ["Summarizer"], "edges": []})
    analysis = topology.analyze()
    assert analysis.entries == ("Summarizer",)
    assert analysis.exits == {"Summarizer"}
    assert "Summarizer" in topology.to_mermaid()


def test_hub_and_spoke_with_parallel_spokes() -> None:
    topology = PatternConfig.hub_and_spoke(
        hub="Coordinator",
        spokes=["TechAnalyst", "FinanceAnalyst", "Reporter"],
        parallel_spokes=True,
    )
    analysis = topology.analyze()
    assert analysis.entry == "Coordinator"
    assert analysis.exits == {"Coordinator"}
    assert analysis.may_invoke_in_parallel(["TechAnalyst", "FinanceAnalyst"])
    assert all(analysis.is_call("Coordinator", s) for s in ("TechAnalyst", "Reporter"))


def test_pipeline_of_the_instance_example() -> None:
    topology = PatternConfig.pipeline(
        stages=[
            {"name": "extract", "agents": ["Extractor"]},
            {"name": "transform", "agents": ["Transformer"]},
            {"name": "load", "agents": ["Loader"]},
        ]
    )
    analysis = topology.analyze()
    assert analysis.entry == "Extractor"
    assert analysis.exits == {"Loader"}
    assert analysis.successors("Extractor") == ("Transformer",)
    assert analysis.successors("Transformer") == ("Loader",)


def test_pattern_1_conditional_execution() -> None:
    topology = Topology(
        nodes=["Validator", "ProcessorA", "ProcessorB", "Finalizer"],
        edges=[
            "Validator -> ProcessorA",
            "Validator -> ProcessorB",
            Edge("ProcessorA", "Finalizer", metadata={"condition": "valid"}),
            Edge("ProcessorB", "Finalizer", metadata={"condition": "invalid"}),
        ],
    )
    analysis = topology.analyze()
    assert analysis.entry == "Validator"
    assert analysis.exits == {"Finalizer"}
    assert analysis.convergence_points == {"Finalizer": frozenset({"Validator"})}
    edge = analysis.edge("ProcessorA", "Finalizer")
    assert edge is not None and edge.condition == "valid"
    assert '-->|"valid"|' in topology.to_mermaid()


def test_pattern_4_error_recovery() -> None:
    topology = Topology.coerce(
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
    )
    analysis = topology.analyze()
    assert analysis.entry == "MainProcessor"
    assert analysis.exits == {"MainProcessor", "ErrorHandler", "Fallback"}
    assert all(analysis.talks_to_user(n) for n in ("MainProcessor", "ErrorHandler", "Fallback"))
    assert not analysis.is_call("MainProcessor", "ErrorHandler")
    assert '(("User"))' in topology.to_mermaid()


def test_string_notation_example_with_rules_and_metadata() -> None:
    topology = Topology.coerce(
        {
            "nodes": ["User", "Agent1", "Agent2"],
            "edges": ["User -> Agent1", "Agent1 <-> Agent2"],
            "rules": ["parallel(Agent1, Agent2)", "timeout(300)"],
            "metadata": {"description": "example"},
        }
    )
    analysis = topology.analyze()
    assert analysis.timeout == 300
    assert analysis.is_call("Agent1", "Agent2")
    assert topology.metadata == {"description": "example"}


def test_spec_import_paths() -> None:
    assert Topology is TopologyFromSubpackage
