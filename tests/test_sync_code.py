"""Sync user code (function agents, tools) runs off the event loop: it holds no other branch,
every timeout applies to it, and a call given up on neither keeps the process alive nor holds a
thread the next call needs, and one no thread can start for never runs. Whatever user code
raises (CancelledError, StopIteration, GeneratorExit, its own TimeoutError) is that code's
failure, never a hang; SystemExit still stops the process.
"""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import helpers
import pytest
from helpers import llm, of, quiet, run_cli, spokes, statuses

from orchestra import Action, FunctionAgent, FunctionModel, tool
from orchestra.coordination.engine import events as ev
from orchestra.models import Message, StepInfo
from orchestra.threads import MAX_THREADS, DaemonThreads, settle_soon
from orchestra.tools import Tool

WAIT = 5.0  # a run here takes under a second once its timeouts apply; a hang fails after WAIT
BLOCK = 10.0  # how long blocked user code would go on, were it not given up on
run = partial(helpers.run, wait=WAIT)
SOLO = {"nodes": ["A"], "edges": []}


def code(name: str, function: Any) -> FunctionAgent:
    """A function agent as users make one: a plain function runs on a thread (``helpers.fn``
    would run it on the event loop)."""
    return FunctionAgent(name, function, register=False)


@pytest.fixture
def release() -> Any:
    """An event that ends the blocked user code of a test once it is over."""
    event = threading.Event()
    yield event
    event.set()


def calling(name: str) -> FunctionModel:
    """A model that calls ``name`` once, then answers with what the tool returned."""

    def decide(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
        if messages[-1].role == "tool":
            return helpers.final(messages[-1].content)
        return {"next_action": "call_tool", "action_input": [{"name": name, "arguments": {}}]}

    return FunctionModel(decide)


async def test_a_sync_function_agent_holds_no_sibling_and_obeys_step_timeout(
    release: threading.Event,
) -> None:
    """A sync step blocked for seconds used to run on the loop: step_timeout=0.5 could not
    stop it, and its async sibling (10 ms of work) finished only after it."""
    returned = threading.Event()
    sibling_saw: list[bool] = []

    def blocked(value: Any, ctx: Any) -> str:
        release.wait(BLOCK)
        returned.set()
        return "late"

    async def quick(value: Any, ctx: Any) -> str:
        await asyncio.sleep(0.01)
        sibling_saw.append(returned.is_set())
        return "quick"

    def hub(value: Any, ctx: Any) -> Any:
        if isinstance(value, list):
            return Action.final(value)
        return Action.invoke_parallel([("W1", 1), ("W2", 2)])

    result = await run(
        "task",
        spokes("W1", "W2"),
        [code("Hub", hub), code("W1", blocked), code("W2", quick)],
        config=quiet(step_timeout=0.5),
    )
    assert sibling_saw == [False]  # the sibling finished while the sync step was still blocked
    assert statuses(result)["b1"] == "failed" and statuses(result)["b2"] == "completed"
    failed = result.get_branch_by_id("b1")
    assert failed is not None and failed.error_type == "StepTimeoutError"
    assert "agent 'W1' (branch b1) took longer than step_timeout=0.5s" in str(failed.error)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_tool_call_is_bounded_by_step_timeout(kind: str, release: threading.Event) -> None:
    """A tool with no timeout of its own is bounded by step_timeout; the model is told the tool
    took too long (a sync one used to run on, however long it took)."""
    if kind == "sync":

        def stuck() -> str:
            release.wait(BLOCK)
            return "finished"

    else:

        async def stuck() -> str:
            await asyncio.sleep(BLOCK)
            return "finished"

    result = await run(
        "task", SOLO, [llm("A", calling("stuck"), [Tool(stuck)])], config=quiet(step_timeout=0.3)
    )
    assert result.success, result.error
    assert result.final_response == (
        "error: ToolError: tool 'stuck' (agent 'A') took longer than step_timeout=0.3s"
    )
    assert [e.ok for e in of(result, ev.ToolCallCompleted)] == [False]


async def test_a_tools_own_timeout_is_named_when_it_is_the_shorter(
    release: threading.Event,
) -> None:
    @tool(timeout=0.2)
    def stuck() -> str:
        release.wait(BLOCK)
        return "finished"

    result = await run(
        "task", SOLO, [llm("A", calling("stuck"), [stuck])], config=quiet(step_timeout=3)
    )
    assert (
        result.final_response
        == "error: ToolError: tool 'stuck' took longer than its timeout of 0.2s"
    )


@pytest.mark.parametrize(("timeout", "step_timeout"), [(None, None), (30, None), (None, 5)])
async def test_a_timeout_error_a_tool_raises_is_its_failure_as_it_is(
    timeout: float | None, step_timeout: float | None
) -> None:
    """Any TimeoutError was taken for the tool's own limit: "took longer than its timeout of
    Nones" with no timeout set, "of 30s" for a tool that failed at once."""

    def fetch() -> str:
        raise TimeoutError("database lock wait exceeded")

    result = await run(
        "task",
        SOLO,
        [llm("A", calling("fetch"), [Tool(fetch, timeout=timeout)])],
        config=quiet(step_timeout=step_timeout),
    )
    assert result.final_response == "error: TimeoutError: database lock wait exceeded"


async def test_an_abandoned_sync_call_holds_no_thread_the_next_call_needs(
    release: threading.Event,
) -> None:
    """asyncio.to_thread's executor has at most 32 threads: 40 calls given up on while still
    blocked used to leave the next call queued behind them until its own timeout."""

    @tool(timeout=0.2)
    def stuck() -> str:
        release.wait(BLOCK)
        return "finished"

    @tool(timeout=3)
    def quick() -> str:
        return "quick"

    given_up = await asyncio.gather(*(stuck.run({}) for _ in range(40)), return_exceptions=True)
    assert {type(error).__name__ for error in given_up} == {"ToolError"}
    assert await quick.run({}) == "quick"


async def test_calls_beyond_max_threads_wait_and_one_given_up_frees_its_place(
    release: threading.Event,
) -> None:
    """A 1000-way fan-out of sync steps takes turns on MAX_THREADS threads, not 1000 of them;
    a call given up on while it runs stops counting, so a call waiting gets a thread."""
    pool = DaemonThreads("capped")

    def running() -> int:
        return sum(thread.name == "capped" for thread in threading.enumerate())

    blocked = [asyncio.ensure_future(pool.call(release.wait, BLOCK)) for _ in range(MAX_THREADS)]
    ran = threading.Event()
    extra = asyncio.ensure_future(pool.call(ran.set))
    await asyncio.sleep(0)  # every call is handed to the pool
    assert running() == MAX_THREADS and not ran.is_set()
    blocked[0].cancel()
    await asyncio.wait_for(extra, WAIT)
    assert ran.is_set() and running() == MAX_THREADS + 1
    for call in blocked:
        call.cancel()


async def test_sync_code_sees_the_callers_context_variables() -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    request_id.set("r-17")

    def where() -> str:
        return f"{request_id.get()} in {threading.current_thread().name}"

    assert await Tool(where).run({}) == "r-17 in orchestra-sync"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_tool_raising_cancelled_error_is_that_tools_failure(kind: str) -> None:
    """A tool's own CancelledError used to end its branch's task as if cancelled: the run hung
    with no timeouts set, and with them the report blamed branch_timeout."""
    if kind == "sync":

        def gives_up() -> str:
            raise asyncio.CancelledError

    else:

        async def gives_up() -> str:
            raise asyncio.CancelledError

    result = await run(
        "task",
        SOLO,
        [llm("A", calling("gives_up"), [Tool(gives_up)])],
        config=quiet(branch_timeout=3),
    )
    assert result.success, result.error
    assert (
        result.final_response
        == "error: ToolError: tool 'gives_up' (agent 'A') raised CancelledError"
    )
    assert [e.ok for e in of(result, ev.ToolCallCompleted)] == [False]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_function_agent_raising_cancelled_error_fails_its_step(kind: str) -> None:
    if kind == "sync":

        def gives_up(value: Any, ctx: Any) -> str:
            raise asyncio.CancelledError

    else:

        async def gives_up(value: Any, ctx: Any) -> str:
            raise asyncio.CancelledError

    result = await run("task", SOLO, [code("A", gives_up)])
    assert not result.success
    assert result.error == "agent 'A' raised CancelledError"
    assert result.metadata["error_type"] == "AgentStepError"


PROCESS_BOUND = 20.0  # seconds; the abandoned user code in these processes sleeps 60


def test_a_timed_out_sync_tool_does_not_keep_the_process_alive() -> None:
    """The run returned once the tool timed out, but its thread, joined at exit, kept the
    process alive until the tool's sleep was over."""
    script = textwrap.dedent(
        """
        import asyncio, time
        from orchestra import Agent, AgentRegistry, FunctionModel, Orchestra, tool

        @tool(timeout=0.5)
        def sleepy() -> str:
            time.sleep(60)
            return "finished"

        def decide(messages, info):
            if messages[-1].role == "tool":
                return {"next_action": "final_response",
                        "action_input": {"response": messages[-1].content}}
            return {"next_action": "call_tool",
                    "action_input": [{"name": "sleepy", "arguments": {}}]}

        agent = Agent("A", FunctionModel(decide), tools=[sleepy], register=False)
        result = asyncio.run(Orchestra.run(
            "task", {"nodes": ["A"], "edges": []}, agent_registry=AgentRegistry([agent])
        ))
        print(result.final_response)
        """
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=PROCESS_BOUND,
        cwd=helpers.TESTS.parent,  # the checkout under test
    )
    assert done.returncode == 0, done.stderr
    assert "tool 'sleepy' took longer than its timeout of 0.5s" in done.stdout
    assert time.monotonic() - started < PROCESS_BOUND


def test_the_command_line_stops_a_sync_step_at_step_timeout(tmp_path: Path) -> None:
    """Through the command line, a 20 s sync step with step_timeout: 1 used to succeed."""
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        "agents: [{name: A, function: 'flow_nodes:sleep_a_minute'}]\n"
        "topology: {nodes: [A]}\n"
        "execution: {step_timeout: 1}\n"
    )
    started = time.monotonic()
    done = run_cli("run", str(flow), "--task", "hi", "--no-store", cwd=tmp_path)
    assert time.monotonic() - started < PROCESS_BOUND
    assert done.returncode == 1, done.stdout + done.stderr
    assert "took longer than step_timeout=1s" in done.stdout + done.stderr


def stop_iteration(value: Any = None, ctx: Any = None) -> str:
    return str(next(iter([])))  # a common slip: StopIteration out of a plain function


@pytest.mark.parametrize("kind", ["fn", "tool"])
async def test_stop_iteration_from_sync_code_is_its_failure(kind: str) -> None:
    """A future cannot raise StopIteration: the thread's result was dropped with a TypeError
    logged on the loop, and the run waited for it forever."""
    if kind == "fn":
        result = await run("task", SOLO, [code("A", stop_iteration)])
        assert not result.success
        assert result.error == (
            "agent 'A' raised RuntimeError: stop_iteration raised StopIteration()"
        )
    else:
        tools = [Tool(stop_iteration, name="stop")]
        result = await run("task", SOLO, [llm("A", calling("stop"), tools)])
        assert result.success, result.error
        assert result.final_response == (
            "error: RuntimeError: stop_iteration raised StopIteration()"
        )


async def test_an_error_a_future_refuses_still_settles_it() -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    settle_soon(loop, future, None, StopIteration())
    with pytest.raises(RuntimeError, match="StopIteration cannot be raised into a future"):
        await asyncio.wait_for(future, WAIT)


@pytest.mark.parametrize("where", ["sync fn", "async fn", "sync tool", "async tool"])
async def test_generator_exit_from_user_code_is_its_failure(where: str) -> None:
    """Only Exception was caught: a GeneratorExit (a BaseException) ended the branch's task
    unnoticed and the run waited for it forever."""

    def raises(value: Any = None, ctx: Any = None) -> str:
        raise GeneratorExit("closed early")

    async def raises_async(value: Any = None, ctx: Any = None) -> str:
        raise GeneratorExit("closed early")

    sync = where.startswith("sync")
    # from a thread, it reaches the loop as a RuntimeError: thrown into a coroutine as it is,
    # a GeneratorExit would close it rather than fail it
    failure = (
        "RuntimeError: raises raised GeneratorExit('closed early')"
        if sync
        else ("GeneratorExit: closed early")
    )
    if where.endswith("fn"):
        result = await run("task", SOLO, [code("A", raises if sync else raises_async)])
        assert not result.success
        assert result.error == f"agent 'A' raised {failure}"
        assert result.metadata["error_type"] == "AgentStepError"
    else:
        tools = [Tool(raises if sync else raises_async, name="closing")]
        result = await run("task", SOLO, [llm("A", calling("closing"), tools)])
        assert result.success, result.error
        assert result.final_response == f"error: {failure}"


def test_system_exit_from_user_code_still_stops_the_process() -> None:
    script = textwrap.dedent(
        """
        import asyncio
        from orchestra import AgentRegistry, FunctionAgent, Orchestra

        def leave(value, ctx):
            raise SystemExit(7)

        agent = FunctionAgent("A", leave, register=False)
        asyncio.run(Orchestra.run(
            "task", {"nodes": ["A"], "edges": []}, agent_registry=AgentRegistry([agent])
        ))
        print("the run went on")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=PROCESS_BOUND,
        cwd=helpers.TESTS.parent,
    )
    assert done.returncode == 7, done.stdout + done.stderr
    assert "the run went on" not in done.stdout


async def test_a_call_no_thread_can_start_for_fails_and_never_runs(
    monkeypatch: pytest.MonkeyPatch, release: threading.Event
) -> None:
    """The call was queued before its thread failed to start: its caller was told it failed,
    yet it ran later on another thread, and the failed start stayed counted (one thread fewer
    for good)."""
    pool = DaemonThreads("refused")
    start = threading.Thread.start
    refuse = threading.Event()

    def starting(thread: threading.Thread) -> None:
        if thread.name == "refused" and refuse.is_set():
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", starting)
    ran: list[str] = []
    first = threading.Event()
    busy = asyncio.ensure_future(pool.call(first.wait, BLOCK))
    await asyncio.sleep(0)  # the busy call holds the pool's one thread
    refuse.set()
    with pytest.raises(RuntimeError, match="could not start a thread to run append: can't"):
        await pool.call(ran.append, "refused")
    refuse.clear()
    first.set()
    await asyncio.wait_for(busy, WAIT)
    await asyncio.wait_for(pool.call(ran.append, "next"), WAIT)  # same thread, after any queued
    assert ran == ["next"]

    def running() -> int:
        return sum(thread.name == "refused" for thread in threading.enumerate())

    blocked = [asyncio.ensure_future(pool.call(release.wait, BLOCK)) for _ in range(MAX_THREADS)]
    await asyncio.sleep(0)
    assert running() == MAX_THREADS
    for call in blocked:
        call.cancel()
