"""``bench/load.py --quick``: the load benchmark's smoke run (4 sessions at once, with no
persistence and on the file backend and SQLite, durable and buffered). It must run to its end
and print every row, each measured, none failed; a quick run writes nothing into
bench/results.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import quick_bench_rows

ROOT = Path(__file__).resolve().parent.parent
RUN = 600.0  # seconds the sampler's run may take before the test fails (only a hang reaches it)


def test_the_load_bench_runs_quick() -> None:
    rows = quick_bench_rows("load.py")
    expected = [
        "machine: fdatasync/s, 4 KiB in place, 1 thread(s)",
        "machine: fdatasync/s, 4 KiB in place, 8 thread(s)",
        "no persistence: 4 at once",
        "file, durable: 4 at once",
        "file, buffered: 4 at once",
        "sqlite, durable: 4 at once",
        "sqlite, buffered: 4 at once",
    ]
    assert [row[: len(start)] for row, start in zip(rows, expected, strict=True)] == expected
    for row in rows[2:]:
        assert "steps/s" in row and "KiB/session" in row, row
        files = re.search(r"(\d+) open files", row)
        assert files is not None and int(files[1]) >= 3, row  # stdio alone, however short the row


SAMPLED = """
import load
sampler = load.Sampler()
sampler.start()
sampler.stop()
print(sampler.files, sampler.resident)
"""


def test_a_row_shorter_than_the_sampling_interval_is_still_counted() -> None:
    """The sampler counts when it starts and when it is stopped, not only every 20 ms: stopped
    at once, it has seen stdio's descriptors and the process's resident memory."""
    done = subprocess.run(
        [sys.executable, "-c", SAMPLED],
        capture_output=True,
        text=True,
        timeout=RUN,
        cwd=ROOT / "bench",
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    files, resident = map(int, done.stdout.split())
    assert files >= 3
    assert resident > 0
