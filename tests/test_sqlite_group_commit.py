"""Group commit in the SQLite backend: appends of many sessions queued together are stored in
one transaction (one sync), each refused on its own merits, a failed commit failing them all
alike; and the worker thread's grouping itself (order, bounds).

To queue appends together deterministically, a test holds the backend's thread on an event
first: everything submitted meanwhile is queued when the thread gets to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from orchestra.coordination.engine.inputs import PauseRequest
from orchestra.coordination.state import SQLiteStorageBackend, StateManager, worker
from orchestra.coordination.state.manager import SessionWriter
from orchestra.coordination.state.worker import BlockingWorker
from orchestra.errors import SessionError, SessionNotFoundError

ACKNOWLEDGE = """
import asyncio, sys
from orchestra.coordination.state import SQLiteStorageBackend

async def session(storage, name):
    for number in range(1, 1000):
        await storage.append(name, [f"{name}:{number}"], durable=True, after=number - 1)
        sys.stdout.write(f"{name} {number}\\n")
        sys.stdout.flush()

async def main():
    storage = SQLiteStorageBackend(sys.argv[1])
    await asyncio.gather(*(session(storage, f"s{n}") for n in range(200)))

asyncio.run(main())
"""


DESCRIPTORS = """
import asyncio, logging, resource, sys
from orchestra.coordination.state import SQLiteStorageBackend

logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")

async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64 if sys.argv[2] == "hard" else hard))
    storage = SQLiteStorageBackend(sys.argv[1])
    outcomes = await asyncio.gather(
        *(storage.append(f"s{n}", ["r"], durable=True, after=0) for n in range(int(sys.argv[3]))),
        return_exceptions=True,
    )
    failed = [str(outcome) for outcome in outcomes if outcome is not None]
    print(len(failed), failed[0] if failed else "-")
    print(resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard)

asyncio.run(main())
"""


def record(session_id: str, number: int) -> str:
    return json.dumps({"t": "step", "session": session_id, "s": number})


class Transactions:
    """Counts the transactions a connection commits, from the statements SQLite traces: an
    explicit one at its COMMIT, and a statement run outside one as a transaction of its own."""

    def __init__(self) -> None:
        self.count = 0
        self._open = False

    def __call__(self, statement: str) -> None:
        word = statement.split(None, 1)[0].upper()
        if word == "BEGIN":
            self._open = True
        elif word in {"COMMIT", "ROLLBACK"}:
            self.count += word == "COMMIT"
            self._open = False
        elif word == "INSERT" and not self._open:
            self.count += 1


async def traced(storage: SQLiteStorageBackend) -> Transactions:
    await storage.exists("opened")  # opens the connection
    transactions = Transactions()
    assert storage._connection is not None
    storage._connection.set_trace_callback(transactions)
    return transactions


@contextmanager
def held(thread: BlockingWorker) -> Iterator[None]:
    """Hold ``thread`` on an event while the block runs: what the block submits is queued."""
    go = threading.Event()
    thread.submit(go.wait)
    try:
        yield
    finally:
        go.set()


async def outcomes(calls: list[Awaitable[Any]]) -> list[Any]:
    return await asyncio.gather(*calls, return_exceptions=True)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SQLiteStorageBackend]:
    backend = SQLiteStorageBackend(tmp_path / "state.db")
    yield backend
    backend.close()


async def test_appends_queued_together_share_one_transaction(
    storage: SQLiteStorageBackend,
) -> None:
    transactions = await traced(storage)
    with held(storage._worker):
        calls = [
            storage.append(f"s{n}", [record(f"s{n}", 1)], durable=True, after=0) for n in range(50)
        ]
        calls += [  # a session's second append, queued behind its first, in the same group
            storage.append(f"s{n}", [record(f"s{n}", 2)], durable=True, after=1) for n in range(50)
        ]
    assert await outcomes(calls) == [None] * 100
    assert transactions.count == 1
    for n in range(50):
        assert await storage.read(f"s{n}") == [record(f"s{n}", 1), record(f"s{n}", 2)]


async def test_a_lone_append_commits_alone_as_before(storage: SQLiteStorageBackend) -> None:
    transactions = await traced(storage)
    for number in range(1, 4):
        await storage.append("alone", [record("alone", number)], durable=True, after=number - 1)
    assert transactions.count == 3
    assert len(await storage.read("alone")) == 3


async def test_a_stale_append_fails_alone_and_its_group_is_stored(
    storage: SQLiteStorageBackend,
) -> None:
    await storage.append("stale", [record("stale", 1)], durable=True, after=0)
    transactions = await traced(storage)
    with held(storage._worker):
        calls = [
            storage.append("a", [record("a", 1)], durable=True, after=0),
            storage.append("stale", [record("stale", 9)], durable=True, after=5),
            storage.append("b", [record("b", 1)], durable=True, after=0),
        ]
    first, stale, last = await outcomes(calls)
    assert (first, last) == (None, None)
    assert isinstance(stale, SessionError)
    assert "'stale' does not hold the 5 records its writer expected" in str(stale)
    assert transactions.count == 1
    assert await storage.read("a") == [record("a", 1)]
    assert await storage.read("b") == [record("b", 1)]
    assert await storage.read("stale") == [record("stale", 1)]


async def test_a_session_another_writer_holds_fails_alone_in_its_group(
    storage: SQLiteStorageBackend, tmp_path: Path
) -> None:
    other = SQLiteStorageBackend(tmp_path / "state.db")
    try:
        await other.append("taken", [record("taken", 1)], durable=True, after=0)
        with held(storage._worker):
            calls = [
                storage.append("a", [record("a", 1)], durable=True, after=0),
                storage.append("taken", [record("taken", 2)], durable=True, after=1),
                storage.append("b", [record("b", 1)], durable=False, after=0),
            ]
        first, taken, last = await outcomes(calls)
        assert (first, last) == (None, None)
        assert isinstance(taken, SessionError)
        assert "being written by another process" in str(taken)
        assert await storage.read("taken") == [record("taken", 1)]
        assert await storage.read("b") == [record("b", 1)]
    finally:
        other.close()


class FailingCommit(sqlite3.Connection):
    """A connection whose next COMMIT fails as a full disk does: before committing, or (the
    answer lost) after; with "rollback", before committing, and the ROLLBACK after it fails too
    (a failing disk)."""

    fail: str | None = None

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.fail is not None:
            fail, self.fail = self.fail, None
            if fail == "after":
                super().execute(sql, *args)
            if fail == "rollback":
                self.fail = "ROLLBACK"
            raise sqlite3.OperationalError("database or disk is full")
        if sql == "ROLLBACK" and self.fail == "ROLLBACK":
            self.fail = None
            raise sqlite3.OperationalError("disk I/O error")
        return super().execute(sql, *args)


async def failing(storage: SQLiteStorageBackend, fail: str) -> None:
    await storage.exists("opened")  # the store's tables made
    storage.close()
    connection = sqlite3.connect(
        storage.path, factory=FailingCommit, check_same_thread=False, isolation_level=None
    )
    connection.fail = fail
    storage._connection = connection
    storage._synchronous = ""


@pytest.mark.parametrize("fail", ["before", "after"])
async def test_a_failed_commit_fails_every_append_of_its_group_and_a_retry_stores_them_once(
    storage: SQLiteStorageBackend, fail: str
) -> None:
    await failing(storage, fail)
    names = ["a", "b", "c"]

    def appends() -> list[Awaitable[None]]:
        with held(storage._worker):
            return [
                storage.append(name, [record(name, 1)], durable=True, after=0) for name in names
            ]

    errors = await outcomes(appends())
    assert all(isinstance(error, sqlite3.OperationalError) for error in errors)
    assert {str(error) for error in errors} == {
        f"the session store {storage.path} could not commit 3 appends together: "
        "database or disk is full"
    }
    if fail == "before":
        for name in names:
            with pytest.raises(SessionNotFoundError):
                await storage.read(name)
    assert await outcomes(appends()) == [None, None, None]  # the writer sends each again
    for name in names:
        assert await storage.read(name) == [record(name, 1)]


def committed(path: Path) -> list[str]:
    """The sessions whose appends another connection finds committed in the file."""
    with contextlib.closing(sqlite3.connect(path)) as reader:
        return [row[0] for row in reader.execute("SELECT session FROM appends ORDER BY session")]


async def test_a_group_whose_rollback_fails_too_leaves_no_transaction_open(
    storage: SQLiteStorageBackend,
) -> None:
    """COMMIT fails, then ROLLBACK fails: the group reports the COMMIT's error, and the store
    drops the connection (SQLite discards the transaction), so a later append is committed
    when it is acknowledged, not left inside a transaction nobody commits."""
    await failing(storage, "rollback")
    with held(storage._worker):
        calls = [storage.append(name, [record(name, 1)], durable=True, after=0) for name in "ab"]
    errors = await outcomes(calls)
    assert {str(error) for error in errors} == {
        f"the session store {storage.path} could not commit 2 appends together: "
        "database or disk is full"
    }
    await storage.append("lone", [record("lone", 1)], durable=True, after=0)
    assert committed(storage.path) == ["lone"]
    with held(storage._worker):
        calls = [storage.append(name, [record(name, 1)], durable=True, after=0) for name in "ab"]
    assert await outcomes(calls) == [None, None]
    assert committed(storage.path) == ["a", "b", "lone"]


async def test_no_append_runs_inside_a_transaction_left_open(
    storage: SQLiteStorageBackend,
) -> None:
    """Whatever left the connection inside a transaction, the next append is committed."""
    await storage.exists("opened")
    assert storage._connection is not None
    storage._connection.execute("BEGIN IMMEDIATE")
    await storage.append("lone", [record("lone", 1)], durable=True, after=0)
    assert committed(storage.path) == ["lone"]


class Synchronous:
    """The ``synchronous`` mode each COMMIT ran under, from the statements SQLite traces."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.commits: list[str] = []

    def __call__(self, statement: str) -> None:
        words = statement.replace("=", " ").split()
        if words[:2] == ["PRAGMA", "synchronous"]:
            self.mode = words[2]
        elif words[0] == "COMMIT":
            self.commits.append(self.mode)


@pytest.mark.parametrize("durable", [[False, True, False], [False, False, False]])
async def test_a_group_holding_a_durable_append_commits_with_synchronous_full(
    storage: SQLiteStorageBackend, durable: list[bool]
) -> None:
    """The OS-crash half of the promise, which a kill -9 test cannot see: a group with any
    durable append syncs as a durable append alone does (FULL); one with none need not."""
    await storage.exists("opened")
    assert storage._connection is not None
    trace = Synchronous(storage._synchronous)
    storage._connection.set_trace_callback(trace)
    names = ["a", "b", "c"]
    with held(storage._worker):
        calls = [
            storage.append(name, [record(name, 1)], durable=sync, after=0)
            for name, sync in zip(names, durable, strict=True)
        ]
    assert await outcomes(calls) == [None, None, None]
    assert trace.commits == ["FULL" if any(durable) else "NORMAL"]


async def test_session_writers_resend_a_group_whose_commit_answer_was_lost(
    storage: SQLiteStorageBackend,
) -> None:
    """The group was committed but the commit's answer was lost: each writer sends its append
    again, alone and as it was, before its newer records; each record is stored once."""
    await failing(storage, "after")
    manager = StateManager(storage, auto_save_interval=0)
    writers = [SessionWriter(manager, name, 0) for name in ("a", "b", "c")]
    with held(storage._worker):
        for writer in writers:
            writer.record(PauseRequest(at=1.0, reason="first"))
            writer.commit()
    errors = await outcomes([writer.settled() for writer in writers])
    assert {str(error) for error in errors} == {
        f"the session store {storage.path} could not commit 3 appends together: "
        "database or disk is full"
    }
    for writer in writers:
        writer.record(PauseRequest(at=2.0, reason="second"))
    await asyncio.gather(*(writer.flush() for writer in writers))
    for name in ("a", "b", "c"):
        reasons = [json.loads(line)["reason"] for line in await storage.read(name)]
        assert reasons == ["first", "second"]


def test_a_kill_9_loses_no_acknowledged_append_of_200_concurrent_sessions(
    tmp_path: Path,
) -> None:
    """Every append whose await returned (printed after it) is in the store after a SIGKILL."""
    path = tmp_path / "state.db"
    process = subprocess.Popen(
        [sys.executable, "-c", ACKNOWLEDGE, str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged: dict[str, int] = {}
    killed = False
    try:
        assert process.stdout is not None
        for line in process.stdout:  # to its end: what the pipe holds was acknowledged too
            name, number = line.split()
            acknowledged[name] = int(number)
            if not killed and sum(acknowledged.values()) >= 1000:
                process.send_signal(signal.SIGKILL)
                killed = True
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert len(acknowledged) == 200

    async def check() -> None:
        storage = SQLiteStorageBackend(path)
        try:
            for name, number in acknowledged.items():
                stored = await storage.read(name)
                assert stored[:number] == [f"{name}:{n}" for n in range(1, number + 1)]
        finally:
            storage.close()

    asyncio.run(check())


def descriptors(path: Path, limit: str, sessions: int = 100) -> tuple[list[str], list[str]]:
    """What a process that may open 64 files reports after ``sessions``' first appends, and
    what it logs."""
    done = subprocess.run(
        [sys.executable, "-c", DESCRIPTORS, str(path), limit, str(sessions)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.splitlines(), done.stderr.splitlines()


RAISED = "orchestra.coordination.state.sqlite INFO raised the soft limit on open files from 64 to "


def test_running_more_sessions_than_the_soft_limit_on_open_files_allows_raises_it(
    tmp_path: Path,
) -> None:
    """Each running session holds its lock file open: past the soft limit, it is raised."""
    printed, logged = descriptors(tmp_path / "state.db", "soft")
    assert printed == ["0 -", "True"]
    assert [line.startswith(RAISED) for line in logged] == [True]  # once


def test_the_soft_limit_is_raised_once_half_of_it_is_in_use(tmp_path: Path) -> None:
    """Before anything runs out: 40 sessions under a soft limit of 64 never meet EMFILE, but
    their locks fill half of it, so a model's socket or SQLite itself would be next."""
    printed, logged = descriptors(tmp_path / "state.db", "soft", sessions=40)
    assert printed == ["0 -", "True"]
    assert len(logged) == 1
    assert logged[0].startswith(RAISED)
    assert "child processes started from now on inherit it" in logged[0]


def test_past_the_hard_limit_on_open_files_an_append_says_what_to_do(tmp_path: Path) -> None:
    failed, error = descriptors(tmp_path / "state.db", "hard")[0][0].split(" ", 1)
    assert int(failed) > 0
    assert error.startswith("[Errno 24] session 's")
    assert error.endswith(
        "no file descriptor is left for its writer lock (each running session holds one): "
        "raise the process's limit on open files (ulimit -n)"
    )


class TestGrouping:
    """``BlockingWorker.submit_grouped``: one call for the grouped jobs queued back to back."""

    @staticmethod
    def run_group(calls: list[list[Any]], items: list[Any]) -> list[BaseException | None]:
        calls.append(items)
        return [ValueError(item) if item == "bad" else None for item in items]

    async def test_order_is_kept_around_other_jobs(self) -> None:
        thread = BlockingWorker("grouping")
        calls: list[list[Any]] = []

        def run(items: list[Any]) -> list[BaseException | None]:
            return self.run_group(calls, items)

        with held(thread):
            jobs = [thread.submit_grouped(run, item, 1) for item in ("a", "bad", "b")]
            plain = thread.submit(lambda: list(calls))
            jobs.append(thread.submit_grouped(run, "c", 1))
        results = await outcomes([*jobs, plain])
        assert results[0] is None and results[2] is None and results[3] is None
        assert isinstance(results[1], ValueError)
        assert results[4] == [["a", "bad", "b"]]  # the plain job ran after the group, before c
        assert calls == [["a", "bad", "b"], ["c"]]

    async def test_a_group_is_bounded_by_count_and_size(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(worker, "GROUP_JOBS", 3)
        monkeypatch.setattr(worker, "GROUP_SIZE", 100)
        thread = BlockingWorker("grouping")
        calls: list[list[Any]] = []

        def run(items: list[Any]) -> list[BaseException | None]:
            return self.run_group(calls, items)

        with held(thread):
            jobs = [thread.submit_grouped(run, n, 10) for n in range(5)]
            jobs += [thread.submit_grouped(run, "big", 1000), thread.submit_grouped(run, "x", 60)]
            jobs += [thread.submit_grouped(run, "y", 60)]
        assert await outcomes(jobs) == [None] * 8
        assert calls == [[0, 1, 2], [3, 4], ["big", "x"], ["y"]]

    async def test_a_failing_group_fails_each_of_its_jobs(self) -> None:
        thread = BlockingWorker("grouping")

        def run(items: list[Any]) -> list[BaseException | None]:
            raise OSError("broken")

        with held(thread):
            jobs = [thread.submit_grouped(run, n, 1) for n in range(3)]
        assert [str(error) for error in await outcomes(jobs)] == ["broken"] * 3


@hypothesis.settings(deadline=None, max_examples=25)
@hypothesis.given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2)), min_size=1, max_size=12)
)
def test_a_group_stores_what_the_same_appends_one_by_one_would(
    tmp_path_factory: pytest.TempPathFactory, appends: list[tuple[int, int]]
) -> None:
    """Appends (session, after) queued together succeed or fail, and leave the store, exactly
    as the same appends made one at a time in the same order do."""

    async def apply(grouped: bool) -> tuple[list[bool], list[list[str]]]:
        storage = SQLiteStorageBackend(tmp_path_factory.mktemp("group") / "state.db")
        try:
            if grouped:
                with held(storage._worker):
                    calls = [
                        storage.append(f"s{s}", [record(f"s{s}", n)], True, after)
                        for n, (s, after) in enumerate(appends)
                    ]
                results = await outcomes(calls)
            else:
                results = []
                for n, (s, after) in enumerate(appends):
                    results += await outcomes(
                        [storage.append(f"s{s}", [record(f"s{s}", n)], True, after)]
                    )
            logs = [await storage.read(name) for name in await storage.list_sessions()]
            return [result is None for result in results], logs
        finally:
            storage.close()

    assert asyncio.run(apply(True)) == asyncio.run(apply(False))
