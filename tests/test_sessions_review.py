"""Review of the durable-sessions layer: crashes, pauses, restores and resumes that lose a
step, run a tool twice, replay into another state than the live run had, or leave a session
unreadable.

A crash is simulated by copying a prefix of a finished session's log into a new session
(with ``auto_save_interval=0`` the stored log is, at every moment, a prefix of the final one),
or, where the live objects matter, by cancelling ``execute``. Writes are held with events.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from storage_backends import Storage
from test_sessions import Hold, PausablePipeline, pipeline_instance, wait

from orchestra import (
    Agent,
    AgentRegistry,
    ExecutionConfig,
    FunctionAgent,
    FunctionModel,
    ScriptedUser,
    StatusConfig,
    tool,
)
from orchestra.communication import CommunicationManager
from orchestra.coordination import execution
from orchestra.coordination.engine import runner as runner_module
from orchestra.coordination.engine.actions import Action
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import (
    StateManager,
)
from orchestra.coordination.state.manager import SessionWriter
from orchestra.errors import SessionError
from orchestra.models import Message, StepInfo

QUIET = ExecutionConfig(status=StatusConfig.from_verbosity(0))


class Watched:
    """A storage backend seen from the outside: which records are durable, how many appends
    are in flight at once, and (``hold_when``) an append held until ``release`` is set."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.durable: list[dict[str, Any]] = []
        self.appended = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0
        self.hold_when: Callable[[list[dict[str, Any]]], bool] | None = None
        self.held = asyncio.Event()
        self.let_go = asyncio.Event()
        self.fail_when: Callable[[list[dict[str, Any]]], bool] | None = None
        self.snapshots: list[tuple[list[str], bytes]] = []
        self.keep_snapshot: Callable[[], bool] = lambda: False
        self.snapshot_kept = asyncio.Event()
        self.released_while_writing: list[int] = []  # appends in flight at each release

    async def append(
        self, session_id: str, records: Sequence[str], durable: bool, after: int
    ) -> None:
        parsed = [json.loads(record) for record in records]
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.fail_when is not None and self.fail_when(parsed):
                self.fail_when = None
                raise ConnectionError("the storage server went away for a moment")
            if self.hold_when is not None and self.hold_when(parsed):
                self.hold_when = None
                self.held.set()
                await self.let_go.wait()
            await self.inner.append(session_id, records, durable, after)
            self.durable.extend(parsed)
            self.appended.set()
        finally:
            self.in_flight -= 1

    async def release(self, session_id: str) -> None:
        self.released_while_writing.append(self.in_flight)
        await self.inner.release(session_id)

    async def read(self, session_id: str) -> list[str]:
        return await self.inner.read(session_id)

    async def exists(self, session_id: str) -> bool:
        return await self.inner.exists(session_id)

    async def list_sessions(self) -> list[str]:
        return await self.inner.list_sessions()

    async def delete(self, session_id: str) -> bool:
        return await self.inner.delete(session_id)

    async def write_snapshot(self, session_id: str, data: bytes) -> None:
        await self.inner.write_snapshot(session_id, data)
        if self.keep_snapshot():
            self.snapshots.append((await self.inner.read(session_id), data))
            self.snapshot_kept.set()

    async def read_snapshot(self, session_id: str) -> bytes | None:
        return await self.inner.read_snapshot(session_id)


async def held_at(
    storage: Storage, kind: str, session_id: str, watching: type[Watched] = Watched
) -> tuple[Watched, OrchestraInstance, asyncio.Task[Any]]:
    """A run of a two-stage pipeline in session ``session_id``, started, and held where it
    appends a ``kind`` record (released by ``watched.let_go``)."""
    watched = watching(storage)
    watched.hold_when = lambda records: any(r["t"] == kind for r in records)
    orchestra = pipeline_instance(watched, {"First": lambda t, c: t, "Second": lambda d, c: d})
    running = asyncio.create_task(orchestra.execute("job", context={"session_id": session_id}))
    await wait(watched.held.wait())
    return watched, orchestra, running


async def crash_copy(storage: Storage, source: str, target: str, keep: int) -> None:
    """``target`` as ``source`` would have been left by a crash after its ``keep``-th record."""
    await storage.append(target, (await storage.read(source))[:keep], durable=True, after=0)


def kinds(lines: list[str]) -> list[str]:
    return [json.loads(line)["t"] for line in lines]


# ---- the writer: every record durable before the engine acts on it, in order ---------------


def stamping_instance(
    storage: Any, tools: int, executed: list[str], check: Callable[[], None]
) -> OrchestraInstance:
    """Clerk calls ``tools`` (non-idempotent) tools at once, then answers."""

    @tool
    async def stamp(key: str) -> str:
        """Stamp a document.

        Args:
            key: which document
        """
        executed.append(key)
        check()
        return f"stamped {key}"

    def clerk(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
        if messages[-1].role == "tool":
            return {"next_action": "final_response", "action_input": {"response": "done"}}
        return {
            "next_action": "call_tool",
            "action_input": [
                {"name": "stamp", "arguments": {"key": f"d{n}"}} for n in range(tools)
            ],
        }

    return OrchestraInstance(
        {"nodes": ["User", "Clerk"], "edges": ["User -> Clerk", "Clerk -> User"]},
        agent_registry=AgentRegistry(
            [Agent("Clerk", FunctionModel(clerk), tools=[stamp], register=False)]
        ),
        initial_config=QUIET,
        state_manager=StateManager(storage, auto_save_interval=0),
    )


async def test_a_tool_runs_only_after_its_start_is_durable(storage: Storage) -> None:
    """SessionWriter.flush returns early to a caller whose record another caller took out of
    the buffer but has not written yet: the third of three parallel tool calls runs before its
    ``tool_started`` is durable, so a crash then runs the non-idempotent tool again."""
    watched = Watched(storage)
    executed: list[str] = []
    too_early: list[str] = []

    def check() -> None:
        started = sum(1 for r in watched.durable if r["t"] == "tool_started")
        if started < len(executed):
            too_early.append(executed[-1])

    orchestra = stamping_instance(watched, 3, executed, check)
    result = await wait(orchestra.execute("stamp", context={"session_id": "stamps"}))
    assert result.success, result.error
    assert sorted(executed) == ["d0", "d1", "d2"]
    assert too_early == []


async def test_appends_of_one_session_are_never_in_flight_together(storage: Storage) -> None:
    """Two flushes can write at once (a flush does not wait for a write another flush started
    while it waited): with four parallel tool calls two appends are in flight together, and a
    backend may commit them in either order, leaving records out of sequence (unreadable)."""
    watched = Watched(storage)
    executed: list[str] = []
    orchestra = stamping_instance(watched, 4, executed, lambda: None)
    result = await wait(orchestra.execute("stamp", context={"session_id": "stamps4"}))
    assert result.success, result.error
    assert watched.most_in_flight == 1
    await StateManager(storage).load("stamps4")


async def test_a_failed_periodic_flush_is_retried(storage: Storage) -> None:
    """With auto_save_interval > 0, one failed append (a dropped connection) ends the periodic
    flusher for good: SessionWriter.flush has taken the records out of the buffer and keeps
    the failed write as ``_writing``, so every later flush raises its error again. Nothing
    more becomes durable while the run goes on (a crash then loses far more than
    ``auto_save_interval`` seconds), and the run's end raises the old ConnectionError."""
    watched = Watched(storage)
    watched.fail_when = lambda records: any(r["t"] == "step" for r in records)
    hold = Hold()

    async def second(data: Any, context: Any) -> str:
        await hold()
        return data

    orchestra = pipeline_instance(watched, {"First": lambda t, c: t, "Second": second}, 0.01)
    running = asyncio.create_task(orchestra.execute("job", context={"session_id": "flaky"}))
    await wait(hold.entered.wait())
    made_durable = True
    try:  # First's step becomes durable at a later flush
        while not any(r["t"] == "step" for r in watched.durable):
            await wait(watched.appended.wait())
            watched.appended.clear()
    except TimeoutError:
        made_durable = False  # the flusher is dead
    hold.release.set()
    (outcome,) = await wait(asyncio.gather(running, return_exceptions=True))
    assert made_durable, "First's step never became durable while Second worked"
    assert not isinstance(outcome, BaseException), repr(outcome)  # the old ConnectionError
    assert outcome.success, outcome.error
    await StateManager(storage).load("flaky")


# ---- snapshots: the state captured must be the state at the snapshot's position ------------


async def test_a_periodic_snapshot_does_not_count_a_step_in_flight(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A periodic snapshot must not capture the engine while a step is in flight (the step
    count and the branch's step would include a step the log does not explain, and a resume
    from it would take the step again on top). While First works, several ticks pass and no
    snapshot is stored; a resume from the last one stored fits the same max_steps."""
    watched = Watched(storage)
    ticks = asyncio.Event()
    seen = {"ticks": 0}
    original = SessionWriter.snapshot

    async def counting(self: SessionWriter) -> None:
        seen["ticks"] += 1
        if seen["ticks"] >= 3:
            ticks.set()
        await original(self)

    monkeypatch.setattr(SessionWriter, "snapshot", counting)

    async def first(task: Any, context: Any) -> str:
        if context["session_id"] == "tick":
            await ticks.wait()  # three flush-and-snapshot ticks while this step is in flight
            assert watched.snapshots == []
        return f"{task}+first"

    def second(data: Any, context: Any) -> str:
        return f"{data}+second"

    orchestra = pipeline_instance(watched, {"First": first, "Second": second}, 0.01)
    result = await wait(orchestra.execute("job", context={"session_id": "tick"}, max_steps=2))
    assert result.success, result.error
    assert result.total_steps == 2


async def test_a_pause_while_an_answer_is_written_keeps_the_answer(storage: Storage) -> None:
    """pause_session cancels the asking branch's task, even when the answer has arrived and is
    being journaled: the answer record is written, the engine never applies it, and the pause
    snapshot (whose position includes the record) holds the branch still waiting. The resume
    asks the user again; the recorded answer is lost."""
    watched = Watched(storage)
    watched.hold_when = lambda records: any(r["t"] == "answer" for r in records)
    user = ScriptedUser(["Ada"])

    def greeter(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
        if messages[-1].content.startswith("[Task]"):
            return {"next_action": "ask_user", "action_input": {"question": "Your name?"}}
        return {
            "next_action": "final_response",
            "action_input": {"response": f"hello {messages[-1].content.splitlines()[-1]}"},
        }

    orchestra = OrchestraInstance(
        {"nodes": ["User", "Greeter"], "edges": ["User -> Greeter", "Greeter -> User"]},
        agent_registry=AgentRegistry([Agent("Greeter", FunctionModel(greeter), register=False)]),
        initial_config=QUIET,
        communication_manager=CommunicationManager(user),
        state_manager=StateManager(watched, auto_save_interval=0),
    )
    running = asyncio.create_task(orchestra.execute("greet", context={"session_id": "hello"}))
    await wait(watched.held.wait())  # the answer arrived and is being written
    assert await orchestra.pause_session("hello")
    watched.let_go.set()
    paused = await wait(running)
    assert paused.metadata.get("paused") is True, paused.error

    resumed = await wait(orchestra.resume_session("hello"))
    assert len(user.questions) == 1  # not asked again
    assert resumed.success, resumed.error
    assert resumed.final_response == "hello Ada"


# ---- replay: the same state as the live run -------------------------------------------------


def racing_instance(
    storage: Storage, seen_steps: list[int], slow_started: asyncio.Event
) -> OrchestraInstance:
    """Lead calls Fast and Slow in parallel and resumes on the first answer (policy "any");
    Slow's step never ends and is cancelled when Fast answers."""

    def lead(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
        if messages[-1].content.startswith("[Results"):
            seen_steps.append(info.step)
            return {"next_action": "final_response", "action_input": {"response": "fast won"}}
        return {
            "next_action": "invoke_agent",
            "action_input": [
                {"agent_name": "Fast", "request": "go"},
                {"agent_name": "Slow", "request": "go"},
            ],
        }

    async def fast(request: Any, context: Any) -> str:
        await slow_started.wait()
        return "fast"

    async def slow(request: Any, context: Any) -> str:
        slow_started.set()
        await asyncio.Event().wait()  # never answers
        return "slow"

    return OrchestraInstance(
        {
            "nodes": ["User", "Lead", "Fast", "Slow"],
            "edges": ["User -> Lead", "Lead <-> Fast", "Lead <-> Slow", "Lead -> User"],
            "rules": ["parallel(Fast, Slow)"],
        },
        agent_registry=AgentRegistry(
            [
                Agent("Lead", FunctionModel(lead), register=False),
                FunctionAgent("Fast", fast, register=False),
                FunctionAgent("Slow", slow, register=False),
            ]
        ),
        initial_config=ExecutionConfig(
            status=StatusConfig.from_verbosity(0), convergence_policy="any"
        ),
        state_manager=StateManager(storage, auto_save_interval=0),
    )


async def test_replay_counts_the_steps_the_live_run_counted(storage: Storage) -> None:
    """A step that is cancelled in flight (a sibling's when an "any" fan-out settles, a branch
    that times out) was counted by the live engine (steps, step numbers, max_steps) but has no
    record, so a replay counts one step fewer: after a crash, agents see other step numbers
    and the run reaches max_steps later than it did live."""
    seen: list[int] = []
    orchestra = racing_instance(storage, seen, asyncio.Event())
    live = await wait(orchestra.execute("race", context={"session_id": "race"}))
    assert live.success, live.error
    lines = await storage.read("race")
    assert kinds(lines) == [
        "run",
        "begin",
        "step",
        "begin",
        "begin",
        "step",
        "begin",
        "step",
        "end",
    ]

    # a crash before Lead's second step was recorded
    await crash_copy(storage, "race", "race-crashed", 3)
    resumed = await wait(
        racing_instance(storage, seen, asyncio.Event()).resume_session("race-crashed")
    )
    assert resumed.success, resumed.error
    assert seen[1] == seen[0]  # Lead's second step: step 4 live, step 3 after the crash
    assert resumed.total_steps == live.total_steps


async def test_a_resumed_run_does_not_take_an_earlier_runs_tool_result(storage: Storage) -> None:
    """The tool journal is keyed by (branch, step, call id) across all runs of a session; the
    second run of a session has the same keys as the first, so when it crashed between its
    step and its tool call, the resume returns the first run's result and never runs the
    tool of the second."""
    charged: list[int] = []

    def till() -> OrchestraInstance:
        @tool
        def charge_card(amount: int) -> str:
            """Charge the customer's card.

            Args:
                amount: how much to charge
            """
            charged.append(amount)
            return f"charged {amount}"

        def cashier(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
            if messages[-1].role == "tool":
                return {
                    "next_action": "final_response",
                    "action_input": {"response": messages[-1].content},
                }
            amount = int(messages[-1].content.split()[-1])
            return {
                "next_action": "call_tool",
                "action_input": [{"name": "charge_card", "arguments": {"amount": amount}}],
            }

        return OrchestraInstance(
            {"nodes": ["User", "Cashier"], "edges": ["User -> Cashier", "Cashier -> User"]},
            agent_registry=AgentRegistry(
                [Agent("Cashier", FunctionModel(cashier), tools=[charge_card], register=False)]
            ),
            initial_config=QUIET,
            state_manager=StateManager(storage, auto_save_interval=0),
        )

    first = await wait(till().execute("charge 42", context={"session_id": "till"}))
    assert first.success, first.error
    second = await wait(till().execute("charge 7", context={"session_id": "till"}))
    assert second.success, second.error
    lines = await storage.read("till")
    run_two = len(lines) - kinds(lines)[::-1].index("run") - 1
    assert kinds(lines)[run_two : run_two + 3] == ["run", "begin", "step"]

    # a crash in the second run after its step was recorded, before its tool started
    await crash_copy(storage, "till", "till-crashed", run_two + 3)
    charged.clear()
    resumed = await wait(till().resume_session("till-crashed"))
    assert resumed.success, resumed.error
    assert charged == [7]
    assert "charged 7" in str(resumed.final_response)


# ---- one writer per session ------------------------------------------------------------------


async def test_two_resumes_at_once_run_the_session_once(storage: Storage) -> None:
    """resume checks that the session is not running before its awaits (load, snapshot,
    flush) and registers the run only after them: two concurrent resume_session calls both
    pass, both run the rest of the session (Second runs twice) and both write to the log."""
    pipeline = PausablePipeline(storage)
    await pipeline.paused("twice")
    outcomes = await wait(
        asyncio.gather(
            pipeline.orchestra.resume_session("twice"),
            pipeline.orchestra.resume_session("twice"),
            return_exceptions=True,
        )
    )
    refused = [o for o in outcomes if isinstance(o, SessionError)]
    assert len(refused) == 1, [type(o).__name__ for o in outcomes]
    assert pipeline.calls["Second"] == 1
    await StateManager(storage).load("twice")


async def test_execute_on_a_running_session_is_refused_or_safe(storage: Storage) -> None:
    """execute does not check that the session is already running here (resume does): a second
    run of a running session writes with the same record positions and breaks the log."""
    pipeline = PausablePipeline(storage)
    orchestra = pipeline.orchestra
    hold = pipeline.holds["busy"] = Hold()
    running = asyncio.create_task(orchestra.execute("one", context={"session_id": "busy"}))
    await wait(hold.entered.wait())
    del pipeline.holds["busy"]
    try:
        other = await wait(orchestra.execute("two", context={"session_id": "busy"}))
        assert other.success, other.error
    except SessionError:
        pass  # refused: fine
    hold.release.set()
    assert (await wait(running)).success
    await StateManager(storage).load("busy")  # SessionCorruptedError: out of sequence


async def test_a_cancelled_execute_leaves_no_write_in_flight(storage: Storage) -> None:
    """When execute is cancelled (a request timeout, a shutdown), the write of the record its
    step was journaling goes on (shielded) after execute has returned and the session is free
    again; a resume started meanwhile writes the same positions and the late write then breaks
    the log."""
    watched, _, running = await held_at(storage, "step", "cut")
    running.cancel()
    watched.let_go.set()  # the write can finish: execute may wait for it
    with pytest.raises(asyncio.CancelledError):
        await wait(running)
    assert watched.in_flight == 0


async def test_a_cancelled_execute_leaves_no_task_behind(storage: Storage) -> None:
    """The periodic flusher of a cancelled execute is never stopped: it keeps the session's
    writer (and its unwritten records, with their positions) alive and flushes them into the
    log later, under any run started in the session meanwhile."""
    before = asyncio.all_tasks()
    hold = Hold()

    async def first(task: Any, context: Any) -> str:
        await hold()
        return task

    orchestra = pipeline_instance(storage, {"First": first, "Second": lambda d, c: d}, 3600)
    running = asyncio.create_task(orchestra.execute("job", context={"session_id": "left"}))
    await wait(hold.entered.wait())
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await wait(running)
    left = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()]
    for task in left:
        task.cancel()
    assert [t.get_coro().__qualname__ for t in left] == []  # type: ignore[union-attr]


# ---- checkpoints ------------------------------------------------------------------------------


async def test_restoring_a_checkpoint_of_an_abandoned_history(storage: Storage) -> None:
    """Checkpoints of an abandoned history stay listed and restorable, but restoring one keeps
    only the records of the *current* history up to its position: the session silently goes
    back to another state (here: before Y's step, which then runs again)."""
    calls: Counter[str] = Counter()
    holds: dict[str, Hold] = {}

    def stage(name: str) -> Callable[[Any, Any], Any]:
        async def work(data: Any, context: Any) -> str:
            calls[name] += 1
            hold = holds.pop(name, None)
            if hold is not None:
                await hold()
            return f"{data}>{name.lower()}"

        return work

    orchestra = pipeline_instance(storage, {name: stage(name) for name in ("X", "Y", "Z")})

    async def paused_in(name: str, go: Callable[[], Any]) -> None:
        hold = holds[name] = Hold()
        running = asyncio.create_task(go())
        await wait(hold.entered.wait())
        assert await orchestra.pause_session("cps")
        hold.release.set()
        assert (await wait(running)).metadata.get("paused") is True

    await paused_in("X", lambda: orchestra.execute("go", context={"session_id": "cps"}))
    after_x = await orchestra.create_checkpoint("cps", "after-x")
    await paused_in("Y", lambda: orchestra.resume_session("cps"))
    after_y = await orchestra.create_checkpoint("cps", "after-y")
    assert await orchestra.restore_checkpoint(after_x)
    if await orchestra.restore_checkpoint(after_y):  # False (refused) would be fine too
        resumed = await wait(orchestra.resume_session("cps"))
        assert resumed.success, resumed.error
        assert dict(calls) == {"X": 1, "Y": 1, "Z": 1}  # after-y: only Z was left to run


async def test_every_effect_waits_until_the_steps_before_it_are_durable(storage: Storage) -> None:
    """With auto_save_interval=0 the engine folds a step while its record is being written,
    but no model call and no question to the user happens before the records of the steps
    that led to it are durable."""
    watched = Watched(storage)
    too_early: list[str] = []

    def durable_steps() -> int:
        return sum(1 for record in watched.durable if record["t"] == "step")

    def agent(name: str, successor: str | None) -> Agent:
        calls = Counter[str]()

        def decide(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
            calls[name] += 1
            earlier = {"A": 0, "B": 1, "C": 2}[name] + calls[name] - 1
            if durable_steps() < earlier:
                too_early.append(f"{name} called with {durable_steps()} of {earlier} durable")
            if successor is None:
                if calls[name] > 1:  # the user answered
                    return {"next_action": "final_response", "action_input": {"response": "ok"}}
                return {"next_action": "ask_user", "action_input": {"question": "fine?"}}
            return {
                "next_action": "invoke_agent",
                "action_input": [{"agent_name": successor, "request": "go on"}],
            }

        return Agent(name, FunctionModel(decide), register=False)

    class Checking(ScriptedUser):
        async def ask(self, question: Any) -> Any:
            if durable_steps() < 3:  # A's, B's and the asking step of C
                too_early.append(f"asked with {durable_steps()} of 3 durable")
            return await super().ask(question)

    orchestra = OrchestraInstance(
        {
            "nodes": ["User", "A", "B", "C"],
            "edges": ["User -> A", "A -> B", "B -> C", "C -> User"],
        },
        agent_registry=AgentRegistry([agent("A", "B"), agent("B", "C"), agent("C", None)]),
        initial_config=QUIET,
        communication_manager=CommunicationManager(Checking(["yes"])),
        state_manager=StateManager(watched, auto_save_interval=0),
    )
    result = await wait(orchestra.execute("go", context={"session_id": "effects"}))
    assert result.success, result.error
    assert too_early == []


async def test_a_run_that_fails_to_start_leaves_no_run_to_resume(storage: Storage) -> None:
    """The run's header could not be written (a dropped connection, say): execute raises, and
    nothing is left in the log that a later resume_session would run after all."""
    watched = Watched(storage)
    watched.fail_when = lambda records: any(record["t"] == "run" for record in records)
    orchestra = pipeline_instance(watched, {"First": lambda task, context: task})
    with pytest.raises(ConnectionError):
        await wait(orchestra.execute("pay the invoice", context={"session_id": "unborn"}))
    assert not await storage.exists("unborn")
    with pytest.raises(SessionError):
        await orchestra.resume_session("unborn")


async def test_a_checkpoint_name_may_hold_an_at_sign(storage: Storage) -> None:
    pipeline = PausablePipeline(storage)
    await pipeline.paused("named")
    checkpoint_id = await pipeline.orchestra.create_checkpoint("named", "before@noon")
    assert checkpoint_id == "named@before@noon"
    assert await pipeline.orchestra.restore_checkpoint(checkpoint_id)


class Unreachable(Watched):
    """Storage that is down (every append fails) while ``down`` is set."""

    down = False

    async def append(
        self, session_id: str, records: Sequence[str], durable: bool, after: int
    ) -> None:
        if self.down and any(json.loads(record)["t"] == "step" for record in records):
            raise ConnectionError("the storage server is down")
        await super().append(session_id, records, durable, after)


async def test_a_passing_storage_failure_is_retried_and_the_run_goes_on(storage: Storage) -> None:
    watched = Watched(storage)
    watched.fail_when = lambda records: any(record["t"] == "step" for record in records)
    orchestra = pipeline_instance(
        watched, {"First": lambda task, context: f"{task}+1", "Second": lambda d, c: f"{d}+2"}
    )
    result = await wait(orchestra.execute("job", context={"session_id": "blip"}))
    assert result.success, result.error
    assert result.final_response == "job+1+2"


async def test_storage_that_stays_down_halts_the_run_like_a_crash_and_resume_goes_on(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is recorded as failed (the workflow did not fail): execute raises an error
    naming the session, the log ends at the last durable step, and once storage is back the
    session resumes from there."""
    monkeypatch.setattr(runner_module, "STORAGE_RETRY_DELAYS", (0.0, 0.0))
    unreachable = Unreachable(storage)
    calls: Counter[str] = Counter()

    def stage(name: str) -> Callable[[Any, Any], Any]:
        def work(data: Any, context: Any) -> str:
            calls[name] += 1
            unreachable.down = name == "First" and calls[name] == 1
            return f"{data}+{name}"

        return work

    orchestra = pipeline_instance(unreachable, {"First": stage("First"), "Second": stage("Second")})
    with pytest.raises(SessionError, match=r"'down'.*storage failed.*resume it"):
        await wait(orchestra.execute("job", context={"session_id": "down"}))
    kinds = [json.loads(line)["t"] for line in await storage.read("down")]
    assert "end" not in kinds and "step" not in kinds
    unreachable.down = False
    resumed = await wait(orchestra.resume_session("down"))
    assert resumed.success, resumed.error
    assert resumed.final_response == "job+First+Second"
    assert calls == {"First": 2, "Second": 1}  # the step that was never durable ran again


async def test_a_pause_stops_steps_still_waiting_for_an_agent_slot(storage: Storage) -> None:
    hold = Hold()
    started: list[str] = []

    def worker(name: str) -> Callable[[Any, Any], Any]:
        async def work(data: Any, context: Any) -> str:
            started.append(name)
            if name == "W1":
                await hold()
            return f"{name} done"

        return work

    orchestra = OrchestraInstance(
        {
            "nodes": ["S", "W1", "W2", "W3"],
            "edges": ["S -> W1", "S -> W2", "S -> W3"],
            "rules": ["max_agents(1)"],
        },
        agent_registry=AgentRegistry(
            [
                FunctionAgent(
                    "S",
                    lambda task, context: Action.invoke_parallel(
                        (name, task) for name in ("W1", "W2", "W3")
                    ),
                    register=False,
                ),
                *(FunctionAgent(name, worker(name), register=False) for name in ("W1", "W2", "W3")),
            ]
        ),
        initial_config=QUIET,
        state_manager=StateManager(storage, auto_save_interval=0),
    )
    running = asyncio.create_task(orchestra.execute("go", context={"session_id": "queued"}))
    await wait(hold.entered.wait())
    assert await orchestra.pause_session("queued")
    hold.release.set()
    result = await wait(running)
    assert result.metadata.get("paused") is True, result.error
    assert started == ["W1"]  # W2 and W3 waited for the slot, and stayed put
    resumed = await wait(orchestra.resume_session("queued"))
    assert resumed.success, resumed.error
    assert sorted(started) == ["W1", "W2", "W3"]


# ---- who holds a session ----------------------------------------------------------------------


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0)


async def test_a_cancelled_execute_holds_its_session_until_its_last_write_is_over(
    storage: Storage,
) -> None:
    """Cancelled while its final records were being written, execute used to free the session
    at once: a run started meanwhile wrote under the writer still writing."""
    watched, orchestra, running = await held_at(storage, "end", "ending")
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await wait(running)
    with pytest.raises(SessionError, match="'ending' has a run starting, running or finishing"):
        await orchestra.execute("again", context={"session_id": "ending"})
    with pytest.raises(SessionError, match="'ending' has a run starting, running or finishing"):
        await orchestra.create_checkpoint("ending", "too-soon")
    watched.let_go.set()
    await wait(until(lambda: "ending" not in execution.CLAIMED))
    assert [r["t"] for r in watched.durable][-1] == "end"
    again = await wait(orchestra.execute("again", context={"session_id": "ending"}))
    assert again.success, again.error


async def test_a_run_without_a_state_manager_leaves_a_durable_runs_session_held(
    storage: Storage,
) -> None:
    pipeline = PausablePipeline(storage)
    hold = pipeline.holds["shared"] = Hold()
    running = asyncio.create_task(
        pipeline.orchestra.execute("one", context={"session_id": "shared"})
    )
    await wait(hold.entered.wait())
    unsaved = OrchestraInstance(
        {"nodes": ["Echo"], "edges": [], "entry_point": "Echo"},
        agent_registry=AgentRegistry([FunctionAgent("Echo", lambda t, c: t, register=False)]),
        initial_config=QUIET,
    )
    assert (await wait(unsaved.execute("two", context={"session_id": "shared"}))).success
    with pytest.raises(SessionError, match="'shared' has a run starting"):
        await pipeline.orchestra.execute("three", context={"session_id": "shared"})
    assert await pipeline.orchestra.pause_session("shared")  # still reachable
    hold.release.set()
    assert (await wait(running)).metadata["paused"] is True


async def test_a_start_cancelled_while_its_first_record_is_written_holds_the_session(
    storage: Storage,
) -> None:
    """The write of a new run's first record goes on after a cancel (it cannot be taken
    back); until it is over the session stays held, and then the run is an interrupted one."""
    watched, orchestra, running = await held_at(storage, "run", "early")
    running.cancel()
    with pytest.raises(SessionError, match="'early' has a run starting"):
        await orchestra.execute("again", context={"session_id": "early"})
    watched.let_go.set()
    with pytest.raises(asyncio.CancelledError):
        await wait(running)
    assert "early" not in execution.CLAIMED
    resumed = await wait(orchestra.resume_session("early"))
    assert resumed.success and resumed.final_response == "job"


async def test_an_abandoned_writer_lets_go_only_once_its_append_is_over(
    storage: Storage,
) -> None:
    """Abandoning (a run that failed to start, or that storage failed) used to release the
    session with an append still in flight: whoever took the session next wrote under it."""
    watched = Watched(storage)
    watched.hold_when = lambda records: True
    writer = SessionWriter(StateManager(watched, auto_save_interval=0), "abandoned", 0)
    writer.record({"t": "run"})
    writer.commit()
    abandoning = asyncio.create_task(writer.abandon())
    await wait(watched.held.wait())
    watched.let_go.set()
    await wait(abandoning)
    assert watched.released_while_writing == [0]


class LosesTheEnd(Watched):
    """Holds the append of a run's ``end`` record, then fails it."""

    async def append(
        self, session_id: str, records: Sequence[str], durable: bool, after: int
    ) -> None:
        if any(json.loads(record)["t"] == "end" for record in records):
            self.held.set()
            await self.let_go.wait()
            raise ConnectionError("the storage server went away")
        await super().append(session_id, records, durable, after)


async def test_a_last_write_that_fails_after_a_cancel_is_reported(storage: Storage) -> None:
    reported: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context))
    losing, _, running = await held_at(storage, "end", "lost", LosesTheEnd)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await wait(running)
    losing.let_go.set()
    await wait(until(lambda: "lost" not in execution.CLAIMED))
    await asyncio.sleep(0)  # the report is made by a callback of the write that failed
    assert [context["message"] for context in reported] == [
        "session 'lost': its last records could not be written after its run was cancelled; "
        "a resume goes on from its last durable step"
    ]
    assert isinstance(reported[0]["exception"], ConnectionError)
