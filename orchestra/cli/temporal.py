"""The command line on Temporal: ``orchestra worker`` hosts workflows on a task queue, and
``orchestra run --temporal`` submits a session to it (the options and the executor it builds).

temporalio is an optional extra (``orchestra[temporal]``): it is imported only when one of
these is used, so the rest of the command line works without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from orchestra.coordination.state import StateManager
from orchestra.errors import OrchestraError

from .ending import Followed
from .store import open_store
from .terminal import fail, say
from .workflows import AllowModule, load

if TYPE_CHECKING:
    from temporalio.client import Client

    from orchestra.temporal import Hosting, TemporalExecutor

Temporal = Annotated[
    str | None,
    typer.Option(
        "--temporal",
        metavar="HOST:PORT",
        help="Run the session on Temporal: the address of the cluster's frontend. Workers "
        "(`orchestra worker`) hosting this workflow file run it and keep its log; this command "
        "submits it and follows it (status, questions, the result).",
    ),
]

Following = Annotated[
    str | None,
    typer.Option(
        "--temporal",
        metavar="HOST:PORT",
        help="The session runs on Temporal (`orchestra run --temporal`): follow it again "
        "from this cluster's frontend, resuming it when it is paused.",
    ),
]

TaskQueue = Annotated[
    str,
    typer.Option(
        "--task-queue",
        help="The Temporal task queue the workers of this workflow poll.",
    ),
]

Namespace = Annotated[str, typer.Option("--namespace", help="The Temporal namespace.")]

Tls = Annotated[
    bool,
    typer.Option(
        "--tls",
        help="Connect to the Temporal frontend over TLS (as Temporal Cloud needs; on by "
        "default with --api-key-env).",
    ),
]

ApiKeyEnv = Annotated[
    str | None,
    typer.Option(
        "--api-key-env",
        metavar="NAME",
        help="Authenticate to Temporal with the API key in this environment variable (the "
        "key itself is never given on the command line, printed or logged).",
    ),
]

Modules = Annotated[
    list[str] | None,
    typer.Option(
        "--module",
        metavar="PKG.MOD",
        help="Also host the workflows of this Python module (repeatable): its `hosting` "
        "attribute, an `orchestra.temporal.Hosting` with the topologies and agents to host.",
    ),
]

WorkerStore = Annotated[
    Path | None,
    typer.Option(
        "--store",
        help="Also keep each session's log in this SQLite file (what `orchestra sessions`, "
        "`orchestra ui --store` and metrics readers read); Temporal's history stays the "
        "durable journal either way.",
    ),
]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _needs_temporal() -> None:
    """temporalio imported, or the command ends with a line saying how to install it."""
    try:
        importlib.import_module("temporalio")
    except ImportError:
        fail("Temporal needs the temporalio package: pip install 'orchestra[temporal]'", 1)


def executor_for(
    address: str, task_queue: str, namespace: str, tls: bool, api_key_env: str | None
) -> TemporalExecutor:
    """The executor ``orchestra run --temporal`` submits with; a bad address or queue, or an
    API key variable that is not set, ends the command (exit code 1) naming it."""
    _needs_temporal()
    from orchestra.temporal import TemporalExecutor

    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            fail(f"--api-key-env {api_key_env}: the environment variable is not set", 1)
    try:
        return TemporalExecutor(
            address, task_queue, namespace=namespace, tls=tls or None, api_key=api_key
        )
    except OrchestraError as error:
        fail(error, 1)


def follow_command(base: list[str], session: str, connect: list[str]) -> str:
    """The command that follows a session on Temporal again (and resumes it when paused):
    ``orchestra resume FILE SESSION --temporal HOST:PORT ...``, ready to copy."""
    return shlex.join([*base, session, *connect])


def following(
    executor: TemporalExecutor, session: str, command: str, connect: list[str], resuming: bool
) -> Followed:
    """What a Ctrl-C says of ``session``, followed on Temporal by ``executor``: ``command``
    follows it again (``connect``: the options that reach its cluster)."""
    return Followed(
        session,
        command,
        terminate_command(session, connect),
        lambda: session in executor.on_temporal,
        resuming,
    )


def terminate_command(session: str, connect: list[str]) -> str:
    """The ``temporal`` CLI's command that stops ``session`` on the cluster that ``connect``
    (``connect_options``) reaches: its address, namespace, TLS, and API key by its variable."""
    options = ["--namespace", "default"]
    given = iter(connect)
    for option in given:
        if option == "--temporal":
            options += ["--address", next(given)]
        elif option == "--namespace":
            options[1] = next(given)
        elif option == "--tls":
            options.append("--tls")
        elif option == "--api-key-env":
            options += ["--api-key", f'"${next(given)}"']
        elif option == "--task-queue":
            next(given)
    quoted = [item if item.startswith('"$') else shlex.quote(item) for item in options]
    return " ".join(["temporal workflow terminate -w", shlex.quote(session), *quoted])


def connect_options(
    address: str, task_queue: str, namespace: str, tls: bool, api_key_env: str | None
) -> list[str]:
    """The options that reach the same cluster and task queue again (the API key by the
    name of its variable)."""
    options = ["--temporal", address, "--task-queue", task_queue]
    if namespace != "default":
        options += ["--namespace", namespace]
    if tls:
        options.append("--tls")
    if api_key_env is not None:
        options += ["--api-key-env", api_key_env]
    return options


@contextlib.contextmanager
def exiting_at_once() -> Iterator[None]:
    """Once the command is done (normally or by ``typer.Exit``), its output flushed, the
    process exits without the interpreter's teardown: temporalio's Rust threads can outlive
    it and abort the process ("Fatal Python error: PyGILState_Release", temporalio/sdk-python
    issue 300), turning a clean exit into a crash."""
    try:
        yield
    except typer.Exit as done:
        code = done.exit_code
    else:
        code = 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def refuse_store(store_given: bool) -> None:
    """The session log of a run on Temporal is the workers' (`orchestra worker --store`)."""
    if store_given:
        fail(
            "--store does not apply with --temporal: on Temporal the session log is kept by "
            "the workers (`orchestra worker --store PATH`)",
            1,
        )


def _hosting(
    files: list[Path], modules: list[str], allow_modules: list[str] | None
) -> tuple[Hosting, list[tuple[str, str]]]:
    """What the worker hosts, and a (where from, version) pair per hosted workflow. A file
    with a mistake ends the command as `orchestra run` ends (exit code 2); a module that cannot
    be hosted ends it with exit code 1, naming it."""
    from orchestra.temporal import Hosting

    hosting = Hosting()
    hosted: list[tuple[str, str]] = []
    for path in files:
        workflow = load(path, None, allow_modules)
        try:
            version = hosting.add(workflow.topology, workflow.registry, source=str(path))
        except OrchestraError as error:
            fail(error, 1)
        hosted.append((str(path), version))
    for name in modules:
        try:
            versions = hosting.include(_module_hosting(name), source=f"module {name}")
        except OrchestraError as error:
            fail(error, 1)
        hosted.extend((name, version) for version in versions)
    return hosting, hosted


def _module_hosting(name: str) -> Hosting:
    """The ``hosting`` attribute of module ``name``."""
    from orchestra.temporal import Hosting

    try:
        module = importlib.import_module(name)
    except ImportError as error:
        fail(f"--module {name}: cannot import it ({error})", 1)
    found = getattr(module, "hosting", None)
    if not isinstance(found, Hosting):
        fail(
            f"--module {name}: it has no `hosting` attribute that is an "
            f"orchestra.temporal.Hosting (found {type(found).__name__})",
            1,
        )
    return found


def worker_command(
    temporal: Annotated[
        str,
        typer.Option(
            "--temporal", metavar="HOST:PORT", help="The address of the Temporal frontend."
        ),
    ],
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Workflow files to host (YAML or JSON), each loaded as `orchestra run` loads "
            "it; host the file a session was started with for as long as it runs.",
            show_default=False,
        ),
    ] = None,
    task_queue: TaskQueue = "orchestra",
    namespace: Namespace = "default",
    store: WorkerStore = None,
    allow_module: AllowModule = None,
    module: Modules = None,
    tls: Tls = False,
    api_key_env: ApiKeyEnv = None,
) -> None:
    """Host workflows on a Temporal task queue: run the steps and tool calls of the sessions
    submitted to it (`orchestra run --temporal`, or `executor=TemporalExecutor(...)`) until
    Ctrl-C or SIGTERM, then stop gracefully. Prints each hosted workflow with its version
    (sessions run only on workers hosting the version they started with), then "worker
    ready on task queue Q"."""
    _needs_temporal()
    if not files and not module:
        fail("nothing to host: give workflow files, or --module with a `hosting`", 1)
    executor = executor_for(temporal, task_queue, namespace, tls, api_key_env)
    hosting, hosted = _hosting(files or [], module or [], allow_module)
    with exiting_at_once(), _opened(store) as manager:
        try:
            asyncio.run(_serve(executor, hosting, hosted, manager))
        except OrchestraError as error:
            fail(error, 1)


@contextlib.contextmanager
def _opened(store: Path | None) -> Iterator[StateManager | None]:
    if store is None:
        yield None
        return
    with open_store(store) as (manager, _):
        yield manager


async def _serve(
    executor: TemporalExecutor,
    hosting: Hosting,
    hosted: list[tuple[str, str]],
    store: StateManager | None,
) -> None:
    """Poll until SIGINT or SIGTERM; then the worker shuts down (its running activities may
    finish for the worker's shutdown grace; then they are cancelled, and another worker runs
    a cancelled step again)."""
    from orchestra.temporal import worker

    client = await executor.client()
    for source, version in hosted:
        say(f"hosting {escape(source)} (version {version})")
    await _say_unhosted(client, executor.task_queue, hosting)
    async with (
        _until_stopped() as stopped,
        worker(client, executor.task_queue, hosting, store=store),
    ):
        say(f"worker ready on task queue {escape(executor.task_queue)}")
        await stopped.wait()
    say("worker stopped")


async def _say_unhosted(client: Client, task_queue: str, hosting: Hosting) -> None:
    """Say, per version this worker does not host, the sessions of ``task_queue`` still
    running it (they wait for a worker hosting the file they started with); best effort: a
    visibility error is one line."""
    from temporalio.service import RPCError

    from orchestra.models.secrets import redact
    from orchestra.temporal.routing import unhosted_sessions

    try:
        unhosted = await unhosted_sessions(client, task_queue, hosting)
    except RPCError as error:
        why = escape(redact(str(error)))
        say(f"cannot list the running sessions of task queue {escape(task_queue)}: {why}")
        return
    for version, sessions in sorted(unhosted.items()):
        say(
            f"{len(sessions)} running session(s) of task queue {escape(task_queue)} use "
            f"workflow version {version}, which this worker does not host (a worker hosting "
            f"the file they started with finishes them): {escape(', '.join(sorted(sessions)))}"
        )


@contextlib.asynccontextmanager
async def _until_stopped() -> AsyncIterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM while the block runs."""
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in STOP_SIGNALS:
        loop.add_signal_handler(number, stopped.set)
    try:
        yield stopped
    finally:
        for number in STOP_SIGNALS:
            loop.remove_signal_handler(number)
