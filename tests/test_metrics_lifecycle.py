"""MetricsCollector over a run's life and its own: runs cancelled or halted leave the gauge,
model calls that fail the step are counted, the convergence wait leaves out paused time, the
console table is drawn off the event loop (one table for runs ending together), and close is
prompt, repeatable and callable from any thread."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import FAST, Down, fn, invoke, llm, quiet, run, spokes

from orchestra import AgentRegistry, ScriptedModel
from orchestra.agents.contract import Action, ActionKind
from orchestra.coordination.engine import events as ev
from orchestra.coordination.engine import runner as runner_module
from orchestra.coordination.monitoring import MetricsCollector
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.errors import ModelAPIError, SessionError

WAIT = 5.0
SOLO = {"nodes": ["A"], "edges": []}


# ---- runs that stop without an end event -----------------------------------------------------


async def test_a_cancelled_run_leaves_the_gauge_to_the_runs_still_active() -> None:
    """A run whose task was cancelled emitted no end: its branch stayed in active_branches."""
    stuck_in, other_in, other_go = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def stuck(value: Any, context: Any) -> str:
        stuck_in.set()
        await asyncio.Event().wait()  # until cancelled
        return "never"

    async def other(value: Any, context: Any) -> str:
        other_in.set()
        await other_go.wait()
        return "done"

    with MetricsCollector(exporters=[]) as metrics:
        stuck_run = asyncio.create_task(run("s", SOLO, [fn("A", stuck)], metrics_collector=metrics))
        other_run = asyncio.create_task(run("o", SOLO, [fn("A", other)], metrics_collector=metrics))
        await asyncio.wait_for(asyncio.gather(stuck_in.wait(), other_in.wait()), WAIT)
        assert metrics.get_metric("active_branches") == 2
        stuck_run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck_run
        assert metrics.get_metric("active_branches") == 1
        assert metrics.get_metric("runs", outcome="cancelled") == 1
        other_go.set()
        assert (await asyncio.wait_for(other_run, WAIT)).success
        assert metrics.get_metric("active_branches") == 0
        assert metrics.get_metric("runs") == 2


@pytest.mark.parametrize("kind", ["run", "step"])
async def test_a_run_storage_halts_leaves_the_gauge(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage down at the run's first record (it never starts) or at a step's (it halts as
    a crash would): its branch stayed in active_branches for good."""
    monkeypatch.setattr(runner_module, "STORAGE_RETRY_DELAYS", (0.0,))
    storage = Down(SQLiteStorageBackend(tmp_path / "s.db"), kind)
    with MetricsCollector(exporters=[]) as metrics:
        orchestra = OrchestraInstance(
            SOLO,
            agent_registry=AgentRegistry([fn("A", lambda value, context: "a")]),
            initial_config=quiet(),
            state_manager=StateManager(storage, auto_save_interval=0),
            metrics_collector=metrics,
        )
        with pytest.raises(SessionError, match="storage failed"):
            await asyncio.wait_for(orchestra.execute("t", context={"session_id": "down"}), WAIT)
        assert metrics.get_metric("active_branches") == 0
        assert metrics.get_metric("runs", outcome="halted") == 1


# ---- model calls that fail the step ----------------------------------------------------------


@pytest.mark.parametrize(
    ("replies", "calls", "retries"),
    [
        ([ModelAPIError("bad", provider="t", model="m", status=400, retryable=False)], 1, 0),
        ([ModelAPIError("busy", provider="t", model="m", status=503, retryable=True)] * 3, 3, 2),
    ],
    ids=["not-retryable", "retries-spent"],
)
async def test_the_model_call_that_fails_the_step_is_counted(
    replies: list[Any], calls: int, retries: int
) -> None:
    """The last failed call (retries spent, or one no retry helps) was missing from api_calls:
    only replies used, rejected or retried were counted. It carries no tokens."""
    with MetricsCollector(exporters=[]) as metrics:
        agents = [llm("A", ScriptedModel(replies))]
        result = await run("go", SOLO, agents, error_config=FAST, metrics_collector=metrics)
        assert not result.success
        assert metrics.get_metric("api_calls", agent="A", model="ScriptedModel") == calls
        assert metrics.get_metric("retries") == retries
        assert metrics.get_metric("errors", agent="A") == 1
        assert metrics.get_metric("total_tokens") == 0
        assert metrics.get_metric("model_call_seconds", agent="A") == calls  # each one timed


def test_each_model_call_attempt_is_timed_on_its_own() -> None:
    """A step begun at 10 s whose first call fails at 11 s and is retried after a 2 s wait,
    the second answering at 14 s: two calls of 1 s each (the step took 4 s). A rejected reply
    ends its call too; a code agent's step is no model call; replayed events time nothing."""
    step = {"agent": "A", "step": 1, "branch_step": 1}
    retried = {"branch_id": "b0", "agent": "A", "attempt": 1, "delay": 2.0, "error": "429"}
    used = {"branch_id": "b0", "agent": "A", "step": 1, "duration": 4.0, "action": FINAL}
    rejected = {"branch_id": "b1", "agent": "A", "step": 1, "problem": "no JSON"}
    rejected |= {"reply": "hm", "attempt": 1}
    code = {"branch_id": "b2", "agent": "Code", "step": 1, "duration": 1.0, "action": FINAL}
    events = _events(
        (ev.StepStarted, 10.0, {"branch_id": "b0", **step}),
        (ev.ModelCallRetried, 11.0, retried),
        (ev.StepStarted, 12.0, {"branch_id": "b1", **step}),
        (ev.StepStarted, 12.0, {"branch_id": "b2", **step, "agent": "Code"}),
        (ev.StepCompleted, 14.0, used),
        (ev.ActionRejected, 14.5, rejected),
        (ev.StepCompleted, 15.0, code),
    )
    replayed = _events(
        (ev.StepStarted, 20.0, {"branch_id": "b3", **step}),
        (ev.StepCompleted, 30.0, used | {"branch_id": "b3"}),
        replayed=True,
    )
    with MetricsCollector(exporters=[]) as metrics:
        watch = metrics.watch({})
        watch.models.update({"A": "m", "Code": None})
        for event in events + replayed:
            watch(event)
        [row] = metrics.snapshot()["model_call_seconds"]["values"]
        assert row == {"labels": {"agent": "A", "model": "m"}, "count": 3, "sum": 4.5}


# ---- the convergence wait is working time ----------------------------------------------------


def _events(*items: tuple[type[ev.Event], float, dict[str, Any]], replayed: bool = False) -> list:
    return [kind(run_id="r", at=at, replayed=replayed, **fields) for kind, at, fields in items]


FAN_OUT = {"fan_out_id": "f", "branch_id": "b0", "source": "Hub", "child_branch_ids": ("b1",)}
FAN_OUT |= {"targets": ("A",)}
CONVERGED = {"fan_out_id": "f", "branch_id": "b0", "succeeded": 1, "failed": 0, "cancelled": 0}
CONVERGED |= {"outcome": "met", "resumes_at": ("Hub",)}
STARTED = {"task": "t", "entries": ("Hub",), "max_steps": 10}
FINAL = Action(kind=ActionKind.FINAL, response="done")


@pytest.mark.parametrize("crashed", [False, True], ids=["paused", "crashed"])
def test_the_convergence_wait_leaves_out_the_time_the_run_stood_still(crashed: bool) -> None:
    """Fan-out at 1 s; the run stops at 2 s (a pause, or a crash after its last event) and is
    resumed at 102 s; convergence at 103 s: 2 s of work, not 102 s."""
    history = _events(
        (ev.RunStarted, 0.0, STARTED),
        (ev.FanOutStarted, 1.0, FAN_OUT),
        *(
            []
            if crashed
            else [(ev.RunPaused, 2.0, {"reason": None, "total_steps": 1, "duration": 2.0})]
        ),
        replayed=True,
    )
    if crashed:  # the last thing the log holds: a step begun at 2 s
        history += _events(
            (ev.StepStarted, 2.0, {"branch_id": "b1", "agent": "A", "step": 2, "branch_step": 1}),
            replayed=True,
        )
    live = _events(
        (ev.RunResumed, 102.0, {"context_keys": ()}),
        (ev.ConvergenceReached, 103.0, CONVERGED),
    )
    with MetricsCollector(exporters=[]) as metrics:
        watch = metrics.watch({})
        for event in history + live:
            watch(event)
        [row] = metrics.snapshot()["convergence_wait_seconds"]["values"]
        assert row == {"labels": {"agent": "Hub"}, "count": 1, "sum": pytest.approx(2.0)}


# ---- the console table -----------------------------------------------------------------------


class Held(io.StringIO):
    """A stream whose first write waits until ``go`` is set (a slow terminal), and which
    records the threads that wrote to it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.go = threading.Event()
        self.threads: set[int] = set()

    def write(self, text: str) -> int:
        self.threads.add(threading.get_ident())
        if not self.entered.is_set():
            self.entered.set()
            self.go.wait(WAIT)
        return super().write(text)


async def test_runs_ending_together_print_one_table_and_never_on_the_loop() -> None:
    """Each run's end drew a table on the event loop (a slow stream held every run); now the
    console's thread draws them, and the ends that come while it draws are one table."""
    stream = Held()
    metrics = MetricsCollector(exporters=["console"], console_stream=stream)
    solo = [fn("A", lambda value, context: "a")]
    await run("first", SOLO, solo, metrics_collector=metrics)
    assert await asyncio.to_thread(stream.entered.wait, WAIT)  # its table is being drawn
    results = await asyncio.gather(
        *(run(f"t{index}", SOLO, solo, metrics_collector=metrics) for index in range(10))
    )
    assert all(result.success for result in results)
    stream.go.set()
    await asyncio.to_thread(metrics.close)  # prints what was asked for, then stops
    assert stream.getvalue().count("Orchestra metrics") == 2
    assert threading.get_ident() not in stream.threads
    assert "outcome=succeeded" in stream.getvalue().rsplit("Orchestra metrics", 1)[1]


# ---- close -----------------------------------------------------------------------------------


def test_close_is_prompt_repeatable_and_callable_from_any_thread() -> None:
    """close() waited for the /metrics server's next half-second poll (five closes took over
    a second); the console ticker, an asyncio task, was cancelled from whatever thread
    called close."""
    started = time.perf_counter()
    for _ in range(5):
        metrics = MetricsCollector(
            exporters=["prometheus", "console"], prometheus_port=0, console_stream=io.StringIO()
        )
        closer = threading.Thread(target=metrics.close)
        closer.start()
        closer.join(WAIT)
        metrics.close()
        assert metrics.prometheus_url is None
    assert time.perf_counter() - started < 0.5  # well under the 2.5 s five polls could take


async def test_async_with_closes_off_the_event_loop() -> None:
    async with MetricsCollector(exporters=["prometheus"], prometheus_port=0) as metrics:
        assert metrics.prometheus_url is not None
        await run("go", SOLO, [fn("A", lambda v, c: v)], metrics_collector=metrics)
    assert metrics.prometheus_url is None and metrics.get_metric("steps") == 1


async def test_a_closed_console_prints_nothing_more() -> None:
    stream = io.StringIO()
    metrics = MetricsCollector(exporters=["console"], export_interval=0.001, console_stream=stream)
    metrics.close()
    metrics.close()
    hub = ScriptedModel(
        [invoke(("A", "x")), {"next_action": "final_response", "action_input": {"response": "ok"}}]
    )
    agents = [llm("Hub", hub), fn("A", lambda v, c: "a")]
    assert (await run("go", spokes("A"), agents, metrics_collector=metrics)).success
    assert stream.getvalue() == ""
