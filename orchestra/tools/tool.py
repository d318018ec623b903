"""The Tool type and the ``@tool`` decorator."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from typing import Any, get_type_hints

import docstring_parser
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from orchestra.errors import ConfigurationError, ToolError
from orchestra.models.base import ToolSpec
from orchestra.threads import call_sync


class Tool:
    """A callable with a schema, validation, a time limit and an idempotency flag.

    ``idempotent=True`` declares that running the tool twice with the same arguments is
    harmless; durable sessions use it to decide whether a call interrupted by a crash may be
    run again.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
        idempotent: bool = False,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"a tool must be callable, got {fn!r}")
        if timeout is not None and timeout <= 0:
            raise ConfigurationError(f"tool timeout must be positive, got {timeout!r}")
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__name__", ""))
        if not self.name.isidentifier():
            raise ConfigurationError(f"tool name must be an identifier, got {self.name!r}")
        self.timeout = timeout
        self.idempotent = idempotent
        self.is_async = inspect.iscoroutinefunction(fn)
        doc = docstring_parser.parse(inspect.getdoc(fn) or "")
        self.description = description or " ".join(
            part for part in (doc.short_description, doc.long_description) if part
        )
        self._arguments = _arguments_model(
            fn, self.name, {p.arg_name: p.description for p in doc.params}
        )
        self.spec = ToolSpec(self.name, self.description, self._arguments.model_json_schema())

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """A decorated function stays an ordinary function when called directly."""
        return self.fn(*args, **kwargs)

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments as the function will receive them; ToolError naming what is wrong."""
        try:
            parsed = self._arguments.model_validate(dict(arguments))
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in error.errors()
            )
            raise ToolError(f"invalid arguments for tool {self.name!r}: {problems}") from None
        return {name: getattr(parsed, name) for name in type(parsed).model_fields}

    async def run(self, arguments: Mapping[str, Any]) -> Any:
        """Validate, then call (sync functions in a daemon thread: see :mod:`orchestra.threads`),
        within the tool's time limit."""
        values = self.validate(arguments)
        limit = asyncio.timeout(self.timeout)
        try:
            async with limit:
                if self.is_async:
                    return await self.fn(**values)
                return await call_sync(self.fn, **values)
        except TimeoutError:
            if not limit.expired():
                raise  # the tool raised it (a socket's timeout, say): its failure as it is
            raise ToolError(
                f"tool {self.name!r} took longer than its timeout of {self.timeout:g}s"
            ) from None


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    idempotent: bool = False,
) -> Any:
    """Make a function a :class:`Tool`: ``@tool`` or ``@tool(timeout=5, idempotent=True)``."""

    def wrap(function: Callable[..., Any]) -> Tool:
        return Tool(
            function, name=name, description=description, timeout=timeout, idempotent=idempotent
        )

    return wrap(fn) if fn is not None else wrap


def as_tool(item: Tool | Callable[..., Any]) -> Tool:
    return item if isinstance(item, Tool) else Tool(item)


def _arguments_model(
    fn: Callable[..., Any], name: str, descriptions: Mapping[str, str | None]
) -> type[BaseModel]:
    """A pydantic model of the function's parameters (``*args``/``**kwargs`` are refused)."""
    try:
        hints = get_type_hints(fn)
    except Exception:
        hints = {}
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(fn).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise ConfigurationError(
                f"tool {name!r}: *args/**kwargs cannot be described to a model; name each argument"
            )
        annotation = hints.get(parameter.name, Any)
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (
            annotation,
            Field(default, description=descriptions.get(parameter.name)),
        )
    model: type[BaseModel] = create_model(
        f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
    )
    return model
