"""SIGKILL under load: 1000 concurrent sessions, every step durable, in one process killed
partway through; a new process resumes every session, and each one's result is the one it gives
uninterrupted.

The sessions differ (``load_crash_workflow.py``: seeded rounds of seeded width), so a record
stored in, or read back from, the wrong session would show in a result. The process runs under a
soft limit of 1024 open files. The SQLite backend raises it itself once half is in use (its
writer locks: docs/sessions.md, the limit on open files), so for SQLite this proves nothing;
for the others the hard limit is 1024 too (the file backend would raise the soft one rather
than reopen segments): 1000 of their sessions at once must fit under it.
It is killed once it has taken ``TRIP`` steps (of about 5500), every session has taken one and
``FINISHED`` sessions have finished; steps stall from ``STALL`` on, so the kill always finds
sessions in flight, with appends of many sessions still being written. Sessions that finished
before the kill are resumed too: they give their stored result and their log is left as it was.

Equal results alone would not show a lost record (the agents decide as they did: a step lost is
simply taken again), so both processes note each step's agent starting and returning: a step
that returned before a step that depends on it started was durable (the runner starts a step
only once the records it depends on are), and the resume must not take it again.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from services import output_of
from storage_backends import BACKENDS

WORKFLOW = Path(__file__).with_name("load_crash_workflow.py")
SESSIONS = 1000
TRIP, FINISHED, STALL = 1200, 20, 3000
RUN = 300.0  # seconds a subprocess may take before the test fails (only a hang reaches it)


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    """Every session's summary, run with no persistence."""
    done = subprocess.run(
        [sys.executable, str(WORKFLOW), "reference", str(SESSIONS)],
        capture_output=True,
        text=True,
        timeout=RUN,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results: dict[str, Any] = json.loads(done.stdout)
    return results


async def run_until_tripped(backend: str, root: Path) -> None:
    """Start the load, wait for its ``tripped`` line, and SIGKILL it."""
    arguments = [backend, str(root), str(TRIP), str(FINISHED), str(STALL)]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKFLOW),
        "run",
        str(SESSIONS),
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    seen = []
    try:
        async with asyncio.timeout(RUN):
            while (line := await process.stdout.readline()) and line != b"tripped\n":
                seen.append(line.decode(errors="replace"))
    finally:
        process.kill()
        await process.wait()
    assert line == b"tripped\n", f"the load ended before it was killed:\n{''.join(seen)}"
    assert process.returncode == -signal.SIGKILL


def acknowledged(calls: list[str]) -> set[tuple[str, str]]:
    """The steps (session, key) that returned before a step that depends on them started: a
    round's workers (``r{k}l{lane}``) before the hub's next step (``hub{k+1}``), and a hub's step
    (``hub{k}``) before a worker of the round it made (``r{k}l0``, ...). A step starts only once
    the records it depends on are durable (steps of parallel branches do not wait for each
    other: that is not a durability the runner promises)."""
    returned: set[tuple[str, str]] = set()
    durable: set[tuple[str, str]] = set()
    for line in calls:
        what, session, key = line.split()
        if what == "done":
            returned.add((session, key))
        elif key.startswith("hub"):
            workers = f"r{int(key[3:]) - 1}l"
            durable.update(s for s in returned if s[0] == session and s[1].startswith(workers))
        else:
            durable.update({(session, "hub" + key[1 : key.index("l")])} & returned)
    return durable


def started(calls: list[str]) -> set[tuple[str, str]]:
    return {(session, key) for what, session, key in map(str.split, calls) if what == "start"}


async def resume_all(backend: str, root: Path) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKFLOW),
        "resume",
        str(SESSIONS),
        backend,
        str(root),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = await output_of(process, RUN)
    assert process.returncode == 0, output[-4000:]
    resumed: dict[str, Any] = json.loads(output)
    return resumed


@pytest.mark.parametrize("backend", BACKENDS)
async def test_sigkill_under_load_then_resuming_every_session_loses_nothing(
    backend: str, tmp_path: Path, reference: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    if backend in ("redis", "postgres"):
        request.getfixturevalue(f"{backend}_server")  # its address, in the environment
    await run_until_tripped(backend, tmp_path)
    resumed = await resume_all(backend, tmp_path)
    states = resumed["states"]
    assert sorted(states) == sorted(reference), "a session's durable header is missing"
    finished = sorted(name for name, state in states.items() if state == "finished")
    assert len(finished) >= FINISHED
    assert len(finished) < SESSIONS, "the kill found no session in flight"
    assert set(states.values()) == {"finished", "interrupted"}
    for name, expected in reference.items():
        assert resumed["results"][name] == expected, f"{backend}: session {name}"
    assert sorted(resumed["kept"]) == finished
    assert all(resumed["kept"].values()), f"a finished session's log changed: {resumed['kept']}"
    before = (tmp_path / "calls-run").read_text().splitlines()
    after = started((tmp_path / "calls-resume").read_text().splitlines())
    taken_again = acknowledged(before) & after
    assert not taken_again, f"{backend}: durable steps taken again: {sorted(taken_again)[:10]}"
    assert started(before) & after, "no step in flight at the kill was taken again"
