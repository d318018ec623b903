"""User values in what a session stores: whatever the user's code made, and how it comes back.

A field annotated ``Any`` (a task, a function agent's return value, a tool result, a user's
answer) holds whatever the user's code made. JSON values are written as they are. Tuples, sets,
frozensets, bytes, datetimes, dates, times, timedeltas, decimals, UUIDs, integers too long for
JSON readers, dicts whose keys are not all strings, Orchestra's own types (``Labeled``,
``Action``, ...) and every type given to :func:`register_type` (pydantic models, dataclasses,
enums, or anything with an encode/decode pair) are written tagged, ``{"__o__": <name>, "v":
...}``, and come back as the same type. A tag names a registered type, never an import path.
Anything else is refused with an :class:`~orchestra.errors.UnstorableValueError` naming its
type: never stored as something it is not.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import enum
import inspect
import uuid
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

from pydantic import BaseModel

from orchestra.agents.contract import SharedContext
from orchestra.errors import UnstorableValueError

TAG = "__o__"

T = TypeVar("T")
Encoder = Callable[[Any], Any]
Decoder = Callable[[Any], Any]


class Unreadable(ValueError):
    """Stored data that does not have the shape it must have; the message says where."""


class Unstorable(Exception):
    """A value with no stored form: ``what`` it is, and the fields it was found in."""

    def __init__(self, what: str, where: tuple[str, ...] = ()) -> None:
        super().__init__(what)
        self.what = what
        self.where = where

    def error(self) -> UnstorableValueError:
        place = f" in field {'.'.join(self.where)}" if self.where else ""
        return UnstorableValueError(f"{self.what}{place}")


@dataclasses.dataclass(frozen=True, slots=True)
class _ValueType:
    name: str
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


_BY_NAME: dict[str, _ValueType] = {}
_BY_TYPE: dict[type, _ValueType] = {}
_JSON_INT = 10**4000
"""Integers from here on are written in hex: JSON readers refuse more than 4300 digits."""


def register_type(
    cls: type[T],
    *,
    name: str | None = None,
    encode: Callable[[T], Any] | None = None,
    decode: Callable[[Any], T] | None = None,
) -> type[T]:
    """Let values of ``cls`` be stored in session logs and snapshots, and come back as ``cls``.

    Pydantic models, dataclasses and enums need nothing more (their fields are stored by the
    same rules, recursively); for any other class give ``encode`` (the value to JSON-compatible
    data, which may hold other storable values) and ``decode`` (back). ``name`` is how the
    type is tagged in stored data (default: its module and qualified name): keep it stable,
    logs written today are read tomorrow. Register at import time, in the module that defines
    the class, so a process that resumes a session knows the type before it reads the log.
    Usable as a class decorator.
    """
    tag = name or f"{cls.__module__}.{cls.__qualname__}"
    if encode is None or decode is None:
        register_plain(cls, tag, *_codec_of(cls))
    else:
        encoder, decoder = encode, decode
        register_plain(cls, tag, lambda v: to_plain(encoder(v)), lambda d: decoder(from_plain(d)))
    return cls


def register_plain(cls: type, tag: str, encode: Encoder, decode: Decoder) -> None:
    """Register a codec whose ``encode`` gives stored data itself (its values already
    through :func:`to_plain`) and whose ``decode`` reads it (Orchestra's own types)."""
    known = _BY_NAME.get(tag)
    if known is not None and _BY_TYPE.get(cls) is not known:
        raise ValueError(f"the name {tag!r} is registered for another type already")
    value_type = _ValueType(tag, encode, decode)
    _BY_NAME[tag] = value_type
    _BY_TYPE[cls] = value_type


def _codec_of(cls: type) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return _model_codec(cls)
    if dataclasses.is_dataclass(cls):
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        _check_constructor(cls, names)
        return (lambda value: {n: to_plain(getattr(value, n)) for n in names}), (
            lambda data: cls(**{key: from_plain(item) for key, item in as_object(data).items()})
        )
    if isinstance(cls, type) and issubclass(cls, enum.Enum):
        return (lambda value: to_plain(value.value)), (lambda data: cls(from_plain(data)))
    raise TypeError(
        f"{cls.__qualname__} is not a pydantic model, a dataclass or an enum: give "
        "register_type encode= and decode= functions for it"
    )


def _check_constructor(cls: type, names: list[str]) -> None:
    """A dataclass is read back by calling it with its fields by name: refused here, where it
    is registered, when its constructor takes something else (an ``InitVar`` with no default, a
    hand-written ``__init__``), not when a log that holds one is read."""
    parameters = inspect.signature(cls).parameters.values()
    taken = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters)
    required = {
        p.name
        for p in parameters
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    if not required <= set(names) or not (takes_any or set(names) <= taken):
        raise TypeError(
            f"{cls.__qualname__}({', '.join(sorted(required))}) does not take exactly its "
            f"fields ({', '.join(names)}), so a stored one cannot be rebuilt from them: give "
            "register_type encode= and decode= functions for it"
        )


def _model_codec(cls: type[BaseModel]) -> tuple[Encoder, Decoder]:
    """A pydantic model by its fields' names (not their aliases; computed fields left out,
    extra fields kept), each value stored by these rules, so a nested value keeps its type;
    read back through the model's own validation."""
    names = list(cls.model_fields)

    def encode(value: BaseModel) -> Any:
        fields = {name: to_plain(getattr(value, name)) for name in names}
        for name, item in (value.__pydantic_extra__ or {}).items():
            fields[name] = to_plain(item)
        return fields

    def decode(data: Any) -> Any:
        fields = {key: from_plain(item) for key, item in as_object(data).items()}
        return cls.model_validate(fields, by_name=True)

    return encode, decode


def to_plain(value: Any) -> Any:
    """``value`` as JSON-compatible data (tagged where JSON has no such type)."""
    kind = type(value)
    if kind is str or kind is float or kind is bool or value is None:
        return value
    if kind is int:
        return value if -_JSON_INT < value < _JSON_INT else {TAG: "int", "v": hex(value)}
    if kind is list:
        return [to_plain(item) for item in value]
    if kind is dict or kind is SharedContext:  # the run's context, as an agent returned it
        if TAG not in value and all(type(key) is str for key in value):
            return {key: to_plain(item) for key, item in value.items()}
        return {TAG: "map", "v": [[to_plain(k), to_plain(v)] for k, v in value.items()]}
    value_type = _BY_TYPE.get(kind)
    if value_type is None:
        raise Unstorable(
            f"a value of type {kind.__module__}.{kind.__qualname__} ({preview(value)})"
        )
    try:
        return {TAG: value_type.name, "v": value_type.encode(value)}
    except Unstorable:
        raise
    except RecursionError:
        raise Unstorable(
            f"a {value_type.name} value that holds itself, or nests too deep"
        ) from None
    except Exception as error:
        raise Unstorable(
            f"a {value_type.name} value whose encoder raised {type(error).__name__}: {error}"
        ) from None


def from_plain(data: Any) -> Any:
    """The value :func:`to_plain` wrote (``Unreadable`` for data it cannot have written)."""
    kind = type(data)
    if kind is list:
        return [from_plain(item) for item in data]
    if kind is not dict:
        return data
    tag = data.get(TAG)
    if tag is None:
        return {key: from_plain(item) for key, item in data.items()}
    value_type = _BY_NAME.get(tag) if type(tag) is str else None
    if value_type is None or set(data) != {TAG, "v"}:
        raise Unreadable(f"a value tagged {str(tag)[:80]!r}, which is no type this process knows")
    try:
        return value_type.decode(data["v"])
    except RecursionError:
        raise Unreadable(f"a {tag} value nested too deeply") from None
    except Exception as error:  # a registered decoder may raise anything: it is the data's fault
        raise Unreadable(f"a {tag} value that does not read back: {error}") from None


def preview(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        return "its repr fails"
    return text if len(text) <= 60 else text[:57] + "..."


def as_object(data: Any) -> dict[str, Any]:
    if type(data) is not dict:
        raise Unreadable(f"expected an object, found {type(data).__name__}")
    return data


def as_list(data: Any) -> list[Any]:
    if type(data) is not list:
        raise Unreadable(f"expected a list, found {type(data).__name__}")
    return data


def as_text(data: Any) -> str:
    if type(data) is not str:
        raise Unreadable(f"expected text, found {type(data).__name__}")
    return data


SHARED_HASH_LIMIT = 32
"""Keys of one stored set or map that may share a hash. Values that differ yet hash alike are
rare by chance (``-1`` and ``-2``), but whoever can write to a store can craft thousands (the
multiples of 2**61 - 1, say), and each one added then compares with all the others: reading
20,000 such integers took 1.8 s, and the time grows with the square of their number."""


def _unflooded(keys: list[Any], what: str) -> list[Any]:
    """The keys, once it is certain building a set or dict of them takes linear time."""
    shared = Counter(map(hash, keys))
    if shared and max(shared.values()) > SHARED_HASH_LIMIT:
        raise Unreadable(
            f"a {what} of {len(keys)} keys, more than {SHARED_HASH_LIMIT} of them with one "
            "hash: crafted to make reading it take quadratic time"
        )
    return keys


def _map_of(data: Any) -> dict[Any, Any]:
    pairs = as_list(data)
    for pair in pairs:
        if type(pair) is not list or len(pair) != 2:
            raise Unreadable("a map entry that is not a [key, value] pair")
    keys = _unflooded([from_plain(key) for key, _ in pairs], "map")
    return dict(zip(keys, (from_plain(value) for _, value in pairs), strict=True))


def _register_builtins() -> None:
    def items(data: Any) -> list[Any]:
        return [from_plain(item) for item in as_list(data)]

    def plain_items(value: Any) -> list[Any]:
        return [to_plain(item) for item in value]

    def whole(data: Any) -> int:
        if type(data) is not int:
            raise Unreadable(f"expected a whole number, found {type(data).__name__}")
        return data

    register_plain(tuple, "tuple", plain_items, lambda d: tuple(items(d)))
    register_plain(set, "set", plain_items, lambda d: set(_unflooded(items(d), "set")))
    register_plain(
        frozenset, "frozenset", plain_items, lambda d: frozenset(_unflooded(items(d), "frozenset"))
    )
    register_plain(dict, "map", lambda v: v, _map_of)
    register_plain(int, "int", hex, lambda d: int(as_text(d), 16))
    register_plain(
        bytes,
        "bytes",
        lambda v: base64.b64encode(v).decode("ascii"),
        lambda d: base64.b64decode(as_text(d), validate=True),
    )
    register_plain(
        datetime.datetime,
        "datetime",
        lambda v: v.isoformat(),
        lambda d: datetime.datetime.fromisoformat(as_text(d)),
    )
    register_plain(
        datetime.date,
        "date",
        lambda v: v.isoformat(),
        lambda d: datetime.date.fromisoformat(as_text(d)),
    )
    register_plain(
        datetime.time,
        "time",
        lambda v: v.isoformat(),
        lambda d: datetime.time.fromisoformat(as_text(d)),
    )
    register_plain(
        datetime.timedelta,
        "timedelta",
        lambda v: [v.days, v.seconds, v.microseconds],
        lambda d: datetime.timedelta(*(whole(part) for part in as_list(d))),
    )
    register_plain(Decimal, "decimal", str, lambda d: Decimal(as_text(d)))
    register_plain(uuid.UUID, "uuid", str, lambda d: uuid.UUID(as_text(d)))


_register_builtins()
# plain dicts and ints are written as JSON objects and numbers: their tags only read the others
del _BY_TYPE[dict], _BY_TYPE[int]
