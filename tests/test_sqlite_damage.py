"""A damaged SQLite session store: damage is reported as damage, for the session it reaches,
whenever it happened, and a session it does not reach still reads, starts and is absent when it
is absent. Damage is made by writing into the file (``sqlite_store_damaged_at``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from storage_backends import sqlite_store_damaged_at
from test_sessions import wait

from orchestra import AgentRegistry, FunctionAgent
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.errors import SessionCorruptedError, SessionNotFoundError


def step(number: int) -> str:
    return json.dumps({"t": "step", "s": number, "pad": "x" * 300})


LOG = [step(number) for number in range(1, 30)]


async def three_sessions(path: Path, snapshots: bool = False) -> None:
    """alpha, beta and gamma, 29 appends each (and a snapshot each, when asked)."""
    storage = SQLiteStorageBackend(path)
    try:
        for session_id in ("alpha", "beta", "gamma"):
            for number, record in enumerate(LOG):
                await storage.append(session_id, [record], True, number)
            if snapshots:
                await storage.write_snapshot(session_id, session_id.encode() * 200)
    finally:
        storage.close()


async def test_damage_done_after_a_miss_was_checked_is_still_damage(tmp_path: Path) -> None:
    """The file's soundness was once checked for the backend's life, on its first miss (and
    every new session is a miss): an index damaged later hid alpha, which a read then
    reported absent. A miss is now decided by the table itself."""
    path = tmp_path / "state.db"
    await three_sessions(path)
    storage = SQLiteStorageBackend(path)
    try:
        assert not await storage.exists("nobody")  # a new session: the file is sound
        sqlite_store_damaged_at(path, "alpha", "index")
        with pytest.raises(
            SessionCorruptedError, match=rf"'alpha'.*store {path} is damaged.*index does not find"
        ):
            await storage.read("alpha")
        with pytest.raises(SessionNotFoundError, match="'nobody'"):
            await storage.read("nobody")
        assert await storage.read("beta") == LOG
    finally:
        storage.close()


async def test_get_result_and_restore_checkpoint_report_damage_not_absence(
    tmp_path: Path,
) -> None:
    """They asked ``exists`` first, which can miss a session a damaged index hides, and said
    None / False; now they load the session, and only a session not there is None / False."""
    path = tmp_path / "state.db"
    storage = SQLiteStorageBackend(path)
    try:
        orchestra = OrchestraInstance(
            {"nodes": ["A", "B"], "edges": ["A -> B"]},
            agent_registry=AgentRegistry(
                [
                    FunctionAgent("A", lambda task, context: "b", register=False),
                    FunctionAgent("B", lambda work, context: "ok", register=False),
                ]
            ),
            state_manager=StateManager(storage, auto_save_interval=0),
        )
        for session_id in ("alpha", "beta"):
            assert (await wait(orchestra.execute("t", context={"session_id": session_id}))).success
        checkpoint = await orchestra.create_checkpoint("alpha", "done")
        sqlite_store_damaged_at(path, "alpha", "index")
        with pytest.raises(SessionCorruptedError, match=rf"'alpha'.*store {path} is damaged"):
            await orchestra.get_result("alpha")
        with pytest.raises(SessionCorruptedError, match=rf"'alpha'.*store {path} is damaged"):
            await orchestra.restore_checkpoint(checkpoint)
        assert await orchestra.get_result("nobody") is None
        assert not await orchestra.restore_checkpoint(checkpoint.replace("alpha", "nobody", 1))
        assert await orchestra.get_result("beta") is not None
    finally:
        storage.close()


@pytest.mark.parametrize("where", ["header", "schema"])
async def test_a_damaged_header_or_first_page_is_damage_not_the_wrong_file(
    tmp_path: Path, where: str
) -> None:
    """Was ``ConfigurationError: cannot use X as a session store`` (the command line's exit
    code 2, "the command line is wrong"); a file that never was a store still is that."""
    path = tmp_path / "state.db"
    await three_sessions(path)
    sqlite_store_damaged_at(path, "alpha", where)
    storage = SQLiteStorageBackend(path)
    try:
        calls = {
            "alpha": lambda: storage.read("alpha"),
            "new": lambda: storage.exists("new"),
            "newer": lambda: storage.append("newer", [step(1)], True, 0),
        }
        for session_id, call in calls.items():
            with pytest.raises(SessionCorruptedError, match=rf"'{session_id}'.*store {path} is"):
                await call()
        with pytest.raises(SessionCorruptedError, match=rf"store {path} is damaged"):
            await storage.list_sessions()
    finally:
        storage.close()


async def test_a_new_session_starts_in_a_store_damaged_elsewhere(tmp_path: Path) -> None:
    """A damaged snapshot page made every unknown id damaged (the whole file's verdict), so no
    new session could start there; the table that holds logs is whole, and says it is new."""
    path = tmp_path / "state.db"
    await three_sessions(path, snapshots=True)
    sqlite_store_damaged_at(path, "alpha", "snapshot")
    storage = SQLiteStorageBackend(path)
    try:
        assert await storage.damage()
        assert not await storage.exists("new")
        with pytest.raises(SessionNotFoundError, match="'new'"):
            await storage.read("new")
        await storage.append("new", [step(1)], True, 0)
        assert await storage.exists("new") and await storage.read("new") == [step(1)]
        assert await storage.read("alpha") == LOG
        with pytest.raises(SessionCorruptedError, match=rf"'alpha'.*store {path} is damaged"):
            await storage.read_snapshot("alpha")
    finally:
        storage.close()


async def test_a_session_the_damage_reaches_is_not_deleted_in_part(tmp_path: Path) -> None:
    """Its log's page is damaged: its snapshot was deleted, then the log's delete failed; now
    both go in one transaction, and the error says nothing of the session was deleted."""
    path = tmp_path / "state.db"
    await three_sessions(path)
    sqlite_store_damaged_at(path, "alpha", "rows")
    storage = SQLiteStorageBackend(path)
    try:
        await storage.write_snapshot("alpha", b"kept")
        with pytest.raises(SessionCorruptedError, match=r"'alpha'.*nothing of it was deleted"):
            await storage.delete("alpha")
        assert await storage.read_snapshot("alpha") == b"kept"
        assert await storage.delete("beta")
        assert await storage.list_sessions() == ["alpha", "gamma"]
    finally:
        storage.close()
