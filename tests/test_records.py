"""Log records survive the trip to storage: whatever a function agent returned is read back as
the same value of the same type (what has no stored form is refused, never kept as something
else), and the stored line is one line."""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestra.agents.contract import Action, ActionKind, Invocation
from orchestra.coordination.engine.inputs import UserAnswer
from orchestra.coordination.state.backends import frame, unframe
from orchestra.coordination.state.records import decode, encode
from orchestra.coordination.topology import Labeled
from orchestra.errors import UnstorableValueError

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def same(left: Any, right: Any) -> bool:
    """Equality in which NaN equals NaN, and types count (a tuple is not a list)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, float):
        return (math.isnan(left) and math.isnan(right)) or left == right
    if isinstance(left, list | tuple):
        return len(left) == len(right) and all(map(same, left, right))
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same(left[k], right[k]) for k in left)
    return bool(left == right)


def stored(value: Any) -> Any:
    """Through a record, its framed line, and back."""
    line = frame(encode(UserAnswer(at=1.0, branch_id="b0", answer=value), 1))
    assert line.count("\n") == 1 and line.endswith("\n")  # one record, one line
    record = decode(json.loads(unframe("s", "here", line[:-1])))
    assert isinstance(record, UserAnswer)
    return record.answer


@given(values)
def test_json_like_values_come_back_equal_and_typed(value: Any) -> None:
    assert same(stored(value), value)


def test_a_dict_using_the_tag_key_is_kept_as_data() -> None:
    value = {"__o__": "pickle", "v": "not really"}
    assert stored(value) == value


def test_labels_actions_and_other_objects_come_back() -> None:
    action = Action(ActionKind.INVOKE, invocations=(Invocation("B", {"q": 1}, None),))
    assert stored(Labeled("text", "approved")) == Labeled("text", "approved")
    assert stored(action) == action
    assert stored({1, 2}) == {1, 2}
    with pytest.raises(UnstorableValueError, match=r"_thread\.lock .* in field answer"):
        stored(threading.Lock())  # refused: never kept as something it is not
