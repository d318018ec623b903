"""Sessions on Temporal at the edges of what crosses: records longer than a ``records`` query
can answer (read in parts), tool failures whose text is over the payload limit or that are a
``CancelledError`` the tool raised itself. Each gives the result an embedded run of the same
workflow gives.

One in-process worker per test, on its own task queue, on the session's dev server (the
``temporal_server`` fixture); the client is ``Orchestra.run`` with a ``TemporalExecutor``.
"""

from __future__ import annotations

import asyncio
import base64
import random
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import pytest_asyncio
from helpers import final, fn, llm, quiet
from temporalio.client import Client

from orchestra import Action, AgentRegistry, FunctionModel, Orchestra, Topology, tool
from orchestra.coordination.results import OrchestraResult
from orchestra.models import Message, StepInfo
from orchestra.temporal import Hosting, TemporalExecutor, protocol, worker
from orchestra.temporal.protocol import records_page

pytestmark = pytest.mark.asyncio(loop_scope="module")

WAIT = 60.0  # seconds a session may take before the test fails (only a hang reaches it)
BIG = 3_000_000  # characters: over the server's 2 MiB bound on a query's answer
CALLS: list[str] = []  # the tool calls made, in order


def _noise(seed: int, chars: int) -> str:
    """Text that does not compress."""
    return base64.b64encode(random.Random(seed).randbytes(chars * 3 // 4)).decode()


@tool(idempotent=True)
def fetch(n: int) -> str:
    """Fetch a large page that compresses well (an HTML page, say).

    Args:
        n: which
    """
    CALLS.append(f"fetch {n}")
    return "<p>abcdefgh</p>" * (BIG // 15)


@tool(idempotent=True)
def loud(n: int) -> str:
    """Fetch, failing with the server's whole answer in the error (idempotent).

    Args:
        n: which
    """
    CALLS.append(f"loud {n}")
    raise RuntimeError("HTTP 500: " + _noise(n, 3_200_000))


@tool
def loud_once(n: int) -> str:
    """Post, failing with the server's whole answer in the error (not idempotent).

    Args:
        n: which
    """
    CALLS.append(f"loud_once {n}")
    raise RuntimeError("HTTP 500: " + _noise(n, 3_200_000))


@tool(idempotent=True)
async def lookup(n: int) -> str:
    """Look up, the lookup's inner task cancelled (idempotent).

    Args:
        n: which
    """
    CALLS.append(f"lookup {n}")
    raise asyncio.CancelledError()


@tool
async def charge(n: int) -> str:
    """Charge, the charge's inner task cancelled (not idempotent).

    Args:
        n: which
    """
    CALLS.append(f"charge {n}")
    raise asyncio.CancelledError()


def _caller(name: str) -> Callable[[Sequence[Message], StepInfo], Any]:
    """A model that calls ``name`` once, then says how long its answer was and how it
    began and ended."""

    def model(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
        done = [message for message in messages if message.role == "tool"]
        if done:
            content = done[-1].content
            return final(f"{len(content)} chars: {content[:60]} ... {content[-90:]}")
        return {"next_action": "call_tool", "action_input": [{"name": name, "arguments": {"n": 0}}]}

    return model


REVIEWERS = [f"R{index}" for index in range(10)]


def _hub(value: Any, context: Any) -> Any:
    if isinstance(value, list):
        return Action.final(" ".join(sorted(str(item) for item in value)))
    return Action.invoke_parallel([(name, value) for name in REVIEWERS])


def _reviewer(name: str) -> Any:
    return fn(name, lambda value, context: f"{name}:{len(value)}:{value[:8]}")


def _flows() -> dict[str, tuple[Topology, list[Any]]]:
    def solo(agent: str, each: Any) -> tuple[Topology, list[Any]]:
        return Topology(nodes=[agent], edges=[]), [
            llm(agent, FunctionModel(_caller(each.name)), tools=[each])
        ]

    return {
        "fetch": solo("Fetcher", fetch),
        "loud": solo("Loud", loud),
        "loud_once": solo("LoudOnce", loud_once),
        "lookup": solo("Looker", lookup),
        "charge": solo("Charger", charge),
        "fan_out": (
            Topology(
                nodes=["Hub", *REVIEWERS],
                edges=[f"Hub <-> {name}" for name in REVIEWERS],
                rules=[f"parallel({', '.join(REVIEWERS)})"],
                entry_point="Hub",
            ),
            [fn("Hub", _hub), *(_reviewer(name) for name in REVIEWERS)],
        ),
        "cjk": (
            Topology(nodes=["Writer"], edges=[]),
            [fn("Writer", lambda value, context: Action.final("漢" * 700_000))],
        ),
    }


FLOWS = _flows()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(temporal_server: str) -> AsyncIterator[Client]:
    yield await Client.connect(temporal_server)


async def _both(client: Client, name: str, task: Any = "go") -> tuple[OrchestraResult, ...]:
    """Flow ``name`` run on Temporal (a worker hosting it, the client following it), then
    embedded: both results."""
    topology, agents = FLOWS[name]
    hosting = Hosting()
    hosting.add(topology, AgentRegistry(agents))
    queue = f"edges-{name}-{uuid.uuid4().hex[:8]}"
    results = []
    async with worker(client, queue, hosting):
        for executor in (TemporalExecutor(client, queue), None):
            session = f"edges-{name}-{uuid.uuid4().hex[:8]}"
            run = Orchestra.run(
                task,
                topology,
                AgentRegistry(agents),
                {"session_id": session},
                quiet(),
                executor=executor,
            )
            results.append(await asyncio.wait_for(run, WAIT))
    return tuple(results)


def _same(on_temporal: OrchestraResult, embedded: OrchestraResult) -> None:
    assert (on_temporal.success, on_temporal.error) == (embedded.success, embedded.error)
    assert on_temporal.final_response == embedded.final_response
    assert on_temporal.total_steps == embedded.total_steps


# ---- records longer than a query can answer ---------------------------------------------------


async def test_a_line_over_the_page_crosses_in_parts_each_within_it() -> None:
    """Pages read as the follower reads them give the journal back, line for line, and no
    answer is over ``PAGE_BYTES`` as it crosses (quotes and non-ASCII characters included)."""
    journal = ["a" * 10, "漢" * 700_000, '"q"' * 1_000_000, "b", "😀" * 300_000, "c" * 10]
    read: list[str] = []
    parts: list[str] = []
    since, offset, answers = 0, 0, 0
    while True:
        page = records_page(journal, since, offset, "finished", [])
        answers += 1
        assert protocol.encoded_size(page) <= protocol.PAGE_BYTES + 200
        if "part" in page:
            parts.append(page["part"])
            offset = page["offset"]
            if page["next"] > since:
                read.append("".join(parts))
                parts = []
        elif not page["lines"]:
            break
        read += page["lines"]
        since = page["next"]
    assert read == journal
    assert answers < 20


async def test_a_large_compressible_tool_result_reads_as_embedded(client: Client) -> None:
    """3 MB of HTML-like text packs small, so it crosses as the tool's answer; its record is
    read in parts, and the run gives the embedded result."""
    CALLS.clear()
    on_temporal, embedded = await _both(client, "fetch")
    assert on_temporal.success, on_temporal.error
    _same(on_temporal, embedded)
    assert str(on_temporal.final_response).startswith(
        f"{BIG // 15 * 15 + 4} chars: ok: <p>abcdefgh"
    )
    assert CALLS == ["fetch 0", "fetch 0"]


async def test_a_fan_out_whose_record_is_over_4_mb_reads_as_embedded(client: Client) -> None:
    """A 600 KB document (it does not compress) handed to 10 reviewers: the hub's record holds
    it 10 times (6 MB, past gRPC's bound), and so do the branches' first steps, scheduled
    together (4.5 MB packed: over a few workflow tasks)."""
    document = _noise(1, 600_000)
    on_temporal, embedded = await _both(client, "fan_out", document)
    assert on_temporal.success, on_temporal.error
    _same(on_temporal, embedded)
    assert f"R9:{len(document)}:{document[:8]}" in str(on_temporal.final_response)


async def test_a_long_non_ascii_response_reads_as_embedded(client: Client) -> None:
    """700,000 CJK characters: 4.2 MB as a query's answer carries them (6 bytes each)."""
    on_temporal, embedded = await _both(client, "cjk")
    assert on_temporal.success, on_temporal.error
    _same(on_temporal, embedded)
    assert on_temporal.final_response == "漢" * 700_000


# ---- tool failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["loud", "loud_once"])
async def test_a_tool_failure_over_the_payload_limit_is_cut_and_told_once(
    client: Client, name: str
) -> None:
    """The tool ran and failed with a 3.2 MB message: the model is told it failed, its text's
    head kept and the bytes cut said; the call is not run again (idempotent) nor in doubt."""
    CALLS.clear()
    topology, agents = FLOWS[name]
    hosting = Hosting()
    hosting.add(topology, AgentRegistry(agents))
    queue = f"edges-{name}-{uuid.uuid4().hex[:8]}"
    async with worker(client, queue, hosting):
        run = Orchestra.run(
            "go",
            topology,
            AgentRegistry(agents),
            {"session_id": f"edges-{name}-{uuid.uuid4().hex[:8]}"},
            quiet(),
            executor=TemporalExecutor(client, queue),
        )
        result = await asyncio.wait_for(run, WAIT)
    assert result.success, result.error
    response = str(result.final_response)
    assert "chars: error: RuntimeError: HTTP 500: " in response
    assert "more bytes cut: the failure's text is " in response
    assert "over Temporal's payload limit]" in response
    assert [f"{name} 0"] == CALLS


@pytest.mark.parametrize("name", ["lookup", "charge"])
async def test_a_tool_raising_cancelled_error_itself_fails_once_as_embedded(
    client: Client, name: str
) -> None:
    """A CancelledError the tool raised (its inner task cancelled), not a cancel of the call:
    the tool's failure, the same ToolError text as embedded, run once."""
    CALLS.clear()
    on_temporal, embedded = await _both(client, name)
    assert on_temporal.success, on_temporal.error
    _same(on_temporal, embedded)
    assert f"ToolError: tool {name!r} (agent " in str(on_temporal.final_response)
    assert "raised CancelledError" in str(on_temporal.final_response)
    assert [f"{name} 0", f"{name} 0"] == CALLS
