"""One codec for everything a session stores: its log records and its snapshots.

Nothing stored is ever run: no stored bytes are handed to a decoder that can build arbitrary
objects, and nothing is evaluated. Whoever can write to a shared store must not be able to run
code in the processes that read it. Everything is JSON, written and read by explicit
rules:

* **Typed shapes.** Orchestra's own dataclasses (the engine's inputs, events, actions, messages,
  step outcomes) are written field by field as their annotations say, and read back checking
  every field's type: a damaged or crafted record is refused, naming the field, before it
  reaches the engine. Fields holding their default are left out, which keeps records small.
* **User values.** A field annotated ``Any`` (a task, a function agent's return value, a tool
  result, a user's answer) holds whatever the user's code made. JSON values are written as they
  are. Tuples, sets, frozensets, bytes, datetimes, dates, times, timedeltas, decimals, UUIDs,
  dicts whose keys are not all strings, Orchestra's own types (``Labeled``, ``Action``, ...)
  and every type given to :func:`register_type` (pydantic models, dataclasses, enums, or
  anything with an encode/decode pair) are written tagged, ``{"__o__": <name>, "v": ...}``,
  and come back as the same type. Anything else is refused with an
  :class:`~orchestra.errors.UnstorableValueError` naming its type: never stored as something
  it is not.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import enum
import typing
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from types import NoneType, UnionType
from typing import Any, TypeVar

import msgspec
from pydantic import BaseModel, ValidationError

from orchestra import errors as error_types
from orchestra.errors import LimitExceededError, OrchestraError, UnstorableValueError

TAG = "__o__"

T = TypeVar("T")


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


# ---- user values -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _ValueType:
    name: str
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


_BY_NAME: dict[str, _ValueType] = {}
_BY_TYPE: dict[type, _ValueType] = {}


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
        encode, decode = _codec_of(cls)
    known = _BY_NAME.get(tag)
    if known is not None and _BY_TYPE.get(cls) is not known:
        raise ValueError(f"the name {tag!r} is registered for another type already")
    value_type = _ValueType(tag, encode, decode)
    _BY_NAME[tag] = value_type
    _BY_TYPE[cls] = value_type
    return cls


def _codec_of(cls: type) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return (lambda value: to_plain(value.model_dump())), (
            lambda data: cls.model_validate(from_plain(data))
        )
    if dataclasses.is_dataclass(cls):
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        return (lambda value: {n: to_plain(getattr(value, n)) for n in names}), (
            lambda data: cls(**{key: from_plain(item) for key, item in _object(data).items()})
        )
    if isinstance(cls, type) and issubclass(cls, enum.Enum):
        return (lambda value: to_plain(value.value)), (lambda data: cls(from_plain(data)))
    raise TypeError(
        f"{cls.__qualname__} is not a pydantic model, a dataclass or an enum: give "
        "register_type encode= and decode= functions for it"
    )


def to_plain(value: Any) -> Any:
    """``value`` as JSON-compatible data (tagged where JSON has no such type)."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is list:
        return [to_plain(item) for item in value]
    if kind is dict:
        if TAG not in value and all(type(key) is str for key in value):
            return {key: to_plain(item) for key, item in value.items()}
        return {TAG: "map", "v": [[to_plain(k), to_plain(v)] for k, v in value.items()]}
    value_type = _BY_TYPE.get(kind)
    if value_type is None:
        raise Unstorable(
            f"a value of type {kind.__module__}.{kind.__qualname__} ({_preview(value)})"
        )
    try:
        return {TAG: value_type.name, "v": value_type.encode(value)}
    except Unstorable:
        raise
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
    except (TypeError, ValueError, KeyError, ValidationError) as error:  # Unreadable included
        raise Unreadable(f"a {tag} value that does not read back: {error}") from None


def _preview(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        return "its repr fails"
    return text if len(text) <= 60 else text[:57] + "..."


def _object(data: Any) -> dict[str, Any]:
    if type(data) is not dict:
        raise Unreadable(f"expected an object, found {type(data).__name__}")
    return data


def _items(data: Any) -> list[Any]:
    if type(data) is not list:
        raise Unreadable(f"expected a list, found {type(data).__name__}")
    return data


def _text(data: Any) -> str:
    if type(data) is not str:
        raise Unreadable(f"expected text, found {type(data).__name__}")
    return data


def _map_of(data: Any) -> dict[Any, Any]:
    pairs = _items(data)
    result = {}
    for pair in pairs:
        if type(pair) is not list or len(pair) != 2:
            raise Unreadable("a map entry that is not a [key, value] pair")
        result[from_plain(pair[0])] = from_plain(pair[1])
    return result


def _register_builtins() -> None:
    def items(data: Any) -> list[Any]:
        return [from_plain(item) for item in _items(data)]

    def plain_items(value: Any) -> list[Any]:
        return [to_plain(item) for item in value]

    register_type(tuple, name="tuple", encode=plain_items, decode=lambda d: tuple(items(d)))
    register_type(set, name="set", encode=plain_items, decode=lambda d: set(items(d)))
    register_type(
        frozenset, name="frozenset", encode=plain_items, decode=lambda d: frozenset(items(d))
    )
    register_type(dict, name="map", encode=lambda v: v, decode=_map_of)
    register_type(
        bytes,
        name="bytes",
        encode=lambda v: base64.b64encode(v).decode("ascii"),
        decode=lambda d: base64.b64decode(_text(d), validate=True),
    )
    register_type(
        datetime.datetime,
        name="datetime",
        encode=lambda v: v.isoformat(),
        decode=lambda d: datetime.datetime.fromisoformat(_text(d)),
    )
    register_type(
        datetime.date,
        name="date",
        encode=lambda v: v.isoformat(),
        decode=lambda d: datetime.date.fromisoformat(_text(d)),
    )
    register_type(
        datetime.time,
        name="time",
        encode=lambda v: v.isoformat(),
        decode=lambda d: datetime.time.fromisoformat(_text(d)),
    )
    register_type(
        datetime.timedelta,
        name="timedelta",
        encode=lambda v: [v.days, v.seconds, v.microseconds],
        decode=lambda d: datetime.timedelta(*(int(part) for part in _items(d))),
    )
    register_type(Decimal, name="decimal", encode=str, decode=lambda d: Decimal(_text(d)))
    register_type(uuid.UUID, name="uuid", encode=str, decode=lambda d: uuid.UUID(_text(d)))


_register_builtins()
del _BY_TYPE[dict]  # a plain dict is written as a JSON object; "map" only reads the others


# ---- typed shapes ----------------------------------------------------------------------------


Encoder = Callable[[Any], Any]
Decoder = Callable[[Any], Any]


class Shape:
    """How one of Orchestra's record types (a dataclass or a ``msgspec.Struct``) is written:
    each field as its annotation says."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.fields: list[tuple[str, Encoder, Decoder, Any]] = [
            (name, *converter(annotation), default) for name, annotation, default in _fields_of(cls)
        ]
        self.names = frozenset(name for name, *_ in self.fields)
        self.encode: Callable[[Any], dict[str, Any]] = _compiled_encoder(self.fields)

    def decode(self, data: Any) -> Any:
        found = _object(data)
        unknown = found.keys() - self.names
        if unknown:
            raise Unreadable(f"unknown field(s) {', '.join(sorted(map(repr, unknown)))}")
        values = {}
        for name, _, decode, default in self.fields:
            if name in found:
                try:
                    values[name] = decode(found[name])
                except Unreadable as error:
                    raise Unreadable(f"field {name!r}: {error}") from None
            elif default is dataclasses.MISSING:
                raise Unreadable(f"field {name!r} is missing")
        try:
            return self.cls(**values)
        except (TypeError, ValueError) as error:
            raise Unreadable(str(error)) from None


def _compiled_encoder(fields: list[tuple[str, Encoder, Decoder, Any]]) -> Encoder:
    """The encoder of one shape as a function of its own, its fields spelled out, as dataclasses
    spell out ``__init__``: a record is encoded at every step of a durable run, and a loop over
    the fields costs twice as much. A field holding its default is left out; scalars are
    written as they are; a value with no stored form is reported with the field it was in."""
    lines = ["def encode(value):", "    data = {}", "    name = ''", "    try:"]
    namespace: dict[str, Any] = {"Unstorable": Unstorable}
    for index, (name, encode, _, default) in enumerate(fields):
        if not name.isidentifier():
            raise TypeError(f"field name {name!r} is no identifier")
        lines.append(f"        name = {name!r}; item = value.{name}")
        indent = "        "
        if default is not _MISSING:
            namespace[f"d{index}"] = default
            lines.append(f"        if not (item is d{index} or item == d{index}):")
            indent += "    "
        if encode is _identity:
            lines.append(f"{indent}data[{name!r}] = item")
        else:
            namespace[f"e{index}"] = encode
            lines.append(f"{indent}data[{name!r}] = e{index}(item)")
    lines += [
        "    except Unstorable as error:",
        "        raise Unstorable(error.what, (name, *error.where)) from None",
        "    return data",
    ]
    exec("\n".join(lines), namespace)
    encoder: Encoder = namespace["encode"]
    return encoder


def _fields_of(cls: type) -> list[tuple[str, Any, Any]]:
    """(name, annotation, default or MISSING) of each field its constructor takes."""
    if issubclass(cls, msgspec.Struct):
        return [
            (
                field.name,
                field.type,
                field.default
                if field.default is not msgspec.NODEFAULT
                else field.default_factory()
                if field.default_factory is not msgspec.NODEFAULT
                else dataclasses.MISSING,
            )
            for field in msgspec.structs.fields(cls)
        ]
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__qualname__} is no dataclass or msgspec.Struct")
    hints = typing.get_type_hints(cls)
    return [
        (
            field.name,
            hints[field.name],
            field.default_factory()
            if field.default_factory is not dataclasses.MISSING
            else field.default,
        )
        for field in dataclasses.fields(cls)
        if field.init
    ]


_SHAPES: dict[type, Shape] = {}
_MISSING: Any = dataclasses.MISSING


def shape(cls: type) -> Shape:
    found = _SHAPES.get(cls)
    if found is None:
        found = _SHAPES[cls] = Shape(cls)
    return found


def converter(annotation: Any) -> tuple[Encoder, Decoder]:
    """How a value of the annotated type is written and read back."""
    if annotation is Any:
        return to_plain, from_plain
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (UnionType, typing.Union):
        options = [a for a in arguments if a is not NoneType]
        if len(options) != 1 or len(arguments) != 2:
            raise TypeError(f"no stored form for {annotation!r}")
        return _optional(*converter(options[0]))
    if origin is typing.Literal:
        return _literal(arguments)
    if origin in (tuple, list, frozenset):
        if origin is tuple and (len(arguments) != 2 or arguments[1] is not Ellipsis):
            raise TypeError(f"no stored form for {annotation!r}")
        return _sequence(origin, *converter(arguments[0]))
    if origin in (dict, Mapping):
        if arguments[0] is not str:
            raise TypeError(f"no stored form for {annotation!r}")
        return _mapping(*converter(arguments[1]))
    if annotation in _SCALARS:
        return _identity, _checked(annotation)
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return _enum(annotation)
        if issubclass(annotation, BaseModel):
            return _model(annotation)
        if issubclass(annotation, OrchestraError):
            return encode_error, decode_error
        if dataclasses.is_dataclass(annotation) or issubclass(annotation, msgspec.Struct):
            nested = shape(annotation)
            return nested.encode, nested.decode
    raise TypeError(f"no stored form for {annotation!r}")


_SCALARS = (str, int, float, bool)


def _identity(value: Any) -> Any:
    return value


def _checked(kind: type) -> Decoder:
    name = kind.__name__

    def decode(data: Any) -> Any:
        found = type(data)
        if found is kind:
            return data
        if kind is float and found is int:
            return float(data)
        raise Unreadable(f"expected {name}, found {found.__name__}")

    return decode


def _optional(encode: Encoder, decode: Decoder) -> tuple[Encoder, Decoder]:
    return (lambda value: None if value is None else encode(value)), (
        lambda data: None if data is None else decode(data)
    )


def _literal(allowed: tuple[Any, ...]) -> tuple[Encoder, Decoder]:
    def decode(data: Any) -> Any:
        if data not in allowed or type(data) not in _SCALARS:
            raise Unreadable(f"expected one of {allowed!r}, found {str(data)[:40]!r}")
        return data

    return _identity, decode


def _sequence(kind: type, encode: Encoder, decode: Decoder) -> tuple[Encoder, Decoder]:
    if kind is frozenset:
        return (lambda value: sorted(encode(item) for item in value)), (
            lambda data: frozenset(decode(item) for item in _items(data))
        )
    return (lambda value: [encode(item) for item in value]), (
        lambda data: kind(decode(item) for item in _items(data))
    )


def _mapping(encode: Encoder, decode: Decoder) -> tuple[Encoder, Decoder]:
    def read(data: Any) -> dict[str, Any]:
        return {_text(key): decode(item) for key, item in _object(data).items()}

    return (lambda value: {key: encode(item) for key, item in value.items()}), read


def _enum(kind: type[enum.Enum]) -> tuple[Encoder, Decoder]:
    def decode(data: Any) -> Any:
        try:
            return kind(data)
        except ValueError:
            raise Unreadable(f"{str(data)[:40]!r} is no {kind.__name__}") from None

    return (lambda value: value._value_), decode


def _model(kind: type[BaseModel]) -> tuple[Encoder, Decoder]:
    def decode(data: Any) -> Any:
        try:
            return kind.model_validate(_object(data))
        except ValidationError as error:
            raise Unreadable(f"not a valid {kind.__name__}: {error}") from None

    return (lambda value: value.model_dump(mode="json")), decode


def encode_error(error: OrchestraError) -> dict[str, Any]:
    data: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
    if isinstance(error, LimitExceededError):
        data["limit"] = error.limit
    return data


def decode_error(data: Any) -> OrchestraError:
    """The error again, as its own class when Orchestra defines it (else an OrchestraError).

    It is rebuilt without running any constructor: its message (and the limit it names) is all
    a stored error keeps."""
    found = _object(data)
    message = _text(found.get("message"))
    kind = getattr(error_types, _text(found.get("type")), None)
    if not (isinstance(kind, type) and issubclass(kind, OrchestraError)):
        kind = OrchestraError
    error = kind.__new__(kind)
    Exception.__init__(error, message)
    if isinstance(error, LimitExceededError):
        error.limit = _text(found.get("limit", ""))
    return error
