"""The log's format version (docs/sessions.md, "The record format"): records that gained
fields are written in a format of their own, so the release before reads a log written now as
a newer format (its clear ``SessionFormatError``), not as damage; and a log of the format
before still loads, resumes and is viewed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT, crash_copy, final, invoke, llm, quiet

from orchestra import AgentRegistry, FunctionModel
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import SQLiteStorageBackend, StateManager, manager, records
from orchestra.errors import SessionFormatError
from orchestra.models.base import ModelReply, StepInfo
from orchestra.ui.catalog import Catalog

CALL = {"nodes": ["A", "B"], "edges": ["A <-> B"], "entry_point": "A"}
ADDED = ("agent", "parent", "fan_out", "returns_to")
"""The fields format 3 added (to ``begin``)."""


def reply(messages: list[Any], info: StepInfo) -> ModelReply:
    if info.agent_name == "B":
        return ModelReply(action=final("B's answer"))
    return ModelReply(action=invoke(("B", "go")) if len(messages) <= 2 else final("A's answer"))


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[StateManager]:
    backend = SQLiteStorageBackend(tmp_path / "sessions.db")
    try:
        yield StateManager(backend, auto_save_interval=0)
    finally:
        backend.close()


def instance(sessions: StateManager) -> OrchestraInstance:
    model = FunctionModel(reply)
    return OrchestraInstance(
        CALL, AgentRegistry([llm("A", model), llm("B", model)]), quiet(), None, sessions
    )


async def written(sessions: StateManager, session: str) -> list[str]:
    result = await asyncio.wait_for(instance(sessions).execute("t", {"session_id": session}), WAIT)
    assert result.success, result.error
    return await sessions.storage.read(session)


async def test_a_log_written_now_is_a_newer_format_to_the_release_before(
    sessions: StateManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = await written(sessions, "now")
    stored = [json.loads(line) for line in lines]
    assert {r["format"] for r in stored if "format" in r} == {records.FORMAT} == {4}
    assert any(r.get("returns_to") == "A" for r in stored if r["t"] == inp.StepBegin.KIND)
    monkeypatch.setattr(records, "FORMAT", 3)  # as the release before reads it
    monkeypatch.setattr(manager, "FORMAT", 3)
    with pytest.raises(SessionFormatError, match="'now' was written in log format 4 by a newer"):
        manager._read_records("now", lines)


async def test_a_format_2_log_loads_resumes_and_is_viewed(
    sessions: StateManager, tmp_path: Path
) -> None:
    """As the release before wrote it: format 2 in its header, no field format 3 added."""
    lines = await written(sessions, "now")
    older = []
    for line in lines:
        record = json.loads(line)
        if "format" in record:
            record["format"] = 2
        for added in ADDED:
            record.pop(added, None)
        older.append(json.dumps(record, separators=(",", ":")))
    await sessions.storage.append("full", older, durable=True, after=0)
    await crash_copy(sessions.storage, "full", "cut", 4)  # B's step to take again
    log = await sessions.load("full")
    assert log.last_run is not None and log.last_run.end is not None
    resumed = await asyncio.wait_for(instance(sessions).resume_session("cut"), WAIT)
    assert resumed.success, resumed.error
    formats = [json.loads(line).get("format") for line in await sessions.storage.read("cut")]
    assert [f for f in formats if f is not None] == [2, 4]  # its header, then the resume
    catalog = Catalog(tmp_path / "sessions.db")
    try:
        view = await catalog.view("cut", None)
    finally:
        catalog.close()
    assert [(s["agent"], s["action"], s["cut_off"]) for s in view["steps"]][:3] == [
        (None, "invoke_agent", False),
        (None, None, True),  # B's step the crash cut off: begun again after the resume,
        ("B", "final_response", False),  # by this release, which names its agent
    ]
    assert view["summary"]["status"] == "finished"


async def test_a_format_3_log_loads_and_resumes(sessions: StateManager) -> None:
    """As the release before wrote it: format 3 in its header, which has no ``executor``
    (format 4's): it reads as a run of this process, interrupted, and resumes here."""
    lines = await written(sessions, "now")
    older = []
    for line in lines:
        record = json.loads(line)
        if "format" in record:
            record["format"] = 3
        older.append(json.dumps(record, separators=(",", ":")))
    await sessions.storage.append("full", older, durable=True, after=0)
    await crash_copy(sessions.storage, "full", "cut", 4)
    cut = await sessions.load("cut")
    assert cut.last_run is not None and cut.last_run.start.executor is None
    assert manager.run_state(cut) == "interrupted"
    resumed = await asyncio.wait_for(instance(sessions).resume_session("cut"), WAIT)
    assert resumed.success, resumed.error
    formats = [json.loads(line).get("format") for line in await sessions.storage.read("cut")]
    assert [f for f in formats if f is not None] == [3, 4]
