"""Structural validation of topologies: every problem is reported, by kind, naming its culprit."""

from __future__ import annotations

import pytest

from orchestra.coordination.topology import Edge, Topology
from orchestra.errors import OrchestraError, TopologyError, TopologyProblem


def problems_of(*args: object, **kwargs: object) -> TopologyError:
    """Build and validate a topology that must be invalid; return the error."""
    with pytest.raises(TopologyError) as info:
        Topology(*args, **kwargs).validate()  # type: ignore[arg-type]
    return info.value


def only(error: TopologyError, kind: str) -> TopologyProblem:
    matching = [p for p in error.problems if p.kind == kind]
    assert len(matching) == 1, error.problems
    return matching[0]


# ---- the error type ------------------------------------------------------------------------


def test_topology_error_is_an_orchestra_error() -> None:
    error = problems_of(["A", "B"], ["A -> C"])
    assert isinstance(error, OrchestraError)
    assert error.problems
    assert all(isinstance(p, TopologyProblem) for p in error.problems)
    assert all(p.message for p in error.problems)


def test_topology_error_needs_a_problem() -> None:
    with pytest.raises(ValueError):
        TopologyError([])


def test_single_problem_message_is_prefixed() -> None:
    error = TopologyError.single("dead_end", "X", "node 'X' is stuck")
    assert str(error) == "Invalid topology: node 'X' is stuck"
    assert error.kinds == {"dead_end"}
    assert str(error.problems[0]) == "node 'X' is stuck"


# ---- valid topologies ----------------------------------------------------------------------


def test_one_node_topology_is_valid_and_its_own_entry_and_exit() -> None:
    topology = Topology.from_dict({"nodes": ["Summarizer"], "edges": []})
    topology.validate()
    analysis = topology.analyze()
    assert analysis.entries == ("Summarizer",)
    assert analysis.entry == "Summarizer"
    assert analysis.exits == frozenset({"Summarizer"})


@pytest.mark.parametrize(
    "nodes, edges, kwargs",
    [
        (["A", "B", "C"], ["A -> B", "B -> C"], {}),
        (["A", "B"], ["User -> A", "A -> B", "B -> User"], {}),
        (["A", "B", "C"], ["A -> B", "B -> C", "C -> A"], {"entry_point": "A"}),
        (["A", "B"], ["A <-> B"], {"entry_point": "A"}),
        (["A", "B", "C"], ["A -> B", "A -> C"], {"exit_points": ["B", "C"]}),
        (["A", "B"], ["A -> B", "B -> B", "B -> User"], {}),
        (["A"], ["A -> A"], {"entry_point": "A"}),
        (["A", "B"], ["User -> A", "User -> B"], {}),
    ],
)
def test_valid_topologies_pass(nodes: list[str], edges: list[str], kwargs: dict) -> None:
    Topology(nodes, edges, **kwargs).validate()


# ---- each structural problem ---------------------------------------------------------------


@pytest.mark.parametrize(
    "edge, role, missing",
    [("Ghost -> A", "source", "Ghost"), ("A -> Ghost", "target", "Ghost")],
)
def test_dangling_edge_endpoint(edge: str, role: str, missing: str) -> None:
    error = problems_of(["A", "B"], ["A -> B", edge])
    assert error.kinds == {"dangling_edge"}
    problem = only(error, "dangling_edge")
    assert problem.subject == edge
    assert edge in problem.message
    assert role in problem.message
    assert repr(missing) in problem.message


def test_edge_with_both_ends_dangling_reports_both() -> None:
    error = problems_of(["A"], ["X -> Y"])
    dangling = [p for p in error.problems if p.kind == "dangling_edge"]
    assert len(dangling) == 2
    text = " ".join(p.message for p in dangling)
    assert "'X'" in text and "'Y'" in text


def test_dangling_edge_to_user_names_the_agent() -> None:
    error = problems_of(["A"], ["User -> A", "Ghost -> User"])
    assert error.kinds == {"dangling_edge"}
    assert "'Ghost'" in only(error, "dangling_edge").message


def test_no_entry_when_every_node_has_an_incoming_edge() -> None:
    error = problems_of(["A", "B", "C"], ["A -> B", "B -> C", "C -> A"])
    assert error.kinds == {"no_entry"}
    message = only(error, "no_entry").message
    assert "entry_point" in message
    assert "User ->" in message


def test_several_entries_are_listed() -> None:
    error = problems_of(["A", "B", "C"], ["A -> C", "B -> C"])
    assert error.kinds == {"several_entries"}
    problem = only(error, "several_entries")
    assert "A" in problem.subject and "B" in problem.subject
    assert "A, B" in problem.message
    assert "C" not in problem.subject


def test_several_isolated_nodes_are_several_entries() -> None:
    error = problems_of(["A", "B"], [])
    assert error.kinds == {"several_entries"}


def test_unknown_entry_point() -> None:
    error = problems_of(["A", "B"], ["A -> B"], entry_point="Nobody")
    assert error.kinds == {"unknown_entry_point"}
    problem = only(error, "unknown_entry_point")
    assert problem.subject == "Nobody"
    assert "'Nobody'" in problem.message


def test_user_is_not_a_valid_entry_point() -> None:
    error = problems_of(["A", "B"], ["User -> A", "A -> B"], entry_point="User")
    assert "unknown_entry_point" in error.kinds
    assert "'User'" in only(error, "unknown_entry_point").message


def test_entry_point_conflicting_with_user_edges() -> None:
    error = problems_of(["A", "B", "C"], ["User -> A", "A -> C", "B -> C"], entry_point="B")
    assert error.kinds == {"entry_conflict"}
    problem = only(error, "entry_conflict")
    assert problem.subject == "B"
    assert "'B'" in problem.message
    assert "A" in problem.message  # where the User edges send the task


@pytest.mark.parametrize("extra", [[], ["A -> B"]])
def test_entry_point_naming_only_one_of_several_user_targets_conflicts(extra: list[str]) -> None:
    # the User edges send the task to A and B at once; entry_point says only A
    error = problems_of(["A", "B"], ["User -> A", "User -> B", *extra], entry_point="A")
    assert error.kinds == {"entry_conflict"}
    problem = only(error, "entry_conflict")
    assert "'A'" in problem.message
    assert "A, B" in problem.message


def test_entry_point_agreeing_with_user_edge_is_fine() -> None:
    topology = Topology(["A", "B"], ["User -> A", "A -> B"], entry_point="A")
    assert topology.analyze().entries == ("A",)


@pytest.mark.parametrize("exits", [["B", "Nowhere"], ["Nowhere", "B"]])
def test_unknown_exit_point(exits: list[str]) -> None:
    error = problems_of(["A", "B"], ["A -> B"], exit_points=exits)
    assert error.kinds == {"unknown_exit_point"}
    problem = only(error, "unknown_exit_point")
    assert problem.subject == "Nowhere"
    assert "'Nowhere'" in problem.message


def test_only_unknown_exit_point_does_not_blame_every_node() -> None:
    # As with an unknown entry_point, the fix is to correct the name: the nodes themselves
    # are not dead ends, and no message should say the exits are "(none)".
    error = problems_of(["A", "B"], ["A -> B"], exit_points=["Nowhere"])
    assert error.kinds == {"unknown_exit_point"}


def test_user_is_not_a_valid_exit_point() -> None:
    error = problems_of(["A", "B"], ["A -> B", "B -> User"], exit_points=["B", "User"])
    assert error.kinds == {"unknown_exit_point"}
    assert only(error, "unknown_exit_point").subject == "User"


def test_unreachable_node() -> None:
    error = problems_of(["A", "B", "C"], ["A -> B", "C -> B"], entry_point="A")
    assert error.kinds == {"unreachable_node"}
    problem = only(error, "unreachable_node")
    assert problem.subject == "C"
    assert "'C'" in problem.message
    assert "A" in problem.message  # names the entry


def test_unreachable_with_user_entry() -> None:
    error = problems_of(["A", "B", "C", "D"], ["User -> A", "A -> B", "C -> D", "D -> C"])
    assert error.kinds == {"unreachable_node"}
    assert {p.subject for p in error.problems} == {"C", "D"}


def test_cycle_with_no_way_out_shows_a_concrete_cycle() -> None:
    error = problems_of(["A", "B", "C", "D"], ["A -> B", "B -> C", "C -> B", "A -> D"])
    assert error.kinds == {"cycle_without_exit"}
    problem = only(error, "cycle_without_exit")
    assert problem.subject == "B, C"
    assert "B -> C -> B" in problem.message
    assert "D" in problem.message  # names the exit


def test_longer_cycle_path_is_a_real_cycle() -> None:
    error = problems_of(
        ["Start", "P", "Q", "R", "End"],
        ["Start -> P", "P -> Q", "Q -> R", "R -> P", "Start -> End"],
    )
    problem = only(error, "cycle_without_exit")
    assert "P -> Q -> R -> P" in problem.message


def test_two_separate_stuck_cycles_are_two_problems() -> None:
    error = problems_of(
        ["A", "B", "C", "D", "E", "F"],
        ["A -> B", "B -> C", "C -> B", "A -> D", "D -> E", "E -> D", "A -> F"],
    )
    assert error.kinds == {"cycle_without_exit"}
    assert sorted(p.subject for p in error.problems) == ["B, C", "D, E"]


def test_self_loop_with_no_way_out() -> None:
    error = problems_of(["A", "B", "C"], ["A -> B", "A -> C", "B -> B"])
    assert error.kinds == {"cycle_without_exit"}
    problem = only(error, "cycle_without_exit")
    assert problem.subject == "B"
    assert "B -> B" in problem.message


def test_dead_end_sink_not_listed_as_exit() -> None:
    error = problems_of(["A", "B", "C"], ["A -> B", "A -> C"], exit_points=["B"])
    assert error.kinds == {"dead_end"}
    problem = only(error, "dead_end")
    assert problem.subject == "C"
    assert "'C'" in problem.message
    assert "B" in problem.message


def test_node_leading_only_into_a_stuck_cycle_is_a_dead_end() -> None:
    error = problems_of(
        ["A", "P", "B", "C", "D"], ["A -> P", "P -> B", "B -> C", "C -> B", "A -> D"]
    )
    assert error.kinds == {"cycle_without_exit", "dead_end"}
    assert only(error, "dead_end").subject == "P"
    assert only(error, "cycle_without_exit").subject == "B, C"


async def _async_condition(payload: object, context: object) -> bool:
    return True


def _one_argument(payload: object) -> bool:
    return True


@pytest.mark.parametrize(
    "condition, fragment",
    [
        (42, "int"),
        ("   ", "non-empty"),
        ("", "non-empty"),
        (_async_condition, "synchronous"),
        (_one_argument, "two positional arguments"),
    ],
)
def test_invalid_condition(condition: object, fragment: str) -> None:
    edge = {"source": "A", "target": "B", "metadata": {"condition": condition}}
    error = problems_of(["A", "B"], [edge])
    assert error.kinds == {"invalid_condition"}
    problem = only(error, "invalid_condition")
    assert problem.subject == "A -> B"
    assert "A -> B" in problem.message
    assert fragment in problem.message


@pytest.mark.parametrize("condition", ["approved", lambda payload, context: True, max])
def test_valid_conditions_pass(condition: object) -> None:
    # ``max`` is a builtin without an inspectable signature: it is trusted
    Topology(["A", "B"], [Edge("A", "B", metadata={"condition": condition})]).validate()


@pytest.mark.parametrize("nodes", [[], ["User"]])
def test_empty_topology(nodes: list[str]) -> None:
    error = problems_of(nodes, [])
    assert error.kinds == {"empty_topology"}
    assert "no agent nodes" in only(error, "empty_topology").message


def test_user_to_user_edge() -> None:
    error = problems_of(["A"], ["User -> A", "User -> User"])
    assert error.kinds == {"user_self_edge"}
    problem = only(error, "user_self_edge")
    assert problem.subject == "User -> User"
    assert "User -> User" in problem.message


def test_parallel_rule_naming_unknown_node() -> None:
    error = problems_of(["A", "B", "C"], ["A -> B", "A -> C"], rules=["parallel(B, Zed)"])
    assert error.kinds == {"invalid_rule"}
    problem = only(error, "invalid_rule")
    assert "'Zed'" in problem.message


def test_limit_rule_given_twice() -> None:
    error = problems_of(["A"], [], rules=["max_steps(3)", "max_steps(5)"])
    assert error.kinds == {"invalid_rule"}
    assert "max_steps" in only(error, "invalid_rule").message


# ---- several problems at once -------------------------------------------------------------


def test_all_problems_reported_in_one_error() -> None:
    error = problems_of(
        ["A", "B", "C", "D"],
        ["A -> B", "B -> C", "C -> B", "A -> Ghost", "User -> User"],
        rules=["parallel(A, Nobody)"],
        entry_point="A",
        exit_points=["D", "Elsewhere"],
    )
    assert error.kinds >= {
        "dangling_edge",
        "user_self_edge",
        "invalid_rule",
        "unknown_exit_point",
        "cycle_without_exit",
        "unreachable_node",
    }
    text = str(error)
    assert text.startswith(f"Invalid topology ({len(error.problems)} problems):")
    for problem in error.problems:
        assert problem.message in text
    assert "Ghost" in text
    assert "Nobody" in text
    assert "Elsewhere" in text
    assert "B -> C -> B" in text


def test_unreachable_and_dead_end_together() -> None:
    error = problems_of(
        ["A", "B", "C", "D"], ["A -> B", "A -> C", "D -> B"], entry_point="A", exit_points=["B"]
    )
    assert error.kinds == {"unreachable_node", "dead_end"}
    assert only(error, "unreachable_node").subject == "D"
    assert only(error, "dead_end").subject == "C"


def test_construction_collects_parse_problems() -> None:
    with pytest.raises(TopologyError) as info:
        Topology(["A", "A", "bad name!"], ["A => B", "A -> B", "A -> B"], rules=["nope(1)"])
    assert len(info.value.problems) >= 4
    assert info.value.kinds >= {"duplicate_node", "invalid_name", "invalid_edge", "invalid_rule"}
