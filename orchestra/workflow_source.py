"""Reading a workflow file that may be hostile, within limits no honest file reaches.

A workflow file can come from someone else. Before anything is built from it, its text is read
and parsed within bounds, so that a few hundred bytes cannot cost minutes and gigabytes (YAML
anchors nested eight deep expand to hundreds of millions of values, all of which the session
header would then hold), nor end the loader in a traceback (nesting deeper than Python's
recursion limit, bytes that are not UTF-8, an integer too long to convert, a key written
twice), nor wait forever (a pipe no one writes to). Each refusal names the file and the line.
YAML is read with PyYAML's safe loader: no tag builds a Python object.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import ValidationError

from orchestra.errors import ConfigurationError

MAX_BYTES = 1 << 20
"""The largest workflow file read: 1 MiB (an honest one is a few kilobytes)."""

MAX_DEPTH = 100
"""The deepest nesting of mappings and lists, aliases expanded (an honest file nests under 10)."""

MAX_VALUES = 100_000
"""The most values (mappings, lists, scalars, keys included) a YAML file may hold once each
alias is counted as the whole value it stands for."""

MAX_CHARS = 4 * MAX_BYTES
"""The most characters the scalars of a YAML file (keys included) may add up to once each alias
is counted as the whole value it stands for: 4 Mi. Without it, one anchor of 500 KB named by
2,000 aliases stands for a gigabyte of context, which a session would then try to store."""


class WorkflowError(ConfigurationError):
    """A workflow file cannot be used; the message gives file, line and field."""


@dataclass
class Source:
    """A workflow file's data and the place of each of its fields."""

    data: Any
    locate: Locator

    def require_mapping(self, holds: str) -> None:
        """An empty file, or one whose top level is not a mapping, said in words (pydantic
        would name an empty field)."""
        if self.data is None:
            raise WorkflowError(f"{self.locate.path}:1: the file is empty; it must hold {holds}")
        if not isinstance(self.data, dict):
            root = self.locate.root
            line = 1 if root is None else root.start_mark.line + 1
            raise WorkflowError(
                f"{self.locate.path}:{line}: the file must hold a mapping ({holds}), not a "
                f"{type(self.data).__name__}"
            )


def read_source(path: Path) -> Source:
    """The parsed contents of ``path`` (JSON for ``.json``, YAML otherwise), within the limits:
    a workflow file, or a topology file for ``orchestra topology``."""
    text = _text(path)
    if path.suffix == ".json":
        data = _json(path, text)
        return Source(data, Locator(path, _node_or_none(text)))
    node, data = _yaml(path, text)
    return Source(data, Locator(path, node))


def _text(path: Path) -> str:
    """The file's text, without a UTF-8 byte order mark: at most MAX_BYTES read, and only from
    a regular file (opened without blocking, so a pipe no one writes to cannot hang the load,
    and a device such as /dev/zero is never read)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise WorkflowError(f"cannot read {path}: {error.strerror}") from None
    try:
        kind = _kind(os.fstat(descriptor).st_mode)
        if kind is not None:
            raise WorkflowError(f"{path}: is {kind}, not a file; a workflow file must be a file")
        with os.fdopen(descriptor, "rb", closefd=False) as file:
            raw = file.read(MAX_BYTES + 1)
    except OSError as error:
        raise WorkflowError(f"cannot read {path}: {error.strerror}") from None
    finally:
        os.close(descriptor)
    if len(raw) > MAX_BYTES:
        raise WorkflowError(
            f"{path}: larger than {MAX_BYTES} bytes, the most a workflow file may be"
        )
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise WorkflowError(
            f"{path}:{line}: not UTF-8 text (byte {raw[error.start]:#04x}); save the file as UTF-8"
        ) from None


def _kind(mode: int) -> str | None:
    """What a file that is not a regular one is, in words (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket or other special file"


class _Refused(Exception):
    """A limit exceeded at a place in the text (turned into a WorkflowError with its line)."""

    def __init__(self, mark: yaml.Mark, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


class _Size(NamedTuple):
    """What a node stands for once its aliases are expanded."""

    values: int
    height: int
    chars: int


_MERGE = "tag:yaml.org,2002:merge"

_CONSTRUCT_ERRORS = (TypeError, AttributeError, LookupError, RecursionError)
"""What PyYAML's constructors raise, unwrapped, when they fail on a value themselves (the
timestamp ``!!timestamp garbage``, the empty ``!!int``); a value wrong in itself (an integer of
more than 4300 digits, the date 2024-13-45) raises ValueError or OverflowError, said as it is."""


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, measuring each node as it is composed: how many values and characters
    it stands for and how deep it nests, an alias counted as the whole node it names (memoised
    per node, so measuring costs one pass however often a node is reused)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._measured: dict[int, _Size] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # where the node (or the alias standing for one) is written
        mark: yaml.Mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        if self._depth >= MAX_DEPTH:
            raise _Refused(mark, _too_deep())
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is None:
            return None
        size = self._measure(node)
        if size.values > MAX_VALUES:
            raise _Refused(mark, _expands(f"{MAX_VALUES} values", "values"))
        if size.chars > MAX_CHARS:
            raise _Refused(mark, _expands(f"{MAX_CHARS} characters", "characters"))
        if self._depth + size.height > MAX_DEPTH:
            raise _Refused(mark, _too_deep())
        return node

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        """A key written twice in one mapping is refused at its second line: YAML would keep
        the last silently (a second ``agents:`` would drop every agent of the first)."""
        node = super().compose_mapping_node(anchor)
        first: dict[tuple[str, str], yaml.Mark] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE:
                continue
            earlier = first.setdefault((key.tag, key.value), key.start_mark)
            if earlier is not key.start_mark:
                raise _Refused(
                    key.start_mark,
                    f"the key {key.value!r} is already in this mapping (line "
                    f"{earlier.line + 1}); YAML would keep only the last, so remove one",
                )
        return node

    def _measure(self, node: yaml.Node) -> _Size:
        known = self._measured.get(id(node))
        if known is not None:
            return known
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        sizes = [self._measured[id(child)] for child in children]
        own = len(node.value) if isinstance(node, yaml.ScalarNode) else 0
        measured = _Size(
            1 + sum(size.values for size in sizes),
            1 + max((size.height for size in sizes), default=0),
            own + sum(size.chars for size in sizes),
        )
        self._measured[id(node)] = measured
        return measured

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """A scalar Python cannot convert is refused at its line, not raised from deep inside
        PyYAML."""
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as error:  # what the value is wrong in
            raise _Refused(node.start_mark, f"cannot read this value: {error}") from None
        except _CONSTRUCT_ERRORS:  # PyYAML's own failure on it: say what was expected
            kind = node.tag.rpartition(":")[2]
            raise _Refused(node.start_mark, f"not a valid {kind} value") from None


def _expands(limit: str, what: str) -> str:
    return (
        f"expands to more than {limit} (an alias counts as all the {what} of the anchor it "
        "names, each time it is used)"
    )


def _too_deep() -> str:
    return f"nests deeper than {MAX_DEPTH} levels of mappings and lists"


def _yaml(path: Path, text: str, construct: bool = True) -> tuple[yaml.Node | None, Any]:
    """The node tree (for the lines of fields) and, when asked, the data built from it."""
    try:
        loader = _BoundedLoader(text)  # refuses characters YAML forbids, such as NUL
    except yaml.YAMLError as error:
        raise _error(path, text, error) from None
    try:
        node: yaml.Node | None = _compose(loader)
        data = loader.construct_document(node) if construct and node is not None else None
        return node, data
    except (yaml.YAMLError, _Refused) as error:
        raise _error(path, text, error) from None
    finally:
        loader.dispose()


def _compose(loader: _BoundedLoader) -> yaml.Node | None:
    """The node tree; a character escape beyond Unicode (``"\\U0011FFFF"``), which PyYAML's
    scanner raises as a bare ValueError, is refused where the scanner stopped."""
    try:
        return loader.get_single_node()
    except ValueError as error:
        raise _Refused(loader.get_mark(), f"not valid YAML: {error}") from None


def _error(path: Path, text: str, error: yaml.YAMLError | _Refused) -> WorkflowError:
    if isinstance(error, _Refused):
        return WorkflowError(f"{path}:{error.mark.line + 1}: {error.message}")
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        problem = "; ".join(part for part in (error.context, error.problem) if part)
        return WorkflowError(f"{path}:{error.problem_mark.line + 1}: not valid YAML: {problem}")
    if isinstance(error, yaml.reader.ReaderError):
        line = text.count("\n", 0, error.position) + 1
        return WorkflowError(
            f"{path}:{line}: not valid YAML: character #x{error.character:04x}: {error.reason}"
        )
    return WorkflowError(f"{path}: not valid YAML: {error}")


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}\n]', re.DOTALL)


def _json(path: Path, text: str) -> Any:
    """JSON, its nesting measured before it is parsed (the parser recurses); a JSON file has
    no aliases, so its size bounds how many values it holds."""
    depth, line = 0, 1
    for token in _JSON_TOKENS.finditer(text):
        char = token.group()
        if char == "\n":
            line += 1
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise WorkflowError(f"{path}:{line}: {_too_deep()}")
        elif char in "]}":
            depth -= 1
        else:
            line += char.count("\n")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise WorkflowError(f"{path}:{error.lineno}: not valid JSON: {error.msg}") from None
    except ValueError as error:
        raise WorkflowError(f"{path}: not valid JSON: {error}") from None


def _node_or_none(text: str) -> yaml.Node | None:
    """The YAML node tree of a JSON text, for the lines of its fields (none if JSON's syntax
    strays from YAML's, such as a tab before a key: every field is then placed on line 1)."""
    try:
        return _yaml(Path(), text, construct=False)[0]
    except WorkflowError:
        return None


class Locator:
    """Maps a field path to ``file:line`` using the YAML node tree (JSON is YAML too)."""

    def __init__(self, path: Path, root: yaml.Node | None) -> None:
        self.path = path
        self.root = root

    def at(self, location: tuple[Any, ...]) -> str:
        node: Any = self.root
        line = 1
        for key in location:
            if isinstance(node, yaml.MappingNode):
                node = next((v for k, v in node.value if k.value == key), None)
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(key, int)
                and key < len(node.value)
            ):
                node = node.value[key]
            else:
                break
            if node is None:
                break
            line = node.start_mark.line + 1
        field_path = ".".join(str(k) if not isinstance(k, int) else f"[{k}]" for k in location)
        return f"{self.path}:{line}: {field_path.replace('.[', '[')}"

    def validation(self, error: ValidationError, prefix: tuple[Any, ...] = ()) -> str:
        lines = [f"{self.at((*prefix, *e['loc']))}: {e['msg']}" for e in error.errors()]
        return "\n".join(lines)
