"""Edge conditions: when an edge may be taken.

An edge's ``metadata["condition"]`` is either

* a **label** (a non-empty string): the edge may be taken only when the output its source
  hands over carries that label, or
* a **predicate** ``(payload, context) -> bool``: a synchronous callable given the output and the
  run's context.

An output carries labels when it is a :class:`Labeled` value (what a function node returns to
route by label), or a mapping with a ``"label"`` string or a ``"labels"`` list (what an LLM
agent's invocation item carries: ``{"agent_name": "Finalizer", "request": ..., "label": "valid"}``).
LLM agents learn the labels from the list of peers they may invoke, where each guarded peer is
shown with the label it needs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from orchestra.errors import ConditionError
from orchestra.models.secrets import redact

Predicate = Callable[[Any, Mapping[str, Any]], bool]
Condition = str | Predicate


class Labeled:
    """A value together with the routing labels it carries: ``Labeled(report, "valid")``."""

    __slots__ = ("labels", "value")

    def __init__(self, value: Any, *labels: str) -> None:
        if not labels or not all(isinstance(label, str) and label for label in labels):
            raise TypeError("Labeled(value, *labels) needs at least one non-empty string label")
        self.value = value
        self.labels = frozenset(labels)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Labeled):
            return NotImplemented
        return bool(self.value == other.value and self.labels == other.labels)

    def __hash__(self) -> int:
        return hash(self.labels)

    def __repr__(self) -> str:
        labels = ", ".join(repr(label) for label in sorted(self.labels))
        return f"Labeled({self.value!r}, {labels})"


def labels_of(payload: Any) -> frozenset[str]:
    """The labels an output carries (empty when it carries none)."""
    if isinstance(payload, Labeled):
        return payload.labels
    if isinstance(payload, Mapping):
        label = payload.get("label")
        labels = payload.get("labels")
        found = {label} if isinstance(label, str) else set()
        if isinstance(labels, list | tuple | set | frozenset):
            found.update(item for item in labels if isinstance(item, str))
        return frozenset(found)
    return frozenset()


def condition_problem(condition: object) -> str | None:
    """Why ``condition`` cannot be used as an edge condition, or None when it can."""
    if condition is None:
        return None
    if isinstance(condition, str):
        return None if condition.strip() else "a label condition must be a non-empty string"
    if not callable(condition):
        return (
            f"the condition must be a label string or a callable (payload, context) -> bool, "
            f"got {type(condition).__name__} {condition!r}"
        )
    if inspect.iscoroutinefunction(condition) or inspect.iscoroutinefunction(
        getattr(condition, "__call__", None)  # noqa: B004 - a callable object's __call__
    ):
        return "condition callables must be synchronous; it is evaluated on every routing decision"
    try:
        inspect.signature(condition).bind(None, None)
    except TypeError:
        return "a condition callable must accept two positional arguments (payload, context)"
    except ValueError:
        return None  # builtins without a signature: trust them, the call reports misuse
    return None


def describe_condition(condition: object) -> str:
    """A short human-readable form used in diagrams and agent prompts."""
    if condition is None:
        return ""
    if isinstance(condition, str):
        return condition
    return f"if {getattr(condition, '__name__', type(condition).__name__)}()"


def condition_holds(
    condition: Condition | None, payload: Any, context: Mapping[str, Any], edge: str
) -> bool:
    """Evaluate an edge condition; a predicate that raises becomes a ConditionError naming ``edge``."""
    if condition is None:
        return True
    if isinstance(condition, str):
        return condition in labels_of(payload)
    try:
        return bool(condition(payload, context))
    except Exception as exc:
        raise ConditionError(
            redact(f"the condition on edge {edge!r} raised {type(exc).__name__}: {exc}")
        ) from exc
