"""Edge conditions: labels, predicates, and how validate() reports unusable conditions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from orchestra import ConditionError, Edge, Labeled, OrchestraError, Topology, TopologyError
from orchestra.coordination.topology import labels_of
from orchestra.coordination.topology.conditions import condition_holds, condition_problem

# ---- Labeled ---------------------------------------------------------------------------------


def test_labeled_holds_value_and_labels() -> None:
    item = Labeled({"report": 1}, "valid", "final")
    assert item.value == {"report": 1}
    assert item.labels == frozenset({"valid", "final"})


def test_labeled_equality_and_hash() -> None:
    assert Labeled("x", "a", "b") == Labeled("x", "b", "a")
    assert hash(Labeled("x", "a", "b")) == hash(Labeled("x", "b", "a"))
    assert Labeled("x", "a") != Labeled("y", "a")
    assert Labeled("x", "a") != Labeled("x", "b")
    assert Labeled("x", "a") != "x"


def test_labeled_repr_sorts_labels() -> None:
    assert repr(Labeled("x", "b", "a")) == "Labeled('x', 'a', 'b')"


@pytest.mark.parametrize("labels", [(), ("",), (3,), ("ok", None)])
def test_labeled_needs_non_empty_string_labels(labels: tuple) -> None:
    with pytest.raises(TypeError, match="at least one non-empty string label"):
        Labeled("value", *labels)


# ---- labels_of -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "labels"),
    [
        (Labeled("x", "valid"), {"valid"}),
        (Labeled("x", "a", "b"), {"a", "b"}),
        ({"label": "valid"}, {"valid"}),
        ({"labels": ["a", "b"]}, {"a", "b"}),
        ({"labels": ("a",)}, {"a"}),
        ({"labels": {"a", "b"}}, {"a", "b"}),
        ({"label": "a", "labels": ["b"]}, {"a", "b"}),
        ({"agent_name": "Finalizer", "request": "go", "label": "valid"}, {"valid"}),
        ({"labels": ["a", 3, None]}, {"a"}),
        ({"label": 3}, set()),
        ({"labels": "ab"}, set()),
        ({"other": "valid"}, set()),
        ({}, set()),
        ("valid", set()),
        (["valid"], set()),
        (None, set()),
        (42, set()),
    ],
)
def test_labels_of(payload: Any, labels: set[str]) -> None:
    assert labels_of(payload) == frozenset(labels)


# ---- condition_holds -------------------------------------------------------------------------


def test_no_condition_always_holds() -> None:
    assert condition_holds(None, "anything", {}, "A -> B")


@pytest.mark.parametrize(
    ("payload", "holds"),
    [
        (Labeled("x", "valid"), True),
        (Labeled("x", "invalid"), False),
        ({"label": "valid"}, True),
        ({"labels": ["other", "valid"]}, True),
        ("valid", False),
        (None, False),
    ],
)
def test_label_condition(payload: Any, holds: bool) -> None:
    assert condition_holds("valid", payload, {}, "A -> B") is holds


def test_predicate_gets_payload_and_context() -> None:
    seen: list[tuple[Any, Mapping[str, Any]]] = []

    def predicate(payload: Any, context: Mapping[str, Any]) -> bool:
        seen.append((payload, context))
        return payload > context["limit"]

    assert condition_holds(predicate, 5, {"limit": 3}, "A -> B") is True
    assert condition_holds(predicate, 1, {"limit": 3}, "A -> B") is False
    assert seen == [(5, {"limit": 3}), (1, {"limit": 3})]


@pytest.mark.parametrize(("result", "holds"), [(1, True), (0, False), ("yes", True), ([], False)])
def test_predicate_result_is_made_a_bool(result: Any, holds: bool) -> None:
    assert condition_holds(lambda payload, context: result, None, {}, "A -> B") is holds


def test_raising_predicate_becomes_condition_error_naming_the_edge() -> None:
    def broken(payload: Any, context: Mapping[str, Any]) -> bool:
        raise KeyError("score")

    with pytest.raises(ConditionError) as info:
        condition_holds(broken, {}, {}, "Checker -> Finalizer")
    message = str(info.value)
    assert "'Checker -> Finalizer'" in message
    assert "KeyError" in message and "score" in message
    assert isinstance(info.value.__cause__, KeyError)
    assert isinstance(info.value, OrchestraError)


# ---- condition_problem -----------------------------------------------------------------------


def two_args(payload: Any, context: Mapping[str, Any]) -> bool:
    return True


class CallableObject:
    def __call__(self, payload: Any, context: Mapping[str, Any]) -> bool:
        return True


class AsyncCallableObject:
    async def __call__(self, payload: Any, context: Mapping[str, Any]) -> bool:
        return True


async def async_predicate(payload: Any, context: Mapping[str, Any]) -> bool:
    return True


@pytest.mark.parametrize(
    "condition",
    [
        None,
        "valid",
        two_args,
        lambda payload, context: True,
        lambda *args: True,
        lambda payload, context, extra=1: True,
        CallableObject(),
    ],
    ids=["none", "label", "function", "lambda", "varargs", "defaults", "callable_object"],
)
def test_usable_conditions(condition: Any) -> None:
    assert condition_problem(condition) is None


@pytest.mark.parametrize(
    ("condition", "fragment"),
    [
        (3, "got int 3"),
        (["valid"], "got list ['valid']"),
        ("", "non-empty string"),
        ("   ", "non-empty string"),
        (async_predicate, "must be synchronous"),
        (AsyncCallableObject(), "must be synchronous"),
        (lambda x: True, "two positional arguments"),
        (lambda: True, "two positional arguments"),
        (lambda a, b, c: True, "two positional arguments"),
        (lambda *, payload, context: True, "two positional arguments"),
    ],
    ids=[
        "int",
        "list",
        "empty",
        "blank",
        "async_function",
        "async_callable_object",
        "one_arg",
        "no_args",
        "three_args",
        "keyword_only",
    ],
)
def test_unusable_conditions(condition: Any, fragment: str) -> None:
    problem = condition_problem(condition)
    assert problem is not None
    assert fragment in problem


# ---- conditions in a topology ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "fragment"),
    [
        (3, "got int 3"),
        ("", "non-empty string"),
        (async_predicate, "must be synchronous"),
        (lambda x: True, "two positional arguments"),
    ],
    ids=["int", "empty", "async_function", "one_arg"],
)
def test_validate_reports_an_invalid_condition_on_an_edge(condition: Any, fragment: str) -> None:
    topology = Topology(
        nodes=["Checker", "Finalizer"],
        edges=[Edge("Checker", "Finalizer", metadata={"condition": condition})],
    )
    with pytest.raises(TopologyError) as info:
        topology.validate()
    assert [(p.kind, p.subject) for p in info.value.problems] == [
        ("invalid_condition", "Checker -> Finalizer")
    ]
    message = str(info.value)
    assert "edge 'Checker -> Finalizer'" in message
    assert fragment in message


def test_validate_reports_invalid_conditions_from_every_edge_form() -> None:
    topology = Topology.from_dict(
        {
            "nodes": ["A", "B", "C"],
            "edges": [
                {"source": "A", "target": "B", "metadata": {"condition": 3}},
                {"source": "A", "target": "C", "metadata": {"condition": ""}},
            ],
        }
    )
    with pytest.raises(TopologyError) as info:
        topology.validate()
    assert info.value.kinds == {"invalid_condition"}
    assert [p.subject for p in info.value.problems] == ["A -> B", "A -> C"]


def test_bidirectional_edge_condition_is_reported_for_each_direction() -> None:
    topology = Topology(
        nodes=["A", "B"],
        edges=["User -> A", Edge("A", "B", metadata={"condition": 0}, bidirectional=True)],
    )
    with pytest.raises(TopologyError) as info:
        topology.validate()
    assert [(p.kind, p.subject) for p in info.value.problems] == [
        ("invalid_condition", "A -> B"),
        ("invalid_condition", "B -> A"),
    ]


def test_valid_conditions_pass_validation() -> None:
    topology = Topology(
        nodes=["Validator", "ProcessorA", "ProcessorB", "Finalizer"],
        edges=[
            Edge("Validator", "ProcessorA", metadata={"condition": "valid"}),
            Edge("Validator", "ProcessorB", metadata={"condition": two_args}),
            "ProcessorA -> Finalizer",
            "ProcessorB -> Finalizer",
        ],
    )
    topology.validate()
    assert topology.edge("Validator", "ProcessorA").condition == "valid"  # type: ignore[union-attr]
    assert topology.edge("Validator", "ProcessorB").condition is two_args  # type: ignore[union-attr]
