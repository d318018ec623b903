"""Log records survive the trip to storage: whatever a function agent returned is read back as
the same value of the same type (what has no stored form is refused, never kept as something
else), and the stored line is one line."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import math
import re
import threading
import uuid
from typing import Any

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestra.agents.contract import Action, ActionKind, Invocation, StepOutcome
from orchestra.coordination.engine.inputs import StepResult, UserAnswer
from orchestra.coordination.state import register_type
from orchestra.coordination.state.backends import frame, unframe
from orchestra.coordination.state.records import decode, encode
from orchestra.coordination.state.values import Unreadable
from orchestra.coordination.topology import Labeled
from orchestra.errors import UnstorableValueError
from orchestra.models.base import Message, ToolCall

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


# ---- the types a value may have ----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        (1, "two", (3.0, None)),
        {1, 2, 3},
        frozenset({"a", "b"}),
        b"\x00\xffbytes",
        datetime.datetime(2026, 12, 6, 4, 30, 5, 123456),
        datetime.datetime(
            2026, 12, 6, 4, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
        ),
        datetime.date(2026, 12, 6),
        datetime.time(23, 59, 1, 5),
        datetime.timedelta(days=-2, seconds=5, microseconds=7),
        decimal.Decimal("3.14159265358979323846264338327950288"),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        {1: "one", (2, 3): "pair", None: "none"},
        {"__o__": "looks like a tag", "v": 1},
        [float("inf"), -float("inf"), 10**40, -(2**70)],
        "\ud800 a lone surrogate",
        Labeled({"rows": (1, 2)}, "valid", "checked"),
        ToolCall("search", {"q": ("a", "b")}, "call_7"),
        Message("assistant", "hi", name="A", tool_calls=(ToolCall("t", {}, "c1"),)),
    ],
    ids=repr,
)
def test_values_json_has_no_type_for_come_back_as_themselves(value: Any) -> None:
    back = stored(value)
    assert back == value and type(back) is type(value)


class Colour(enum.Enum):
    RED = "red"
    BLUE = (0, 0, 255)


@dataclasses.dataclass(frozen=True)
class Reading:
    sensor: str
    values: tuple[float, ...]
    taken: datetime.datetime


class Report(pydantic.BaseModel):
    title: str
    readings: list[Reading]
    colour: Colour
    tags: frozenset[str] = frozenset()


class Point:
    """Neither a dataclass nor a model: it needs an encode/decode pair."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    __hash__ = None  # type: ignore[assignment]


register_type(Colour)
register_type(Reading)
register_type(Report)
register_type(Point, name="tests.point", encode=lambda p: [p.x, p.y], decode=lambda d: Point(*d))


def test_registered_types_come_back_as_themselves() -> None:
    reading = Reading("t1", (1.5, 2.0), datetime.datetime(2026, 1, 2, 3, 4))
    report = Report(title="q1", readings=[reading], colour=Colour.BLUE, tags=frozenset({"x"}))
    for value in (Colour.RED, Colour.BLUE, reading, report, Point(3, 4), {"p": [Point(1, 2)]}):
        back = stored(value)
        assert back == value and type(back) is type(value)
    assert stored(report).readings[0].values == (1.5, 2.0)  # nested: a tuple, not a list


def test_registering_a_name_taken_by_another_type_is_refused() -> None:
    class Other:
        pass

    with pytest.raises(ValueError, match=r"tests\.point"):
        register_type(Other, name="tests.point", encode=lambda o: 0, decode=lambda d: Other())
    with pytest.raises(TypeError, match="encode= and decode="):
        register_type(Other)


def test_a_value_with_no_stored_form_is_refused_naming_its_type_and_field() -> None:
    class Unknown:
        pass

    step = StepResult(
        at=1.0,
        branch_id="b0",
        outcome=StepOutcome(value={"rows": [1, Unknown()]}, by_code=True),
        messages=(),
        duration=0.1,
    )
    with pytest.raises(UnstorableValueError, match=r"Unknown .* in field outcome\.value"):
        encode(step, 1)
    with pytest.raises(UnstorableValueError, match=r"Unknown .* in field answer"):
        stored(Unknown())


# ---- records that are not what they claim -----------------------------------------------------


def line(**fields: Any) -> str:
    return json.dumps({"t": "answer", "s": 1, "at": 1.0, "branch_id": "b0", **fields})


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ({"answer": {"__o__": "posix.system", "v": "touch /tmp/x"}}, "posix.system"),
        ({"answer": {"__o__": "tuple", "v": [1], "extra": 2}}, "tuple"),
        ({"answer": {"__o__": "bytes", "v": "not base64!"}}, "bytes"),
        ({"answer": {"__o__": "datetime", "v": 17}}, "datetime"),
        ({"branch_id": 5, "answer": 1}, "field 'branch_id': expected str, found int"),
        ({"at": "noon", "answer": 1}, "field 'at': expected float, found str"),
        ({"sneaky": 1}, "unknown field"),
        ({"t": "os.system"}, "unknown record type"),
    ],
)
def test_a_record_that_is_not_a_record_of_its_kind_is_refused(
    data: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(Unreadable, match=re.escape(complaint)):
        decode(json.loads(line(**data)))


def test_a_missing_field_is_refused() -> None:
    with pytest.raises(Unreadable, match="field 'answer' is missing"):
        decode({"t": "answer", "s": 1, "at": 1.0, "branch_id": "b0"})
    with pytest.raises(Unreadable, match="fields 'answer', 'branch_id' are missing"):
        decode({"t": "answer", "s": 1, "at": 1.0})


def test_an_integer_longer_than_json_readers_take_comes_back() -> None:
    """A 5000-digit integer was written as JSON that the reader then refused (over 4300
    digits): the run succeeded and its log could not be read."""
    for value in (10**5000, -(7**9000), [2**20000]):
        assert stored(value) == value


class Aliased(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    user_name: str = pydantic.Field(alias="userName")
    nested: Any = None

    @pydantic.computed_field  # type: ignore[prop-decorator]
    @property
    def shout(self) -> str:
        return self.user_name.upper()


register_type(Aliased)


def test_a_model_with_aliases_and_computed_fields_comes_back() -> None:
    """Written by model_dump() (field names, computed fields included) and read by
    model_validate (aliases, extra fields forbidden), such a model did not read back; a
    registered value held in a field typed Any came back as a dict."""
    model = Aliased(userName="ada", nested=Reading("r", (1.0,), datetime.datetime(2026, 1, 1)))
    back = stored(model)
    assert back == model and type(back.nested) is Reading


def test_a_custom_codec_may_return_any_storable_value() -> None:
    """The output of a codec's ``encode`` is stored by the same rules (the docs' own Money
    example lost its Decimal to a str)."""

    class Money:
        def __init__(self, amount: decimal.Decimal, currency: str) -> None:
            self.amount, self.currency = amount, currency

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Money) and (self.amount, self.currency) == (
                other.amount,
                other.currency,
            )

        __hash__ = None  # type: ignore[assignment]

    register_type(
        Money,
        name="tests.money",
        encode=lambda m: [m.amount, m.currency],
        decode=lambda data: Money(*data),
    )
    back = stored(Money(decimal.Decimal("12.50"), "EUR"))
    assert back == Money(decimal.Decimal("12.50"), "EUR") and type(back.amount) is decimal.Decimal


class Grid:
    """Like a numpy array: ``==`` gives something that is no bool."""

    def __eq__(self, other: object) -> Any:
        return _Ambiguous()

    __hash__ = None  # type: ignore[assignment]


class _Ambiguous:
    def __bool__(self) -> bool:
        raise ValueError("the truth value of a grid is ambiguous")


register_type(Grid, name="tests.grid", encode=lambda g: 0, decode=lambda d: Grid())


def test_values_that_compare_oddly_or_hold_themselves_are_handled() -> None:
    """A registered value whose ``==`` gives no bool used to fail the encoder's default check
    (an internal error); a value equal to a field's default by its own ``==`` was dropped; a
    value holding itself overflowed the stack."""
    step = StepResult(
        at=1.0,
        branch_id="b0",
        outcome=StepOutcome(value=Grid(), by_code=True),
        messages=(),
        duration=0.1,
    )
    assert isinstance(decode(json.loads(encode(step, 1))).outcome.value, Grid)  # type: ignore[attr-defined]
    looping: list[Any] = []
    looping.append(looping)
    with pytest.raises(UnstorableValueError, match="holds itself"):
        stored(looping)


def test_a_field_of_the_wrong_type_is_refused_when_written_not_when_read() -> None:
    """A function agent's ``Action.invoke("B", label=7)`` was written as it was, and the
    session could then not be read."""
    bad = StepResult(
        at=1.0,
        branch_id="b0",
        outcome=StepOutcome(action=Action.invoke("B", "x", label=7), by_code=True),  # type: ignore[arg-type]
        messages=(),
        duration=0.1,
    )
    with pytest.raises(UnstorableValueError, match=r"int where a str belongs.*outcome\.action"):
        encode(bad, 1)
    keyed = UserAnswer(at=1.0, branch_id=5, answer="x")  # type: ignore[arg-type]
    with pytest.raises(UnstorableValueError, match="field branch_id"):
        encode(keyed, 1)
