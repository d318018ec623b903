"""Topology rules: parsing rule text, the rule objects, and rule checks in validate()."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from orchestra import Rule, Topology, TopologyError
from orchestra.coordination.topology import MaxAgents, MaxSteps, Parallel, Timeout, parse_rule

# ---- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_steps(20)", MaxSteps(20)),
        ("timeout(300)", Timeout(300)),
        ("timeout(2.5)", Timeout(2.5)),
        ("max_agents(5)", MaxAgents(5)),
        ("parallel(A, B)", Parallel(("A", "B"))),
        ("parallel(A, B, C)", Parallel(("A", "B", "C"))),
        ("parallel(Data Analyst, web_search.v2)", Parallel(("Data Analyst", "web_search.v2"))),
    ],
)
def test_parse_rule(text: str, expected: Rule) -> None:
    rule = parse_rule(text)
    assert rule == expected
    assert type(rule) is type(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  max_steps(20)  ", MaxSteps(20)),
        ("max_steps (20)", MaxSteps(20)),
        ("max_steps( 20 )", MaxSteps(20)),
        ("timeout(\t2.5 )", Timeout(2.5)),
        ("max_agents ( 5 )", MaxAgents(5)),
        ("parallel(A,B)", Parallel(("A", "B"))),
        ("parallel(  A ,   B  )", Parallel(("A", "B"))),
        ("parallel('A', \"B\")", Parallel(("A", "B"))),
    ],
)
def test_parse_rule_tolerates_whitespace(text: str, expected: Rule) -> None:
    assert parse_rule(text) == expected


def test_parsed_timeout_is_a_number_of_seconds() -> None:
    assert parse_rule("timeout(300)").seconds == 300  # type: ignore[attr-defined]
    assert parse_rule("timeout(2.5)").seconds == 2.5  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("foo(1)", "unknown rule"),
        ("max_steps", "cannot parse rule"),
        ("", "cannot parse rule"),
        ("max_steps(20", "cannot parse rule"),
        ("max_steps(x)", "is not a whole number"),
        ("max_steps(2.5)", "is not a whole number"),
        ("max_steps(0)", "positive whole number"),
        ("max_steps(-3)", "positive whole number"),
        ("max_agents(0)", "positive whole number"),
        ("max_steps()", "exactly one argument"),
        ("max_steps(1, 2)", "exactly one argument"),
        ("timeout(-1)", "must be positive"),
        ("timeout(0)", "must be positive"),
        ("timeout(soon)", "is not a number"),
        ("timeout(1, 2)", "exactly one argument"),
        ("parallel(A)", "at least two agents"),
        ("parallel()", "at least two agents"),
        ("parallel(A, A)", "lists A twice"),
        ("parallel(A, B>)", "'B>' is not a valid node name"),
    ],
)
def test_invalid_rule_text_is_quoted_in_the_error(text: str, fragment: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse_rule(text)
    message = str(info.value)
    assert repr(text) in message
    assert fragment in message
    assert [(p.kind, p.subject) for p in info.value.problems] == [("invalid_rule", text)]


def test_unknown_rule_lists_the_known_rules() -> None:
    with pytest.raises(TopologyError) as info:
        parse_rule("foo(1)")
    for keyword in ("max_steps", "timeout", "max_agents", "parallel"):
        assert f"{keyword}(...)" in str(info.value)


# ---- rule objects ----------------------------------------------------------------------------


def test_rule_objects_hold_their_values() -> None:
    assert MaxSteps(20).steps == 20
    assert Timeout(2.5).seconds == 2.5
    assert MaxAgents(5).agents == 5
    assert Parallel(("A", "B")).agents == ("A", "B")


def test_parallel_accepts_any_iterable_of_names() -> None:
    rule = Parallel(["A", "B"])  # type: ignore[arg-type]
    assert rule.agents == ("A", "B")
    assert rule == Parallel(("A", "B"))
    assert hash(rule) == hash(Parallel(("A", "B")))


def test_rule_keywords() -> None:
    assert [cls.keyword for cls in (MaxSteps, Timeout, MaxAgents, Parallel)] == [
        "max_steps",
        "timeout",
        "max_agents",
        "parallel",
    ]


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: MaxSteps(0), "max_steps needs a positive whole number, got 0"),
        (lambda: MaxSteps(2.5), "got 2.5"),
        (lambda: MaxSteps(True), "got True"),
        (lambda: MaxSteps("3"), "got '3'"),
        (lambda: MaxAgents(-1), "max_agents needs a positive whole number, got -1"),
        (lambda: Timeout(0), "timeout must be positive and finite, got 0"),
        (lambda: Timeout(-2.5), "timeout must be positive and finite, got -2.5"),
        (lambda: Timeout(float("nan")), "must be positive"),
        (lambda: Timeout("5"), "timeout needs a number of seconds, got '5'"),
        (lambda: Timeout(True), "got True"),
        (lambda: Parallel(("A",)), "at least two agents"),
        (lambda: Parallel(("A", "B", "A")), "lists A twice"),
        (lambda: Parallel(("A", "B>")), "'B>'"),
    ],
)
def test_invalid_rule_objects(make: Callable[[], Rule], fragment: str) -> None:
    with pytest.raises(TopologyError) as info:
        make()
    assert fragment in str(info.value)
    assert info.value.kinds <= {"invalid_rule", "invalid_name"}


@pytest.mark.parametrize(
    ("rule", "text"),
    [
        (MaxSteps(20), "max_steps(20)"),
        (Timeout(300), "timeout(300)"),
        (Timeout(300.0), "timeout(300)"),
        (Timeout(2.5), "timeout(2.5)"),
        (MaxAgents(5), "max_agents(5)"),
        (Parallel(("A", "B", "C")), "parallel(A, B, C)"),
    ],
)
def test_to_text(rule: Rule, text: str) -> None:
    assert rule.to_text() == text
    assert str(rule) == text


@pytest.mark.parametrize(
    "rule",
    [
        MaxSteps(1),
        MaxSteps(20),
        MaxAgents(5),
        Timeout(300),
        Timeout(2.5),
        Timeout(0.001),
        Timeout(86400),
        Timeout(1234567),
        Timeout(12.3456789),
        Parallel(("A", "B")),
        Parallel(("Data Analyst", "web_search.v2", "agent-1")),
    ],
    ids=repr,
)
def test_to_text_round_trip(rule: Rule) -> None:
    assert parse_rule(rule.to_text()) == rule


# ---- rules in a topology ---------------------------------------------------------------------


def test_rules_in_a_topology_are_parsed_objects() -> None:
    topology = Topology(
        nodes=["A", "B"],
        edges=["A -> B"],
        rules=["max_steps(20)", Timeout(2.5), " max_agents( 5 ) ", "parallel(A, B)"],
    )
    assert topology.rules == (MaxSteps(20), Timeout(2.5), MaxAgents(5), Parallel(("A", "B")))
    assert all(isinstance(rule, Rule) for rule in topology.rules)
    analysis = topology.analyze()
    assert (analysis.max_steps, analysis.timeout, analysis.max_agents) == (20, 2.5, 5)
    assert analysis.parallel_groups == (("A", "B"),)


def test_topology_reports_every_bad_rule() -> None:
    with pytest.raises(TopologyError) as info:
        Topology(nodes=["A"], rules=["foo(1)", "max_steps(20)", "timeout(-1)", 7])
    assert [p.subject for p in info.value.problems] == ["foo(1)", "timeout(-1)", "7"]
    assert info.value.kinds == {"invalid_rule"}
    message = str(info.value)
    assert "'foo(1)'" in message and "'timeout(-1)'" in message
    assert "a rule is a Rule object or rule text, got 7" in message


def test_parallel_rule_naming_an_unknown_node_is_reported_by_validate() -> None:
    topology = Topology(nodes=["A", "B"], edges=["A -> B"], rules=["parallel(A, Ghost)"])
    with pytest.raises(TopologyError) as info:
        topology.validate()
    assert [(p.kind, p.subject) for p in info.value.problems] == [
        ("invalid_rule", "parallel(A, Ghost)")
    ]
    assert "'parallel(A, Ghost)' names 'Ghost'" in str(info.value)


def test_parallel_rule_naming_user_is_reported_by_validate() -> None:
    topology = Topology(
        nodes=["A", "B"], edges=["User -> A", "A -> B"], rules=["parallel(A, User)"]
    )
    with pytest.raises(TopologyError) as info:
        topology.validate()
    assert info.value.kinds == {"invalid_rule"}
    assert "names 'User'" in str(info.value)


@pytest.mark.parametrize(
    ("rules", "keyword"),
    [
        (["max_steps(20)", "max_steps(30)"], "max_steps"),
        (["timeout(1)", Timeout(2)], "timeout"),
        ([MaxAgents(2), MaxAgents(2)], "max_agents"),
    ],
)
def test_singleton_rule_given_twice_is_reported_by_validate(rules: list, keyword: str) -> None:
    topology = Topology(nodes=["A", "B"], edges=["A -> B"], rules=rules)
    with pytest.raises(TopologyError) as info:
        topology.validate()
    assert [(p.kind, p.subject) for p in info.value.problems] == [("invalid_rule", keyword)]
    assert f"rule {keyword}(...) is given more than once" in str(info.value)


def test_parallel_rules_may_repeat() -> None:
    topology = Topology(
        nodes=["A", "B", "C"],
        edges=["A -> B", "A -> C"],
        rules=["parallel(B, C)", "parallel(A, B)"],
    )
    topology.validate()
    assert topology.analyze().parallel_groups == (("B", "C"), ("A", "B"))


def test_rule_problems_are_reported_together_with_graph_problems() -> None:
    topology = Topology(
        nodes=["A", "B"],
        edges=["A -> B", "A -> Ghost"],
        rules=["max_steps(1)", "max_steps(2)", "parallel(A, Nobody)"],
    )
    with pytest.raises(TopologyError) as info:
        topology.validate()
    assert info.value.kinds == {"dangling_edge", "invalid_rule"}
    assert len(info.value.problems) == 3
