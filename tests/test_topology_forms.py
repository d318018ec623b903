"""Every input form a topology accepts, and the errors for the forms it does not."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from orchestra import USER, Edge, Node, Topology, TopologyError
from orchestra.coordination.topology import MaxSteps, Parallel, Timeout
from orchestra.coordination.topology.model import check_name


@dataclass
class FakeAgent:
    """The smallest agent-like object: anything with a ``name`` string."""

    name: str


def arrows(topology: Topology) -> list[str]:
    return [edge.arrow for edge in topology.edges]


# ---- dict forms ------------------------------------------------------------------------------


def test_dict_with_nodes_and_edges() -> None:
    topology = Topology.from_dict({"nodes": ["A", "B"], "edges": ["A -> B"]})
    assert topology.node_names == ("A", "B")
    assert arrows(topology) == ["A -> B"]
    assert topology.rules == ()
    assert topology.metadata == {}
    assert topology.entry_point is None
    assert topology.exit_points == ()


def test_dict_alias_agents_and_flows() -> None:
    topology = Topology.from_dict({"agents": ["A", "B"], "flows": ["A -> B"]})
    assert topology.node_names == ("A", "B")
    assert arrows(topology) == ["A -> B"]


def test_dict_edges_are_optional() -> None:
    topology = Topology.from_dict({"nodes": ["Solo"]})
    assert topology.node_names == ("Solo",)
    assert topology.edges == ()


def test_dict_with_every_optional_key() -> None:
    topology = Topology.from_dict(
        {
            "nodes": ["A", "B", "C"],
            "edges": ["A -> B", "A -> C"],
            "rules": ["max_steps(20)", "parallel(B, C)"],
            "metadata": {"owner": "team"},
            "entry_point": "A",
            "exit_points": ["B", "C"],
        }
    )
    assert topology.rules == (MaxSteps(20), Parallel(("B", "C")))
    assert topology.metadata == {"owner": "team"}
    assert topology.entry_point == "A"
    assert topology.exit_points == ("B", "C")


@pytest.mark.parametrize(
    ("key", "hint"),
    [("edge", "edges"), ("node", "nodes"), ("rule", "rules"), ("entrypoint", "entry_point")],
)
def test_unknown_dict_key_is_named_with_a_hint(key: str, hint: str) -> None:
    with pytest.raises(TopologyError) as info:
        Topology.from_dict({"nodes": ["A"], key: []})
    message = str(info.value)
    assert repr(key) in message
    assert f"did you mean {hint!r}?" in message
    assert [(p.kind, p.subject) for p in info.value.problems] == [("unknown_key", key)]


def test_unknown_dict_key_without_a_close_match_has_no_hint() -> None:
    with pytest.raises(TopologyError) as info:
        Topology.from_dict({"nodes": ["A"], "zzz": 1})
    assert "'zzz'" in str(info.value)
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize(
    ("data", "subject"),
    [
        ({"nodes": ["A"], "agents": ["A"]}, "agents"),
        ({"nodes": ["A"], "edges": [], "flows": []}, "flows"),
    ],
)
def test_a_key_and_its_alias_together_is_an_error(data: dict, subject: str) -> None:
    with pytest.raises(TopologyError) as info:
        Topology.from_dict(data)
    assert info.value.kinds == {"conflicting_keys"}
    assert info.value.problems[0].subject == subject
    assert repr(subject) in str(info.value)


def test_dict_without_nodes_is_an_error() -> None:
    with pytest.raises(TopologyError) as info:
        Topology.from_dict({"edges": ["A -> B"]})
    assert info.value.kinds == {"missing_key"}
    assert "'nodes'" in str(info.value)


def test_dict_key_problems_are_reported_together() -> None:
    with pytest.raises(TopologyError) as info:
        Topology.from_dict({"node": ["A"], "edges": [], "flows": []})
    assert info.value.kinds == {"unknown_key", "conflicting_keys", "missing_key"}
    assert len(info.value.problems) == 3
    assert "(3 problems)" in str(info.value)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"nodes": "A"}, "nodes"),
        ({"nodes": {"A": 1}}, "nodes"),
        ({"nodes": ["A"], "edges": "A -> B"}, "edges"),
        ({"nodes": ["A"], "edges": {"A": "B"}}, "edges"),
        ({"nodes": ["A"], "rules": "max_steps(3)"}, "rules"),
        ({"nodes": ["A"], "exit_points": "A"}, "exit_points"),
    ],
)
def test_non_list_field_is_an_error_naming_the_field(data: dict, field: str) -> None:
    with pytest.raises(TopologyError) as info:
        Topology.from_dict(data)
    assert info.value.kinds == {"invalid_field"}
    assert f"{field!r} must be a list" in str(info.value)


@pytest.mark.parametrize("field", ["nodes", "edges", "rules"])
def test_non_iterable_field_is_a_topology_error(field: str) -> None:
    data: dict = {"nodes": ["A"], field: 5}
    with pytest.raises(TopologyError) as info:
        Topology.from_dict(data)
    assert repr(field) in str(info.value)


def test_every_non_list_field_is_reported_in_one_error() -> None:
    with pytest.raises(TopologyError) as info:
        Topology(nodes="A", edges="A -> B", rules="max_steps(3)")
    assert info.value.kinds == {"invalid_field"}
    assert {p.subject for p in info.value.problems} == {"nodes", "edges", "rules"}


@pytest.mark.parametrize("metadata", ["oops", [1, 2], 5])
def test_non_mapping_topology_metadata_is_a_topology_error(metadata: object) -> None:
    with pytest.raises(TopologyError) as info:
        Topology(nodes=["A"], metadata=metadata)  # type: ignore[arg-type]
    assert "metadata" in str(info.value)


@pytest.mark.parametrize("data", [["A -> B"], "nodes: A", 3, None])
def test_from_dict_needs_a_mapping(data: object) -> None:
    with pytest.raises(TypeError, match="needs a mapping"):
        Topology.from_dict(data)  # type: ignore[arg-type]


# ---- edge strings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A -> B", ["A -> B"]),
        ("A->B", ["A -> B"]),
        ("  A   ->   B  ", ["A -> B"]),
        ("A <-> B", ["A -> B", "B -> A"]),
        ("A<->B", ["A -> B", "B -> A"]),
        ("  A   <->  B ", ["A -> B", "B -> A"]),
        ("Data Analyst -> web_search.v2", ["Data Analyst -> web_search.v2"]),
    ],
)
def test_edge_strings(text: str, expected: list[str]) -> None:
    topology = Topology(nodes=["A", "B"], edges=[text])
    assert arrows(topology) == expected
    assert all(not edge.bidirectional for edge in topology.edges)


@pytest.mark.parametrize(
    "text", ["A - B", "A -> B -> C", "A <- B", "-> B", "A ->", "A", "", "A => B", "A --> B"]
)
def test_invalid_edge_string_is_quoted_in_the_error(text: str) -> None:
    with pytest.raises(TopologyError) as info:
        Topology(nodes=["A", "B", "C"], edges=[text])
    assert info.value.kinds == {"invalid_edge"}
    assert info.value.problems[0].subject == text
    assert f"cannot parse edge {text!r}" in str(info.value)


# ---- object forms ----------------------------------------------------------------------------


def test_nodes_in_every_form() -> None:
    agent = FakeAgent("Writer")
    topology = Topology(
        nodes=[
            "Researcher",
            Node("Reviewer", metadata={"policy": "all"}),
            {"name": "Editor", "metadata": {"tone": "dry"}},
            {"name": "Checker"},
            agent,
        ]
    )
    assert topology.node_names == ("Researcher", "Reviewer", "Editor", "Checker", "Writer")
    assert topology.node("Reviewer").metadata == {"policy": "all"}
    assert topology.node("Editor").metadata == {"tone": "dry"}
    assert topology.node("Checker").metadata == {}
    assert topology.node("Writer").agent is agent
    assert topology.node("Researcher").agent is None
    assert len(topology) == 5
    assert "Writer" in topology and "Nobody" not in topology


@pytest.mark.parametrize(
    ("item", "kind", "fragment"),
    [
        ({"metadata": {}}, "invalid_node", "needs a 'name'"),
        ({"name": "A", "meta": {}}, "unknown_key", "'meta'"),
        ({"name": "A", "metadata": "x"}, "invalid_metadata", "metadata must be a mapping"),
        (3, "invalid_node", "got 3"),
        ("A>", "invalid_name", "'A>'"),
    ],
)
def test_invalid_node_forms(item: object, kind: str, fragment: str) -> None:
    with pytest.raises(TopologyError) as info:
        Topology(nodes=["X", item])
    assert info.value.kinds == {kind}
    assert fragment in str(info.value)


def test_edges_in_every_form() -> None:
    topology = Topology(
        nodes=["A", "B", "C", "D", "E", "F"],
        edges=[
            "A -> B",
            Edge("B", "C", metadata={"condition": "ok"}),
            Edge("C", "D", bidirectional=True),
            ("D", "E"),
            {"source": "E", "target": "F", "metadata": {"weight": 2}},
            {"source": "F", "target": "A", "bidirectional": True},
        ],
    )
    assert arrows(topology) == [
        "A -> B",
        "B -> C",
        "C -> D",
        "D -> C",
        "D -> E",
        "E -> F",
        "F -> A",
        "A -> F",
    ]
    assert topology.edge("B", "C").condition == "ok"  # type: ignore[union-attr]
    assert topology.edge("E", "F").metadata == {"weight": 2}  # type: ignore[union-attr]
    assert topology.edge("A", "C") is None


def test_positional_edge() -> None:
    edge = Edge("A", "B")
    assert (edge.source, edge.target, edge.metadata, edge.bidirectional) == ("A", "B", {}, False)
    assert Topology(nodes=["A", "B"], edges=[edge]).edges == (edge,)


def test_bidirectional_edge_is_stored_as_two_directed_edges_sharing_metadata() -> None:
    topology = Topology(nodes=["A", "B"])
    added = topology.add_edge(Edge("A", "B", metadata={"condition": "go"}, bidirectional=True))
    assert [e.arrow for e in added] == ["A -> B", "B -> A"]
    assert topology.edges == added
    for edge in topology.edges:
        assert not edge.bidirectional
        assert edge.metadata == {"condition": "go"}


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ({"source": "A"}, "lacks target"),
        ({"target": "B"}, "lacks source"),
        ({"source": "A", "target": "B", "weight": 1}, "'weight'"),
        ({"source": "A", "target": "B", "bidirectional": "yes"}, "'bidirectional'"),
        ({"source": "A", "target": "B", "metadata": "x"}, "metadata must be a mapping"),
        (("A", "B", "C"), "got ('A', 'B', 'C')"),
        (("A", "B>"), "'B>'"),
        (42, "got 42"),
    ],
)
def test_invalid_edge_forms(item: object, fragment: str) -> None:
    with pytest.raises(TopologyError) as info:
        Topology(nodes=["A", "B"], edges=[item])
    assert fragment in str(info.value)


def test_naming_user_in_an_edge_adds_the_user_node() -> None:
    topology = Topology(nodes=["A"], edges=["User -> A", "A -> User"])
    assert topology.node_names == ("A", USER)
    assert topology.node(USER).is_user
    assert arrows(topology) == ["User -> A", "A -> User"]


@pytest.mark.parametrize(
    "edge", ["User <-> A", ("User", "A"), Edge("A", "User"), {"source": "User", "target": "A"}]
)
def test_user_is_added_by_any_edge_form(edge: object) -> None:
    assert USER in Topology(nodes=["A"], edges=[edge]).node_names


def test_user_declared_explicitly_is_not_added_twice() -> None:
    topology = Topology(nodes=["User", "A"], edges=["User -> A"])
    assert topology.node_names == ("User", "A")


def test_user_node_cannot_have_an_agent() -> None:
    with pytest.raises(TopologyError) as info:
        Topology(nodes=[FakeAgent("User")])
    assert info.value.kinds == {"user_with_agent"}


def test_node_agent_must_carry_the_node_name() -> None:
    with pytest.raises(TopologyError) as info:
        Node("A", agent=FakeAgent("B"))
    assert info.value.kinds == {"agent_name_mismatch"}
    assert "'A'" in str(info.value) and "'B'" in str(info.value)


@pytest.mark.parametrize("duplicate", ["A", Node("A"), {"name": "A"}, FakeAgent("A")])
def test_duplicate_node_is_named(duplicate: object) -> None:
    with pytest.raises(TopologyError) as info:
        Topology(nodes=["A", "B", duplicate])
    assert [(p.kind, p.subject) for p in info.value.problems] == [("duplicate_node", "A")]
    assert "nodes[2]" in str(info.value)
    assert "'A' is declared twice" in str(info.value)


@pytest.mark.parametrize(
    ("edges", "arrow"),
    [
        (["A -> B", "A -> B"], "A -> B"),
        (["A -> B", ("A", "B")], "A -> B"),
        (["A -> B", "A <-> B"], "A -> B"),
        (["B -> A", Edge("A", "B", bidirectional=True)], "B -> A"),
    ],
)
def test_duplicate_edge_is_named(edges: list, arrow: str) -> None:
    with pytest.raises(TopologyError) as info:
        Topology(nodes=["A", "B"], edges=edges)
    assert [(p.kind, p.subject) for p in info.value.problems] == [("duplicate_edge", arrow)]
    assert f"edges[1]: edge {arrow!r} is declared twice" in str(info.value)


def test_duplicate_bidirectional_half_adds_neither_half() -> None:
    topology = Topology(nodes=["A", "B"], edges=["B -> A"])
    with pytest.raises(TopologyError):
        topology.add_edge("A <-> B")
    assert arrows(topology) == ["B -> A"]


def test_all_parse_problems_are_reported_in_one_error() -> None:
    with pytest.raises(TopologyError) as info:
        Topology(
            nodes=["A", "A", "bad>", "B"],
            edges=["A - B", "A -> B", "A -> B"],
            rules=["foo(1)"],
            entry_point="no>",
            exit_points=["B"],
        )
    error = info.value
    assert [p.kind for p in error.problems] == [
        "duplicate_node",
        "invalid_name",
        "invalid_edge",
        "duplicate_edge",
        "invalid_rule",
        "invalid_name",
    ]
    assert error.kinds == {
        "duplicate_node",
        "invalid_name",
        "invalid_edge",
        "duplicate_edge",
        "invalid_rule",
    }
    message = str(error)
    assert message.startswith("Invalid topology (6 problems):")
    for culprit in ["'A' is declared twice", "'bad>'", "'A - B'", "'A -> B'", "'foo(1)'", "'no>'"]:
        assert culprit in message


def test_dangling_edges_are_accepted_until_validate() -> None:
    topology = Topology(nodes=["A"], edges=["A -> Ghost"])
    assert arrows(topology) == ["A -> Ghost"]
    with pytest.raises(TopologyError) as info:
        topology.validate()
    assert "dangling_edge" in info.value.kinds
    assert "'Ghost'" in str(info.value)


# ---- mutators --------------------------------------------------------------------------------


def test_add_node_in_every_form() -> None:
    topology = Topology()
    assert topology.add_node("A") == Node("A")
    assert topology.add_node(Node("B")).name == "B"
    assert topology.add_node({"name": "C", "metadata": {"k": 1}}).metadata == {"k": 1}
    agent = FakeAgent("D")
    assert topology.add_node(agent).agent is agent
    assert topology.node_names == ("A", "B", "C", "D")


def test_add_duplicate_node_is_an_error() -> None:
    topology = Topology(nodes=["A"])
    with pytest.raises(TopologyError) as info:
        topology.add_node("A")
    assert info.value.kinds == {"duplicate_node"}
    assert "add_node: node 'A' is declared twice" in str(info.value)


def test_add_edge_and_rule() -> None:
    topology = Topology(nodes=["A", "B"])
    assert [e.arrow for e in topology.add_edge("A <-> B")] == ["A -> B", "B -> A"]
    assert topology.add_rule("max_steps(5)") == MaxSteps(5)
    assert topology.add_rule(Timeout(2.5)) == Timeout(2.5)
    assert topology.rules == (MaxSteps(5), Timeout(2.5))


def test_add_duplicate_edge_is_an_error() -> None:
    topology = Topology(nodes=["A", "B"], edges=["A -> B"])
    with pytest.raises(TopologyError) as info:
        topology.add_edge(("A", "B"))
    assert "add_edge: edge 'A -> B' is declared twice" in str(info.value)


def test_add_invalid_rule_is_an_error() -> None:
    topology = Topology(nodes=["A"])
    with pytest.raises(TopologyError) as info:
        topology.add_rule("max_steps(0)")
    assert "'max_steps(0)'" in str(info.value)
    assert topology.rules == ()


def test_remove_node_removes_incident_edges() -> None:
    topology = Topology(
        nodes=["A", "B", "C"], edges=["User -> A", "A <-> B", "B -> C", "C -> A", "C -> User"]
    )
    removed = topology.remove_node("A")
    assert removed.name == "A"
    assert topology.node_names == ("B", "C", USER)
    assert arrows(topology) == ["B -> C", "C -> User"]


def test_remove_missing_node_is_an_error_listing_the_nodes() -> None:
    topology = Topology(nodes=["A", "B"])
    with pytest.raises(TopologyError) as info:
        topology.remove_node("Z")
    assert [(p.kind, p.subject) for p in info.value.problems] == [("missing_node", "Z")]
    assert "'Z'" in str(info.value) and "A, B" in str(info.value)


def test_node_lookup_of_missing_name_is_an_error() -> None:
    with pytest.raises(TopologyError, match="there is no node 'Z'; nodes: \\(none\\)"):
        Topology().node("Z")


def test_remove_edge_removes_one_direction_only() -> None:
    topology = Topology(nodes=["A", "B"], edges=["A <-> B"])
    assert topology.remove_edge("A", "B").arrow == "A -> B"
    assert arrows(topology) == ["B -> A"]


def test_remove_missing_edge_is_an_error() -> None:
    topology = Topology(nodes=["A", "B"], edges=["A -> B"])
    with pytest.raises(TopologyError) as info:
        topology.remove_edge("B", "A")
    assert [(p.kind, p.subject) for p in info.value.problems] == [("missing_edge", "B -> A")]
    assert "'B -> A'" in str(info.value)


@pytest.mark.parametrize("rule", ["max_steps(3)", MaxSteps(3), " max_steps ( 3 ) "])
def test_remove_rule_by_text_or_object(rule: object) -> None:
    topology = Topology(nodes=["A"], rules=["max_steps(3)", "timeout(9)"])
    assert topology.remove_rule(rule) == MaxSteps(3)  # type: ignore[arg-type]
    assert topology.rules == (Timeout(9),)


def test_remove_missing_rule_is_an_error() -> None:
    topology = Topology(nodes=["A"], rules=["max_steps(3)"])
    with pytest.raises(TopologyError) as info:
        topology.remove_rule("max_steps(4)")
    assert [(p.kind, p.subject) for p in info.value.problems] == [("missing_rule", "max_steps(4)")]
    assert "'max_steps(4)'" in str(info.value)


def test_analysis_is_cached_until_a_mutation() -> None:
    topology = Topology(nodes=["A", "B"], edges=["A -> B"])
    first = topology.analyze()
    assert topology.analyze() is first
    assert first.exits == frozenset({"B"})

    topology.add_node("C")
    topology.add_edge("B -> C")
    second = topology.analyze()
    assert second is not first
    assert second.exits == frozenset({"C"})

    topology.add_rule("max_steps(7)")
    assert topology.analyze().max_steps == 7
    topology.remove_rule("max_steps(7)")
    assert topology.analyze().max_steps is None

    topology.remove_edge("B", "C")
    topology.remove_node("C")
    assert topology.analyze().exits == frozenset({"B"})


def test_mutation_can_make_an_invalid_topology_valid() -> None:
    topology = Topology(nodes=["A", "B"])
    with pytest.raises(TopologyError, match="several possible entries"):
        topology.validate()
    topology.add_edge("A -> B")
    topology.validate()
    assert topology.analyze().entries == ("A",)


def test_mutation_can_make_a_valid_topology_invalid() -> None:
    topology = Topology(nodes=["A", "B"], edges=["A -> B"])
    topology.validate()
    topology.add_edge("A -> Ghost")
    with pytest.raises(TopologyError) as info:
        topology.validate()
    assert "dangling_edge" in info.value.kinds


# ---- to_dict / from_dict ---------------------------------------------------------------------


def test_round_trip_keeps_everything() -> None:
    original = Topology(
        nodes=["A", Node("B", metadata={"policy": "all"}), FakeAgent("C")],
        edges=[
            "User -> A",
            "A <-> B",
            Edge("B", "C", metadata={"condition": "done"}),
            "C -> User",
        ],
        rules=["max_steps(20)", "timeout(2.5)", "max_agents(3)", "parallel(A, B)"],
        metadata={"owner": "team", "tags": ["x"]},
        entry_point="A",
        exit_points=["C"],
    )
    data = original.to_dict()
    assert data == {
        "nodes": ["A", {"name": "B", "metadata": {"policy": "all"}}, "C", "User"],
        "edges": [
            "User -> A",
            "A -> B",
            "B -> A",
            {"source": "B", "target": "C", "metadata": {"condition": "done"}},
            "C -> User",
        ],
        "rules": ["max_steps(20)", "timeout(2.5)", "max_agents(3)", "parallel(A, B)"],
        "metadata": {"owner": "team", "tags": ["x"]},
        "entry_point": "A",
        "exit_points": ["C"],
    }
    copy = Topology.from_dict(data)
    assert copy.node_names == original.node_names
    assert copy.edges == original.edges
    assert [e.metadata for e in copy.edges] == [e.metadata for e in original.edges]
    assert [n.metadata for n in copy.nodes] == [n.metadata for n in original.nodes]
    assert copy.rules == original.rules
    assert copy.metadata == original.metadata
    assert copy.entry_point == "A"
    assert copy.exit_points == ("C",)
    assert copy.to_dict() == data


def test_to_dict_omits_unset_entry_and_exits() -> None:
    data = Topology(nodes=["A"]).to_dict()
    assert data == {"nodes": ["A"], "edges": [], "rules": [], "metadata": {}}


@pytest.mark.parametrize("seconds", [300, 2.5, 0.25, 86400, 1234567, 0.1234567])
def test_round_trip_keeps_timeout_exactly(seconds: float) -> None:
    data = Topology(nodes=["A"], rules=[Timeout(seconds)]).to_dict()
    assert Topology.from_dict(data).rules == (Timeout(seconds),)


# ---- coerce ----------------------------------------------------------------------------------


def test_coerce_returns_a_topology_unchanged() -> None:
    topology = Topology(nodes=["A"])
    assert Topology.coerce(topology) is topology


def test_coerce_reads_a_dict() -> None:
    topology = Topology.coerce({"agents": ["A", "B"], "flows": ["A -> B"]})
    assert isinstance(topology, Topology)
    assert arrows(topology) == ["A -> B"]


def test_coerce_reports_dict_problems_as_topology_errors() -> None:
    with pytest.raises(TopologyError, match="did you mean 'edges'"):
        Topology.coerce({"nodes": ["A"], "edge": []})


@pytest.mark.parametrize("value", [None, "A -> B", ["A"], 3])
def test_coerce_rejects_other_types(value: object) -> None:
    with pytest.raises(TypeError) as info:
        Topology.coerce(value)  # type: ignore[arg-type]
    assert type(value).__name__ in str(info.value)


# ---- node names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["Researcher", "web_search.v2", "Data Analyst", "agent-1", "A", "x9", "User"]
)
def test_valid_node_names(name: str) -> None:
    assert check_name(name, "test") == name
    assert Node(name).name == name


@pytest.mark.parametrize(
    "name", ["", " A", "A ", "A>", "a->b", "A-", "-A", "a,b", "a(b)", "A\n", "A\r\n", "A\x00"]
)
def test_invalid_node_names(name: str) -> None:
    with pytest.raises(TopologyError) as info:
        check_name(name, "where")
    assert [(p.kind, p.subject) for p in info.value.problems] == [("invalid_name", name)]
    assert str(info.value).startswith(f"Invalid topology: where: {name!r} is not a valid node name")


@pytest.mark.parametrize("name", [3, None, b"A"])
def test_non_string_node_names(name: object) -> None:
    with pytest.raises(TopologyError) as info:
        check_name(name, "where")
    assert info.value.kinds == {"invalid_name"}
    assert f"node names are strings, got {name!r}" in str(info.value)


def test_invalid_name_in_a_node_list_says_where() -> None:
    with pytest.raises(TopologyError) as info:
        Topology(nodes=["A", "B", "a->b"])
    assert "nodes[2]: 'a->b' is not a valid node name" in str(info.value)
