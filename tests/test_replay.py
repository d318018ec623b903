"""Replay equals the live run.

A run rebuilt from its session log — to resume it, with or without its snapshot, or to read its
result back (``get_result``), in this process or a new one — is the live run: the same result,
metrics, trace, branch durations and events. Its events are marked as replayed, and the status
display does not print them again. Every test runs on all four storage backends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
from helpers import crash_copy, final, fn, quiet
from services import output_of
from storage_backends import Storage, close_backend, open_backend
from test_sessions import Hold, wait

from orchestra import (
    Action,
    Agent,
    AgentRegistry,
    ErrorHandlingConfig,
    ExecutionConfig,
    FunctionAgent,
    Orchestra,
    OrchestraResult,
    ScriptedModel,
    StatusConfig,
    tool,
)
from orchestra.coordination.engine import events as ev
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import StateManager
from orchestra.errors import LimitExceededError, ModelAPIError, OrchestraError, SessionError

TESTS = Path(__file__).parent

# ---- comparing results -----------------------------------------------------------------------

_TIMINGS = {"at", "duration", "replayed", "run_id"}  # and the session it ran in
_NOT_IN_AN_UNINTERRUPTED_RUN = (ev.PauseRequested, ev.RunPaused, ev.RunResumed)


def exactly(result: OrchestraResult, session: str | None = None) -> dict[str, Any]:
    """Everything a result holds, events included (field by field, times too): two results
    equal in this form are the same run. Only whether an event was replayed is left out (and,
    given ``session``, which session it ran in: a copy of a log is another session)."""
    session = session or result.session_id
    return {
        "result": dataclasses.replace(result, session_id=session),
        "events": [
            (
                type(event).__name__,
                {**msgspec.structs.asdict(event), "replayed": None, "run_id": session},
            )
            for event in result.events
        ],
    }


def timeless(result: OrchestraResult) -> dict[str, Any]:
    """A result with the times left out and the pause and resume themselves: what a run that
    was paused (or cut off) and resumed must have in common with one that never stopped."""
    branches = [
        {key: value for key, value in vars(branch).items() if key != "duration"}
        for branch in result.branch_results
    ]
    metrics = result.get_metrics()
    for row in (metrics, *metrics["agents"].values()):
        row.pop("total_duration", None)
        row.pop("time_in_agent", None)
    return {
        "success": result.success,
        "final_response": result.final_response,
        "error": result.error,
        "total_steps": result.total_steps,
        "metadata": {k: v for k, v in result.metadata.items() if not k.startswith("pause")},
        "branches": branches,
        "metrics": metrics,
        "trace": [
            {k: v for k, v in row.items() if k != "duration"}
            for row in result.get_execution_trace()
        ],
        "events": [
            (type(event).__name__, _without_times(event))
            for event in result.events
            if not isinstance(event, _NOT_IN_AN_UNINTERRUPTED_RUN)
            and not (isinstance(event, ev.StepStarted) and event.retaken)
        ],
    }


def _without_times(event: ev.Event) -> dict[str, Any]:
    return {k: v for k, v in msgspec.structs.asdict(event).items() if k not in _TIMINGS}


# ---- a lead fanning out to three function agents ---------------------------------------------

FAN_OUT = {
    "nodes": ["Lead", "W1", "W2", "W3"],
    "edges": ["Lead <-> W1", "Lead <-> W2", "Lead <-> W3"],
    "rules": ["parallel(W1, W2, W3)"],
    "entry_point": "Lead",
}


def lead(work: Any, context: Any) -> Action:
    if isinstance(work, list):
        return Action.final(sorted(item["response"] for item in work))
    return Action.invoke_parallel([(name, f"{work} for {name}") for name in ("W1", "W2", "W3")])


def worker(name: str) -> FunctionAgent:
    """On the event loop (see ``helpers.fn``): the uninterrupted run and each resumed one
    must see the workers finish in the same order."""
    return fn(name, lambda request, context: f"{name} did {request}")


def fan_out_instance(storage: Storage, **agents: FunctionAgent) -> OrchestraInstance:
    registry = AgentRegistry(
        [
            fn("Lead", lead),
            *(agents.get(name, worker(name)) for name in ("W1", "W2", "W3")),
        ]
    )
    return OrchestraInstance(
        FAN_OUT,
        agent_registry=registry,
        initial_config=quiet(),
        state_manager=StateManager(storage, auto_save_interval=0),
    )


async def test_a_run_cut_off_anywhere_resumes_to_the_uninterrupted_result(
    storage: Storage,
) -> None:
    """Cut off after each of its records in turn (as kill -9 leaves a log written durably), a
    run resumes to what the uninterrupted run gave. Replayed steps used to be counted again
    beside the ones taken anew: Lead 3 steps, each worker 2 steps and 2 invocations, 7
    branches, where the uninterrupted run had Lead 2, each worker 1, and 4 branches."""
    orchestra = fan_out_instance(storage)
    whole = await wait(orchestra.execute("research", context={"session_id": "whole"}))
    assert whole.success, whole.error
    agents = whole.get_metrics()["agents"]
    assert {name: (row["steps"], row["invocations"]) for name, row in agents.items()} == {
        "Lead": (2, 1),
        "W1": (1, 1),
        "W2": (1, 1),
        "W3": (1, 1),
    }
    assert len(whole.branch_results) == 4
    length = len(await storage.read("whole"))
    for keep in range(1, length):
        session = f"cut{keep}"
        await crash_copy(storage, "whole", session, keep)
        resumed = await wait(orchestra.resume_session(session))
        assert timeless(resumed) == timeless(whole), f"cut off after record {keep}"


async def paused_hub_and_worker(
    storage: Storage, session: str, status: StatusConfig | None = None
) -> tuple[Any, OrchestraResult]:
    """Hub calls Worker; the session is paused while Worker's step is in flight."""
    hold = Hold()

    def hub(work: Any, context: Any) -> Action:
        if isinstance(work, str) and work.startswith("worked"):
            return Action.final(f"hub got {work}")
        return Action.invoke("Worker", work)

    async def work(request: Any, context: Any) -> str:
        if context.get("hold", True):
            await hold()
        return f"worked on {request}"

    orchestra = OrchestraInstance(
        {"nodes": ["Hub", "Worker"], "edges": ["Hub <-> Worker"], "entry_point": "Hub"},
        agent_registry=AgentRegistry(
            [
                FunctionAgent("Hub", hub, register=False),
                FunctionAgent("Worker", work, register=False),
            ]
        ),
        initial_config=ExecutionConfig(status=status) if status else quiet(),
        state_manager=StateManager(storage, auto_save_interval=0),
    )
    running = asyncio.create_task(orchestra.execute("job", context={"session_id": session}))
    await wait(hold.entered.wait())
    assert await orchestra.pause_session(session, "lunch") is True
    hold.release.set()
    paused = await wait(running)
    assert paused.metadata["paused"] is True and paused.metadata["pause_reason"] == "lunch"
    return orchestra, paused


async def test_with_or_without_its_snapshot_a_paused_session_is_the_same_run(
    storage: Storage,
) -> None:
    """The same paused session used to resume with get_metrics() {Hub: 1} with its snapshot and
    {Hub: 2, Worker: 1} without it, its trace 1 entry against 3, branch b0 0.054 s against
    0.0008 s. Now the result read back with the snapshot, without it (a copy of the log, which
    has none), and the one the paused run returned are the same, event by event."""
    orchestra, paused = await paused_hub_and_worker(storage, "s")
    assert await storage.read_snapshot("s") is not None
    await crash_copy(storage, "s", "s-copy", len(await storage.read("s")))
    assert await storage.read_snapshot("s-copy") is None

    with_snapshot = await orchestra.get_result("s")
    without_snapshot = await orchestra.get_result("s-copy")
    assert with_snapshot is not None and without_snapshot is not None
    assert exactly(with_snapshot) == exactly(paused)
    assert without_snapshot.session_id == "s-copy"
    assert exactly(without_snapshot, session="s") == exactly(paused)
    for rebuilt in (with_snapshot, without_snapshot):
        assert all(event.replayed for event in rebuilt.events)
        assert rebuilt.get_metrics() == paused.get_metrics()
        assert rebuilt.get_execution_trace() == paused.get_execution_trace()
        durations = [branch.duration for branch in rebuilt.branch_results]
        assert durations == [branch.duration for branch in paused.branch_results]

    again = await wait(orchestra.resume_session("s", {"hold": False}))
    copy = await wait(orchestra.resume_session("s-copy", {"hold": False}))
    assert again.success and again.final_response == "hub got worked on job"
    assert timeless(copy) == timeless(again)
    steps = {name: row["steps"] for name, row in again.get_metrics()["agents"].items()}
    assert steps == {"Hub": 2, "Worker": 1}
    assert exactly(await orchestra.get_result("s")) == exactly(again)  # type: ignore[arg-type]


async def test_a_pause_is_reported_as_a_pause_and_replayed_steps_are_not_printed_again(
    storage: Storage, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pause used to print 'run failed: None', and a resume without the snapshot printed
    every earlier step again as if it were new."""
    orchestra, paused = await paused_hub_and_worker(storage, "shown")
    await crash_copy(storage, "shown", "shown-copy", len(await storage.read("shown")))
    capsys.readouterr()
    printing = StatusConfig.from_verbosity(1)
    for session in ("shown", "shown-copy"):
        resumed = await wait(orchestra.resume_session(session, {"hold": False}, status=printing))
        assert resumed.success, resumed.error
        lines = capsys.readouterr().err.splitlines()
        assert [line.split("] ", 1)[1].split(" (")[0] for line in lines] == [
            "run resumed",  # steps 1 and 2 (Hub's call, Worker's answer) are not shown again
            "step    3     b0 Hub: final_response",
            f"run succeeded in {resumed.total_duration:.2f}s, 3 steps",
        ], session
    assert any(isinstance(event, ev.RunPaused) for event in paused.events)
    assert not any(isinstance(event, ev.RunCompleted) for event in paused.events)


async def test_the_status_printer_says_a_pause_is_a_pause(
    storage: Storage, capsys: pytest.CaptureFixture[str]
) -> None:
    await paused_hub_and_worker(storage, "p", StatusConfig.from_verbosity(1))
    err = capsys.readouterr().err
    assert "[p] run paused: lunch after 2 steps" in err
    assert "failed" not in err


async def test_get_result_reads_the_last_runs_result_back(storage: Storage) -> None:
    orchestra = fan_out_instance(storage)
    assert await orchestra.get_result("never-ran") is None
    whole = await wait(orchestra.execute("research", context={"session_id": "done"}))
    assert exactly(await orchestra.get_result("done")) == exactly(whole)  # type: ignore[arg-type]
    await crash_copy(storage, "done", "cut", 6)  # cut off mid-run: nothing was returned
    assert await orchestra.get_result("cut") is None
    resumed = await wait(orchestra.resume_session("cut"))
    assert exactly(await orchestra.get_result("cut")) == exactly(resumed)  # type: ignore[arg-type]
    second = await wait(orchestra.execute("more", context={"session_id": "done"}))
    assert exactly(await orchestra.get_result("done")) == exactly(second)  # type: ignore[arg-type]
    assert second.final_response != whole.final_response


async def test_a_new_process_reads_back_the_result_the_run_returned(
    backend_kind: str, tmp_path: Path
) -> None:
    storage = open_backend(backend_kind, tmp_path)
    try:
        live = await wait(fan_out_instance(storage).execute("far", context={"session_id": "far"}))
    finally:
        close_backend(storage)
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_replay as t; "
        "t.print_stored_result(sys.argv[1], sys.argv[2])"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        backend_kind,
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = await output_of(process, 30)
    assert process.returncode == 0, output
    assert json.loads(output) == json.loads(json.dumps(portable(live)))


def portable(result: OrchestraResult) -> dict[str, Any]:
    """The result as JSON, its events (with their times) included."""
    events = [[type(e).__name__, _plain(msgspec.structs.asdict(e))] for e in result.events]
    return {"result": result.to_json(), "metrics": result.get_metrics(), "events": events}


def _plain(fields: dict[str, Any]) -> dict[str, Any]:
    return json.loads(
        json.dumps({k: v for k, v in fields.items() if k != "replayed"}, default=repr)
    )


def print_stored_result(kind: str, root: str) -> None:
    async def read() -> OrchestraResult | None:
        storage = open_backend(kind, Path(root))
        try:
            return await fan_out_instance(storage).get_result("far")
        finally:
            close_backend(storage)

    result = asyncio.run(read())
    assert result is not None
    print(json.dumps(portable(result)))


async def test_model_retries_and_tool_calls_are_replayed_too(storage: Storage) -> None:
    """Everything a step did is in the log: a model call retried after a passing failure, and
    each tool call, started and completed, come back as the live run's events."""

    @tool
    def measure(what: str) -> int:
        """Measure something.

        Args:
            what: the thing
        """
        return len(what)

    model = ScriptedModel(
        [
            ModelAPIError("busy", provider="test", model="m", status=503, retryable=True),
            {
                "next_action": "call_tool",
                "action_input": [{"name": "measure", "arguments": {"what": "rope"}}],
            },
            final("4 long"),
        ]
    )
    orchestra = OrchestraInstance(
        {"nodes": ["Measurer"], "edges": []},
        agent_registry=AgentRegistry([Agent("Measurer", model, tools=[measure], register=False)]),
        initial_config=quiet(),
        state_manager=StateManager(storage, auto_save_interval=0),
    )
    live = await wait(orchestra.execute("how long?", context={"session_id": "retried"}))
    assert live.success, live.error
    assert live.get_metrics()["model_retries"] == 1
    kinds = [type(e).__name__ for e in live.events]
    assert kinds.count("ModelCallRetried") == 1 and kinds.count("ToolCallStarted") == 1
    stored = await orchestra.get_result("retried")
    assert stored is not None and exactly(stored) == exactly(live)


class QuotaError(OrchestraError):
    """An error class of the user's, not Orchestra's."""


async def test_an_error_class_of_the_users_is_reported_as_itself_when_rebuilt(
    storage: Storage,
) -> None:
    """A rebuilt run used to report a user's error class as a plain OrchestraError."""

    def over_quota(task: Any, context: Any) -> str:
        raise QuotaError("the monthly quota is spent")

    orchestra = OrchestraInstance(
        {"nodes": ["Spender"], "edges": []},
        agent_registry=AgentRegistry([FunctionAgent("Spender", over_quota, register=False)]),
        initial_config=quiet(),
        state_manager=StateManager(storage, auto_save_interval=0),
    )
    live = await wait(orchestra.execute("spend", context={"session_id": "quota"}))
    assert live.metadata["error_type"] == "QuotaError"
    stored = await orchestra.get_result("quota")
    assert stored is not None and exactly(stored) == exactly(live)
    assert stored.branch_results[0].error_type == "QuotaError"


class OutOfBudget(LimitExceededError):
    """A limit of the user's: like Orchestra's limits, not routed as an error report."""


async def test_a_users_limit_is_treated_alike_when_rebuilt(storage: Storage) -> None:
    """With error routing on, a step raising a user's subclass of LimitExceededError fails its
    branch (limits are not routed). Rebuilt from the log it used to be a plain OrchestraError,
    routed to the error handler: a different run."""

    def spend(task: Any, context: Any) -> str:
        raise OutOfBudget("budget", "the monthly budget is spent")

    topology = {"nodes": ["Spender", "Handler"], "edges": ["Spender -> Handler"]}
    agents = [
        FunctionAgent("Spender", spend, register=False),
        FunctionAgent("Handler", lambda report, context: f"handled {report}", register=False),
    ]
    live = await wait(
        Orchestra.run(
            "spend",
            topology,
            agent_registry=AgentRegistry(agents),
            context={"session_id": "budget"},
            execution_config=quiet(),
            error_config=ErrorHandlingConfig(enable_error_routing=True),
            state_manager=StateManager(storage, auto_save_interval=0),
        )
    )
    assert not live.success and live.metadata["error_type"] == "OutOfBudget"
    orchestra = OrchestraInstance(
        topology,
        agent_registry=AgentRegistry(agents),
        state_manager=StateManager(storage, auto_save_interval=0),
    )
    stored = await orchestra.get_result("budget")
    assert stored is not None and exactly(stored) == exactly(live)
    assert not stored.was_agent_invoked("Handler")


@pytest.mark.parametrize(
    "changed",
    [
        {"rules": ["parallel(W1, W2)"]},
        {"nodes": [{"name": "Lead", "metadata": {"convergence_policy": "any"}}, "W1", "W2", "W3"]},
        {
            "edges": [
                *FAN_OUT["edges"][:2],
                {"source": "Lead", "target": "W3", "metadata": {"condition": "urgent"}},
                "W3 -> Lead",
            ]
        },
        {"entry_point": "W1"},
    ],
    ids=["rules", "policy", "condition", "entry"],
)
async def test_a_session_is_rebuilt_only_with_the_settings_its_topology_had(
    storage: Storage, changed: dict[str, Any]
) -> None:
    """The check used to cover node names and edge arrows only: a changed policy, rule,
    condition or entry rebuilt a different run from the same log."""
    done = await wait(fan_out_instance(storage).execute("x", context={"session_id": "shape"}))
    assert done.success
    other = OrchestraInstance(
        {**FAN_OUT, **changed},
        agent_registry=AgentRegistry([fn("Lead", lead), *map(worker, ("W1", "W2", "W3"))]),
        state_manager=StateManager(storage, auto_save_interval=0),
    )
    with pytest.raises(SessionError, match="'shape' was recorded with a different topology"):
        await other.get_result("shape")


WORKERS = ["W1", "W2", "T1", "T2"]


class Race:
    """Lead starts W1 and W2 at once (policy 'any': the first to finish wins). Each worker
    hands its count to its own counter and back until it reaches its goal, every step quick
    code that never waits, so a branch takes many steps per turn. ``order`` is every step
    taken; ``pause_at`` pauses the session from inside that step."""

    TOPOLOGY: ClassVar[dict[str, Any]] = {
        "nodes": [{"name": "Lead", "metadata": {"convergence_policy": "any"}}, *WORKERS],
        "edges": ["Lead <-> W1", "Lead <-> W2", "W1 <-> T1", "W2 <-> T2"],
        "rules": ["parallel(W1, W2)"],
        "entry_point": "Lead",
    }

    def __init__(self, storage: Storage | None = None, pause_at: int = 0) -> None:
        self.order: list[str] = []
        self.pause_at = pause_at
        goals = {"W1": 50, "W2": 40}

        def lead(work: Any, context: Any) -> Action:
            if isinstance(work, list):
                return Action.final([item["agent"] for item in work])
            return Action.invoke_parallel([("W1", 0), ("W2", 0)])

        def working(name: str) -> Any:
            async def step(count: Any, context: Any) -> Action:
                await self.took(name)
                if count >= goals[name]:
                    return Action.final(f"{name} done")
                return Action.invoke(f"T{name[1]}", count)

            return step

        def counting(name: str) -> Any:
            async def step(count: int, context: Any) -> int:
                await self.took(name)
                return count + 1

            return step

        agents = [FunctionAgent("Lead", lead, register=False)]
        agents += [FunctionAgent(n, working(n), register=False) for n in ("W1", "W2")]
        agents += [FunctionAgent(n, counting(n), register=False) for n in ("T1", "T2")]
        self.orchestra = OrchestraInstance(
            self.TOPOLOGY,
            agent_registry=AgentRegistry(agents),
            initial_config=quiet(),
            state_manager=None if storage is None else StateManager(storage, 3600),
        )

    async def took(self, name: str) -> None:
        self.order.append(name)
        if len(self.order) == self.pause_at:
            await self.orchestra.pause_session("race", "mid-turn")


@pytest.mark.parametrize("pause_at", [40, 70, 100])
async def test_a_run_paused_mid_turn_resumes_to_the_same_winner(
    storage: Storage, pause_at: int
) -> None:
    """A branch of quick steps yields to the others every 32 of its steps (behind them in the
    event loop), but a resumed run started its branches in the order they first got work:
    paused during W2's turn, the resumed run let W1 finish first, and W1 won instead of W2."""
    live = Race()
    uninterrupted = await wait(live.orchestra.execute("go", {"session_id": "race"}, 1000))
    assert uninterrupted.success, uninterrupted.error
    race = Race(storage, pause_at)
    paused = await wait(race.orchestra.execute("go", {"session_id": "race"}, 1000))
    assert paused.metadata.get("paused") is True
    resumed = await wait(race.orchestra.resume_session("race"))
    assert resumed.final_response == uninterrupted.final_response == ["W2"]
    assert race.order == live.order and resumed.total_steps == uninterrupted.total_steps
