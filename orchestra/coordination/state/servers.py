"""Session logs on database servers: Redis and PostgreSQL (same protocol as the embedded ones).

Both take a ``namespace`` so several applications (or tests) can share one server. Clients are
created per event loop: a backend object may serve runs on different loops. Durability is the
server's: an append returns once the server acknowledged it (Redis with ``appendonly yes`` and
``appendfsync always`` fsyncs before acknowledging; PostgreSQL commits with its configured
``synchronous_commit``).
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Sequence
from typing import Any

from orchestra.errors import ConfigurationError, SessionNotFoundError

from .backends import check_session_id, frame, stale_writer, unframe

_NAMESPACE = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


def _check_namespace(namespace: str) -> str:
    if not _NAMESPACE.match(namespace):
        raise ConfigurationError(
            f"namespace {namespace!r} must be lower-case letters, digits and '_' (max 41)"
        )
    return namespace


class _PerLoop:
    """One client per running event loop (drivers bind their connections to a loop)."""

    def __init__(self) -> None:
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}

    def get(self) -> Any:
        return self._clients.get(asyncio.get_running_loop())

    def put(self, client: Any) -> Any:
        self._clients[asyncio.get_running_loop()] = client
        return client


_APPEND = """
local held = redis.call('LLEN', KEYS[1])
local after = tonumber(ARGV[2])
local count = #ARGV - 2
if held == after then
  for first = 3, #ARGV, 1000 do
    redis.call('RPUSH', KEYS[1], unpack(ARGV, first, math.min(first + 999, #ARGV)))
  end
  redis.call('SADD', KEYS[2], ARGV[1])
  return 1
end
if held < after + count then
  return 0
end
local stored = redis.call('LRANGE', KEYS[1], after, after + count - 1)
for i = 1, count do
  if stored[i] ~= ARGV[i + 2] then
    return 0
  end
end
return 1
"""
"""Compare-and-append, atomic on the server: the records go in only when the list holds
exactly ``after`` of them; a retry finding them stored already succeeds."""


class RedisStorageBackend:
    """Each session a Redis list of checksummed records (``{namespace}:log:{session}``), and
    a set of session ids. Needs ``pip install 'orchestra[redis]'``."""

    def __init__(self, url: str, namespace: str = "orchestra") -> None:
        try:
            import redis.asyncio  # noqa: F401 - fail here, not at the first append
        except ImportError:
            raise ConfigurationError(
                "RedisStorageBackend needs the 'redis' package: pip install 'orchestra[redis]'"
            ) from None
        self.url = url
        self.namespace = _check_namespace(namespace)
        self._clients = _PerLoop()
        self._scripts = _PerLoop()

    def __repr__(self) -> str:
        return f"RedisStorageBackend({self.url!r}, namespace={self.namespace!r})"

    def _client(self) -> Any:
        client = self._clients.get()
        if client is None:
            import redis.asyncio

            client = self._clients.put(redis.asyncio.from_url(self.url, decode_responses=True))
        return client

    def _key(self, session_id: str) -> str:
        return f"{self.namespace}:log:{check_session_id(session_id)}"

    async def append(
        self, session_id: str, records: Sequence[str], durable: bool, after: int
    ) -> None:
        keys = [self._key(session_id), f"{self.namespace}:sessions"]
        if not records:
            return
        lines = [frame(record)[:-1] for record in records]
        client = self._client()
        script = self._scripts.get() or self._scripts.put(client.register_script(_APPEND))
        if not await script(keys=keys, args=[session_id, after, *lines], client=client):
            raise stale_writer(session_id, after)

    async def release(self, session_id: str) -> None:
        """Nothing is held per session: each append is one atomic script."""

    async def read(self, session_id: str) -> list[str]:
        lines = await self._client().lrange(self._key(session_id), 0, -1)
        if not lines:
            raise SessionNotFoundError(f"no session {session_id!r} in {self!r}")
        return [unframe(session_id, f"record {n}", line) for n, line in enumerate(lines, start=1)]

    async def exists(self, session_id: str) -> bool:
        return bool(await self._client().exists(self._key(session_id)))

    async def list_sessions(self) -> list[str]:
        return sorted(await self._client().smembers(f"{self.namespace}:sessions"))

    async def delete(self, session_id: str) -> bool:
        client = self._client()
        removed = await client.delete(self._key(session_id))
        await client.delete(self._snapshot_key(session_id))
        await client.srem(f"{self.namespace}:sessions", session_id)
        return bool(removed)

    def _snapshot_key(self, session_id: str) -> str:
        return f"{self.namespace}:snapshot:{check_session_id(session_id)}"

    async def write_snapshot(self, session_id: str, data: bytes) -> None:
        await self._client().set(self._snapshot_key(session_id), base64.b64encode(data).decode())

    async def read_snapshot(self, session_id: str) -> bytes | None:
        stored = await self._client().get(self._snapshot_key(session_id))
        return base64.b64decode(stored) if stored is not None else None


class PostgresStorageBackend:
    """Sessions in a PostgreSQL table ``{namespace}_log`` (created on first use).
    Needs ``pip install 'orchestra[postgres]'`` (asyncpg)."""

    def __init__(self, dsn: str, namespace: str = "orchestra") -> None:
        try:
            import asyncpg  # noqa: F401
        except ImportError:
            raise ConfigurationError(
                "PostgresStorageBackend needs 'asyncpg': pip install 'orchestra[postgres]'"
            ) from None
        self.dsn = dsn
        self.table = f"{_check_namespace(namespace)}_log"
        self.snapshots = f"{namespace}_snapshot"
        self._pools = _PerLoop()

    def __repr__(self) -> str:
        return f"PostgresStorageBackend(table={self.table!r})"

    async def _pool(self) -> Any:
        pool = self._pools.get()
        if pool is None:
            import asyncpg

            pool = self._pools.put(await asyncpg.create_pool(self.dsn, min_size=1, max_size=4))
            async with pool.acquire() as connection:
                await connection.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.table} (session TEXT NOT NULL, "
                    "seq BIGINT NOT NULL, line TEXT NOT NULL, PRIMARY KEY (session, seq))"
                )
                await connection.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.snapshots} "
                    "(session TEXT PRIMARY KEY, data BYTEA NOT NULL)"
                )
        return pool

    async def append(
        self, session_id: str, records: Sequence[str], durable: bool, after: int
    ) -> None:
        check_session_id(session_id)
        if not records:
            return
        lines = [frame(record)[:-1] for record in records]
        pool = await self._pool()
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", session_id)
            held = await connection.fetchval(
                f"SELECT COALESCE(MAX(seq), 0) FROM {self.table} WHERE session = $1", session_id
            )
            if held == after:
                await connection.executemany(
                    f"INSERT INTO {self.table} (session, seq, line) VALUES ($1, $2, $3)",
                    [(session_id, after + n, line) for n, line in enumerate(lines, start=1)],
                )
                return
            stored = await connection.fetch(
                f"SELECT line FROM {self.table} WHERE session = $1 AND seq > $2 AND seq <= $3 "
                "ORDER BY seq",
                session_id,
                after,
                after + len(lines),
            )
            if [row["line"] for row in stored] != lines:  # else: a retry of a stored append
                raise stale_writer(session_id, after)

    async def release(self, session_id: str) -> None:
        """Nothing is held per session: each append is its own transaction."""

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
        the delete or all after it (then refused: its writer expected records)."""
        check_session_id(session_id)
        pool = await self._pool()
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", session_id)
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
