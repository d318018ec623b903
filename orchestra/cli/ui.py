"""``orchestra ui``: the web inspector, served by uvicorn on a socket bound here first, so a
port in use is said plainly and ``--port 0`` prints the port it got."""

from __future__ import annotations

import asyncio
import errno
import secrets
import socket
import webbrowser
from pathlib import Path
from typing import Annotated

import typer

from orchestra.demo import DEMO_FLOW, DEMO_MAX_TOKENS
from orchestra.errors import OrchestraError
from orchestra.workflow import Workflow

from .store import DEFAULT_STORE, Store, open_store
from .terminal import fail, say
from .workflows import AllowModule, load

Workflows = Annotated[
    list[Path] | None,
    typer.Option(
        "--workflow",
        help="A workflow file the page may start runs of and resume sessions with "
        "(repeatable); it is named by its file name without the suffix.",
    ),
]


GRACE_SECONDS = 2
"""How long a stopping server waits for open responses (the live streams end at once) before
it cancels them and pauses its hosted runs."""

Host = Annotated[str, typer.Option(help="The address to listen on (loopback by default).")]
Port = Annotated[int, typer.Option(help="The port to listen on (0: any free one).")]


def ui_command(
    store: Store = DEFAULT_STORE,
    host: Host = "127.0.0.1",
    port: Port = 8765,
    workflow: Workflows = None,
    allow_module: AllowModule = None,
) -> None:
    """Serve the web inspector: the sessions in the store, in a page on this machine, where
    they can be answered, paused, resumed, checkpointed, restored and deleted (and runs of the
    --workflow files started). It prints the address to open, with the token every request
    for data must carry."""
    if not store.is_file() and not workflow:
        fail(f"no session store at {store} (a run started with --store makes one)", 2)
    flows = {}
    for path in workflow or []:
        if path.stem in flows:
            fail(f"two workflow files are named {path.stem!r}: give each a name of its own", 2)
        flows[path.stem] = load(path, None, allow_module)
    if not store.is_file():
        _create(store)
    serve(store, host, port, flows, None)


def _create(store: Path) -> None:
    """An empty store, as ``orchestra run --store`` makes one: an inspector given workflows
    starts a fresh project's first run (one that only watches has nothing to show without one)."""
    with open_store(store) as (_, backend):
        asyncio.run(backend.list_sessions())


def serve(
    store: Path,
    host: str,
    port: int,
    workflows: dict[str, Workflow],
    first: tuple[str, str | None] | None,
    open_browser: bool = False,
) -> None:
    """Serve the inspector over ``store`` with runs of ``workflows`` hosted, ``first`` (a
    workflow's name and task) started at once, the page opened in a browser when asked."""
    store = store.resolve()  # once: every reader of it (host, catalog, watcher) the same file
    try:  # the ui extra: the rest of the command line works without it
        import uvicorn

        from orchestra.ui.app import InspectorServer, allowed_hosts, create_app
        from orchestra.ui.host import RunHost
    except ImportError as error:
        fail(f"orchestra ui needs the ui extra ({error}): pip install 'orchestra[ui]'", 2)
    listening = _bind(host, port)
    token = secrets.token_urlsafe(32)
    bound = listening.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    address = f"http://{shown}:{bound}/"
    say(f"orchestra ui: listening on {address} (store {store}); Ctrl-C stops it")
    run_host = RunHost(store, workflows)
    app = create_app(store, token, allowed_hosts(host), run_host)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACE_SECONDS,
    )
    server = InspectorServer(app, config)

    async def serving() -> None:
        if first is not None:
            try:
                session = await run_host.start_run(*first, None)
            except OrchestraError as error:
                await run_host.close()
                fail(error, 1)
            say(f"started session {session}")
        say(f"open {address}#token={token}")
        if open_browser:
            webbrowser.open(f"{address}#token={token}")
        await server.serve(sockets=[listening])

    asyncio.run(serving())


def demo_ui(task: str | None, store: Path, host: str, port: int, open_browser: bool) -> None:
    """``orchestra demo --ui``: the inspector over the demo's store, the demo workflow
    registered (as ``demo``) and one run of it started."""
    store.parent.mkdir(parents=True, exist_ok=True)
    flow = load(DEMO_FLOW, DEMO_MAX_TOKENS, None)
    serve(store, host, port, {"demo": flow}, ("demo", task), open_browser)


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port``; a clear exit (2) when it cannot be had."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as error:
        fail(f"cannot listen on {host}:{port}: {error}", 2)
    listening = socket.socket(family, kind, proto)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(address)
        listening.listen(128)
    except OSError as error:
        listening.close()
        reason = "the port is in use" if error.errno == errno.EADDRINUSE else error
        fail(f"cannot listen on {host}:{port}: {reason}", 2)
    return listening
