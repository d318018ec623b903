"""Tools: schemas from signatures and docstrings, validated calls, threads, time limits."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from orchestra.errors import ConfigurationError, ToolError
from orchestra.tools import Tool, ToolSpec, tool


@tool(timeout=5, idempotent=True)
def search(query: str, limit: int = 3, exact: bool = False) -> list[str]:
    """Search the web.

    Args:
        query: what to look for
        limit: how many results
    """
    return [f"{query}-{i}" for i in range(limit)] + (["exact"] if exact else [])


def test_the_schema_comes_from_the_signature_and_the_docstring() -> None:
    assert isinstance(search, Tool) and isinstance(search.spec, ToolSpec)
    spec = search.spec
    assert (spec.name, spec.description) == ("search", "Search the web.")
    properties = spec.parameters["properties"]
    assert properties["query"] == {
        "description": "what to look for",
        "title": "Query",
        "type": "string",
    }
    assert properties["limit"]["type"] == "integer" and properties["limit"]["default"] == 3
    assert properties["limit"]["description"] == "how many results"
    assert spec.parameters["required"] == ["query"]
    assert spec.parameters["additionalProperties"] is False
    assert search.idempotent and search.timeout == 5


async def test_arguments_are_validated_and_coerced_before_the_call() -> None:
    assert await search.run({"query": "ai", "limit": "2"}) == ["ai-0", "ai-1"]
    with pytest.raises(ToolError) as info:
        await search.run({"limit": "many", "colour": "red"})
    message = str(info.value)
    assert "invalid arguments for tool 'search'" in message
    assert "query: Field required" in message
    assert "limit: Input should be a valid integer" in message
    assert "colour: Extra inputs are not permitted" in message


async def test_sync_tools_run_in_a_worker_thread_and_async_tools_on_the_loop() -> None:
    def where() -> str:
        return threading.current_thread().name

    async def where_async() -> str:
        return threading.current_thread().name

    assert await Tool(where).run({}) != threading.current_thread().name
    assert await Tool(where_async).run({}) == threading.current_thread().name


async def test_an_object_whose_call_is_async_is_awaited() -> None:
    """Taken for a sync function, it ran on a thread and its result was the coroutine."""

    class Lookup:
        async def __call__(self, key: str) -> str:
            return f"value of {key}"

    assert await Tool(Lookup(), name="lookup").run({"key": "k"}) == "value of k"


async def test_a_tool_past_its_time_limit_is_a_tool_error() -> None:
    never = asyncio.Event()

    async def stuck() -> None:
        await never.wait()

    with pytest.raises(ToolError, match=r"'stuck' took longer than its timeout of 0\.01s"):
        await Tool(stuck, timeout=0.01).run({})


def test_the_decorator_takes_a_name_and_a_description() -> None:
    @tool(name="lookup", description="Find a city.")
    def find(city: str) -> str:
        return city

    assert (find.name, find.description) == ("lookup", "Find a city.")
    assert tool(find.fn).name == "find"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Tool(lambda *args: None, name="a"), "cannot be described"),
        (lambda: Tool(lambda **kwargs: None, name="k"), "cannot be described"),
        (lambda: Tool(lambda: None), "identifier"),
        (lambda: Tool(search.fn, timeout=0), "timeout must be positive"),
    ],
)
def test_tools_that_cannot_be_described_are_refused(make: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make()


def test_a_non_callable_is_not_a_tool() -> None:
    with pytest.raises(TypeError):
        Tool("search")  # type: ignore[arg-type]
