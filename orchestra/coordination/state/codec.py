"""Orchestra's own types in what a session stores: its log records and its snapshots.

Nothing stored is ever run: no stored bytes are handed to a decoder that can build arbitrary
objects, and nothing is evaluated. Whoever can write to a shared store must not be able to run
code in the processes that read it. Everything is JSON, written and read by explicit rules.
Orchestra's own dataclasses and ``msgspec.Struct``s (the engine's inputs, events, actions,
messages, step outcomes) are *typed shapes*: written field by field as their annotations say,
and read back checking every field's type, so a damaged or crafted record is refused, naming
the field, before it reaches the engine. Fields holding their default are left out, which
keeps records small. A field annotated ``Any`` holds a user value (:mod:`.values`).
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Callable, Iterable, Mapping
from types import NoneType, UnionType
from typing import Any

import msgspec
from pydantic import BaseModel, ValidationError

from orchestra import errors as error_types
from orchestra.errors import LimitExceededError, OrchestraError

from .values import (
    Decoder,
    Encoder,
    Unreadable,
    Unstorable,
    as_list,
    as_object,
    as_text,
    from_plain,
    preview,
    to_plain,
)


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
    before it is stored; a subclass's value, a ``StrEnum`` member say, is written as the plain
    scalar); a value with no stored form is reported with the field it was in."""
    lines = ["def encode(value):", "    data = {}", "    name = ''", "    try:"]
    namespace: dict[str, Any] = {"Unstorable": Unstorable, "exact": _exact}
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
            lines.append(f"{indent}if type(item) is not k{index}: item = exact(item, k{index})")
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
        "    if not required <= data.keys(): missing(required - data.keys())",
        "    values = {}",
        "    name = ''",
        "    try:",
        "        pass",
    ]
    namespace: dict[str, Any] = {
        "Unreadable": Unreadable,
        "names": names,
        "required": frozenset(name for name, _, _, default in fields if default is _MISSING),
        "unknown": _unknown_fields,
        "missing": _missing_fields,
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


def _missing_fields(missing: Iterable[str]) -> None:
    names = sorted(map(repr, missing))
    if len(names) == 1:
        raise Unreadable(f"field {names[0]} is missing")
    raise Unreadable(f"fields {', '.join(names)} are missing")


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
        return value if type(value) is kind else _exact(value, kind)

    return encode


_SCALAR_IDENTITIES = {kind: _scalar_identity(kind) for kind in _SCALARS}
_SCALAR_ENCODERS = {encode: kind for kind, encode in _SCALAR_IDENTITIES.items()}


def _exact(value: Any, kind: type) -> Any:
    """``value`` as exactly a ``kind`` (the type the reader gives back and checks for): a
    subclass's value (a ``StrEnum`` or ``IntEnum`` member) as the plain scalar it is, an int
    where a float belongs as it is; a value of any other type (a bool where a number belongs
    included) is refused here, where it is produced, not when the log is read."""
    if kind is float and type(value) is int:
        return value
    if isinstance(value, bool) and kind is not bool:
        _wrong_type(value, kind)
    if isinstance(value, kind):
        return _PLAIN[kind](value)
    if kind is float and isinstance(value, int):
        return int.__int__(value)
    _wrong_type(value, kind)


_PLAIN: dict[type, Callable[[Any], Any]] = {
    str: str.__str__,
    int: int.__int__,
    float: float.__float__,
    bool: bool,
}


def _wrong_type(value: Any, kind: type) -> typing.NoReturn:
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
        plain = _as_scalar(value)
        if plain is None or plain not in allowed:
            raise Unstorable(f"{preview(value)}, not one of {allowed!r}")
        return plain

    def decode(data: Any) -> Any:
        if type(data) not in _SCALARS or data not in allowed:
            raise Unreadable(f"expected one of {allowed!r}, found {str(data)[:40]!r}")
        return data

    return encode, decode


def _as_scalar(value: Any) -> Any:
    """``value`` as a plain scalar (a ``StrEnum`` member as its text), or None."""
    if type(value) in _SCALARS:
        return value
    kind = next((k for k in _SCALARS if isinstance(value, k)), None)
    return None if kind is None else _PLAIN[kind](value)


def _sequence(kind: type, encode: Encoder, decode: Decoder) -> tuple[Encoder, Decoder]:
    if kind is frozenset:
        return (lambda value: sorted(encode(item) for item in value)), (
            lambda data: frozenset(decode(item) for item in as_list(data))
        )
    return (lambda value: [encode(item) for item in value]), (
        lambda data: kind([decode(item) for item in as_list(data)])
    )


def _mapping(encode: Encoder, decode: Decoder) -> tuple[Encoder, Decoder]:
    def write(value: Any) -> dict[str, Any]:
        if all(type(key) is str for key in value):
            return {key: encode(item) for key, item in value.items()}
        if not all(isinstance(key, str) for key in value):
            raise Unstorable("a mapping whose keys are not all text, where text keys belong")
        return {str.__str__(key): encode(item) for key, item in value.items()}

    def read(data: Any) -> dict[str, Any]:
        return {as_text(key): decode(item) for key, item in as_object(data).items()}

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
            return kind.model_validate(as_object(data), context={"stored": True})
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
    found = as_object(data)
    if not found.keys() <= {"type", "message", "limit", "base"}:
        raise Unreadable(f"an error with unknown field(s) {sorted(found.keys())!r}")
    message = as_text(found.get("message"))
    name = as_text(found.get("type"))
    kind = _orchestra_error(name)
    if kind is None:
        base = _orchestra_error(as_text(found.get("base", "OrchestraError")))
        if base is None:
            raise Unreadable(f"an error whose base {found.get('base')!r} Orchestra does not define")
        kind = _stand_in(name, base)
    error = kind.__new__(kind)
    Exception.__init__(error, message)
    if isinstance(error, LimitExceededError):
        error.limit = as_text(found.get("limit", ""))
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
