"""``bench/temporal.py --quick``: the Temporal benchmark's smoke run, against the session's dev
server, with its own worker processes. It must run to its end and print every row; a quick
run writes nothing into bench/results.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "temporal.py"
RESULTS = ROOT / "bench" / "results.md"
RUN = 600.0  # seconds the smoke run may take before the test fails (only a hang reaches it)


def test_the_temporal_bench_runs_quick_against_a_given_server(temporal_server: str) -> None:
    written = RESULTS.read_bytes()
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--temporal", temporal_server],
        capture_output=True,
        text=True,
        timeout=RUN,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.strip() for line in done.stdout.splitlines() if line.startswith("  ")]
    expected = [
        "embedded: 5-step function chain",
        "embedded: 20-way fan-out of function steps (wall)",
        "given server: 5-step function chain, 1 worker, started and awaited",
        "given server: the same through Orchestra.run(executor=...)",
        "given server: a Temporal step, by the server's event times",
        "given server: a Temporal step, in the worker",
        "given server: 10 concurrent sessions of 3 steps, 1 worker(s)",
        "given server: 10 concurrent sessions of 3 steps, 2 worker(s)",
        "given server: 20-way fan-out, 1 worker(s), through Orchestra.run",
    ]
    assert [row[: len(start)] for row, start in zip(rows, expected, strict=True)] == expected
    assert "ms/step" in rows[2] and "sessions/s" in rows[6] and "x embedded" in rows[8]
    assert RESULTS.read_bytes() == written
