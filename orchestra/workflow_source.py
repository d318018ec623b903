"""Reading a workflow file that may be hostile, within limits no honest file reaches.

A workflow file can come from someone else. Before anything is built from it, its text is read
and parsed within bounds, so that a few hundred bytes cannot cost minutes and gigabytes (YAML
anchors nested eight deep expand to hundreds of millions of values, all of which the session
header would then hold), nor end the loader in a traceback (nesting deeper than Python's
recursion limit, bytes that are not UTF-8, an integer too long to convert). Each refusal names
the file and the line. YAML is read with PyYAML's safe loader: no tag builds a Python object.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class WorkflowError(ConfigurationError):
    """A workflow file cannot be used; the message gives file, line and field."""


@dataclass
class Source:
    """A workflow file's data and the place of each of its fields."""

    data: Any
    locate: Locator


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
    """The file's text: at most MAX_BYTES read (a device or a pipe is never read to its end)."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_BYTES + 1)
    except OSError as error:
        raise WorkflowError(f"cannot read {path}: {error.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise WorkflowError(
            f"{path}: larger than {MAX_BYTES} bytes, the most a workflow file may be"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise WorkflowError(
            f"{path}:{line}: not UTF-8 text (byte {raw[error.start]:#04x}); save the file as UTF-8"
        ) from None


class _Refused(Exception):
    """A limit exceeded at a place in the text (turned into a WorkflowError with its line)."""

    def __init__(self, mark: yaml.Mark, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, measuring each node as it is composed: how many values it stands for
    and how deep it nests, an alias counted as the whole node it names (memoised per node, so
    measuring costs one pass however often a node is reused)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._measured: dict[int, tuple[int, int]] = {}

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
        values, height = self._measure(node)
        if values > MAX_VALUES:
            raise _Refused(
                mark,
                f"expands to more than {MAX_VALUES} values (an alias counts as all the values "
                "of the anchor it names, each time it is used)",
            )
        if self._depth + height > MAX_DEPTH:
            raise _Refused(mark, _too_deep())
        return node

    def _measure(self, node: yaml.Node) -> tuple[int, int]:
        known = self._measured.get(id(node))
        if known is not None:
            return known
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        sizes = [self._measured[id(child)] for child in children]
        measured = (
            1 + sum(values for values, _ in sizes),
            1 + max((height for _, height in sizes), default=0),
        )
        self._measured[id(node)] = measured
        return measured

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """A scalar Python cannot convert (an integer of more than 4300 digits, the date
        2024-13-45) is refused at its line, not raised from deep inside PyYAML."""
        try:
            return super().construct_object(node, deep)
        except ValueError as error:
            raise _Refused(node.start_mark, f"cannot read this value: {error}") from None


def _too_deep() -> str:
    return f"nests deeper than {MAX_DEPTH} levels of mappings and lists"


def _yaml(path: Path, text: str, construct: bool = True) -> tuple[yaml.Node | None, Any]:
    """The node tree (for the lines of fields) and, when asked, the data built from it."""
    try:
        loader = _BoundedLoader(text)  # refuses characters YAML forbids, such as NUL
    except yaml.YAMLError as error:
        raise _error(path, text, error) from None
    try:
        node: yaml.Node | None = loader.get_single_node()
        data = loader.construct_document(node) if construct and node is not None else None
        return node, data
    except (yaml.YAMLError, _Refused) as error:
        raise _error(path, text, error) from None
    finally:
        loader.dispose()


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
