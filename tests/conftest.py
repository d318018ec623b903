"""Shared test fixtures: the database servers the session tests need, started once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import start_postgres, start_redis, stop
from storage_backends import BACKENDS, Storage, close_backend, open_backend


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
