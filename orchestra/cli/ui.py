"""``orchestra ui``: the web inspector, served by uvicorn on a socket bound here first, so a
port in use is said plainly and ``--port 0`` prints the port it got."""

from __future__ import annotations

import errno
import secrets
import socket
from typing import Annotated

import typer

from .store import DEFAULT_STORE, Store
from .terminal import fail, say


def ui_command(
    store: Store = DEFAULT_STORE,
    host: Annotated[
        str, typer.Option(help="The address to listen on (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The port to listen on (0: any free one).")] = 8765,
) -> None:
    """Serve the web inspector: the sessions in the store, in a page on this machine. It
    prints the address to open, with the token every request for data must carry."""
    try:  # the ui extra: the rest of the command line works without it
        import uvicorn

        from orchestra.ui.app import allowed_hosts, create_app
    except ImportError as error:
        fail(f"orchestra ui needs the ui extra ({error}): pip install 'orchestra[ui]'", 2)
    if not store.is_file():
        fail(f"no session store at {store} (a run started with --store makes one)", 2)
    listening = _bind(host, port)
    token = secrets.token_urlsafe(32)
    bound = listening.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    address = f"http://{shown}:{bound}/"
    say(f"orchestra ui: listening on {address} (store {store}); Ctrl-C stops it")
    say(f"open {address}#token={token}")
    app = create_app(store, token, allowed_hosts(host))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[listening])


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
