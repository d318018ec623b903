"""The runner at its edges: storage that refuses or hiccups at the worst moment, an answer that
races a pause, steps that never wait. Each of these once hung, lost work or failed raw."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import pytest
from helpers import Down, Watched, final, kinds, quiet
from storage_backends import Storage
from test_sessions import wait

from orchestra import (
    Action,
    Agent,
    AgentRegistry,
    FunctionAgent,
    Orchestra,
    PatternConfig,
    ScriptedModel,
    ScriptedUser,
)
from orchestra.communication.channels import CommunicationManager, ProgrammaticChannel, Question
from orchestra.coordination.config import CommunicationConfig
from orchestra.coordination.engine import runner
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import StateManager
from orchestra.errors import SessionError, UserInputError

ASKER = {"nodes": ["User", "A"], "edges": ["User -> A", "A -> User"]}


def asker(storage: Any, channel: Any) -> OrchestraInstance:
    """A asks the user one question, then answers."""
    ask = {"next_action": "ask_user", "action_input": {"question": "colour?"}}
    return OrchestraInstance(
        ASKER,
        agent_registry=AgentRegistry(
            [Agent("A", ScriptedModel([ask, final("ok")]), register=False)]
        ),
        initial_config=quiet(),
        communication_manager=CommunicationManager(channel),
        state_manager=StateManager(storage, auto_save_interval=0),
    )


class RefusesSteps(Watched):
    """Storage that another writer has taken the session from, as seen by this one's next
    append: it refuses it."""

    async def append(
        self, session_id: str, records: Sequence[str], durable: bool, after: int
    ) -> None:
        if any(json.loads(record)["t"] == "step" for record in records):
            raise SessionError(f"session {session_id!r}: another writer appended to it")
        await self.inner.append(session_id, records, durable, after)


async def test_a_refused_session_halts_a_branch_about_to_ask_instead_of_spinning(
    storage: Storage,
) -> None:
    """The branch's loop used to call its question again and again without ever yielding:
    the process sat at 100% CPU and no timeout could fire."""
    orchestra = asker(RefusesSteps(storage), ScriptedUser(["blue"]))
    try:
        await asyncio.wait_for(orchestra.execute("t", context={"session_id": "taken"}), 5)
    except SessionError as error:
        assert "'taken': another writer appended to it" in str(error)
    else:
        raise AssertionError("the refused run returned")


async def test_an_answer_given_just_before_a_pause_is_kept(storage: Storage) -> None:
    """The pause used to cancel the asking branch after the channel had its answer: the answer
    was dropped and the question asked again on resume."""
    channel = ProgrammaticChannel()
    orchestra = asker(storage, channel)
    running = asyncio.create_task(orchestra.execute("t", context={"session_id": "raced"}))
    question = await wait(channel.next_question())
    channel.answer(question.id, "blue")  # the user answers,
    await orchestra.pause_session("raced")  # and a pause arrives in the same tick
    paused = await wait(running)
    assert paused.metadata.get("paused") is True
    assert "answer" in kinds(await storage.read("raced"))
    resumed = await wait(orchestra.resume_session("raced"))
    assert resumed.success, resumed.error
    answers = [e.answer for e in resumed.events if type(e).__name__ == "UserInputReceived"]
    assert answers == ["blue"] and channel.pending == []


async def test_a_hiccup_on_the_last_write_is_retried_like_any_other(storage: Storage) -> None:
    """One failed append of the run's end record used to make execute raise the raw storage
    error, though the same hiccup mid-run is retried."""
    watched = Watched(storage)
    watched.fail_when = lambda records: any(record["t"] == "end" for record in records)
    pipeline = PatternConfig.pipeline(stages=[{"name": n.lower(), "agents": [n]} for n in "AB"])
    orchestra = OrchestraInstance(
        pipeline,
        agent_registry=AgentRegistry(
            [FunctionAgent(n, lambda x, c, n=n: f"{x}>{n}", register=False) for n in "AB"]
        ),
        initial_config=quiet(),
        state_manager=StateManager(watched, auto_save_interval=0),
    )
    result = await wait(orchestra.execute("go", context={"session_id": "last"}))
    assert result.success and result.final_response == "go>A>B", result.error
    assert watched.fail_when is None  # the hiccup did happen
    assert kinds(await storage.read("last"))[-1] == "end"


async def test_a_snapshot_that_cannot_be_stored_does_not_fail_the_pause(storage: Storage) -> None:
    class NoSnapshots(Watched):
        async def write_snapshot(self, session_id: str, data: bytes) -> None:
            raise ConnectionError("the snapshot store is down")

    channel = ProgrammaticChannel()
    orchestra = asker(NoSnapshots(storage), channel)
    running = asyncio.create_task(orchestra.execute("t", context={"session_id": "nosnap"}))
    await wait(channel.next_question())
    await orchestra.pause_session("nosnap", "later")
    paused = await wait(running)
    assert paused.metadata["paused"] is True and paused.metadata["pause_reason"] == "later"
    assert kinds(await storage.read("nosnap"))[-1] == "end"
    assert await orchestra.get_result("nosnap") is not None


async def test_quick_steps_that_never_wait_still_let_the_run_timeout_fire() -> None:
    """Code steps that never await never yielded to the event loop: a run of 2000 such steps
    ran to its end under a timeout(0.2) rule, and nothing else on the loop ran meanwhile."""

    def busy(work: Any, context: Any) -> Any:
        time.sleep(0.001)  # quick synchronous work, as code agents do
        return Action.invoke("B", work)

    topology = {
        "nodes": ["A", "B"],
        "edges": ["A <-> B"],
        "rules": ["timeout(0.2)"],
        "entry_point": "A",
    }
    agents = [
        FunctionAgent("A", busy, register=False),
        FunctionAgent("B", lambda w, c: w, register=False),
    ]
    ticks = 0

    async def ticking() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(ticking())
    started = time.perf_counter()
    result = await Orchestra.run(
        "go",
        topology,
        agent_registry=AgentRegistry(agents),
        execution_config=quiet(),
        max_steps=2000,
    )
    took = time.perf_counter() - started
    ticker.cancel()
    assert result.metadata["error_type"] == "RunTimeoutError", result.error
    assert took < 1.0 and result.total_steps < 1000
    assert ticks > 5


async def after_every_timer_due_by(seconds: float) -> None:
    """Return once every timer due within ``seconds`` has fired, and what it started has had
    its first turn: timers fire in the order they are due, so one of ours due later fires
    after them."""
    due = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, due.set)
    await due.wait()
    await asyncio.sleep(0)


async def test_a_run_that_fails_to_start_leaves_no_timer_behind(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its branch timer was armed with the header: it fired after execute had raised and the
    session was let go, and wrote a record at position 2 of an empty log, leaving the session
    unreadable for good."""
    monkeypatch.setattr(runner, "STORAGE_RETRY_DELAYS", (0.0,))
    down = Down(storage, "run")
    orchestra = OrchestraInstance(
        {"nodes": ["A"], "edges": []},
        agent_registry=AgentRegistry([FunctionAgent("A", lambda t, c: t, register=False)]),
        initial_config=quiet(branch_timeout=0.001),
        state_manager=StateManager(down, auto_save_interval=0),
    )
    with pytest.raises(SessionError, match="'unborn': its storage failed"):
        await wait(orchestra.execute("t", context={"session_id": "unborn"}))
    await after_every_timer_due_by(0.05)
    assert down.durable == [] and not await storage.exists("unborn")


async def test_a_hiccup_on_the_first_write_is_retried_like_any_other(storage: Storage) -> None:
    """It made execute raise the raw ConnectionError."""
    watched = Watched(storage)
    watched.fail_when = lambda records: records[0]["t"] == "run"
    orchestra = OrchestraInstance(
        {"nodes": ["A"], "edges": []},
        agent_registry=AgentRegistry([FunctionAgent("A", lambda t, c: t, register=False)]),
        initial_config=quiet(),
        state_manager=StateManager(watched, auto_save_interval=0),
    )
    result = await wait(orchestra.execute("t", context={"session_id": "hiccup"}))
    assert result.success and watched.fail_when is None, result.error


async def test_an_answer_given_just_after_a_pause_is_refused_not_lost(storage: Storage) -> None:
    """The channel took it (answer() returned), the pause then cancelled the asking branch:
    no answer was recorded and the question was asked again on resume, as if never answered."""
    channel = ProgrammaticChannel()
    orchestra = asker(storage, channel)
    running = asyncio.create_task(orchestra.execute("t", context={"session_id": "late"}))
    question = await wait(channel.next_question())
    await orchestra.pause_session("late")
    with pytest.raises(UserInputError, match="no pending question"):
        channel.answer(question.id, "blue")
    assert (await wait(running)).metadata.get("paused") is True
    assert "answer" not in kinds(await storage.read("late"))


async def test_a_channel_that_cancels_its_own_question_fails_the_branch_not_the_run() -> None:
    """Outside a pause, a question the channel itself cancelled (a UI dismissed it) was taken
    for a pause's withdrawal: the branch stopped, nothing ended the run, and it hung."""

    class Dismissing:
        async def ask(self, question: Question) -> Any:
            dismissed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            dismissed.cancel()
            return await dismissed

    model = ScriptedModel([{"next_action": "ask_user", "action_input": {"question": "?"}}])
    result = await wait(
        Orchestra.run(
            "t",
            ASKER,
            agent_registry=AgentRegistry([Agent("A", model, register=False)]),
            execution_config=quiet(),
            communication_config=CommunicationConfig(channel=Dismissing()),
        )
    )
    assert not result.success and result.metadata["error_type"] == "UserInputError"
    assert "cancelled the question of agent 'A' itself: '?'" in (result.error or "")


async def test_storage_failing_to_let_go_after_a_complete_log_does_not_fail_the_run(
    storage: Storage,
) -> None:
    """execute raised the raw ConnectionError of the release, though the run's end was
    durable (get_result gave it), and RunCompleted was never emitted."""

    class FailsToRelease(Watched):
        async def release(self, session_id: str) -> None:
            await self.inner.release(session_id)
            raise ConnectionError("connection lost while letting go")

    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        orchestra = OrchestraInstance(
            {"nodes": ["A"], "edges": []},
            agent_registry=AgentRegistry([FunctionAgent("A", lambda t, c: "ok", register=False)]),
            initial_config=quiet(),
            state_manager=StateManager(FailsToRelease(storage), auto_save_interval=0),
        )
        result = await wait(orchestra.execute("t", context={"session_id": "kept"}))
    finally:
        loop.set_exception_handler(None)
    assert result.success and result.final_response == "ok", result.error
    assert [type(e).__name__ for e in result.events][-1] == "RunCompleted"
    (report,) = reported
    assert "'kept': its run ended and its log is complete" in report["message"]
    assert isinstance(report["exception"], ConnectionError)
