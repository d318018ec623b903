"""Session logs in Redis (the same protocol as the embedded backends).

A ``namespace`` lets several applications (or tests) share one server. Clients are created per
event loop: a backend object may serve runs on different loops. Durability is the server's: an
append returns once Redis acknowledged it (with ``appendonly yes`` and ``appendfsync always``
it fsyncs before acknowledging). The appends of many sessions share round trips: those queued
while one is in flight go together in the next, as a pipeline (see :mod:`.batching`).

One writer at a time, across processes and machines: a session's writer holds a lease on the
server, checked in the same atomic step as each append (see :mod:`.leases`).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from orchestra.errors import ConfigurationError, SessionNotFoundError
from orchestra.models.secrets import redact

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

MAX_CONNECTIONS = 64
"""Connections a backend object opens to the server per event loop. A call that finds them
all busy waits for one (up to :data:`CONNECTION_WAIT` seconds) rather than opening more: a
thousand sessions on one loop need a few connections, not one each (their appends share
round trips anyway), and the server's and the process's descriptors stay bounded."""

CONNECTION_WAIT = 60.0

_Append = tuple[list[str], list[Any]]
"""An append's script call: its keys and arguments."""

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

_APPEND_SHA = hashlib.sha1(_APPEND.encode()).hexdigest()

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
        self.namespace = check_namespace(namespace)
        self._clients = PerLoop()
        self._scripts = PerLoop()
        self._leases = Leases(lease_seconds, self._renew)
        self._appends: Batches[_Append, int] = Batches(self._send_appends)

    def __repr__(self) -> str:
        """Shown in errors (``SessionNotFoundError``) and logs: the URL's password masked."""
        return f"RedisStorageBackend({redact(self.url)!r}, namespace={self.namespace!r})"

    async def _client(self) -> Any:
        """The running loop's client, its connections closed as the loop ends."""
        client = self._clients.get()
        if client is None:
            import redis.asyncio

            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self.url,
                max_connections=MAX_CONNECTIONS,
                timeout=CONNECTION_WAIT,
                decode_responses=True,
            )
            client = await self._clients.put_closed_at_end(
                redis.asyncio.Redis(connection_pool=pool), _close_client
            )
        return client

    def _key(self, session_id: str) -> str:
        return f"{self.namespace}:log:{check_session_id(session_id)}"

    def _lease_key(self, session_id: str) -> str:
        return f"{self.namespace}:writer:{check_session_id(session_id)}"

    async def _run(self, source: str, keys: list[str], args: list[Any]) -> Any:
        client = await self._client()
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
        done = await self._appends.submit((keys, args))
        if done == -1 and await self._take_over(session_id):
            done = await self._run(_APPEND, keys, args)
        if done == -1:
            raise another_writer(session_id)
        if not done:
            raise stale_writer(session_id, after)
        leases.hold(session_id)

    async def _send_appends(self, batch: list[_Append]) -> list[int | Exception]:
        """One round trip: a lone append as a script call, several as a pipeline of them (not
        a transaction: each script is atomic, and each answers for itself). Those the server
        refused as ``NOSCRIPT`` (its script cache was flushed) did not run: they are sent
        again once the script is loaded."""
        if len(batch) == 1:
            return [await self._run(_APPEND, *batch[0])]
        from redis.exceptions import NoScriptError

        client = await self._client()
        replies = await self._pipeline(client, batch)
        unloaded = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if unloaded:
            await client.script_load(_APPEND)
            again = await self._pipeline(client, [batch[n] for n in unloaded])
            for n, reply in zip(unloaded, again, strict=True):
                replies[n] = reply
        return replies

    @staticmethod
    async def _pipeline(client: Any, batch: list[_Append]) -> list[Any]:
        pipeline = client.pipeline(transaction=False)
        for keys, args in batch:
            pipeline.evalsha(_APPEND_SHA, len(keys), *keys, *args)
        return list(await pipeline.execute(raise_on_error=False))

    async def _take_over(self, session_id: str) -> bool:
        """Take the lease of a holder that died on this machine."""
        key = self._lease_key(session_id)
        client = await self._client()
        holder = await client.get(key)
        if not abandoned(holder):
            return False
        leases = self._leases
        return bool(await self._run(_TAKE_OVER, [key], [holder, leases.token, leases.milliseconds]))

    async def _renew(self, session_id: str) -> bool:
        keys = [self._lease_key(session_id)]
        return bool(await self._run(_RENEW, keys, [self._leases.token, self._leases.milliseconds]))

    @contextmanager
    def _answering(self, doing: str) -> Iterator[None]:
        """A call's connection failure (refused, lost, timed out, its password refused) as a
        clear error naming what was being done and the server. Not an append's: a writer sends
        a failed append again, and takes a ``SessionError`` from it for a refusal."""
        from redis.exceptions import ConnectionError, TimeoutError

        try:
            yield
        except (ConnectionError, TimeoutError) as error:
            raise unreachable(doing, repr(self), error) from error

    async def release(self, session_id: str) -> None:
        """Give up the session's lease: another writer may take the session up at once."""
        await self._leases.stop(session_id)
        with self._answering(f"release session {session_id!r}"):
            await self._run(_RELEASE, [self._lease_key(session_id)], [self._leases.token])

    async def read(self, session_id: str) -> list[str]:
        with self._answering(f"read session {session_id!r}"):
            client = await self._client()
            lines = await client.lrange(self._key(session_id), 0, -1)
        if not lines:
            raise SessionNotFoundError(f"no session {session_id!r} in {self!r}")
        return [unframe(session_id, f"record {n}", line) for n, line in enumerate(lines, start=1)]

    async def exists(self, session_id: str) -> bool:
        with self._answering(f"look for session {session_id!r}"):
            client = await self._client()
            return bool(await client.exists(self._key(session_id)))

    async def list_sessions(self) -> list[str]:
        with self._answering("list the sessions"):
            client = await self._client()
            return sorted(await client.smembers(f"{self.namespace}:sessions"))

    async def delete(self, session_id: str) -> bool:
        """Refused while another writer holds the session's lease."""
        keys = [
            self._key(session_id),
            self._snapshot_key(session_id),
            f"{self.namespace}:sessions",
            self._lease_key(session_id),
        ]
        await self._leases.stop(session_id)
        with self._answering(f"delete session {session_id!r}"):
            client = await self._client()
            holder = await client.get(self._lease_key(session_id))
            gone = holder if abandoned(holder) else ""
            removed = await self._run(_DELETE, keys, [session_id, self._leases.token, gone])
        if removed == -1:
            raise another_writer(session_id)
        return bool(removed)

    def _snapshot_key(self, session_id: str) -> str:
        return f"{self.namespace}:snapshot:{check_session_id(session_id)}"

    async def write_snapshot(self, session_id: str, data: bytes) -> None:
        key, stored = self._snapshot_key(session_id), base64.b64encode(data).decode()
        with self._answering(f"store a snapshot of session {session_id!r}"):
            client = await self._client()
            await client.set(key, stored)

    async def read_snapshot(self, session_id: str) -> bytes | None:
        key = self._snapshot_key(session_id)
        with self._answering(f"read the snapshot of session {session_id!r}"):
            client = await self._client()
            stored = await client.get(key)
        return base64.b64decode(stored) if stored is not None else None


async def _close_client(client: Any) -> None:
    await client.aclose(close_connection_pool=True)
