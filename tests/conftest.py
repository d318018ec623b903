"""Shared test fixtures: the database servers the session tests need, started once."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from services import start_postgres, start_redis, stop


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
