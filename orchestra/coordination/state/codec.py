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
from collections.abc import Callable, Iterable, Mapping
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
        return (lambda value: {n: to_plain(getattr(value, n)) for n in names}), (
            lambda data: cls(**{key: from_plain(item) for key, item in _object(data).items()})
        )
    if isinstance(cls, type) and issubclass(cls, enum.Enum):
        return (lambda value: to_plain(value.value)), (lambda data: cls(from_plain(data)))
    raise TypeError(
        f"{cls.__qualname__} is not a pydantic model, a dataclass or an enum: give "
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
        fields = {key: from_plain(item) for key, item in _object(data).items()}
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

    def whole(data: Any) -> int:
        if type(data) is not int:
            raise Unreadable(f"expected a whole number, found {type(data).__name__}")
        return data

    register_plain(tuple, "tuple", plain_items, lambda d: tuple(items(d)))
    register_plain(set, "set", plain_items, lambda d: set(items(d)))
    register_plain(frozenset, "frozenset", plain_items, lambda d: frozenset(items(d)))
    register_plain(dict, "map", lambda v: v, _map_of)
    register_plain(int, "int", hex, lambda d: int(_text(d), 16))
    register_plain(
        bytes,
        "bytes",
        lambda v: base64.b64encode(v).decode("ascii"),
        lambda d: base64.b64decode(_text(d), validate=True),
    )
    register_plain(
        datetime.datetime,
        "datetime",
        lambda v: v.isoformat(),
        lambda d: datetime.datetime.fromisoformat(_text(d)),
    )
    register_plain(
        datetime.date,
        "date",
        lambda v: v.isoformat(),
        lambda d: datetime.date.fromisoformat(_text(d)),
    )
    register_plain(
        datetime.time,
        "time",
        lambda v: v.isoformat(),
        lambda d: datetime.time.fromisoformat(_text(d)),
    )
    register_plain(
        datetime.timedelta,
        "timedelta",
        lambda v: [v.days, v.seconds, v.microseconds],
        lambda d: datetime.timedelta(*(whole(part) for part in _items(d))),
    )
    register_plain(Decimal, "decimal", str, lambda d: Decimal(_text(d)))
    register_plain(uuid.UUID, "uuid", str, lambda d: uuid.UUID(_text(d)))


_register_builtins()
# plain dicts and ints are written as JSON objects and numbers: their tags only read the others
del _BY_TYPE[dict], _BY_TYPE[int]


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
        self.decode: Decoder = _compiled_decoder(cls, self.fields, self.names)


def _compiled_encoder(fields: list[tuple[str, Encoder, Decoder, Any]]) -> Encoder:
    """The encoder of one shape as a function of its own, its fields spelled out, as dataclasses
    spell out ``__init__``: a record is encoded at every step of a durable run, and a loop over
    the fields costs twice as much. A field holding its default is left out; a scalar is
    written as it is once its type is checked (what the reader would refuse is refused here,
    before it is stored); a value with no stored form is reported with the field it was in."""
    lines = ["def encode(value):", "    data = {}", "    name = ''", "    try:"]
    namespace: dict[str, Any] = {"Unstorable": Unstorable, "wrong": _wrong_type}
    for index, (name, encode, _, default) in enumerate(fields):
        if not name.isidentifier():
            raise TypeError(f"field name {name!r} is no identifier")
        lines.append(f"        name = {name!r}; item = value.{name}")
        indent = "        "
        if default is not _MISSING:
            namespace[f"d{index}"] = default
            lines.append(
                f"        if not (item is d{index} or (type(item) is type(d{index}) "
                f"and item == d{index})):"
            )
            indent += "    "
        scalar = _SCALAR_ENCODERS.get(encode)
        if scalar is not None:
            namespace[f"k{index}"] = scalar
            check = f"type(item) is not k{index}"
            if scalar is float:
                check += " and type(item) is not int"
            lines.append(f"{indent}if {check}: wrong(item, k{index})")
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


def _compiled_decoder(
    cls: type, fields: list[tuple[str, Encoder, Decoder, Any]], names: frozenset[str]
) -> Decoder:
    """The reader of one shape, spelled out like its encoder (a long log is read record by
    record, a snapshot event by event): each field checked as its type says — a scalar's type
    inline — unknown fields refused, a missing one named, a field left out given its
    default by the constructor."""
    lines = [
        "def decode(data):",
        "    if type(data) is not dict: raise Unreadable(f'expected an object, found "
        "{type(data).__name__}')",
        "    if not data.keys() <= names: unknown(data.keys() - names)",
        "    values = {}",
        "    name = ''",
        "    try:",
    ]
    namespace: dict[str, Any] = {
        "Unreadable": Unreadable,
        "names": names,
        "unknown": _unknown_fields,
        "cls": cls,
    }
    for index, (name, _, decode, default) in enumerate(fields):
        indent = "        "
        lines.append(f"        name = {name!r}")
        if default is not _MISSING:
            lines.append(f"        if {name!r} in data:")
            indent += "    "
        lines.append(f"{indent}item = data[{name!r}]")
        namespace[f"d{index}"] = decode
        scalar = _SCALAR_DECODERS.get(decode)
        if scalar is not None:
            namespace[f"k{index}"] = scalar
            lines.append(f"{indent}if type(item) is not k{index}: item = d{index}(item)")
            lines.append(f"{indent}values[{name!r}] = item")
        else:
            lines.append(f"{indent}values[{name!r}] = d{index}(item)")
    lines += [
        "    except KeyError:",
        "        raise Unreadable(f'field {name!r} is missing') from None",
        "    except Unreadable as error:",
        "        raise Unreadable(f'field {name!r}: {error}') from None",
        "    try:",
        "        return cls(**values)",
        "    except (TypeError, ValueError) as error:",
        "        raise Unreadable(str(error)) from None",
    ]
    exec("\n".join(lines), namespace)
    decoder: Decoder = namespace["decode"]
    return decoder


def _unknown_fields(unknown: Iterable[str]) -> None:
    raise Unreadable(f"unknown field(s) {', '.join(sorted(map(repr, map(str, unknown))))}")


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
        return _SCALAR_IDENTITIES[annotation], _SCALAR_CHECKS[annotation]
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


def _scalar_identity(kind: type) -> Encoder:
    """A scalar's encoder: the value as it is, once its type is checked (the compiled
    encoders check it inline, recognising these functions)."""

    def encode(value: Any) -> Any:
        if type(value) is not kind and not (kind is float and type(value) is int):
            _wrong_type(value, kind)
        return value

    return encode


_SCALAR_IDENTITIES = {kind: _scalar_identity(kind) for kind in _SCALARS}
_SCALAR_ENCODERS = {encode: kind for kind, encode in _SCALAR_IDENTITIES.items()}


def _wrong_type(value: Any, kind: type) -> None:
    raise Unstorable(f"a value of type {type(value).__qualname__} where a {kind.__name__} belongs")


def _checked(kind: type) -> Decoder:
    name = kind.__name__

    def decode(data: Any) -> Any:
        found = type(data)
        if found is kind:
            return data
        if kind is float and found is int:
            try:
                return float(data)
            except OverflowError:
                raise Unreadable("a number too large for a float") from None
        raise Unreadable(f"expected {name}, found {found.__name__}")

    return decode


_SCALAR_CHECKS = {kind: _checked(kind) for kind in _SCALARS}
_SCALAR_DECODERS = {decode: kind for kind, decode in _SCALAR_CHECKS.items()}


def _optional(encode: Encoder, decode: Decoder) -> tuple[Encoder, Decoder]:
    return (lambda value: None if value is None else encode(value)), (
        lambda data: None if data is None else decode(data)
    )


def _literal(allowed: tuple[Any, ...]) -> tuple[Encoder, Decoder]:
    def encode(value: Any) -> Any:
        if type(value) not in _SCALARS or value not in allowed:
            raise Unstorable(f"{_preview(value)}, not one of {allowed!r}")
        return value

    def decode(data: Any) -> Any:
        if type(data) not in _SCALARS or data not in allowed:
            raise Unreadable(f"expected one of {allowed!r}, found {str(data)[:40]!r}")
        return data

    return encode, decode


def _sequence(kind: type, encode: Encoder, decode: Decoder) -> tuple[Encoder, Decoder]:
    if kind is frozenset:
        return (lambda value: sorted(encode(item) for item in value)), (
            lambda data: frozenset(decode(item) for item in _items(data))
        )
    return (lambda value: [encode(item) for item in value]), (
        lambda data: kind([decode(item) for item in _items(data)])
    )


def _mapping(encode: Encoder, decode: Decoder) -> tuple[Encoder, Decoder]:
    def write(value: Any) -> dict[str, Any]:
        if not all(type(key) is str for key in value):
            raise Unstorable("a mapping whose keys are not all text, where text keys belong")
        return {key: encode(item) for key, item in value.items()}

    def read(data: Any) -> dict[str, Any]:
        return {_text(key): decode(item) for key, item in _object(data).items()}

    return write, read


def _enum(kind: type[enum.Enum]) -> tuple[Encoder, Decoder]:
    members = kind._value2member_map_

    def decode(data: Any) -> Any:
        found = members.get(data) if type(data) in _SCALARS else None
        if found is None:
            raise Unreadable(f"{str(data)[:40]!r} is no {kind.__name__}")
        return found

    def encode(value: Any) -> Any:
        if type(value) is not kind:
            _wrong_type(value, kind)
        return value._value_

    return encode, decode


def _model(kind: type[BaseModel]) -> tuple[Encoder, Decoder]:
    def decode(data: Any) -> Any:
        try:
            return kind.model_validate(_object(data))
        except (ValidationError, ValueError, TypeError, OverflowError) as error:
            raise Unreadable(f"not a valid {kind.__name__}: {error}") from None

    return (lambda value: value.model_dump(mode="json")), decode


def encode_error(error: OrchestraError) -> dict[str, Any]:
    """An error's type name and message (and the limit it names); for a class of the user's,
    also the nearest class Orchestra defines, which decides how the engine treats it."""
    kind = type(error)
    data: dict[str, Any] = {"type": kind.__name__, "message": str(error)}
    if getattr(error_types, kind.__name__, None) is not kind:
        data["base"] = next(k.__name__ for k in kind.__mro__ if _defined_by_orchestra(k))
    if isinstance(error, LimitExceededError):
        data["limit"] = error.limit
    return data


def _defined_by_orchestra(kind: type) -> bool:
    return isinstance(kind, type) and getattr(error_types, kind.__name__, None) is kind


def decode_error(data: Any) -> OrchestraError:
    """The error again: of its own class when Orchestra defines it, else of an
    ``OrchestraError`` subclass of the same name (an error class of the user's), so a rebuilt
    run reports the type the live run did. It is rebuilt without running any constructor: its
    message (and the limit it names) is all a stored error keeps."""
    found = _object(data)
    if not found.keys() <= {"type", "message", "limit", "base"}:
        raise Unreadable(f"an error with unknown field(s) {sorted(found.keys())!r}")
    message = _text(found.get("message"))
    name = _text(found.get("type"))
    kind = _orchestra_error(name)
    if kind is None:
        base = _orchestra_error(_text(found.get("base", "OrchestraError")))
        if base is None:
            raise Unreadable(f"an error whose base {found.get('base')!r} Orchestra does not define")
        kind = _stand_in(name, base)
    error = kind.__new__(kind)
    Exception.__init__(error, message)
    if isinstance(error, LimitExceededError):
        error.limit = _text(found.get("limit", ""))
    return error


def _orchestra_error(name: str) -> type[OrchestraError] | None:
    kind = getattr(error_types, name, None)
    if isinstance(kind, type) and issubclass(kind, OrchestraError) and _defined_by_orchestra(kind):
        return kind
    return None


_STAND_INS: dict[tuple[str, type], type[OrchestraError]] = {}
_STAND_INS_KEPT = 256


def _stand_in(name: str, base: type[OrchestraError]) -> type[OrchestraError]:
    """A subclass of ``base`` called ``name``: an error class of the user's, as the engine saw
    it (no code of the stored data's choosing runs: the class has no body). The first few
    hundred are kept, so one class stands for each name."""
    if not name.isidentifier():
        raise Unreadable(f"an error type named {name[:40]!r}")
    found = _STAND_INS.get((name, base))
    if found is None:
        found = type(name, (base,), {"__module__": __name__})
        if len(_STAND_INS) < _STAND_INS_KEPT:
            _STAND_INS[(name, base)] = found
    return found
