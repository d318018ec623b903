"""``bench/temporal.py --quick``: the Temporal benchmark's smoke run, against the session's dev
server, with its own worker processes. It must run to its end and print every row; a quick
run writes nothing into bench/results.md."""

from __future__ import annotations

from helpers import quick_bench_rows


def test_the_temporal_bench_runs_quick_against_a_given_server(temporal_server: str) -> None:
    rows = quick_bench_rows("temporal.py", "--temporal", temporal_server)
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
