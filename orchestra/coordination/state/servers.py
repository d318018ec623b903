"""Session logs on database servers: Redis and PostgreSQL (same protocol as the embedded ones).

Both take a ``namespace`` so several applications (or tests) can share one server. Clients are
created per event loop: a backend object may serve runs on different loops. Durability is the
server's: an append returns once the server acknowledged it (Redis with ``appendonly yes`` and
``appendfsync always`` fsyncs before acknowledging; PostgreSQL commits with its configured
``synchronous_commit``).

One writer at a time, across processes and machines: a session's writer holds a *lease* on the
server, taken by its first append and renewed by each append and by a background task every
third of ``lease_seconds``, until ``release``. Another writer is refused while the lease is
live. A holder whose process died loses its lease at once to a writer that can see that
process (see ``leases``), and after ``lease_seconds`` (30 by default) to any other. Every append
checks the lease in the same atomic step as the records, so a writer that lost its lease cannot
append.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Sequence
from typing import Any

from orchestra.errors import ConfigurationError, SessionNotFoundError

from .backends import another_writer, check_session_id, frame, stale_writer, unframe
from .leases import LEASE_SECONDS, Leases, abandoned

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
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[3] then
  return -1
end
local held = redis.call('LLEN', KEYS[1])
local after = tonumber(ARGV[2])
local count = #ARGV - 4
local ok = 1
if held == after then
  for first = 5, #ARGV, 1000 do
    redis.call('RPUSH', KEYS[1], unpack(ARGV, first, math.min(first + 999, #ARGV)))
  end
  redis.call('SADD', KEYS[2], ARGV[1])
elseif held < after + count then
  ok = 0
else
  local stored = redis.call('LRANGE', KEYS[1], after, after + count - 1)
  for i = 1, count do
    if stored[i] ~= ARGV[i + 4] then
      ok = 0
      break
    end
  end
end
if ok == 1 then
  redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
end
return ok
"""
"""Compare-and-append, atomic on the server: the records go in only when the list holds
exactly ``after`` of them (a retry finding them stored already succeeds), and only for the
holder of the session's lease (or when nobody holds it), which it takes or renews."""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) and 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_DELETE = """
local holder = redis.call('GET', KEYS[4])
if holder and holder ~= ARGV[2] and holder ~= ARGV[3] then
  return -1
end
local removed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2], KEYS[4])
redis.call('SREM', KEYS[3], ARGV[1])
return removed
"""


class RedisStorageBackend:
    """Each session a Redis list of checksummed records (``{namespace}:log:{session}``), its
    writer's lease (``{namespace}:writer:{session}``), and a set of session ids. Needs
    ``pip install 'orchestra[redis]'``."""

    def __init__(
        self, url: str, namespace: str = "orchestra", lease_seconds: float = LEASE_SECONDS
    ) -> None:
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
        self._leases = Leases(lease_seconds, self._renew)

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

    def _lease_key(self, session_id: str) -> str:
        return f"{self.namespace}:writer:{check_session_id(session_id)}"

    async def _run(self, source: str, keys: list[str], args: list[Any]) -> Any:
        client = self._client()
        scripts = self._scripts.get() or self._scripts.put({})
        script = scripts.get(source) or scripts.setdefault(source, client.register_script(source))
        return await script(keys=keys, args=args, client=client)

    async def append(
        self, session_id: str, records: Sequence[str], durable: bool, after: int
    ) -> None:
        keys = [self._key(session_id), f"{self.namespace}:sessions", self._lease_key(session_id)]
        if not records:
            return
        lines = [frame(record)[:-1] for record in records]
        leases = self._leases
        args = [session_id, after, leases.token, leases.milliseconds, *lines]
        done = await self._run(_APPEND, keys, args)
        if done == -1 and await self._take_over(session_id):
            done = await self._run(_APPEND, keys, args)
        if done == -1:
            raise another_writer(session_id)
        if not done:
            raise stale_writer(session_id, after)
        leases.hold(session_id)

    async def _take_over(self, session_id: str) -> bool:
        """Take the lease of a holder that died on this machine."""
        key = self._lease_key(session_id)
        holder = await self._client().get(key)
        if not abandoned(holder):
            return False
        leases = self._leases
        return bool(await self._run(_TAKE_OVER, [key], [holder, leases.token, leases.milliseconds]))

    async def _renew(self, session_id: str) -> bool:
        keys = [self._lease_key(session_id)]
        return bool(await self._run(_RENEW, keys, [self._leases.token, self._leases.milliseconds]))

    async def release(self, session_id: str) -> None:
        """Give up the session's lease: another writer may take the session up at once."""
        await self._leases.stop(session_id)
        await self._run(_RELEASE, [self._lease_key(session_id)], [self._leases.token])

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
        """Refused while another writer holds the session's lease."""
        keys = [
            self._key(session_id),
            self._snapshot_key(session_id),
            f"{self.namespace}:sessions",
            self._lease_key(session_id),
        ]
        await self._leases.stop(session_id)
        holder = await self._client().get(self._lease_key(session_id))
        gone = holder if abandoned(holder) else ""
        removed = await self._run(_DELETE, keys, [session_id, self._leases.token, gone])
        if removed == -1:
            raise another_writer(session_id)
        return bool(removed)

    def _snapshot_key(self, session_id: str) -> str:
        return f"{self.namespace}:snapshot:{check_session_id(session_id)}"

    async def write_snapshot(self, session_id: str, data: bytes) -> None:
        await self._client().set(self._snapshot_key(session_id), base64.b64encode(data).decode())

    async def read_snapshot(self, session_id: str) -> bytes | None:
        stored = await self._client().get(self._snapshot_key(session_id))
        return base64.b64decode(stored) if stored is not None else None


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
        self.table = f"{_check_namespace(namespace)}_log"
        self.snapshots = f"{namespace}_snapshot"
        self.writers = f"{namespace}_writer"
        self._pools = _PerLoop()
        self._leases = Leases(lease_seconds, self._renew)

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
                await connection.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.writers} (session TEXT PRIMARY KEY, "
                    "holder TEXT NOT NULL, expires TIMESTAMPTZ NOT NULL)"
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
        if not await self._append(pool, session_id, lines, after):
            if not await self._take_over(pool, session_id):
                raise another_writer(session_id)
            if not await self._append(pool, session_id, lines, after):
                raise another_writer(session_id)
        self._leases.hold(session_id)

    async def _append(self, pool: Any, session_id: str, lines: list[str], after: int) -> bool:
        """One compare-and-append under the session's lease; False when another holds it."""
        leases = self._leases
        async with pool.acquire() as connection, connection.transaction():
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
