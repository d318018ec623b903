"""Kill -9 at a random step boundary, resume in a new process: nothing completed is lost.

For each seed, a workflow with parallel branches and a (non-idempotent) tool runs in a
subprocess that SIGKILLs itself right after its n-th completed step; a second process resumes
the session from its log. The final result must equal an uninterrupted run's — its response,
and also its steps and invocations per agent, its branches and each branch's decisions (a
replayed step counted again, or a fan-out made twice, would show) — and the tool, which counts
its executions in a file, must have run exactly once per call.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from services import output_of

from orchestra.coordination.state import (
    FileStorageBackend,
    PostgresStorageBackend,
    RedisStorageBackend,
    SQLiteStorageBackend,
)

WORKFLOW = Path(__file__).with_name("crash_workflow.py")
SEEDS = 50
CONCURRENCY = 4


async def run_workflow(
    backend: str, state: str, counts: Path, kill_at: int | str, mode: str
) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKFLOW),
        backend,
        state,
        str(counts),
        str(kill_at),
        mode,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = await output_of(process, 60)
    return process.returncode or 0, output


BACKENDS = ["file", "sqlite", "redis", "postgres"]


def storage_path(backend: str, folder: Path) -> str:
    if backend == "file":
        return str(folder / "state")
    if backend == "sqlite":
        return str(folder / "state.db")
    return "crash_" + folder.name.lower()  # a namespace on the server


def open_storage(backend: str, state: str) -> Any:
    if backend == "file":
        return FileStorageBackend(state)
    if backend == "sqlite":
        return SQLiteStorageBackend(state)
    if backend == "redis":
        return RedisStorageBackend(os.environ["ORCHESTRA_TEST_REDIS_URL"], namespace=state)
    return PostgresStorageBackend(os.environ["ORCHESTRA_TEST_POSTGRES_DSN"], namespace=state)


async def assert_durable(seed: int, backend: str, state: str, counts: Path) -> None:
    """The branch that was starting a step when the process died had its completed steps
    durable: the log holds a record for each."""
    branch, count = (counts.parent / (counts.name + ".durable")).read_text().split()
    storage = open_storage(backend, state)
    try:
        records = [json.loads(line) for line in await storage.read("crash-test")]
    finally:
        if isinstance(storage, FileStorageBackend | SQLiteStorageBackend):
            storage.close()
    stored = [r for r in records if r["t"] in ("step", "step_failed") and r["branch_id"] == branch]
    assert len(stored) >= int(count), (
        f"seed {seed} ({backend}): branch {branch} completed {count} steps, the log holds "
        f"{len(stored)}"
    )


async def crash_and_resume(seed: int, folder: Path, steps: int) -> tuple[int, str, dict[str, int]]:
    """Even rounds of seeds kill right after a step completes (its record may still be in
    flight); odd rounds once a later step starts (the earlier ones must be in the log)."""
    backend = BACKENDS[seed % len(BACKENDS)]
    after_durable = (seed // len(BACKENDS)) % 2 == 1
    folder.mkdir()
    state, counts = storage_path(backend, folder), folder / "counts"
    kill_at = 1 + seed % (steps - 1 if after_durable else steps)
    point = f"{kill_at}+" if after_durable else str(kill_at)
    code, output = await run_workflow(backend, state, counts, point, "run")
    assert code == -signal.SIGKILL, f"seed {seed}: the run was not killed at step {point}: {output}"
    if after_durable:
        await assert_durable(seed, backend, state, counts)
    code, output = await run_workflow(backend, state, counts, 0, "resume")
    assert code == 0, f"seed {seed} ({backend}, killed after step {kill_at}): {output}"
    executions = Counter(counts.read_text().split()) if counts.exists() else Counter()
    return kill_at, output.strip().splitlines()[-1], dict(executions)


@pytest.fixture
def servers(redis_server: str, postgres_server: str) -> None:
    """Both database servers are up (their addresses are in the environment)."""


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_uninterrupted_run_is_the_reference(
    tmp_path: Path, backend: str, servers: None
) -> None:
    code, output = await run_workflow(
        backend, storage_path(backend, tmp_path), tmp_path / "c", 0, "run"
    )
    assert code == 0, output
    assert json.loads(output)["final"] == ["w1-done", "w2-done", "w3-done"]


async def test_kill_9_at_any_step_boundary_then_resume_loses_nothing(
    tmp_path: Path, servers: None
) -> None:
    code, output = await run_workflow(
        "file", str(tmp_path / "reference"), tmp_path / "rc", 0, "run"
    )
    assert code == 0, output
    reference = json.loads(output)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(seed: int) -> tuple[int, str, dict[str, int]]:
        async with gate:
            return await crash_and_resume(seed, tmp_path / f"seed{seed}", reference["steps"])

    async with asyncio.TaskGroup() as seeds:  # a failing seed stops the others at once
        runs = [seeds.create_task(one(seed)) for seed in range(SEEDS)]
    outcomes = [run.result() for run in runs]
    assert {kill_at for kill_at, _, _ in outcomes} == set(range(1, reference["steps"] + 1))
    for seed, (kill_at, final, executions) in enumerate(outcomes):
        assert json.loads(final) == reference, f"seed {seed}, killed after step {kill_at}"
        assert executions == {"plan": 1, "report": 1}, (
            f"seed {seed}: a tool call ran twice: {executions}"
        )
