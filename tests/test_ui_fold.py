"""The inspector's fold where the log alone once could not say what happened (docs/ui.md, "A
session's page: what it shows"): a called agent's answer to its caller is no end of a branch or
of a round (``StepBegin.returns_to``), a budget question uses up a question number, a step in
flight is seen by another reader while its model call runs, and a failed fan-out's branches."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path
from typing import Any

import pytest
from browser import started
from helpers import WAIT, ask, final, invoke, llm, quiet
from test_ui_views import USAGE, Store, scripted

from orchestra import AgentRegistry, FunctionModel, ProgrammaticChannel
from orchestra.agents.contract import Action, StepOutcome
from orchestra.communication import CommunicationManager
from orchestra.coordination.config import Budget, ErrorHandlingConfig
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import (
    FileStorageBackend,
    SQLiteStorageBackend,
    StateManager,
    segments,
)
from orchestra.models.base import Message, ModelReply, StepInfo

CALL = {"nodes": ["A", "B"], "edges": ["A <-> B"], "entry_point": "A"}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    found = Store(tmp_path / "sessions.db")
    try:
        yield found
    finally:
        found.catalog.close()
        found.backend.close()


class Caller:
    """A calls B, B answers A, and A's second model call waits on ``gate`` (``entered`` is set
    once it does): B's answer is in the log, A's last step is not."""

    def __init__(self, last: dict[str, Any] | None = None) -> None:
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.last = last or final("A's answer")

    async def reply(self, messages: list[Any], info: StepInfo) -> ModelReply:
        if info.agent_name == "B":
            return ModelReply(action=final("B's answer to A"), usage=USAGE)
        if len(messages) <= 2:
            return ModelReply(action=invoke(("B", "go")), usage=USAGE)
        self.entered.set()
        await self.gate.wait()
        return ModelReply(action=self.last, usage=USAGE)

    def agents(self) -> list[Any]:
        model = FunctionModel(self.reply)
        return [llm("A", model), llm("B", model)]


@pytest.mark.parametrize("follow_ups", [False, True])
async def test_a_called_agents_answer_ends_no_branch_and_no_round(
    store: Store, follow_ups: bool
) -> None:
    """B's final response returns to A (the begin says so): b0 still runs, no follow-up is
    offered while A works, and the follow-up later offered has the channel's id."""
    caller, channel = Caller(), ProgrammaticChannel()
    instance = store.instance(CALL, *caller.agents(), channel=channel)
    running = asyncio.create_task(
        instance.execute("t", {"session_id": "call"}, allow_follow_ups=follow_ups)
    )
    try:
        await asyncio.wait_for(caller.entered.wait(), WAIT)
        begins = [r for r in await store.records("call") if r["t"] == inp.StepBegin.KIND]
        assert [(r["agent"], r.get("returns_to")) for r in begins] == [("A", None), ("B", "A")]
        view = await store.view("call")
        assert [b["state"] for b in view["branches"]] == ["running"]
        assert view["questions"] == [] and view["summary"]["status"] == "running"
        [row] = await store.catalog.sessions(None)
        assert row["status"] == "running"
        caller.gate.set()
        if follow_ups:
            offer = await asyncio.wait_for(channel.next_question(), WAIT)
            [question] = (await store.view("call"))["questions"]
            assert (question["id"], question["agent"]) == (offer.id, "A")
            channel.answer(offer.id, "")
        assert (await asyncio.wait_for(running, WAIT)).success
    finally:
        running.cancel()
    assert [b["state"] for b in (await store.view("call"))["branches"]] == ["done"]


async def test_a_forked_branch_that_calls_an_agent_is_not_done_at_its_answer(
    store: Store,
) -> None:
    caller = Caller(last=invoke(("D", "a")))
    topology = {
        "nodes": ["S", "A", "B", "C", "D"],
        "edges": ["S -> A", "S -> C", "A <-> B", "A -> D", "C -> D"],
        "rules": ["parallel(A, C)"],
    }
    others = [
        llm("S", scripted(invoke(("A", "a"), ("C", "c")))),
        llm("C", scripted(invoke(("D", "c")))),
        llm("D", scripted(final("both"))),
    ]
    instance = store.instance(topology, *others, *caller.agents())
    running = asyncio.create_task(instance.execute("t", {"session_id": "fork"}))
    try:
        await asyncio.wait_for(caller.entered.wait(), WAIT)
        view = await store.view("fork")
        [forked] = [b for b in view["branches"] if b["agent"] == "A"]
        assert forked["state"] == "running"
        caller.gate.set()
        assert (await asyncio.wait_for(running, WAIT)).success
    finally:
        running.cancel()
    [forked] = [b for b in (await store.view("fork"))["branches"] if b["agent"] == "A"]
    assert forked["state"] == "done"


class Watched(SQLiteStorageBackend):
    """A SQLite store that tells when an append not made durable (a step shown early) is in."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.shown: list[dict[str, Any]] = []
        self.showing = asyncio.Event()

    def append(
        self, session_id: str, records: Sequence[str], durable: bool, after: int
    ) -> Awaitable[None]:
        written = super().append(session_id, records, durable, after)
        return written if durable else self._shown(written, records)

    async def _shown(self, written: Awaitable[None], records: Sequence[str]) -> None:
        await written
        self.shown.extend(json.loads(line) for line in records)
        self.showing.set()


async def test_a_step_in_flight_is_seen_by_another_reader_while_its_model_call_runs(
    tmp_path: Path,
) -> None:
    """The begin of B's step is written (not made durable) while B's model call is held: a
    second reader's view has the step running and B active."""
    path = tmp_path / "sessions.db"
    store = Store(path)
    store.backend.close()
    store.backend = Watched(path)
    store.sessions = StateManager(store.backend, auto_save_interval=0)
    gate = asyncio.Event()

    async def reply(messages: list[Any], info: StepInfo) -> ModelReply:
        if info.agent_name == "A":
            return ModelReply(action=invoke(("B", "go")), usage=USAGE)
        await gate.wait()
        return ModelReply(action=final("b"), usage=USAGE)

    model = FunctionModel(reply)
    topology = {"nodes": ["A", "B"], "edges": ["A -> B"]}
    instance = store.instance(topology, llm("A", model), llm("B", model))
    running = asyncio.create_task(instance.execute("t", {"session_id": "live"}))
    try:
        while not any(r["t"] == "begin" and r.get("agent") == "B" for r in store.backend.shown):
            await asyncio.wait_for(store.backend.showing.wait(), WAIT)
            store.backend.showing.clear()
        view = await store.view("live")
        assert [(s["agent"], s["action"], s["duration"]) for s in view["steps"]] == [
            ("A", "invoke_agent", view["steps"][0]["duration"]),
            ("B", None, None),
        ]
        assert view["active"] == ["B"] and view["branches"][0]["state"] == "running"
        assert not view["steps"][1]["cut_off"]  # in flight: its session is held
        gate.set()
        assert (await asyncio.wait_for(running, WAIT)).success
    finally:
        running.cancel()
        store.catalog.close()
        store.backend.close()
    assert (await store.sessions.load("live")).last_run.end is not None  # type: ignore[union-attr]


async def test_on_the_file_store_a_durable_append_after_one_shown_early_syncs_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A durable append synced only its own range (``RWF_DSYNC``): a begin written before it,
    not made durable, could then be lost to a crash behind a result that was kept."""
    synced: list[int] = []
    monkeypatch.setattr(segments, "sync_data", synced.append)
    backend = FileStorageBackend(tmp_path / "sessions")
    try:
        await backend.append("s", ["begin"], durable=False, after=0)
        assert synced == []
        await backend.append("s", ["step"], durable=True, after=1)
        assert len(synced) == 1  # the whole file, the begin with it
        await backend.append("s", ["begin 2"], durable=False, after=2)
        await backend.release("s")  # closing the segment makes it durable too
        assert len(synced) == 2
    finally:
        await backend.release("s")


async def test_an_agent_question_after_a_budget_question_has_the_channels_id(
    store: Store,
) -> None:
    """The budget question (``budget-q2``) uses up a number, as the engine counts: the next
    agent question is ``q3`` in the view as on the channel (the log shows the budget question
    once answered: a begin answered with no step between)."""
    channel = ProgrammaticChannel()
    agent = llm("A", scripted(ask("q one?"), ask("q two?"), final("done")))
    instance = OrchestraInstance(
        {"nodes": ["A"], "edges": ["A -> User"]},
        AgentRegistry([agent]),
        quiet(budget=Budget(max_steps=1)),
        CommunicationManager(channel),
        store.sessions,
    )
    running = asyncio.create_task(instance.execute("t", {"session_id": "budget"}))
    seen = []
    try:
        for answer in ("ok", "10", "ok"):
            question = await asyncio.wait_for(channel.next_question(), WAIT)
            view = await store.view("budget")
            seen.append((question.id, [q["id"] for q in view["questions"]]))
            channel.answer(question.id, answer)
        assert (await asyncio.wait_for(running, WAIT)).success
    finally:
        running.cancel()
    assert seen == [
        ("budget:r1:q1", ["budget:r1:q1"]),
        ("budget:r1:budget-q2", []),  # not seen while pending (docs/ui.md)
        ("budget:r1:q3", ["budget:r1:q3"]),
    ]


async def test_a_failed_fan_out_fails_its_parent_and_lists_the_cancelled_sibling(
    store: Store,
) -> None:
    """As the engine reports it: S's branch failed with its fan-out; B's branch, cancelled
    (begun or not, its log has no step of it taken), is listed, stopped."""
    held = asyncio.Event()

    async def reply(messages: list[Any], info: StepInfo) -> ModelReply:
        if info.agent_name == "S":
            return ModelReply(action=invoke(("A", "l"), ("B", "r")), usage=USAGE)
        if info.agent_name == "B":
            await held.wait()  # never set: cancelled when the fan-out fails
        raise RuntimeError("A broke")

    model = FunctionModel(reply)
    topology = {
        "nodes": ["S", "A", "B"],
        "edges": ["S -> A", "S -> B", "A -> S", "B -> S"],
        "entry_point": "S",
        "exit_points": ["S"],
        "rules": ["parallel(A, B)"],
    }
    instance = store.instance(topology, *(llm(name, model) for name in ("S", "A", "B")))
    result = await asyncio.wait_for(instance.execute("go", {"session_id": "failed"}), WAIT)
    assert not result.success
    engine = {b.branch_id: str(b.status) for b in result.branch_results}
    view = await store.view("failed")
    shown = {b["id"]: (b["parent"], b["fan_out"], b["agent"], b["state"]) for b in view["branches"]}
    assert shown == {
        "b0": (None, None, "S", "failed"),
        "b1": ("b0", "f1", "A", "failed"),
        "b2": ("b0", "f1", "B", "stopped"),
    }
    assert engine == {"b0": "failed", "b1": "failed", "b2": "cancelled"}


async def test_the_list_asks_the_store_once_and_probes_writers_only_where_one_may_be(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lengths list the sessions (no second scan of the index), and whether a writer
    holds a session is asked again only of a session whose log grew or that one held."""
    solo = store.instance({"nodes": ["A"], "edges": []}, llm("A", scripted(final("x"))))
    assert (await asyncio.wait_for(solo.execute("t", {"session_id": "a"}), WAIT)).success
    writer, _ = await store.sessions.open("b")
    start = inp.RunStart(
        at=1.0,
        task="b",
        context={},
        max_steps=5,
        config=quiet(),
        error_config=ErrorHandlingConfig(),
        topology=("A",),
    )
    writer.record(start)
    await writer.flush()  # b's writer holds it from here on
    backend = store.catalog._backend
    asked: list[str] = []
    held, listed = backend.held, backend.list_sessions

    async def counted_held(session_id: str) -> bool:
        asked.append(session_id)
        return await held(session_id)

    async def counted_list() -> list[str]:
        asked.append("list")
        return await listed()

    monkeypatch.setattr(backend, "held", counted_held)
    monkeypatch.setattr(backend, "list_sessions", counted_list)
    rows = await store.catalog.sessions(None)
    assert [(r["id"], r["status"]) for r in rows] == [("a", "finished"), ("b", "running")]
    assert sorted(asked) == ["a", "b"]
    asked.clear()
    await store.catalog.sessions(None)
    assert asked == ["b"]  # a: neither grown nor held
    await writer.close()
    asked.clear()
    [_, row] = await store.catalog.sessions(None)
    assert asked == ["b"] and row["status"] == "interrupted"
    asked.clear()
    await store.catalog.sessions(None)
    assert asked == []


T = 1_700_000_000.0


def begun(at: float, branch: str = "b0", agent: str = "A") -> inp.StepBegin:
    return inp.StepBegin(at=T + at, branch_id=branch, agent=agent)


def answered(at: float, duration: float, branch: str = "b0") -> inp.StepResult:
    outcome = StepOutcome(action=Action.final("done"))
    reply = (Message("assistant", "done"),)
    return inp.StepResult(
        at=T + at, branch_id=branch, outcome=outcome, messages=reply, duration=duration
    )


async def logged(store: Store, session: str, *runs: list[inp.Record]) -> None:
    """Records written as processes write them: each list by a writer of its own, which lets go
    of the session after it (as a killed process does, when its list has no end)."""
    for records in runs:
        writer, _ = await store.sessions.open(session)
        for record in records:
            writer.record(record)
        await writer.flush()
        await writer.close()


ENDED = inp.RunEnd(at=T + 9, paused=False, success=False, error="Bad broke")


@pytest.mark.parametrize("end", [[ENDED], []], ids=["failed", "killed"])
async def test_a_step_whose_run_ended_or_was_killed_is_cut_off_not_running(
    store: Store, end: list[inp.Record]
) -> None:
    """A fan-out's Slow had begun when its run failed (or its process was killed): its step
    has no result and is not in flight, so it is cut off, and its detail says so."""
    fan_out = [
        started("fan", ("Hub", "Slow", "Bad")),
        begun(1, agent="Hub"),
        inp.StepResult(
            at=T + 2,
            branch_id="b0",
            outcome=StepOutcome(action=Action.invoke_parallel([("Slow", "s"), ("Bad", "b")])),
            messages=(),
            duration=1.0,
        ),
        inp.StepBegin(at=T + 3, branch_id="b1", agent="Slow", parent="b0", fan_out="f1"),
    ]
    await logged(store, "cut", fan_out + end)
    view = await store.view("cut")
    hub, slow = view["steps"]
    assert (hub["cut_off"], slow["agent"], slow["duration"], slow["cut_off"]) == (
        False,
        "Slow",
        None,
        True,
    )
    assert (await store.catalog.step("cut", slow["position"]))["cut_off"] is True
    assert slow["cut_at"] == (T + 9 if end else T + 3)  # its run's end; else the last record
    assert hub["cut_at"] is None


async def test_a_step_begun_again_after_a_crash_is_a_new_step_at_its_own_position(
    store: Store,
) -> None:
    """Begin, crash, resume, begin, result: the first attempt stays, cut off; the second is a
    step of its own at the later time, with the result, and its position has a detail."""
    first = [started("chain"), begun(1)]
    again = [inp.RunResume(at=T + 100, context={}), begun(101), answered(103, 1.5)]
    ended = [inp.RunEnd(at=T + 104, paused=False, success=True, error=None)]
    await logged(store, "crashed", first, again + ended)
    view = await store.view("crashed")
    cut, redone = view["steps"]
    assert (cut["started"], cut["duration"], cut["cut_off"]) == (T + 1, None, True)
    assert (redone["started"], redone["duration"], redone["action"], redone["cut_off"]) == (
        T + 101,
        1.5,
        "final_response",
        False,
    )
    assert redone["position"] > cut["position"] and view["steps_total"] == 2
    assert (cut["cut_at"], redone["cut_at"]) == (T + 1, None)  # the last record before the crash
    detail = await store.catalog.step("crashed", redone["position"])
    assert (detail["action"]["kind"], detail["cut_off"]) == ("final_response", False)


async def test_a_step_cut_off_by_a_pause_ends_at_the_pause_not_the_runs_end(
    store: Store,
) -> None:
    """The timeline drew a step a pause cut off up to its run's end, after the resume: one
    block over the whole pause, every later step squeezed (``cut_at`` says when it was cut)."""
    paused = [
        started("paused"),
        begun(1),
        inp.RunEnd(at=T + 5, paused=True, success=False, error=None),
    ]
    again = [inp.RunResume(at=T + 5000, context={}), begun(5001), answered(5002, 1.0)]
    ended = [inp.RunEnd(at=T + 5003, paused=False, success=True, error=None)]
    await logged(store, "pauses", paused, again + ended)
    cut, redone = (await store.view("pauses"))["steps"]
    assert (cut["cut_off"], cut["cut_at"]) == (True, T + 5)
    assert (redone["cut_off"], redone["cut_at"]) == (False, None)
