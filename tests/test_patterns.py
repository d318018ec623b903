"""PatternConfig builders: each returns a valid topology of the documented shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from orchestra.coordination.topology import PatternConfig, Topology, TopologyAnalysis
from orchestra.errors import TopologyError


@dataclass(frozen=True)
class FakeAgent:
    """Anything with a ``name`` may stand for its node."""

    name: str


def analyzed(topology: Topology) -> TopologyAnalysis:
    assert isinstance(topology, Topology)
    topology.validate()
    return topology.analyze()


def calls(analysis: TopologyAnalysis) -> set[str]:
    return set(analysis.summary()["calls"])


def as_agents(names: list[str], objects: bool) -> list[Any]:
    return [FakeAgent(n) for n in names] if objects else list(names)


# ---- hub and spoke -------------------------------------------------------------------------


@pytest.mark.parametrize("objects", [False, True])
@pytest.mark.parametrize("parallel_spokes", [False, True])
def test_hub_and_spoke(parallel_spokes: bool, objects: bool) -> None:
    hub = FakeAgent("Coordinator") if objects else "Coordinator"
    spokes = as_agents(["Tech", "Finance", "Reporter"], objects)
    topology = PatternConfig.hub_and_spoke(hub, spokes, parallel_spokes=parallel_spokes)
    analysis = analyzed(topology)
    assert topology.metadata["pattern"] == "hub_and_spoke"
    assert topology.metadata["parallel_spokes"] is parallel_spokes
    assert set(topology.node_names) == {"Coordinator", "Tech", "Finance", "Reporter"}
    assert analysis.entries == ("Coordinator",)
    assert analysis.exits == frozenset({"Coordinator"})
    assert dict(analysis.convergence_points) == {}
    for spoke in ("Tech", "Finance", "Reporter"):
        assert analysis.is_call("Coordinator", spoke)
        assert analysis.is_call(spoke, "Coordinator")
    assert len(calls(analysis)) == 6
    if parallel_spokes:
        assert analysis.parallel_groups == (("Tech", "Finance", "Reporter"),)
        assert analysis.may_invoke_in_parallel(["Tech", "Reporter"])
    else:
        assert analysis.parallel_groups == ()
        assert not analysis.may_invoke_in_parallel(["Tech", "Reporter"])
    if objects:
        assert topology.node("Tech").agent is spokes[0]
        assert topology.node("Coordinator").agent is hub


def test_hub_with_one_spoke_has_no_parallel_rule() -> None:
    analysis = analyzed(PatternConfig.hub_and_spoke("Hub", ["Only"], parallel_spokes=True))
    assert analysis.parallel_groups == ()
    assert analysis.is_call("Hub", "Only")


# ---- pipeline ------------------------------------------------------------------------------


def test_sequential_pipeline() -> None:
    topology = PatternConfig.pipeline(
        [
            {"name": "extract", "agents": ["Extractor"]},
            {"name": "transform", "agents": ["Transformer"]},
            {"name": "load", "agents": ["Loader"]},
        ]
    )
    analysis = analyzed(topology)
    assert topology.metadata["pattern"] == "pipeline"
    assert topology.metadata["parallel_within_stage"] is False
    assert topology.metadata["stages"] == [
        {"name": "extract", "agents": ["Extractor"]},
        {"name": "transform", "agents": ["Transformer"]},
        {"name": "load", "agents": ["Loader"]},
    ]
    assert analysis.entries == ("Extractor",)
    assert analysis.exits == frozenset({"Loader"})
    assert analysis.successors("Extractor") == ("Transformer",)
    assert analysis.successors("Transformer") == ("Loader",)
    assert dict(analysis.convergence_points) == {}
    assert analysis.parallel_groups == ()
    assert calls(analysis) == set()


@pytest.mark.parametrize("objects", [False, True])
def test_sequential_pipeline_chains_multi_agent_stages(objects: bool) -> None:
    topology = PatternConfig.pipeline(
        [
            {"name": "gather", "agents": as_agents(["A1", "A2"], objects)},
            {"name": "middle", "agents": as_agents(["B"], objects)},
            {"name": "finish", "agents": as_agents(["C1", "C2"], objects)},
        ]
    )
    analysis = analyzed(topology)
    assert topology.node_names == ("A1", "A2", "B", "C1", "C2")
    assert [(e.source, e.target) for e in topology.edges] == [
        ("A1", "A2"),
        ("A2", "B"),
        ("B", "C1"),
        ("C1", "C2"),
    ]
    assert analysis.entries == ("A1",)
    assert analysis.exits == frozenset({"C2"})
    assert dict(analysis.convergence_points) == {}
    assert analysis.parallel_groups == ()
    assert topology.metadata["stages"][0] == {"name": "gather", "agents": ["A1", "A2"]}


@pytest.mark.parametrize("objects", [False, True])
def test_parallel_pipeline_with_multi_agent_first_and_last_stage(objects: bool) -> None:
    topology = PatternConfig.pipeline(
        [
            {"name": "research", "agents": as_agents(["A1", "A2"], objects)},
            {"name": "analyse", "agents": as_agents(["B1", "B2"], objects)},
            {"name": "write", "agents": as_agents(["C1", "C2"], objects)},
        ],
        parallel_within_stage=True,
    )
    analysis = analyzed(topology)
    assert topology.metadata["pattern"] == "pipeline"
    assert topology.metadata["parallel_within_stage"] is True
    # the first stage receives the task through User edges, all at once
    assert analysis.entries == ("A1", "A2")
    assert topology.edge("User", "A1") is not None
    # the last stage finishes with all of its agents
    assert analysis.exits == frozenset({"C1", "C2"})
    # every agent of a stage feeds every agent of the next
    for a in ("A1", "A2"):
        assert set(analysis.successors(a)) == {"B1", "B2"}
    for b in ("B1", "B2"):
        assert set(analysis.successors(b)) == {"C1", "C2"}
    # later stages run once on the whole previous stage
    assert set(analysis.convergence_points) == {"B1", "B2", "C1", "C2"}
    assert "User" in analysis.convergence_points["B1"]
    assert {"A1", "A2"} <= analysis.convergence_points["C1"]
    assert analysis.parallel_groups == (("A1", "A2"), ("B1", "B2"), ("C1", "C2"))
    assert analysis.may_invoke_in_parallel(["B1", "B2"])
    assert calls(analysis) == set()


def test_parallel_pipeline_with_single_agent_ends() -> None:
    topology = PatternConfig.pipeline(
        [
            {"name": "split", "agents": ["Splitter"]},
            {"name": "work", "agents": ["W1", "W2", "W3"]},
            {"name": "merge", "agents": ["Merger"]},
        ],
        parallel_within_stage=True,
    )
    analysis = analyzed(topology)
    assert "User" not in topology
    assert analysis.entries == ("Splitter",)
    assert analysis.exits == frozenset({"Merger"})
    assert dict(analysis.convergence_points) == {"Merger": frozenset({"Splitter"})}
    assert analysis.parallel_groups == (("W1", "W2", "W3"),)
    assert analysis.may_invoke_in_parallel(["W1", "W2", "W3"])


def test_single_stage_pipeline() -> None:
    analysis = analyzed(PatternConfig.pipeline([{"agents": ["Solo"]}]))
    assert analysis.entries == ("Solo",)
    assert analysis.exits == frozenset({"Solo"})


# ---- mesh ----------------------------------------------------------------------------------


@pytest.mark.parametrize("objects", [False, True])
def test_mesh(objects: bool) -> None:
    topology = PatternConfig.mesh(as_agents(["A", "B", "C"], objects))
    analysis = analyzed(topology)
    assert topology.metadata["pattern"] == "mesh"
    assert analysis.entries == ("A",)
    assert analysis.exits == frozenset({"A"})
    assert dict(analysis.convergence_points) == {}
    assert analysis.parallel_groups == (("A", "B", "C"),)
    assert calls(analysis) == {f"{a} -> {b}" for a in "ABC" for b in "ABC" if a != b}
    assert analysis.may_invoke_in_parallel(["B", "C"])


# ---- hierarchical --------------------------------------------------------------------------


@pytest.mark.parametrize("objects", [False, True])
def test_hierarchical_three_levels(objects: bool) -> None:
    def a(name: str) -> Any:
        return FakeAgent(name) if objects else name

    tree = {a("CEO"): [a("CTO"), a("CFO")], a("CTO"): [a("Dev1"), a("Dev2")]}
    topology = PatternConfig.hierarchical(tree)
    analysis = analyzed(topology)
    assert topology.metadata["pattern"] == "hierarchical"
    assert set(topology.node_names) == {"CEO", "CTO", "CFO", "Dev1", "Dev2"}
    assert analysis.entries == ("CEO",)
    assert analysis.exits == frozenset({"CEO"})
    assert dict(analysis.convergence_points) == {}
    assert analysis.parallel_groups == (("CTO", "CFO"), ("Dev1", "Dev2"))
    assert calls(analysis) == {
        "CEO -> CTO",
        "CTO -> CEO",
        "CEO -> CFO",
        "CFO -> CEO",
        "CTO -> Dev1",
        "Dev1 -> CTO",
        "CTO -> Dev2",
        "Dev2 -> CTO",
    }
    assert not analysis.may_invoke_in_parallel(["CFO", "Dev1"])


def test_hierarchical_mixes_names_and_agent_objects() -> None:
    lead, dev = FakeAgent("Lead"), FakeAgent("Dev")
    topology = PatternConfig.hierarchical({"CEO": [lead], "Lead": [dev]})
    analysis = analyzed(topology)
    assert analysis.entries == ("CEO",)
    assert topology.node("Lead").agent is lead
    assert topology.node("Dev").agent is dev


@pytest.mark.parametrize(
    "tree, fragment",
    [
        ({"A": ["C"], "B": ["C"]}, "two parents"),
        ({"A": ["B"], "B": ["A"]}, "one root"),
        ({"A": ["B"], "C": ["D"]}, "one root"),
        ({}, "non-empty"),
        ({"A": []}, "at least 1"),
        ({"A": "BC"}, "string"),
    ],
)
def test_hierarchical_errors(tree: dict, fragment: str) -> None:
    with pytest.raises(TopologyError) as info:
        PatternConfig.hierarchical(tree)
    assert info.value.kinds == {"invalid_pattern"}
    message = str(info.value)
    assert "hierarchical" in message
    assert fragment in message


def test_hierarchical_two_parents_names_them() -> None:
    with pytest.raises(TopologyError) as info:
        PatternConfig.hierarchical({"A": ["C"], "B": ["C"]})
    message = str(info.value)
    assert "'C'" in message and "'A'" in message and "'B'" in message


def test_hierarchical_several_roots_are_listed() -> None:
    with pytest.raises(TopologyError) as info:
        PatternConfig.hierarchical({"A": ["B"], "C": ["D"]})
    message = str(info.value)
    assert "'A'" in message and "'C'" in message


# ---- star ----------------------------------------------------------------------------------


@pytest.mark.parametrize("objects", [False, True])
def test_star(objects: bool) -> None:
    center = FakeAgent("Center") if objects else "Center"
    topology = PatternConfig.star(center, as_agents(["P1", "P2", "P3"], objects))
    analysis = analyzed(topology)
    assert topology.metadata["pattern"] == "star"
    assert "User" in topology
    assert analysis.entries == ("P1", "P2", "P3")
    assert analysis.exits == frozenset({"Center"})
    assert dict(analysis.convergence_points) == {"Center": frozenset({"User"})}
    assert analysis.parallel_groups == ()
    assert calls(analysis) == set()


def test_star_with_one_point() -> None:
    analysis = analyzed(PatternConfig.star("Center", ["P"]))
    assert analysis.entries == ("P",)
    assert dict(analysis.convergence_points) == {}


# ---- ring ----------------------------------------------------------------------------------


@pytest.mark.parametrize("objects", [False, True])
def test_ring(objects: bool) -> None:
    topology = PatternConfig.ring(as_agents(["A", "B", "C"], objects))
    analysis = analyzed(topology)
    assert topology.metadata["pattern"] == "ring"
    assert [(e.source, e.target) for e in topology.edges] == [("A", "B"), ("B", "C"), ("C", "A")]
    assert analysis.entries == ("A",)
    assert analysis.exits == frozenset({"A"})
    assert dict(analysis.convergence_points) == {}
    assert analysis.parallel_groups == ()
    assert calls(analysis) == set()


def test_ring_of_two_is_a_call_pair() -> None:
    analysis = analyzed(PatternConfig.ring(["A", "B"]))
    assert calls(analysis) == {"A -> B", "B -> A"}


# ---- broadcast -----------------------------------------------------------------------------


@pytest.mark.parametrize("objects", [False, True])
def test_broadcast(objects: bool) -> None:
    sender = FakeAgent("Sender") if objects else "Sender"
    topology = PatternConfig.broadcast(sender, as_agents(["R1", "R2", "R3"], objects))
    analysis = analyzed(topology)
    assert topology.metadata["pattern"] == "broadcast"
    assert analysis.entries == ("Sender",)
    assert analysis.exits == frozenset({"R1", "R2", "R3"})
    assert dict(analysis.convergence_points) == {}
    assert analysis.parallel_groups == (("R1", "R2", "R3"),)
    assert analysis.may_invoke_in_parallel(["R1", "R2", "R3"])
    assert calls(analysis) == set()


def test_broadcast_to_one_receiver() -> None:
    analysis = analyzed(PatternConfig.broadcast("Sender", ["R"]))
    assert analysis.parallel_groups == ()
    assert analysis.exits == frozenset({"R"})


# ---- builders accept any iterable ----------------------------------------------------------


def test_builders_accept_generators_and_tuples() -> None:
    analyzed(PatternConfig.hub_and_spoke("H", (s for s in ["S1", "S2"])))
    analyzed(PatternConfig.mesh(("A", "B")))
    analyzed(PatternConfig.ring(iter(["A", "B", "C"])))


# ---- bad arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, pattern",
    [
        (lambda: PatternConfig.hub_and_spoke("Hub", []), "hub_and_spoke"),
        (lambda: PatternConfig.hub_and_spoke("Hub", "S1"), "hub_and_spoke"),
        (lambda: PatternConfig.mesh(["Only"]), "mesh"),
        (lambda: PatternConfig.mesh("AB"), "mesh"),
        (lambda: PatternConfig.ring([]), "ring"),
        (lambda: PatternConfig.ring("ABC"), "ring"),
        (lambda: PatternConfig.star("C", []), "star"),
        (lambda: PatternConfig.star("C", "P"), "star"),
        (lambda: PatternConfig.broadcast("B", []), "broadcast"),
        (lambda: PatternConfig.broadcast("B", "R"), "broadcast"),
        (lambda: PatternConfig.pipeline([]), "pipeline"),
        (lambda: PatternConfig.pipeline([{"name": "s"}]), "pipeline"),
        (lambda: PatternConfig.pipeline([{"name": "s", "agents": []}]), "pipeline"),
        (lambda: PatternConfig.pipeline([{"name": "s", "agents": "A"}]), "pipeline"),
        (lambda: PatternConfig.pipeline([{"agents": ["A"], "parallel": True}]), "pipeline"),
        (lambda: PatternConfig.pipeline(["not a mapping"]), "pipeline"),
        (lambda: PatternConfig.hierarchical({}), "hierarchical"),
        (lambda: PatternConfig.hierarchical([("A", ["B"])]), "hierarchical"),
    ],
)
def test_bad_arguments_name_the_pattern(build, pattern: str) -> None:
    with pytest.raises(TopologyError) as info:
        build()
    assert info.value.kinds == {"invalid_pattern"}
    problem = info.value.problems[0]
    assert problem.subject == pattern
    assert problem.message.startswith(f"{pattern}:")


def test_string_instead_of_list_is_explained() -> None:
    with pytest.raises(TopologyError) as info:
        PatternConfig.hub_and_spoke("Hub", "Spoke")
    assert "string" in str(info.value)
    assert "'Spoke'" in str(info.value)


def test_stage_without_agents_names_the_stage() -> None:
    with pytest.raises(TopologyError) as info:
        PatternConfig.pipeline([{"name": "ok", "agents": ["A"]}, {"name": "broken"}])
    message = str(info.value)
    assert "stage 1" in message
    assert "broken" in message
    assert "agents" in message


def test_stage_with_unknown_key_names_the_key() -> None:
    with pytest.raises(TopologyError) as info:
        PatternConfig.pipeline([{"name": "s", "agents": ["A"], "agnets": ["B"]}])
    message = str(info.value)
    assert "stage 0" in message
    assert "agnets" in message
