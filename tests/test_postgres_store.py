"""The PostgreSQL backend on a real server (docs/sessions.md, "Storage backends"): a store one
role made is used by another that may only read and write its rows; a connection lost in the
middle of a call, and a password in the URL's options, as the other server failures are."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from storage_backends import close_connections
from test_storage import closed_port

from orchestra.coordination.state import PostgresStorageBackend
from orchestra.errors import StorageUnavailableError

ROWS_ONLY = "orchestra_rows_only"
WAIT = 60  # a bound on each wait: a hang fails the test, it never paces it


@pytest.fixture
async def admin(postgres_server: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(postgres_server)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def rows_only_role(admin: asyncpg.Connection) -> AsyncIterator[str]:
    """A login role with no privilege of its own: no ``CREATE`` on the schema (as PostgreSQL
    15 makes ``public``), owning nothing; the test grants it a store's rows."""
    await admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    await admin.execute(f"CREATE ROLE {ROWS_ONLY} LOGIN")
    try:
        yield ROWS_ONLY
    finally:
        await admin.execute(f"DROP OWNED BY {ROWS_ONLY}")
        await admin.execute(f"DROP ROLE {ROWS_ONLY}")


@pytest.mark.parametrize("may_create", [False, True], ids=["rows-only", "may-create-too"])
async def test_a_role_granted_only_the_rows_uses_a_store_another_role_made(
    postgres_server: str, admin: asyncpg.Connection, rows_only_role: str, may_create: bool
) -> None:
    """Its pools run no DDL on a made store: replacing the store's functions takes owning
    them (even for a role that may create in the schema), and ``CREATE TABLE IF NOT EXISTS``
    takes ``CREATE`` on the schema. Nor does the owner's next pool replace them."""
    if may_create:
        await admin.execute(f"GRANT CREATE ON SCHEMA public TO {rows_only_role}")
    namespace = f"rolesplit{int(may_create)}"
    owner = PostgresStorageBackend(postgres_server, namespace)
    user_dsn = postgres_server.replace("postgres@", f"{rows_only_role}@")
    user = PostgresStorageBackend(user_dsn, namespace)
    functions = (
        "SELECT oid, xmin::text, proowner::regrole::text FROM pg_proc "
        f"WHERE proname LIKE '{namespace}%' ORDER BY oid"
    )
    try:
        await owner.append("made", ['{"n":1}'], durable=True, after=0)
        await owner.release("made")
        made = await admin.fetch(functions)
        for table in (owner.table, owner.snapshots, owner.writers):
            await admin.execute(
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {rows_only_role}"
            )
        assert await user.read("made") == ['{"n":1}']
        await user.append("theirs", ['{"n":1}', '{"n":2}'], durable=True, after=0)
        await user.append("theirs", ['{"n":3}'], durable=True, after=2)
        await user.write_snapshot("theirs", b"snap")
        assert await user.read_snapshot("theirs") == b"snap"
        assert await user.exists("theirs") and await user.list_sessions() == ["made", "theirs"]
        await user.release("theirs")
        assert await owner.read("theirs") == ['{"n":1}', '{"n":2}', '{"n":3}']
        assert await user.delete("made") and not await owner.exists("made")
        again = PostgresStorageBackend(postgres_server, namespace)  # a new pool
        await again.append("again", ['{"n":1}'], durable=True, after=0)
        await again.release("again")
        await close_connections(again)
        assert len(made) == 2 and await admin.fetch(functions) == made
    finally:
        await close_connections(owner)
        await close_connections(user)


async def test_a_connection_lost_inside_delete_is_a_clear_error_and_deletes_nothing(
    postgres_server: str, admin: asyncpg.Connection
) -> None:
    """Lost while the delete waits in its transaction (for the session's lock): the same
    ``StorageUnavailableError`` as a server that does not answer, naming the call and the
    loss, not the driver's ``InterfaceError`` of a transaction on a closed connection."""
    storage = PostgresStorageBackend(postgres_server, "lostdelete")
    waiting = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    try:
        await storage.append("s", ['{"n":1}'], durable=True, after=0)
        await admin.execute("SELECT pg_advisory_lock(hashtext('s'))")
        deleting = asyncio.ensure_future(storage.delete("s"))
        async with asyncio.timeout(WAIT):
            while not (pids := await admin.fetch(waiting)):
                await asyncio.sleep(0.01)  # polls the server for the delete's wait
        await admin.execute("SELECT pg_terminate_backend($1)", pids[0]["pid"])
        with pytest.raises(StorageUnavailableError) as raised:
            await deleting
        message = str(raised.value)
        assert message.startswith(f"could not delete session 's': {storage!r} failed to answer")
        assert "terminating connection" in message
        await admin.execute("SELECT pg_advisory_unlock(hashtext('s'))")
        assert await storage.read("s") == ['{"n":1}']
    finally:
        await close_connections(storage)


async def test_a_key_passphrase_in_the_url_never_reaches_an_error() -> None:
    """``sslpassword`` (the client key's passphrase) is a password too: out of the backend's
    repr, hence of each error naming it."""
    url = f"postgresql://127.0.0.1:{closed_port()}/db?sslpassword=hunter3abc&application_name=x"
    storage = PostgresStorageBackend(url, "pw")
    assert repr(storage) == (
        f"PostgresStorageBackend('{url.replace('sslpassword=hunter3abc&', '')}', table='pw_log')"
    )
    with pytest.raises(StorageUnavailableError) as raised:
        await storage.read("s")
    assert "hunter3abc" not in str(raised.value)
