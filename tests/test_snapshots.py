"""Snapshots: a cache of a run's folded state that spares a resume its replay, on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from storage_backends import Storage
from test_sessions import Hold, PausablePipeline, wait

from orchestra import (
    Agent,
    AgentRegistry,
    ExecutionConfig,
    FunctionAgent,
    FunctionModel,
    StatusConfig,
)
from orchestra.communication import CommunicationManager, ProgrammaticChannel
from orchestra.coordination import execution
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import FileStorageBackend, StateManager, replay, snapshots
from orchestra.coordination.state.snapshots import read as read_snapshot
from orchestra.errors import ConfigurationError, SessionCorruptedError
from orchestra.models import Message, StepInfo


@pytest.fixture
def replayed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many log records each resume replayed (applied to the engine it rebuilt)."""
    counts: list[int] = []
    rebuild, apply = execution.rebuild, replay._apply

    def counting_rebuild(*args: Any) -> None:
        counts.append(0)
        rebuild(*args)

    def counting_apply(*args: Any) -> None:
        counts[-1] += 1
        apply(*args)

    monkeypatch.setattr(execution, "rebuild", counting_rebuild)
    monkeypatch.setattr(replay, "_apply", counting_apply)
    return counts


async def test_a_paused_run_leaves_a_snapshot_and_resume_replays_nothing(
    storage: Storage, replayed: list[int]
) -> None:
    pipeline = PausablePipeline(storage)
    await pipeline.paused("snap")
    manager = pipeline.orchestra.state_manager
    assert manager is not None
    snapshot = await manager.read_snapshot("snap")
    assert snapshot is not None
    log = await manager.load("snap")
    assert snapshot.position == log.length - 1  # everything but the 'end (paused)' record
    resumed = await wait(pipeline.orchestra.resume_session("snap"))
    assert resumed.success, resumed.error
    assert resumed.final_response == "job+first+second"
    assert replayed == [1]  # the 'end (paused)' record alone
    assert dict(pipeline.calls) == {"First": 1, "Second": 1}


async def test_a_damaged_snapshot_is_named_and_other_sessions_resume(storage: Storage) -> None:
    pipeline = PausablePipeline(storage)
    for session_id in ("broken", "fine"):
        await pipeline.paused(session_id)
    data = await storage.read_snapshot("broken")
    assert data is not None
    await storage.write_snapshot("broken", data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(SessionCorruptedError, match="'broken': its snapshot is damaged"):
        await pipeline.orchestra.resume_session("broken")
    resumed = await wait(pipeline.orchestra.resume_session("fine"))
    assert resumed.success, resumed.error


async def test_a_snapshot_left_by_another_log_under_the_same_id_is_not_used(
    storage: Storage, replayed: list[int]
) -> None:
    """A log can go while its snapshot stays (evicted from Redis, deleted by hand); a new log
    under the same id then had the old run's state restored wherever its position matched."""
    pipeline = PausablePipeline(storage)
    for session_id in ("old", "new"):
        await pipeline.paused(session_id)
    old = await storage.read_snapshot("old")
    assert old is not None
    await storage.write_snapshot("new", old)
    paused = await storage.read("new")
    resumed = await wait(pipeline.orchestra.resume_session("new"))
    assert resumed.success, resumed.error
    assert replayed == [len(paused)]  # the whole log


async def test_a_run_whose_state_is_over_the_limit_has_no_snapshot_and_resumes_by_replay(
    storage: Storage, replayed: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was stored, and then refused as damage by the reader: the session was lost."""
    monkeypatch.setattr(snapshots, "MAX_BYTES", 64)
    pipeline = PausablePipeline(storage)
    await pipeline.paused("big")
    assert await storage.read_snapshot("big") is None
    paused = await storage.read("big")
    resumed = await wait(pipeline.orchestra.resume_session("big"))
    assert resumed.success and resumed.final_response == "job+first+second", resumed.error
    assert replayed == [len(paused)]


async def test_a_snapshot_past_a_restored_checkpoint_is_not_used(
    storage: Storage, replayed: list[int]
) -> None:
    pipeline = PausablePipeline(storage)
    orchestra = pipeline.orchestra
    hold = pipeline.holds["cut"] = Hold()
    running = asyncio.create_task(orchestra.execute("job", context={"session_id": "cut"}))
    await wait(hold.entered.wait())
    checkpoint = await orchestra.create_checkpoint("cut", "before-first")
    assert await orchestra.pause_session("cut")
    hold.release.set()
    assert (await wait(running)).metadata.get("paused") is True
    assert await orchestra.restore_checkpoint(checkpoint)
    del pipeline.holds["cut"]
    resumed = await wait(orchestra.resume_session("cut"))
    assert resumed.success, resumed.error
    assert resumed.final_response == "job+first+second"
    assert pipeline.calls["First"] == 2  # the step after the checkpoint ran again
    assert replayed == [2]  # a full replay (the header, First's "begin"), not the later snapshot


async def test_snapshots_are_taken_periodically_while_a_run_waits(tmp_path: Path) -> None:
    """Between steps (here: while the run waits for the user) the periodic flusher stores a
    snapshot; while a step is in flight it does not (see test_session_durability)."""
    written = asyncio.Event()

    class Watched(FileStorageBackend):
        async def write_snapshot(self, session_id: str, data: bytes) -> None:
            await super().write_snapshot(session_id, data)
            written.set()

    storage = Watched(tmp_path / "state")
    channel = ProgrammaticChannel()

    def asker(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
        if messages[-1].content.startswith("[Task]"):
            return {"next_action": "ask_user", "action_input": {"question": "go on?"}}
        return {"next_action": "final_response", "action_input": {"response": "went on"}}

    orchestra = OrchestraInstance(
        {"nodes": ["User", "Asker"], "edges": ["User -> Asker", "Asker -> User"]},
        agent_registry=AgentRegistry([Agent("Asker", FunctionModel(asker), register=False)]),
        initial_config=ExecutionConfig(status=StatusConfig.from_verbosity(0)),
        communication_manager=CommunicationManager(channel),
        state_manager=StateManager(storage, auto_save_interval=0.01, compression=False),
    )
    running = asyncio.create_task(orchestra.execute("job", context={"session_id": "tick"}))
    question = await wait(channel.next_question())
    await wait(written.wait())
    channel.answer(question.id, "yes")
    result = await wait(running)
    assert result.success, result.error
    data = await storage.read_snapshot("tick")
    assert data is not None and read_snapshot(data, "tick").position >= 2


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"compression": "gzip"}, "compression must be True or False"),
        ({"compression": 1}, "compression must be True or False"),
        ({"auto_save_interval": -1}, "auto_save_interval must be a number of seconds, 0 or more"),
        ({"auto_save_interval": "30"}, "auto_save_interval"),
        ({"auto_save_interval": True}, "auto_save_interval"),
        ({"auto_save_interval": float("nan")}, "auto_save_interval"),
        ({"auto_save_interval": float("inf")}, "auto_save_interval"),
    ],
)
def test_state_manager_settings_of_the_wrong_kind_are_refused(
    tmp_path: Path, options: dict[str, Any], complaint: str
) -> None:
    """``compression='gzip'`` used to be taken (as true), a string interval failed later."""
    with pytest.raises(ConfigurationError, match=complaint):
        StateManager(FileStorageBackend(tmp_path), **options)


JOINS = ["A1 -> Join", "A2 -> Join"]


async def test_a_run_with_several_entries_resumes_from_its_snapshot(
    storage: Storage, replayed: list[int]
) -> None:
    """Its root branch waits at User, with no input, for the entries' fan-out: the snapshot
    check took that for damage, and the session could be neither resumed nor read."""

    async def first(task: Any, context: Any) -> str:
        if context.get("pause"):  # before A2 takes its step: the fan-out stays open
            await orchestra.pause_session("entries")
        return "one"

    orchestra = OrchestraInstance(
        {"nodes": ["A1", "A2", "Join"], "edges": ["User -> A1", "User -> A2", *JOINS]},
        agent_registry=AgentRegistry(
            [
                FunctionAgent("A1", first, register=False),
                FunctionAgent("A2", lambda task, context: "two", register=False),
                FunctionAgent("Join", lambda work, context: len(work), register=False),
            ]
        ),
        initial_config=ExecutionConfig(status=StatusConfig.from_verbosity(0)),
        state_manager=StateManager(storage, auto_save_interval=0),
    )
    context = {"session_id": "entries", "pause": True}
    assert (await wait(orchestra.execute("t", context=context))).metadata.get("paused") is True
    assert await storage.read_snapshot("entries") is not None
    paused = await orchestra.get_result("entries")
    assert paused is not None and paused.metadata["paused"] is True
    resumed = await wait(orchestra.resume_session("entries"))
    assert resumed.success and resumed.final_response == 2, resumed.error
    assert replayed == [1, 1]  # get_result, then the resume: the 'end' after the snapshot
