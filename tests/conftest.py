"""Shared test fixtures: the database servers the session tests need, started once; the
scripted HTTP server the model adapter tests talk to; a clean global registry."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import ScriptedHTTPServer
from services import start_postgres, start_redis, start_temporal, stop
from storage_backends import BACKENDS, Storage, close_backend, open_backend

from orchestra import AgentRegistry

# helpers.py asserts on behalf of its callers: rewrite its asserts so failures show the values.
pytest.register_assert_rewrite("helpers")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    process, url = start_redis()
    os.environ["ORCHESTRA_TEST_REDIS_URL"] = url  # subprocesses of the tests find it here
    yield url
    stop(process)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    process, dsn, folder = start_postgres()
    os.environ["ORCHESTRA_TEST_POSTGRES_DSN"] = dsn
    yield dsn
    stop(process, folder)


@pytest.fixture(scope="session")
def temporal_server() -> Iterator[str]:
    """A Temporal dev server on loopback (``127.0.0.1:PORT``), started when first needed."""
    process, address, folder = start_temporal()
    os.environ["ORCHESTRA_TEST_TEMPORAL"] = address  # subprocesses of the tests find it here
    yield address
    stop(process, folder)


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    """Each session test runs on every backend; the servers start when first needed."""
    if request.param in ("redis", "postgres"):
        request.getfixturevalue(f"{request.param}_server")
    return str(request.param)


@pytest.fixture
def storage(backend_kind: str, tmp_path: Path) -> Iterator[Storage]:
    backend = open_backend(backend_kind, tmp_path)
    yield backend
    close_backend(backend)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[ScriptedHTTPServer]:
    """One scripted server per module (its shutdown waits out a poll interval)."""
    with ScriptedHTTPServer() as scripted:
        yield scripted


@pytest.fixture
def server(shared_server: ScriptedHTTPServer) -> ScriptedHTTPServer:
    """The scripted server with no responses queued and no requests recorded."""
    shared_server.responses.clear()
    shared_server.requests.clear()
    shared_server.paths.clear()
    return shared_server


@pytest.fixture
def clean_global_registry() -> Iterator[None]:
    """An empty global registry, emptied again after the test: agents created with the default
    ``register=True`` land there, and one test's agents must not reach the next test."""
    AgentRegistry.default().clear()
    yield
    AgentRegistry.default().clear()


@pytest.fixture(autouse=True)
def no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """No run in this process asks on the terminal by default, even under ``pytest -s`` on
    one: a test that means to has its own channel (the command line's tests run it on a
    pseudo-terminal of their own, in a subprocess)."""
    monkeypatch.setattr("orchestra.coordination.orchestra.user_channel", lambda: None)
