"""Many sessions at once: 1, 10, 100 and 1000 concurrent sessions of the 10-agent ring in one
process, with no persistence and on each backend (file, SQLite, Redis, PostgreSQL), every step
durable (``auto_save_interval=0``) or buffered (``auto_save_interval=1``); and, for reference, how
many ``fdatasync`` calls a second this machine does from one thread and from 8.

Run: ``.venv/bin/python bench/load.py`` (``--backends file,sqlite``, ``--sizes 1,100`` choose;
``--steps 200``: longer sessions, for the steady state without sessions being made and ended;
``--quick``: tiny sizes on the file backend and SQLite, for the smoke test, writing nothing).
Prints a table and rewrites the "Load" section of ``bench/results.md`` ("Load, 200-step
sessions" with ``--steps 200``).

A row keeps N sessions running at once: N slots, each running sessions of ``STEPS`` steps one
after another, enough of them for the row to take at least ``MIN_STEPS`` steps (1 session at a
time: 100 sessions in turn; 1000 at once: one each). Each row runs in a process of its own, so
its memory and open files are its own. What a row reports:

- **steps/s**: every step of the row's sessions over the wall time from the first session's
  start to the last one's end (sessions made and finished included).
- **CPU**: the process's CPU time (every thread: ``time.process_time``) per step. A database
  server's CPU is not counted.
- **step latency, p50 / p99**: for each step, from its ``StepStarted`` event to the moment its
  session could go on: its next step's ``StepStarted``, or for a session's last step the moment
  ``Orchestra.run`` returned. The runner starts a step only once the records it depends on are
  durable, and returns only once the run's end is, so with every step durable this is a step's
  start to its record being durable, with the time it waited for its turn among the other
  sessions; buffered or with no persistence, from one step's start to the next's. Times are the
  events' own (``at``, the engine's clock), read from each run's result once it returned:
  nothing watches the runs while they run.
- **lifetime peak RSS**: the process's high-water mark (``ru_maxrss``), imports and the warm-up
  included. **KiB/session**: the row's own cost: the most resident memory sampled while the
  sessions run (``/proc/self/statm``) less the resident memory just before they start (after
  imports, one warm-up session and a full collection), over the sessions at once. Sampled, so a
  peak shorter than a sample's interval can be missed.
- **open files**: the most entries of ``/proc/self/fd`` counted just before the sessions start,
  every 20 ms while they run and just after they end (so a row shorter than 20 ms is counted).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from engine import report  # type: ignore[import-not-found]
from services import start_postgres, start_redis, stop  # type: ignore[import-not-found]
from state import backends, ring_run  # type: ignore[import-not-found]

from orchestra.coordination.engine import events as ev
from orchestra.coordination.engine.clock import now
from orchestra.coordination.state import StateManager

BACKENDS = ["file", "sqlite", "redis", "postgres"]
SIZES = [1, 10, 100, 1000]
STEPS = 20
MIN_STEPS = 2000
SETTINGS = {"durable": 0.0, "buffered": 1.0}  # auto_save_interval
FSYNC_SECONDS = 1.0
SAMPLE_EVERY = 0.02  # seconds between two counts of the open files and resident memory
ROW_LIMIT = 300.0  # seconds a row may take: one that takes longer is reported as stopped


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated (the rows with no persistence always run)",
    )
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="sessions at once")
    parser.add_argument(
        "--steps",
        type=int,
        default=STEPS,
        help=f"steps a session (default {STEPS}: its making and ending weigh in; more: the steady state)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run; writes nothing")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # one row, in the process it runs in
    return parser.parse_args(argv)


# ---- one row, in a process of its own -----------------------------------------------------------


class Sampler(threading.Thread):
    """Counts this process's open file descriptors and resident memory when it starts, every
    :data:`SAMPLE_EVERY` s and when stopped; ``files`` and ``resident`` are the most seen."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.files = 0
        self.resident = 0
        self.done = threading.Event()

    def sample(self) -> None:
        self.files = max(self.files, len(os.listdir("/proc/self/fd")))
        self.resident = max(self.resident, resident_kib())

    def run(self) -> None:
        self.sample()
        while not self.done.wait(SAMPLE_EVERY):
            self.sample()

    def stop(self) -> None:
        self.done.set()
        self.join()
        self.sample()


def latencies(result: Any, returned: float) -> list[float]:
    """Each step's start to its branch's next step's start (the last: to ``returned``)."""
    starts = [e for e in result.events if isinstance(e, ev.StepStarted) and not e.replayed]
    spans = []
    for number, event in enumerate(starts):
        after = (s.at for s in starts[number + 1 :] if s.branch_id == event.branch_id)
        spans.append(next(after, returned) - event.at)
    return spans


async def session(name: str, manager: StateManager | None, steps: int) -> tuple[int, list[float]]:
    result = await ring_run(steps, manager, name)
    returned = now()
    return result.total_steps, latencies(result, returned)


async def load(manager: StateManager | None, row: dict[str, Any]) -> dict[str, Any]:
    """``row["sessions"]`` slots, each running ``row["turns"]`` sessions one after another."""

    async def slot(number: int) -> tuple[int, list[float]]:
        steps, spans = 0, []
        for turn in range(row["turns"]):
            name = f"{row['prefix']}-{number}-{turn}"
            taken, times = await session(name, manager, row["steps"])
            steps += taken
            spans += times
        return steps, spans

    await session(f"{row['prefix']}-warm-up", manager, row["steps"])
    gc.collect()
    before = resident_kib()
    sampler = Sampler()
    sampler.start()
    cpu, started = time.process_time(), time.perf_counter()
    slots = await asyncio.gather(*(slot(number) for number in range(row["sessions"])))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    sampler.stop()
    steps = sum(taken for taken, _ in slots)
    spans = sorted(span for _, times in slots for span in times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "steps_per_s": steps / wall,
        "cpu_us": cpu / steps * 1e6,
        "p50_ms": percentile(spans, 0.5) * 1e3,
        "p99_ms": percentile(spans, 0.99) * 1e3,
        "peak_mib": peak / 1024,
        "kib_per_session": (sampler.resident - before) / row["sessions"],
        "files": sampler.files,
    }


def resident_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def percentile(values: list[float], share: float) -> float:
    return values[min(len(values) - 1, int(share * len(values)))]


def run_row(row: dict[str, Any]) -> None:
    """Print the row's measurements (or the error that stopped it) as one line of JSON."""
    manager = None
    if row["backend"] != "none":
        folder = Path(row["folder"])
        folder.mkdir()
        storage = backends(folder, row["redis"], row["postgres"])[row["backend"]]()
        manager = StateManager(storage, row["interval"])
    try:
        print(json.dumps(asyncio.run(load(manager, row))))
    except Exception as error:
        print(json.dumps({"error": f"{type(error).__name__}: {error}"[:200]}))


# ---- the table ----------------------------------------------------------------------------------


def fsync_rate(folder: Path, threads: int, seconds: float) -> float:
    """``fdatasync`` calls a second, each after a 4 KiB write in place, from ``threads``
    threads each with a file of its own (as sessions on the file backend's threads)."""
    counts = [0] * threads
    stop_at = time.perf_counter() + seconds

    def work(number: int) -> None:
        descriptor = os.open(folder / f"fsync-{number}.bin", os.O_RDWR | os.O_CREAT)
        os.pwrite(descriptor, bytes(4096 * 64), 0)
        os.fsync(descriptor)
        block = os.urandom(4096)
        while time.perf_counter() < stop_at:
            os.pwrite(descriptor, block, 4096 * (counts[number] % 64))
            os.fdatasync(descriptor)
            counts[number] += 1
        os.close(descriptor)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / seconds


def measure(row: dict[str, Any]) -> dict[str, Any]:
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--row", json.dumps(row)],
            capture_output=True,
            text=True,
            check=False,
            timeout=ROW_LIMIT,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after {ROW_LIMIT:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-200:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def describe(found: dict[str, Any]) -> str:
    if "error" in found:
        return f"failed: {found['error']}"
    return (
        f"{found['steps_per_s']:,.0f} steps/s, CPU {found['cpu_us']:.0f} µs/step, "
        f"latency p50 {found['p50_ms']:.2f} ms p99 {found['p99_ms']:.2f} ms, "
        f"{found['kib_per_session']:.0f} KiB/session (lifetime peak RSS {found['peak_mib']:.0f} MiB), "
        f"{found['files']} open files"
    )


def rows_for(
    kinds: list[str], sizes: list[int], steps: int, least: int
) -> list[tuple[str, dict[str, Any]]]:
    settings = [("no persistence", "none", 0.0)] + [
        (f"{kind}, {label}", kind, interval)
        for kind in kinds
        for label, interval in SETTINGS.items()
    ]
    return [
        (
            f"{label}: {sessions} at once",
            {
                "backend": kind,
                "interval": interval,
                "sessions": sessions,
                "steps": steps,
                "turns": max(1, math.ceil(least / (sessions * steps))),
            },
        )
        for label, kind, interval in settings
        for sessions in sizes
    ]


def main(argv: list[str]) -> None:
    options = parse(argv)
    if options.row:
        run_row(json.loads(options.row))
        return
    kinds = ["file", "sqlite"] if options.quick else options.backends.split(",")
    sizes = [4] if options.quick else [int(size) for size in options.sizes.split(",")]
    unknown = set(kinds) - set(BACKENDS)
    if unknown:
        sys.exit(f"unknown backend(s) {', '.join(sorted(unknown))}: choose from {BACKENDS}")
    steps, least = (5, 20) if options.quick else (options.steps, MIN_STEPS)
    folder = Path(tempfile.mkdtemp(prefix="orchestra-load-"))
    servers: list[tuple[Any, ...]] = []
    addresses = {"redis": "", "postgres": ""}
    try:
        if "redis" in kinds:
            redis, addresses["redis"] = start_redis()
            servers.append((redis,))
        if "postgres" in kinds:
            postgres, addresses["postgres"], data = start_postgres()
            servers.append((postgres, data))
        seconds = 0.2 if options.quick else FSYNC_SECONDS
        rows = [
            (
                f"machine: fdatasync/s, 4 KiB in place, {threads} thread(s)",
                f"{fsync_rate(folder, threads, seconds):,.0f}",
            )
            for threads in (1, 8)
        ]
        plan = rows_for(kinds, sizes, steps, least)
        for number, (label, row) in enumerate(plan):
            row.update(addresses, folder=str(folder / f"row{number}"), prefix=f"row{number}")
            rows.append((label, describe(measure(row))))
            print(f"  {label}: {rows[-1][1]}", file=sys.stderr, flush=True)
    finally:
        for server in servers:
            stop(*server)
        shutil.rmtree(folder, ignore_errors=True)
    note = f", 10-agent ring, sessions of {steps} steps, at least {least} steps a row"
    section = "Load" if steps == STEPS else f"Load, {steps}-step sessions"
    report(section, note, rows, write=not options.quick, remarks=REMARKS)


REMARKS = (
    "Each row is a process of its own, running its sessions on one event loop (the file "
    "backend's and SQLite's blocking work on their threads; Redis and PostgreSQL are servers on "
    "this machine, their CPU not counted). Latency is a step's start to its session's next "
    "step's start (to the run's return for its last step): with every step durable, that "
    "includes making the step's records durable and the wait for a turn among the other "
    "sessions; see bench/load.py for every column's definition."
)


if __name__ == "__main__":
    main(sys.argv[1:])
