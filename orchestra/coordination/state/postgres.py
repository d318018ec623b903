"""Session logs in PostgreSQL (the same protocol as the embedded backends).

A ``namespace`` lets several applications (or tests) share one server. Connection pools are
created per event loop: a backend object may serve runs on different loops. Durability is the
server's: an append returns once it committed, as durable as the server's
``synchronous_commit`` makes it. The appends of many sessions share commits (one WAL flush):
those queued while one is in flight go together in the next transaction (see :mod:`.batching`).
An append, or a batch of them, is one statement and one round trip: a function on the server
(made with the tables) does the compare-and-append, so no append waits on a round trip while
it holds its session's lock.

One writer at a time, across processes and machines: a session's writer holds a lease on the
server, checked in the same atomic step as each append (see :mod:`.leases`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from orchestra.errors import ConfigurationError, SessionNotFoundError
from orchestra.models.secrets import url_without_credentials

from .backends import (
    PerLoop,
    another_writer,
    check_namespace,
    check_session_id,
    frame,
    stale_writer,
    unframe,
    unreachable,
)
from .batching import Batches
from .leases import LEASE_SECONDS, Leases, abandoned

_Append = tuple[str, list[str], int]
"""An append: its session, its records' lines, and how many records it expects before them."""

_STORED, _TAKEN, _STALE = 1, 0, -1
"""A compare-and-append's outcomes: stored (or found stored: an exact retry), refused for the
lease another writer holds, refused for records another writer appended (or a delete)."""

_APPEND = """
CREATE FUNCTION {table}_append_v1(
  sid TEXT, expected BIGINT, new_lines TEXT[], token TEXT, secs FLOAT8
) RETURNS INT LANGUAGE plpgsql AS $$
DECLARE
  held BIGINT;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtext(sid));
  SELECT COALESCE(MAX(seq), 0) INTO held FROM {table} WHERE session = sid;
  IF held <> expected AND new_lines IS DISTINCT FROM ARRAY(
    SELECT line FROM {table}
    WHERE session = sid AND seq > expected AND seq <= expected + cardinality(new_lines)
    ORDER BY seq
  ) THEN
    PERFORM 1 FROM {writers}
    WHERE session = sid AND holder <> token AND expires >= clock_timestamp();
    RETURN CASE WHEN FOUND THEN 0 ELSE -1 END;
  END IF;
  INSERT INTO {writers} AS w (session, holder, expires)
  VALUES (sid, token, clock_timestamp() + make_interval(secs => secs))
  ON CONFLICT (session) DO UPDATE SET holder = EXCLUDED.holder, expires = EXCLUDED.expires
  WHERE w.holder = EXCLUDED.holder OR w.expires < clock_timestamp();
  IF NOT FOUND THEN
    RETURN 0;
  END IF;
  IF held = expected THEN
    INSERT INTO {table} (session, seq, line)
    SELECT sid, expected + n, line FROM unnest(new_lines) WITH ORDINALITY AS u(line, n);
  END IF;
  RETURN 1;
END $$
"""
"""Compare-and-append, atomic on the server under the session's advisory lock (each statement
of a function sees what committed before it: what the lock's previous holder wrote): the
records go in only when the session holds exactly ``expected`` records (a retry finding them
stored already succeeds), and only for the holder of the session's lease (or when nobody
holds it, or it expired), which it takes or renews. A refused append changes nothing; one
refused while another holds the lease says so (``0``: a holder that died may be taken over)."""

_APPENDS = """
CREATE FUNCTION {table}_appends_v1(
  sids TEXT[], expecteds BIGINT[], counts INT[], all_lines TEXT[], token TEXT, secs FLOAT8,
  OUT outcomes INT[], OUT codes TEXT[], OUT messages TEXT[]
) LANGUAGE plpgsql AS $$
DECLARE
  start_at INT := 1;
BEGIN
  outcomes := array_fill(NULL::INT, ARRAY[cardinality(sids)]);
  codes := array_fill(NULL::TEXT, ARRAY[cardinality(sids)]);
  messages := codes;
  FOR i IN 1 .. cardinality(sids) LOOP
    BEGIN
      outcomes[i] := {table}_append_v1(
        sids[i], expecteds[i], all_lines[start_at : start_at + counts[i] - 1], token, secs
      );
    EXCEPTION WHEN OTHERS THEN
      outcomes[i] := NULL;
      codes[i] := SQLSTATE;
      messages[i] := SQLERRM;
    END;
    start_at := start_at + counts[i];
  END LOOP;
END $$
"""
"""Many compare-and-appends in one statement: each in a subtransaction of its own (a block
with an exception handler), so that one that fails on the server is rolled back alone and
answers with its error (``codes``, ``messages``); the others are committed together."""


async def _as_left(connection: Any) -> None:
    """A connection handed back to the pool is kept as it is (asyncpg still ends a transaction
    left open): the backend changes no session state (no settings, cursors, listeners or
    session-level locks: its advisory locks end with their transactions), and the default
    reset (``RESET ALL``, ``UNLISTEN *``...) cost a round trip after every call."""


def _connection_failure(error: BaseException) -> BaseException | None:
    """The connection's failure ``error`` is, or None for the server refusing the statement
    (or a fault here). A connection lost inside a transaction surfaces as the
    ``InterfaceError`` of its closing ("the underlying connection is closed"), raised while
    the loss itself is handled: the loss is the failure."""
    import asyncpg

    failures = (
        OSError,
        asyncpg.PostgresConnectionError,
        asyncpg.InvalidAuthorizationSpecificationError,
        asyncpg.CannotConnectNowError,
        asyncpg.TooManyConnectionsError,
    )
    if isinstance(error, asyncpg.InterfaceError) and error.__context__ is not None:
        return _connection_failure(error.__context__)
    return error if isinstance(error, failures) else None


POOL_CLOSE_SECONDS = 5.0  # for a loop's pool to close, as the loop ends, before it is dropped


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
        self._appends: Batches[_Append, int] = Batches(self._send_appends)

    def __repr__(self) -> str:
        """Shown in errors and logs: the server without credentials."""
        return (
            f"PostgresStorageBackend({url_without_credentials(self.dsn)!r}, table={self.table!r})"
        )

    @contextmanager
    def _answering(self, doing: str) -> Iterator[None]:
        """A call's connection failure (refused, lost, timed out, its credentials refused, the
        server starting or full) as a clear error naming what was being done and the server.
        Not an append's: a writer sends a failed append again, and takes a ``SessionError``
        from it for a refusal."""
        try:
            yield
        except Exception as error:
            failure = _connection_failure(error)
            if failure is None:
                raise
            raise unreachable(doing, repr(self), failure) from error

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
                    pool = await self._pools.put_closed_at_end(await self._new_pool(), _close_pool)
        return pool

    async def _new_pool(self) -> Any:
        import asyncpg

        pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4, reset=_as_left)
        try:
            async with pool.acquire() as connection:
                if await self._missing(connection):
                    await self._make(connection)
        except BaseException:
            await pool.close()
            raise
        return pool

    async def _missing(self, connection: Any) -> list[str]:
        """The store's tables and functions not in the schema it makes them in: none once the
        store is made, and then a pool runs no DDL, so a role granted only the tables' rows
        (no ``CREATE`` on the schema, owning nothing) uses a store another role made."""
        tables = [self.table, self.snapshots, self.writers]
        functions = [f"{self.table}_append_v1", f"{self.table}_appends_v1"]
        found = await connection.fetch(
            "SELECT relname AS name FROM pg_class WHERE relname = ANY($1) "
            "AND relnamespace = current_schema()::regnamespace "
            "UNION SELECT proname FROM pg_proc WHERE proname = ANY($2) "
            "AND pronamespace = current_schema()::regnamespace",
            tables,
            functions,
        )
        there = {row["name"] for row in found}
        return [name for name in [*tables, *functions] if name not in there]

    async def _make(self, connection: Any) -> None:
        """Make what is missing, one process at a time (two that made the tables or functions
        at once failed). Functions are made only when absent, never replaced: replacing one
        takes owning it, which any other role using the store lacks. A function changed by a
        later release gets a new versioned name (``_v2``), so old and new run side by side."""
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1), 0)", self.table)
            missing = await self._missing(connection)  # as the lock's last holder left them
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
            names = {"table": self.table, "writers": self.writers}
            for function, text in (
                (f"{self.table}_append_v1", _APPEND),
                (f"{self.table}_appends_v1", _APPENDS),
            ):
                if function in missing:
                    await connection.execute(text.format_map(names))

    async def append(
        self, session_id: str, records: Sequence[str], durable: bool, after: int
    ) -> None:
        check_session_id(session_id)
        if not records:
            return
        lines = [frame(record)[:-1] for record in records]
        await self._pool()
        outcome = await self._appends.submit((session_id, lines, after))
        if outcome == _TAKEN:
            pool = await self._pool()
            if not await self._take_over(pool, session_id):
                raise another_writer(session_id)
            outcome = await self._append(pool, session_id, lines, after)
        if outcome == _TAKEN:
            raise another_writer(session_id)
        if outcome == _STALE:
            raise stale_writer(session_id, after)
        self._leases.hold(session_id)

    async def _send_appends(self, batch: list[_Append]) -> list[int | Exception]:
        """One statement, one round trip and one commit (one WAL flush) for the batch: a lone
        append calls the compare-and-append function, several call it through the batch
        function, each in a subtransaction of its own on the server, so that one that fails
        there is rolled back alone; a refused one changes nothing. An error that leaves the
        statement unfinished (a lost connection) fails them all, and none is stored."""
        import asyncpg

        pool = await self._pool()
        if len(batch) == 1:
            return [await self._append(pool, *batch[0])]
        order = sorted(range(len(batch)), key=lambda n: batch[n][0])  # locks in one order
        sent = [batch[n] for n in order]
        outcomes, codes, messages = await pool.fetchrow(
            f"SELECT * FROM {self.table}_appends_v1($1, $2, $3, $4, $5, $6)",
            [session_id for session_id, _, _ in sent],
            [after for _, _, after in sent],
            [len(lines) for _, lines, _ in sent],
            [line for _, lines, _ in sent for line in lines],
            self._leases.token,
            self._leases.seconds,
        )
        results: list[int | Exception] = [0] * len(batch)
        for n, outcome, code, message in zip(order, outcomes, codes, messages, strict=True):
            results[n] = (
                outcome
                if code is None
                else asyncpg.PostgresError.new({"C": code, "M": message, "S": "ERROR"})
            )
        return results

    async def _append(self, pool: Any, session_id: str, lines: list[str], after: int) -> int:
        """One compare-and-append, in a statement (a transaction) of its own."""
        outcome: int = await pool.fetchval(
            f"SELECT {self.table}_append_v1($1, $2, $3, $4, $5)",
            session_id,
            after,
            lines,
            self._leases.token,
            self._leases.seconds,
        )
        return outcome

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
        with self._answering(f"release session {session_id!r}"):
            pool = await self._pool()
            await pool.execute(
                f"DELETE FROM {self.writers} WHERE session = $1 AND holder = $2",
                session_id,
                self._leases.token,
            )

    async def read(self, session_id: str) -> list[str]:
        check_session_id(session_id)
        with self._answering(f"read session {session_id!r}"):
            pool = await self._pool()
            rows = await pool.fetch(
                f"SELECT seq, line FROM {self.table} WHERE session = $1 ORDER BY seq", session_id
            )
        if not rows:
            raise SessionNotFoundError(f"no session {session_id!r} in {self!r}")
        return [unframe(session_id, f"record {row['seq']}", row["line"]) for row in rows]

    async def exists(self, session_id: str) -> bool:
        check_session_id(session_id)
        with self._answering(f"look for session {session_id!r}"):
            pool = await self._pool()
            found = await pool.fetchval(
                f"SELECT 1 FROM {self.table} WHERE session = $1 LIMIT 1", session_id
            )
        return found is not None

    async def list_sessions(self) -> list[str]:
        with self._answering("list the sessions"):
            pool = await self._pool()
            rows = await pool.fetch(f"SELECT DISTINCT session FROM {self.table} ORDER BY session")
        return [row["session"] for row in rows]

    async def delete(self, session_id: str) -> bool:
        """Under the session's advisory lock, so an append in progress is either all before
        the delete or all after it (then refused: its writer expected records); refused while
        another writer holds the session's lease."""
        check_session_id(session_id)
        await self._leases.stop(session_id)
        with self._answering(f"delete session {session_id!r}"):
            return await self._delete(await self._pool(), session_id)

    async def _delete(self, pool: Any, session_id: str) -> bool:
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
        with self._answering(f"store a snapshot of session {session_id!r}"):
            pool = await self._pool()
            await pool.execute(
                f"INSERT INTO {self.snapshots} (session, data) VALUES ($1, $2) "
                "ON CONFLICT (session) DO UPDATE SET data = EXCLUDED.data",
                session_id,
                data,
            )

    async def read_snapshot(self, session_id: str) -> bytes | None:
        check_session_id(session_id)
        with self._answering(f"read the snapshot of session {session_id!r}"):
            pool = await self._pool()
            data = await pool.fetchval(
                f"SELECT data FROM {self.snapshots} WHERE session = $1", session_id
            )
        return bytes(data) if data is not None else None


async def _close_pool(pool: Any) -> None:
    """As the pool's loop ends: its connections closed, or dropped when one is not given back
    in time (a task cancelled while holding it)."""
    try:
        await asyncio.wait_for(pool.close(), POOL_CLOSE_SECONDS)
    except (TimeoutError, OSError):
        pool.terminate()
