"""``FileStorageBackend`` given a path that is not a directory (issue 10, item 7).

A file where the backend's directory should be, or above it, is a ``ConfigurationError`` that
names the path: at construction when it is already there, else from the first write. So is a
file where a session's folder should be, for that session only. Nothing is written into or
over what is in the way, and once it is moved, the same backend goes on.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestra import (
    AgentRegistry,
    ExecutionConfig,
    FunctionAgent,
    Orchestra,
    StatusConfig,
    Topology,
)
from orchestra.coordination.state import FileStorageBackend, StateManager
from orchestra.errors import ConfigurationError, SessionNotFoundError

SOLO = Topology(nodes=["Solo"], edges=[])
QUIET = ExecutionConfig(status=StatusConfig.from_verbosity(0))
CONTENT = "not a folder\n"


def record(number: int) -> str:
    return json.dumps({"t": "step", "s": number})


def solo() -> AgentRegistry:
    return AgentRegistry([FunctionAgent("Solo", lambda task, context: "done", register=False)])


async def run_session(storage: FileStorageBackend, session_id: str) -> Any:
    return await Orchestra.run(
        "task",
        SOLO,
        agent_registry=solo(),
        context={"session_id": session_id},
        execution_config=QUIET,
        state_manager=StateManager(storage, auto_save_interval=0),
    )


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "some_file"
    path.write_text(CONTENT)
    return path


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[FileStorageBackend]:
    backend = FileStorageBackend(tmp_path / "state")
    yield backend
    backend.close()


# ---- at construction --------------------------------------------------------------------------


def test_a_file_as_the_directory_is_refused_at_construction_naming_it(a_file: Path) -> None:
    with pytest.raises(ConfigurationError) as error:
        FileStorageBackend(a_file)
    message = str(error.value)
    assert f"cannot keep sessions in {a_file}: it is not a directory" in message
    assert "Give it a directory" in message and "SQLiteStorageBackend" in message
    assert a_file.read_text() == CONTENT


def test_a_path_under_a_file_is_refused_at_construction_naming_both(a_file: Path) -> None:
    inside = a_file / "sessions" / "state"
    with pytest.raises(ConfigurationError) as error:
        FileStorageBackend(str(inside))
    assert f"cannot keep sessions in {inside}: it lies under {a_file}, which is not a" in str(
        error.value
    )
    assert a_file.read_text() == CONTENT


def test_a_link_to_a_file_is_refused_and_a_link_to_a_folder_accepted(
    tmp_path: Path, a_file: Path
) -> None:
    (tmp_path / "to_file").symlink_to(a_file)
    with pytest.raises(ConfigurationError, match="to_file: it is not a directory"):
        FileStorageBackend(tmp_path / "to_file")
    (tmp_path / "folder").mkdir()
    (tmp_path / "to_folder").symlink_to(tmp_path / "folder")
    FileStorageBackend(tmp_path / "to_folder").close()


def test_a_missing_directory_is_accepted_and_not_created_before_a_write(tmp_path: Path) -> None:
    backend = FileStorageBackend(tmp_path / "new" / "state")
    backend.close()
    assert not (tmp_path / "new").exists()


async def test_orchestra_run_with_a_file_as_store_raises_naming_it(a_file: Path) -> None:
    """The reported case: ``state_manager=StateManager(FileStorageBackend("some_file"))``."""
    with pytest.raises(ConfigurationError, match=f"{a_file}: it is not a directory"):
        await Orchestra.run(
            "task",
            SOLO,
            agent_registry=solo(),
            context={"session_id": "s1"},
            execution_config=QUIET,
            state_manager=StateManager(FileStorageBackend(a_file)),
        )
    assert a_file.read_text() == CONTENT


# ---- at the first write ---------------------------------------------------------------------------


async def test_a_file_put_in_place_of_the_directory_later_fails_the_first_append(
    tmp_path: Path,
) -> None:
    backend = FileStorageBackend(tmp_path / "state")
    try:
        (tmp_path / "state").write_text(CONTENT)
        for write in (
            backend.append("s1", [record(1)], durable=True, after=0),
            backend.write_snapshot("s1", b"snapshot"),
        ):
            with pytest.raises(ConfigurationError) as error:
                await write
            assert f"cannot keep sessions in {tmp_path / 'state'}: it is not a directory" in str(
                error.value
            )
        assert (tmp_path / "state").read_text() == CONTENT
        with pytest.raises(SessionNotFoundError):
            await backend.read("s1")
        assert await backend.list_sessions() == []
        assert not await backend.exists("s1")
    finally:
        backend.close()


async def test_a_file_put_above_the_directory_later_is_named(tmp_path: Path) -> None:
    backend = FileStorageBackend(tmp_path / "data" / "state")
    try:
        (tmp_path / "data").write_text(CONTENT)
        with pytest.raises(ConfigurationError) as error:
            await backend.append("s1", [record(1)], durable=False, after=0)
        assert f"lies under {tmp_path / 'data'}, which is not a directory" in str(error.value)
    finally:
        backend.close()


async def test_a_dangling_link_as_the_directory_is_named(tmp_path: Path) -> None:
    (tmp_path / "state").symlink_to(tmp_path / "gone")
    backend = FileStorageBackend(tmp_path / "state")
    try:
        with pytest.raises(ConfigurationError, match=f"{tmp_path / 'state'}: it is not a dir"):
            await backend.append("s1", [record(1)], durable=True, after=0)
        assert not (tmp_path / "gone").exists()
    finally:
        backend.close()


async def test_a_file_named_like_a_session_fails_only_that_session(
    tmp_path: Path, storage: FileStorageBackend
) -> None:
    (tmp_path / "state").mkdir()
    in_the_way = tmp_path / "state" / "s1"
    in_the_way.write_text(CONTENT)
    for write in (
        storage.append("s1", [record(1)], durable=True, after=0),
        storage.write_snapshot("s1", b"snapshot"),
    ):
        with pytest.raises(ConfigurationError) as error:
            await write
        assert f"cannot store session 's1' in {in_the_way}: that path exists and is not a" in str(
            error.value
        )
    assert in_the_way.read_text() == CONTENT
    await storage.append("s2", [record(1)], durable=True, after=0)
    assert await storage.read("s2") == [record(1)]
    # moved away, the same backend stores the session
    os.rename(in_the_way, tmp_path / "moved")
    await storage.append("s1", [record(1)], durable=True, after=0)
    assert await storage.read("s1") == [record(1)]


async def test_orchestra_run_names_a_file_in_place_of_the_session_folder_and_can_run_again(
    tmp_path: Path, storage: FileStorageBackend
) -> None:
    (tmp_path / "state").mkdir()
    in_the_way = tmp_path / "state" / "report"
    in_the_way.write_text(CONTENT)
    with pytest.raises(ConfigurationError, match=f"session 'report' in {in_the_way}"):
        await run_session(storage, "report")
    in_the_way.unlink()
    result = await run_session(storage, "report")  # the session was let go
    assert result.success, result.error
    assert await storage.exists("report")


async def test_orchestra_run_names_a_directory_replaced_by_a_file(
    tmp_path: Path, storage: FileStorageBackend
) -> None:
    (tmp_path / "state").write_text(CONTENT)
    with pytest.raises(ConfigurationError, match=f"{tmp_path / 'state'}: it is not a directory"):
        await run_session(storage, "late")
    assert (tmp_path / "state").read_text() == CONTENT


# ---- unchanged where the path is fine -------------------------------------------------------------


async def test_a_missing_directory_is_created_by_the_first_write(tmp_path: Path) -> None:
    backend = FileStorageBackend(tmp_path / "new" / "state")
    try:
        await backend.append("s1", [record(1), record(2)], durable=True, after=0)
        await backend.write_snapshot("s1", b"snapshot")
        assert (tmp_path / "new" / "state" / "s1").is_dir()
        assert await backend.read("s1") == [record(1), record(2)]
        assert await backend.read_snapshot("s1") == b"snapshot"
        assert await backend.list_sessions() == ["s1"]
    finally:
        backend.close()
