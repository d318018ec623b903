"""The server backends send the appends of many sessions together: those queued while a round
trip is in flight go in the next one (a Redis pipeline, one PostgreSQL transaction and commit),
each answering for itself.

Each test starts its appends in one pass of the event loop: the first goes at once, alone,
and the others queue behind its round trip, so they form one batch. Round trips are counted
on the backend's sender (each one a pipeline, or a transaction with its one commit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from storage_backends import Storage, close_connections, open_backend

from orchestra.coordination.state import PostgresStorageBackend, RedisStorageBackend
from orchestra.coordination.state.batching import Batches
from orchestra.errors import SessionError

SESSIONS = 12


@pytest.fixture(params=["redis", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    request.getfixturevalue(f"{request.param}_server")
    yield open_backend(str(request.param), tmp_path)


def count_round_trips(storage: Storage) -> list[int]:
    """The size of each batch the backend sends from now on."""
    sizes: list[int] = []
    batches: Any = storage._appends  # type: ignore[union-attr]
    send: Callable[[list[Any]], Awaitable[list[Any]]] = batches._send

    async def counted(batch: list[Any]) -> list[Any]:
        sizes.append(len(batch))
        return await send(batch)

    batches._send = counted
    return sizes


def record(session: str, n: int) -> str:
    return f'{{"t": "note", "session": "{session}", "n": {n}}}'


async def warm(storage: Storage) -> None:
    """Make the loop's client or pool (with its tables) before the appends that are counted."""
    await storage.append("warm", [record("warm", 1)], durable=True, after=0)


async def test_many_sessions_appending_at_once_share_round_trips(server: Storage) -> None:
    await warm(server)
    sizes = count_round_trips(server)
    ids = [f"s{n}" for n in range(SESSIONS)]
    await asyncio.gather(
        *(server.append(s, [record(s, 1), record(s, 2)], durable=True, after=0) for s in ids)
    )
    assert sizes == [1, SESSIONS - 1]
    for s in ids:
        assert await server.read(s) == [record(s, 1), record(s, 2)]
    await close_connections(server)


async def test_one_stale_append_in_a_batch_fails_alone(server: Storage) -> None:
    ids = [f"s{n}" for n in range(SESSIONS)]
    for s in ids:
        await server.append(s, [record(s, 1)], durable=True, after=0)
    sizes = count_round_trips(server)
    stale = ids[5]
    results = await asyncio.gather(
        *(
            server.append(s, [record(s, 2)], durable=True, after=0 if s == stale else 1)
            for s in ids
        ),
        return_exceptions=True,
    )
    assert sizes == [1, SESSIONS - 1]
    error = results[5]
    assert isinstance(error, SessionError)
    assert repr(stale) in str(error) and "the 0 records its writer expected" in str(error)
    assert [r for n, r in enumerate(results) if n != 5] == [None] * (SESSIONS - 1)
    assert await server.read(stale) == [record(stale, 1)]
    for s in ids:
        if s != stale:
            assert await server.read(s) == [record(s, 1), record(s, 2)]
    await close_connections(server)


async def test_a_batch_whose_answer_is_lost_fails_whole_and_its_retry_stores_each_once(
    server: Storage,
) -> None:
    """The connection drops after the server stored the batch, before its answer came: every
    append of the batch fails (not as refused: the writer sends it again, as it was), and the
    retries find their records stored already."""
    await warm(server)
    batches: Any = server._appends  # type: ignore[union-attr]
    send = batches._send

    async def answer_lost(batch: list[Any]) -> list[Any]:
        await send(batch)
        if len(batch) > 1:
            raise ConnectionError("connection lost")
        return [True] * len(batch)

    batches._send = answer_lost
    ids = [f"s{n}" for n in range(SESSIONS)]
    appends = [(s, [record(s, 1), record(s, 2)]) for s in ids]
    results = await asyncio.gather(
        *(server.append(s, lines, durable=True, after=0) for s, lines in appends),
        return_exceptions=True,
    )
    assert results[0] is None
    assert all(isinstance(r, ConnectionError) for r in results[1:])
    batches._send = send
    await asyncio.gather(*(server.append(s, lines, durable=True, after=0) for s, lines in appends))
    for s, lines in appends:
        assert await server.read(s) == lines
    await close_connections(server)


async def test_a_batch_sent_after_the_redis_script_cache_was_flushed_is_stored_once(
    redis_server: str, tmp_path: Path
) -> None:
    """``NOSCRIPT`` answers in a pipeline: the script is loaded and those appends sent again."""
    storage = open_backend("redis", tmp_path)
    assert isinstance(storage, RedisStorageBackend)
    await warm(storage)
    batches: Any = storage._appends
    send = batches._send
    sizes: list[int] = []

    async def flushed_first(batch: list[Any]) -> list[Any]:
        sizes.append(len(batch))
        if len(batch) > 1:
            await (await storage._client()).script_flush()
        return await send(batch)

    batches._send = flushed_first
    ids = [f"s{n}" for n in range(SESSIONS)]
    await asyncio.gather(*(storage.append(s, [record(s, 1)], durable=True, after=0) for s in ids))
    assert sizes == [1, SESSIONS - 1]
    for s in ids:
        assert await storage.read(s) == [record(s, 1)]
    await close_connections(storage)


async def test_an_append_cancelled_while_it_waits_for_a_batch_is_not_sent() -> None:
    """Its writer sends it again as it was (see ``SessionWriter``): sent now, it would go twice."""
    released = asyncio.Event()
    sent: list[list[str]] = []

    async def send(batch: list[str]) -> list[str | Exception]:
        sent.append(batch)
        await released.wait()
        return [item.upper() for item in batch]

    batches: Batches[str, str] = Batches(send)
    first = asyncio.ensure_future(batches.submit("a"))
    while not sent:
        await asyncio.sleep(0)
    second, third = (asyncio.ensure_future(batches.submit(item)) for item in "bc")
    while len(batches._queues.get().waiting) < 2:
        await asyncio.sleep(0)
    third.cancel()
    released.set()
    assert (await first, await second) == ("A", "B")
    assert third.cancelled()
    assert sent == [["a"], ["b"]]


async def test_a_postgres_append_and_a_batch_of_them_are_one_round_trip_each(
    postgres_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted on the wire: every statement each pool connection sends (asyncpg's query
    logger: a transaction's ``BEGIN`` and ``COMMIT``, a savepoint, the pool's reset of a
    connection handed back, each count). A lone append is one statement, and so is a batch of
    them, a stale one among them refused alone; before, each append cost its transaction's
    five or six, and each of a batch five more."""
    import asyncpg

    statements: list[str] = []
    create_pool = asyncpg.create_pool

    def logged_pool(*args: Any, **kwargs: Any) -> Any:
        async def log(connection: Any) -> None:
            connection.add_query_logger(lambda logged: statements.append(logged.query))

        return create_pool(*args, init=log, **kwargs)

    monkeypatch.setattr(asyncpg, "create_pool", logged_pool)
    storage = open_backend("postgres", tmp_path)
    await warm(storage)
    await asyncio.sleep(0)  # the logger's calls are scheduled with call_soon
    statements.clear()
    await storage.append("warm", [record("warm", 2), record("warm", 3)], durable=True, after=1)
    await asyncio.sleep(0)
    assert len(statements) == 1
    ids = [f"s{n}" for n in range(SESSIONS)]
    # a batch too, for its connection's first use (asyncpg asks the server about array types)
    await asyncio.gather(*(storage.append(s, [record(s, 1)], durable=True, after=0) for s in ids))
    sizes = count_round_trips(storage)
    await asyncio.sleep(0)
    statements.clear()
    stale = ids[5]
    results = await asyncio.gather(
        *(
            storage.append(s, [record(s, 2)], durable=True, after=0 if s == stale else 1)
            for s in ids
        ),
        return_exceptions=True,
    )
    await asyncio.sleep(0)
    assert sizes == [1, SESSIONS - 1]
    assert len(statements) == 2, "\n---\n".join(statements)
    assert isinstance(results[5], SessionError)
    assert [r for n, r in enumerate(results) if n != 5] == [None] * (SESSIONS - 1)
    assert await storage.read(stale) == [record(stale, 1)]
    await close_connections(storage)


async def test_a_postgres_append_the_server_fails_in_a_batch_fails_alone_with_its_error(
    postgres_server: str, tmp_path: Path
) -> None:
    """Rolled back alone on the server (its subtransaction), answering with the server's error
    as asyncpg raises it (not a refusal: its writer may send it again); the others commit."""
    import asyncpg

    storage = open_backend("postgres", tmp_path)
    assert isinstance(storage, PostgresStorageBackend)
    await warm(storage)
    pool = await storage._pool()
    await pool.execute(
        f"ALTER TABLE {storage.table} ADD CONSTRAINT unwanted CHECK (line NOT LIKE '%unwanted%')"
    )
    ids = [f"s{n}" for n in range(SESSIONS)]
    failing = ids[3]
    results = await asyncio.gather(
        *(
            storage.append(
                s,
                [record(s, 1), record("unwanted" if s == failing else s, 2)],
                durable=True,
                after=0,
            )
            for s in ids
        ),
        return_exceptions=True,
    )
    error = results[3]
    assert isinstance(error, asyncpg.CheckViolationError) and "unwanted" in str(error)
    assert [r for n, r in enumerate(results) if n != 3] == [None] * (SESSIONS - 1)
    assert not await storage.exists(failing)
    for s in ids:
        if s != failing:
            assert await storage.read(s) == [record(s, 1), record(s, 2)]
    await close_connections(storage)
