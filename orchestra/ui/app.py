"""The web inspector's Starlette app: the sessions list, as JSON and as a page.

Safe from the start. Every response, an unexpected error's 500 included, carries a strict
Content-Security-Policy (scripts only from this server's files, none inline) and ``nosniff``;
the page renders model, tool and user text with DOM text APIs only. Every ``/api/`` request
needs the token made at start, loopback included (any local user could otherwise read every
session), as ``Authorization: Bearer``: the printed address carries it in its fragment
(``#token=``), which a browser never sends to a server, a log or a Referer; the page's script
keeps it in ``sessionStorage`` (the live stream, ``/api/events``, is read with ``fetch`` for the
same reason: ``EventSource`` cannot send the header). The page and its static files hold no
data and need no token.
No cookie, so no other service on the host's other ports ever sees the token. Requests must
name the host the server is bound to (for loopback: any loopback name), so a web page elsewhere
cannot reach it by rebinding a name of its own. The routes that change a session (``actions``)
refuse cross-site requests besides.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import re
import socket
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from orchestra.errors import (
    OrchestraError,
    SessionCorruptedError,
    SessionNotFoundError,
    StorageUnavailableError,
)

from .actions import action_routes
from .catalog import Catalog
from .host import RunHost
from .live import Build, StoreWatcher, event_stream
from .views import RunHostView

STATIC = Path(__file__).resolve().parent / "static"
LOG = logging.getLogger(__name__)
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::[0-9]{1,5})?")


def allowed_hosts(bound: str) -> frozenset[str] | None:
    """The host names a request may give when the server is bound to ``bound``: its own
    canonical form, and every loopback name for a loopback address; None (any: the token
    alone guards it) for an unspecified address such as ``0.0.0.0``, which any name reaches."""
    try:
        address = ipaddress.ip_address(bound.strip("[]"))
    except ValueError:
        name = bound.lower()
        return LOOPBACK_NAMES | {name} if name == "localhost" else frozenset({name})
    if address.is_unspecified:
        return None
    shown = f"[{address}]" if address.version == 6 else str(address)
    return LOOPBACK_NAMES | {shown} if address.is_loopback else frozenset({shown})


def create_app(
    store: Path, token: str, hosts: frozenset[str] | None, host: RunHostView | None = None
) -> Starlette:
    """The app over the SQLite store at ``store``; ``token``: the token every ``/api/``
    request must carry; ``hosts``: the Host names it answers (None: any); ``host``: the runs
    this process hosts, if any (their questions are answerable)."""
    catalog = Catalog(store)
    watcher = StoreWatcher(store, host, catalog.writer_gone)

    async def sessions(_: Request) -> Response:
        return await _answer(catalog.sessions(host))

    async def session(request: Request) -> Response:
        return await _answer(catalog.view(request.path_params["session"], host))

    async def step(request: Request) -> Response:
        found = request.path_params
        return await _answer(catalog.step(found["session"], found["position"]))

    async def events(request: Request) -> Response:
        parts: list[tuple[str, str, Build]] = [
            ("sessions", "sessions", lambda: catalog.sessions(host))
        ]
        watched = request.query_params.get("session")
        if watched is not None:
            parts.append((f"session {watched}", "session", lambda: catalog.view(watched, host)))
        return StreamingResponse(
            event_stream(watcher, parts),
            media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no"},
        )

    async def page(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/api/sessions", sessions),
            Route("/api/sessions/{session}", session),
            Route("/api/sessions/{session}/steps/{position:int}", step),
            Route("/api/events", events),
            *(action_routes(host) if isinstance(host, RunHost) else []),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[Middleware(Guard, token=token, hosts=hosts)],
        lifespan=_closing(host) if isinstance(host, RunHost) else None,
    )
    app.state.watcher = watcher
    return app


async def _answer(building: Awaitable[Any]) -> Response:
    """What was built, as JSON; a session that is absent a 404, a damaged one a 422 and a
    store's server that did not answer a 503 (worth trying again), each with the error naming
    it (and the record at fault, or the server)."""
    try:
        return JSONResponse(await building)
    except SessionNotFoundError as error:
        return JSONResponse({"error": str(error)}, status_code=404)
    except SessionCorruptedError as error:
        return JSONResponse({"error": str(error)}, status_code=422)
    except StorageUnavailableError as error:
        return JSONResponse({"error": str(error)}, status_code=503)
    except OrchestraError as error:  # a bad session id, a store that cannot be read
        return JSONResponse({"error": str(error)}, status_code=400)


class InspectorServer(uvicorn.Server):
    """The uvicorn server of an inspector ``app``: as it begins to exit (Ctrl-C, SIGTERM) it
    ends the app's live streams, since uvicorn waits for every open response to finish before
    the app's shutdown (where the host pauses its runs), and a stream never finishes."""

    def __init__(self, app: Starlette, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.watcher: StoreWatcher = app.state.watcher
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.loop is not None:  # a signal handler: the watcher is stopped on the loop
            self.loop.call_soon_threadsafe(self.watcher.stop)


def _closing(host: RunHost) -> Any:
    """The app's lifespan: when it stops, the host pauses its runs and lets go of the store."""

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await host.close()

    return lifespan


class Guard(BaseHTTPMiddleware):
    """Lets a request through only as the module's docstring says, and adds :data:`HEADERS`
    to every response, refusals and unexpected errors included."""

    def __init__(self, app: object, token: str, hosts: frozenset[str] | None) -> None:
        super().__init__(app)  # type: ignore[arg-type]
        self.token = token
        self.hosts = hosts

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = self._refusal(request)
        if response is None:
            try:
                response = await call_next(request)
            except Exception as error:  # answered here, so with the headers
                # its type only: its text may quote a session's data
                LOG.error("orchestra ui: %s failed: %s", request.url.path, type(error).__name__)
                response = JSONResponse({"error": "the server failed; see its log"}, 500)
        response.headers.update(HEADERS)
        return response

    def _refusal(self, request: Request) -> Response | None:
        """The response that turns the request away (None: it may go on)."""
        if self.hosts is not None and _host_name(request.headers.get("host", "")) not in self.hosts:
            return PlainTextResponse("this inspector answers its own address only", 403)
        if not request.url.path.startswith("/api/") or _carries(request, self.token):
            return None
        return PlainTextResponse(
            "a token is needed: open the address `orchestra ui` printed (with its #token=), "
            "or send 'Authorization: Bearer TOKEN'",
            401,
        )


def _host_name(header: str) -> str | None:
    """The host a ``Host`` header names, without its port (``[::1]:8765`` -> ``[::1]``), an
    IPv6 address in its canonical form; None for a malformed header (``[::1]evil.com``)."""
    found = _HOST.fullmatch(header.lower())
    if found is None:
        return None
    name = found.group(1)
    if not name.startswith("["):
        return name
    try:
        return f"[{ipaddress.IPv6Address(name[1:-1])}]"
    except ValueError:
        return None


def _carries(request: Request, token: str) -> bool:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and _matches(value.strip(), token)


def _matches(offered: str, token: str) -> bool:
    """Compared in constant time: how long a refusal takes says nothing of the token."""
    return hmac.compare_digest(offered.encode(), token.encode())
