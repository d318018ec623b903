"""TopologyAnalysis: the precomputed roles and relations the engine asks about."""

from __future__ import annotations

import contextlib

import pytest

from orchestra.coordination.topology import (
    Edge,
    MaxAgents,
    MaxSteps,
    Parallel,
    Timeout,
    Topology,
    TopologyAnalysis,
)
from orchestra.errors import TopologyError


def diamond() -> Topology:
    return Topology(["A", "B", "C", "D"], ["A -> B", "A -> C", "B -> D", "C -> D"])


def hub() -> Topology:
    return Topology(
        ["Hub", "S1", "S2", "S3"],
        ["Hub <-> S1", "Hub <-> S2", "Hub <-> S3"],
        entry_point="Hub",
    )


# ---- lookups -------------------------------------------------------------------------------


def test_analyze_returns_an_analysis() -> None:
    assert isinstance(diamond().analyze(), TopologyAnalysis)


def test_successors_and_predecessors() -> None:
    analysis = diamond().analyze()
    assert analysis.agents == ("A", "B", "C", "D")
    assert analysis.successors("A") == ("B", "C")
    assert analysis.successors("D") == ()
    assert analysis.predecessors("D") == ("B", "C")
    assert analysis.predecessors("A") == ()


def test_successors_exclude_user_but_out_edges_include_it() -> None:
    topology = Topology(["A", "B"], ["User -> A", "A -> B", "A -> User", "B -> User"])
    analysis = topology.analyze()
    assert analysis.successors("A") == ("B",)
    assert analysis.predecessors("A") == ()
    assert {(e.source, e.target) for e in analysis.out_edges("A")} == {("A", "B"), ("A", "User")}
    assert [(e.source, e.target) for e in analysis.out_edges("User")] == [("User", "A")]
    assert analysis.out_edges("B") == (Edge("B", "User"),)


def test_edge_lookup() -> None:
    topology = Topology(
        ["A", "B"],
        [{"source": "A", "target": "B", "metadata": {"condition": "ok"}}, "B -> A"],
        entry_point="A",
    )
    analysis = topology.analyze()
    forward = analysis.edge("A", "B")
    assert forward is not None
    assert forward.condition == "ok"
    back = analysis.edge("B", "A")
    assert back is not None and back.condition is None
    assert analysis.edge("A", "A") is None
    assert analysis.edge("A", "Nobody") is None


def test_bidirectional_edge_is_stored_as_two_directed_edges() -> None:
    analysis = hub().analyze()
    assert analysis.edge("Hub", "S1") == Edge("Hub", "S1")
    assert analysis.edge("S1", "Hub") == Edge("S1", "Hub")
    assert analysis.successors("S1") == ("Hub",)
    assert analysis.successors("Hub") == ("S1", "S2", "S3")


def test_node_lookup() -> None:
    topology = Topology(["A", {"name": "B", "metadata": {"role": "writer"}}], ["A -> B"])
    analysis = topology.analyze()
    assert analysis.has_node("A")
    assert not analysis.has_node("Z")
    assert analysis.node("B").metadata == {"role": "writer"}


# ---- entries and exits ---------------------------------------------------------------------


def test_single_source_is_the_entry() -> None:
    analysis = diamond().analyze()
    assert analysis.entries == ("A",)
    assert analysis.entry == "A"
    assert analysis.is_entry("A")
    assert not analysis.is_entry("B")


def test_entry_point_wins() -> None:
    analysis = Topology(["A", "B"], ["A -> B", "B -> A", "B -> User"], entry_point="B").analyze()
    assert analysis.entries == ("B",)


def test_user_edges_give_entries_in_order() -> None:
    topology = Topology(["A", "B", "C"], ["User -> B", "User -> A", "A -> C", "B -> C"])
    analysis = topology.analyze()
    assert analysis.entries == ("B", "A")
    assert analysis.entry == "B"


def test_exits_are_sinks_and_user_facing_nodes() -> None:
    topology = Topology(["A", "B", "C"], ["User -> A", "A -> B", "B -> A", "B -> User", "A -> C"])
    analysis = topology.analyze()
    assert analysis.exits == frozenset({"B", "C"})
    assert analysis.is_exit("C")
    assert not analysis.is_exit("A")


def test_explicit_exit_points_replace_the_default() -> None:
    topology = Topology(
        ["A", "B", "C"], ["A -> B", "B -> C", "B -> A"], entry_point="A", exit_points=["B", "C"]
    )
    assert topology.analyze().exits == frozenset({"B", "C"})
    default = Topology(["A", "B", "C"], ["A -> B", "B -> C", "B -> A"], entry_point="A")
    assert default.analyze().exits == frozenset({"C"})


def test_exits_fall_back_to_the_entries() -> None:
    assert hub().analyze().exits == frozenset({"Hub"})


# ---- calls and the user --------------------------------------------------------------------


def test_is_call_both_ways_for_bidirectional() -> None:
    analysis = hub().analyze()
    assert analysis.is_call("Hub", "S1")
    assert analysis.is_call("S1", "Hub")


def test_is_call_false_for_one_way_edges() -> None:
    analysis = diamond().analyze()
    assert not analysis.is_call("A", "B")
    # B has no edge to A at all, so B invoking A is not a call (nor possible)
    assert not analysis.is_call("B", "A")
    assert not analysis.is_call("B", "C")


def test_is_call_false_for_user() -> None:
    analysis = Topology(["A"], ["User -> A", "A -> User"]).analyze()
    assert not analysis.is_call("A", "User")
    assert not analysis.is_call("User", "A")


def test_is_call_false_for_self_loop() -> None:
    analysis = Topology(["A", "B"], ["A -> A", "A -> B"], entry_point="A").analyze()
    assert not analysis.is_call("A", "A")


def test_talks_to_user() -> None:
    analysis = Topology(["A", "B"], ["User -> A", "A -> B", "B -> User"]).analyze()
    assert analysis.talks_to_user("B")
    assert not analysis.talks_to_user("A")


# ---- convergence points --------------------------------------------------------------------


def test_diamond_converges_at_the_meeting_node() -> None:
    analysis = diamond().analyze()
    assert dict(analysis.convergence_points) == {"D": frozenset({"A"})}
    assert analysis.is_convergence_point("D")
    for name in "ABC":
        assert not analysis.is_convergence_point(name)


def test_hub_collecting_answers_is_not_a_convergence_point() -> None:
    analysis = hub().analyze()
    assert dict(analysis.convergence_points) == {}
    assert not analysis.is_convergence_point("Hub")


def test_branch_going_directly_to_the_meeting_node() -> None:
    analysis = Topology(["A", "B", "C"], ["A -> B", "A -> C", "B -> C"]).analyze()
    assert dict(analysis.convergence_points) == {"C": frozenset({"A"})}


def test_branches_meeting_further_downstream() -> None:
    topology = Topology(
        ["A", "B1", "B2", "C1", "C2", "D"],
        ["A -> B1", "A -> B2", "B1 -> C1", "B2 -> C2", "C1 -> D", "C2 -> D"],
    )
    assert dict(topology.analyze().convergence_points) == {"D": frozenset({"A"})}


def test_two_predecessors_on_the_same_branch_do_not_converge() -> None:
    # A -> B, and B -> C, B -> D, C -> E, D -> E: E converges from B, not from A
    topology = Topology(
        ["A", "B", "C", "D", "E", "F"],
        ["A -> B", "A -> F", "B -> C", "B -> D", "C -> E", "D -> E"],
    )
    assert dict(topology.analyze().convergence_points) == {"E": frozenset({"B"})}


def test_multiple_user_entries_converge() -> None:
    topology = Topology(["A", "B", "Merge"], ["User -> A", "User -> B", "A -> Merge", "B -> Merge"])
    analysis = topology.analyze()
    assert analysis.entries == ("A", "B")
    assert dict(analysis.convergence_points) == {"Merge": frozenset({"User"})}


def test_shared_callee_is_not_a_convergence_point() -> None:
    # two branches both *call* the same tool agent: its answers return, nothing meets there
    topology = Topology(
        ["A", "B", "C", "Tool", "D"],
        ["A -> B", "A -> C", "B <-> Tool", "C <-> Tool", "B -> D", "C -> D"],
    )
    analysis = topology.analyze()
    assert not analysis.is_convergence_point("Tool")
    assert analysis.is_convergence_point("D")


# ---- parallel permission -------------------------------------------------------------------


def test_no_parallel_rules_means_no_parallel_invocation() -> None:
    analysis = hub().analyze()
    assert analysis.parallel_groups == ()
    assert not analysis.may_invoke_in_parallel(["S1", "S2"])


def test_may_invoke_in_parallel_needs_one_rule_listing_all_targets() -> None:
    topology = Topology(
        ["Hub", "S1", "S2", "S3"],
        ["Hub <-> S1", "Hub <-> S2", "Hub <-> S3"],
        rules=["parallel(S1, S2)", Parallel(("S2", "S3"))],
        entry_point="Hub",
    )
    analysis = topology.analyze()
    assert analysis.parallel_groups == (("S1", "S2"), ("S2", "S3"))
    assert analysis.may_invoke_in_parallel(["S1", "S2"])
    assert analysis.may_invoke_in_parallel(("S3", "S2"))
    assert analysis.may_invoke_in_parallel(iter(["S2", "S3"]))
    # each pair is covered by some rule, but no single rule lists all three
    assert not analysis.may_invoke_in_parallel(["S1", "S2", "S3"])
    assert not analysis.may_invoke_in_parallel(["S1", "S3"])
    assert not analysis.may_invoke_in_parallel(["S1", "Hub"])
    assert not analysis.may_invoke_in_parallel([])


def test_parallel_rule_with_three_agents() -> None:
    topology = Topology(
        ["Hub", "S1", "S2", "S3"],
        ["Hub <-> S1", "Hub <-> S2", "Hub <-> S3"],
        rules=["parallel(S1, S2, S3)"],
        entry_point="Hub",
    )
    analysis = topology.analyze()
    assert analysis.may_invoke_in_parallel(["S1", "S2", "S3"])
    assert analysis.may_invoke_in_parallel(["S3", "S1"])


# ---- limits from rules ---------------------------------------------------------------------


def test_no_limit_rules() -> None:
    analysis = diamond().analyze()
    assert (analysis.max_steps, analysis.timeout, analysis.max_agents) == (None, None, None)


@pytest.mark.parametrize(
    "rules",
    [
        ["max_steps(20)", "timeout(1.5)", "max_agents(4)"],
        [MaxSteps(20), Timeout(1.5), MaxAgents(4)],
    ],
)
def test_limits_from_rules(rules: list) -> None:
    topology = Topology(["A", "B"], ["A -> B"], rules=rules)
    analysis = topology.analyze()
    assert analysis.max_steps == 20
    assert analysis.timeout == 1.5
    assert analysis.max_agents == 4
    assert analysis.parallel_groups == ()


@pytest.mark.parametrize(
    "rule",
    [
        "max_steps(0)",
        "max_steps(-1)",
        "max_steps(1.5)",
        "timeout(0)",
        "timeout(x)",
        "max_agents(0)",
        "parallel(A)",
        "parallel(A, A)",
        "whatever(1)",
        "max_steps",
    ],
)
def test_invalid_rule_text_is_a_topology_error(rule: str) -> None:
    with pytest.raises(TopologyError) as info:
        Topology(["A", "B"], ["A -> B"], rules=[rule])
    assert info.value.kinds == {"invalid_rule"}


# ---- summary -------------------------------------------------------------------------------


def test_summary() -> None:
    topology = Topology(
        ["Hub", "S1", "S2", "Merge"],
        ["User -> Hub", "Hub <-> S1", "Hub -> S2", "S1 -> Merge", "S2 -> Merge", "Merge -> User"],
        rules=["parallel(S1, S2)", "max_steps(9)"],
    )
    assert topology.analyze().summary() == {
        "entries": ["Hub"],
        "exits": ["Merge"],
        "convergence_points": ["Merge"],
        "talks_to_user": ["Merge"],
        "parallel_groups": [["S1", "S2"]],
        "calls": ["Hub -> S1", "S1 -> Hub"],
    }


def test_summary_is_plain_data() -> None:
    summary = diamond().analyze().summary()
    assert set(summary) == {
        "entries",
        "exits",
        "convergence_points",
        "talks_to_user",
        "parallel_groups",
        "calls",
    }
    assert all(isinstance(value, list) for value in summary.values())


# ---- caching -------------------------------------------------------------------------------


def test_analyze_is_cached() -> None:
    topology = diamond()
    first = topology.analyze()
    topology.validate()
    assert topology.analyze() is first


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t.add_node("E"),
        lambda t: t.add_edge("D -> User"),
        lambda t: t.add_rule("max_steps(3)"),
        lambda t: t.remove_edge("C", "D"),
        lambda t: t.remove_node("C"),
    ],
)
def test_mutators_invalidate_the_cache(mutate) -> None:
    topology = diamond()
    first = topology.analyze()
    mutate(topology)
    with_change = None
    # e.g. an isolated new node makes it invalid: then there is certainly no stale analysis
    with contextlib.suppress(TopologyError):
        with_change = topology.analyze()
    assert with_change is not first


def test_remove_rule_invalidates_the_cache() -> None:
    topology = Topology(["A", "B"], ["A -> B"], rules=["max_steps(3)"])
    first = topology.analyze()
    topology.remove_rule("max_steps(3)")
    second = topology.analyze()
    assert second is not first
    assert second.max_steps is None
    assert topology.analyze() is second


def test_analysis_reflects_mutations() -> None:
    topology = Topology(["A", "B"], ["A -> B"])
    assert topology.analyze().exits == frozenset({"B"})
    topology.add_node("C")
    topology.add_edge("B -> C")
    analysis = topology.analyze()
    assert analysis.exits == frozenset({"C"})
    assert analysis.successors("B") == ("C",)


def test_failed_analysis_is_not_cached() -> None:
    topology = Topology(["A", "B"], ["A -> B"])
    topology.add_node("C")
    with pytest.raises(TopologyError):
        topology.analyze()
    topology.add_edge("B -> C")
    assert topology.analyze().exits == frozenset({"C"})


def test_invalid_topology_cannot_be_analyzed() -> None:
    with pytest.raises(TopologyError):
        Topology(["A", "B"], []).analyze()
