"""Session logs in PostgreSQL (the same protocol as the embedded backends).

A ``namespace`` lets several applications (or tests) share one server. Connection pools are
created per event loop: a backend object may serve runs on different loops. Durability is the
server's: an append returns once it committed, as durable as the server's
``synchronous_commit`` makes it. The appends of many sessions share commits (one WAL flush):
those queued while one is in flight go together in the next transaction (see :mod:`.batching`).

One writer at a time, across processes and machines: a session's writer holds a lease on the
server, checked in the same atomic step as each append (see :mod:`.leases`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from orchestra.errors import ConfigurationError, SessionError, SessionNotFoundError

from .backends import (
    PerLoop,
    another_writer,
    check_namespace,
    check_session_id,
    frame,
    stale_writer,
    unframe,
)
from .batching import Batches
from .leases import LEASE_SECONDS, Leases, abandoned

_Append = tuple[str, list[str], int]
"""An append: its session, its records' lines, and how many records it expects before them."""


class PostgresStorageBackend:
    """Sessions in a PostgreSQL table ``{namespace}_log``, their writers' leases in
    ``{namespace}_writer`` (created on first use). Needs ``pip install 'orchestra[postgres]'``
    (asyncpg)."""

    def __init__(
        self, dsn: str, namespace: str = "orchestra", lease_seconds: float = LEASE_SECONDS
    ) -> None:
        try:
            import asyncpg  # noqa: F401
        except ImportError:
            raise ConfigurationError(
                "PostgresStorageBackend needs 'asyncpg': pip install 'orchestra[postgres]'"
            ) from None
        self.dsn = dsn
        self.table = f"{check_namespace(namespace)}_log"
        self.snapshots = f"{namespace}_snapshot"
        self.writers = f"{namespace}_writer"
        self._pools = PerLoop()
        self._making = PerLoop()  # the lock its first callers on a loop take to make a pool
        self._leases = Leases(lease_seconds, self._renew)
        self._appends: Batches[_Append, bool] = Batches(self._send_appends)

    def __repr__(self) -> str:
        return f"PostgresStorageBackend(table={self.table!r})"

    async def _pool(self) -> Any:
        """The pool of the running event loop, made (with the tables) by its first caller.
        The calls that come while it is being made wait for it: a pool handed out before its
        tables existed failed their first statements (``relation ... does not exist``), and
        each one made a pool of its own besides."""
        pool = self._pools.get()
        if pool is None:
            making = self._making.get() or self._making.put(asyncio.Lock())
            async with making:
                pool = self._pools.get()
                if pool is None:
                    pool = self._pools.put(await self._new_pool())
        return pool

    async def _new_pool(self) -> Any:
        import asyncpg

        pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
        try:
            async with pool.acquire() as connection:
                await connection.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.table} (session TEXT NOT NULL, "
                    "seq BIGINT NOT NULL, line TEXT NOT NULL, PRIMARY KEY (session, seq))"
                )
                await connection.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.snapshots} "
                    "(session TEXT PRIMARY KEY, data BYTEA NOT NULL)"
                )
                await connection.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.writers} (session TEXT PRIMARY KEY, "
                    "holder TEXT NOT NULL, expires TIMESTAMPTZ NOT NULL)"
                )
        except BaseException:
            await pool.close()
            raise
        return pool

    async def append(
        self, session_id: str, records: Sequence[str], durable: bool, after: int
    ) -> None:
        check_session_id(session_id)
        if not records:
            return
        lines = [frame(record)[:-1] for record in records]
        pool = await self._pool()
        if not await self._appends.submit((session_id, lines, after)):
            if not await self._take_over(pool, session_id):
                raise another_writer(session_id)
            if not await self._append(pool, session_id, lines, after):
                raise another_writer(session_id)
        self._leases.hold(session_id)

    async def _send_appends(self, batch: list[_Append]) -> list[bool | Exception]:
        """One commit (one WAL flush) for the batch: a lone append in a transaction of its
        own, several in one transaction, each in a savepoint of its own, so that one refused
        (or failed on the server) is rolled back alone. An error that leaves the transaction
        unfinished (a lost connection) fails them all, and none is stored."""
        import asyncpg

        pool = await self._pool()
        if len(batch) == 1:
            return [await self._append(pool, *batch[0])]
        results: list[bool | Exception] = []
        async with pool.acquire() as connection, connection.transaction():
            for session_id, lines, after in batch:
                try:
                    async with connection.transaction():
                        results.append(await self._append_in(connection, session_id, lines, after))
                except (SessionError, asyncpg.PostgresError) as error:
                    results.append(error)
        return results

    async def _append(self, pool: Any, session_id: str, lines: list[str], after: int) -> bool:
        """One compare-and-append in a transaction of its own."""
        async with pool.acquire() as connection, connection.transaction():
            return await self._append_in(connection, session_id, lines, after)

    async def _append_in(
        self, connection: Any, session_id: str, lines: list[str], after: int
    ) -> bool:
        """One compare-and-append under the session's lease; False when another holds it."""
        leases = self._leases
        await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", session_id)
        claimed, held = await connection.fetchrow(
            f"WITH claim AS (INSERT INTO {self.writers} AS held (session, holder, expires) "
            "VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3)) "
            "ON CONFLICT (session) DO UPDATE SET holder = EXCLUDED.holder, "
            "expires = EXCLUDED.expires WHERE held.holder = EXCLUDED.holder "
            "OR held.expires < clock_timestamp() RETURNING 1) "
            "SELECT EXISTS (SELECT 1 FROM claim), "
            f"(SELECT COALESCE(MAX(seq), 0) FROM {self.table} WHERE session = $1)",
            session_id,
            leases.token,
            leases.seconds,
        )  # one round trip: the lease taken or renewed, and the records held
        if not claimed:
            return False
        if held == after:
            await connection.executemany(
                f"INSERT INTO {self.table} (session, seq, line) VALUES ($1, $2, $3)",
                [(session_id, after + n, line) for n, line in enumerate(lines, start=1)],
            )
            return True
        stored = await connection.fetch(
            f"SELECT line FROM {self.table} WHERE session = $1 AND seq > $2 AND seq <= $3 "
            "ORDER BY seq",
            session_id,
            after,
            after + len(lines),
        )
        if [row["line"] for row in stored] != lines:  # else: a retry of a stored append
            raise stale_writer(session_id, after)
        return True

    async def _take_over(self, pool: Any, session_id: str) -> bool:
        """Take the lease of a holder that died on this machine."""
        holder = await pool.fetchval(
            f"SELECT holder FROM {self.writers} WHERE session = $1", session_id
        )
        if not abandoned(holder):
            return False
        status = await pool.execute(
            f"UPDATE {self.writers} SET holder = $3, "
            "expires = clock_timestamp() + make_interval(secs => $4) "
            "WHERE session = $1 AND holder = $2",
            session_id,
            holder,
            self._leases.token,
            self._leases.seconds,
        )
        return str(status) == "UPDATE 1"

    async def _renew(self, session_id: str) -> bool:
        pool = await self._pool()
        status = await pool.execute(
            f"UPDATE {self.writers} "
            "SET expires = clock_timestamp() + make_interval(secs => $3) "
            "WHERE session = $1 AND holder = $2",
            session_id,
            self._leases.token,
            self._leases.seconds,
        )
        return str(status) == "UPDATE 1"

    async def release(self, session_id: str) -> None:
        """Give up the session's lease: another writer may take the session up at once."""
        check_session_id(session_id)
        await self._leases.stop(session_id)
        pool = await self._pool()
        await pool.execute(
            f"DELETE FROM {self.writers} WHERE session = $1 AND holder = $2",
            session_id,
            self._leases.token,
        )

    async def read(self, session_id: str) -> list[str]:
        check_session_id(session_id)
        pool = await self._pool()
        rows = await pool.fetch(
            f"SELECT seq, line FROM {self.table} WHERE session = $1 ORDER BY seq", session_id
        )
        if not rows:
            raise SessionNotFoundError(f"no session {session_id!r} in {self!r}")
        return [unframe(session_id, f"record {row['seq']}", row["line"]) for row in rows]

    async def exists(self, session_id: str) -> bool:
        check_session_id(session_id)
        pool = await self._pool()
        found = await pool.fetchval(
            f"SELECT 1 FROM {self.table} WHERE session = $1 LIMIT 1", session_id
        )
        return found is not None

    async def list_sessions(self) -> list[str]:
        pool = await self._pool()
        rows = await pool.fetch(f"SELECT DISTINCT session FROM {self.table} ORDER BY session")
        return [row["session"] for row in rows]

    async def delete(self, session_id: str) -> bool:
        """Under the session's advisory lock, so an append in progress is either all before
        the delete or all after it (then refused: its writer expected records); refused while
        another writer holds the session's lease."""
        check_session_id(session_id)
        await self._leases.stop(session_id)
        pool = await self._pool()
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", session_id)
            holder = await connection.fetchval(
                f"SELECT holder FROM {self.writers} "
                "WHERE session = $1 AND expires > clock_timestamp()",
                session_id,
            )
            if holder is not None and holder != self._leases.token and not abandoned(holder):
                raise another_writer(session_id)
            await connection.execute(f"DELETE FROM {self.writers} WHERE session = $1", session_id)
            await connection.execute(f"DELETE FROM {self.snapshots} WHERE session = $1", session_id)
            status = await connection.execute(
                f"DELETE FROM {self.table} WHERE session = $1", session_id
            )
        return not status.endswith(" 0")

    async def write_snapshot(self, session_id: str, data: bytes) -> None:
        check_session_id(session_id)
        pool = await self._pool()
        await pool.execute(
            f"INSERT INTO {self.snapshots} (session, data) VALUES ($1, $2) "
            "ON CONFLICT (session) DO UPDATE SET data = EXCLUDED.data",
            session_id,
            data,
        )

    async def read_snapshot(self, session_id: str) -> bytes | None:
        check_session_id(session_id)
        pool = await self._pool()
        data = await pool.fetchval(
            f"SELECT data FROM {self.snapshots} WHERE session = $1", session_id
        )
        return bytes(data) if data is not None else None
