"""The web inspector's Starlette app: the sessions list, as JSON and as a page.

Safe from the start. Every response carries a strict Content-Security-Policy (scripts only
from this server's files, none inline) and ``nosniff``; the page renders model, tool and user
text with DOM text APIs only. Bound to loopback, requests must name a loopback host (a web
page elsewhere cannot reach it by rebinding a name of its own to 127.0.0.1); bound to any
other address, every request needs the token printed at start: ``Authorization: Bearer``, or
``?token=`` once on the page's address, which trades it for an HttpOnly, SameSite=Strict
cookie. Nothing here changes a session yet: there is no state-changing route.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.errors import OrchestraError

from .summaries import session_summaries

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "orchestra_ui_token"
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # a ?token= address is never sent on
    "Cache-Control": "no-store",
}
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, as given to ``--host``) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(store: Path, token: str | None) -> Starlette:
    """The app over the SQLite store at ``store``; ``token`` None: loopback only (requests
    must name a loopback host), else the token every request must carry."""
    backend = SQLiteStorageBackend(store)
    manager = StateManager(backend, auto_save_interval=0)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            backend.close()

    async def sessions(_: Request) -> Response:
        try:
            return JSONResponse(await session_summaries(manager, backend))
        except OrchestraError as error:
            return JSONResponse({"error": str(error)}, status_code=500)

    async def page(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/sessions", sessions),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[Middleware(Guard, token=token)],
        lifespan=lifespan,
    )


class Guard(BaseHTTPMiddleware):
    """Lets a request through only as the module's docstring says, and adds :data:`HEADERS`
    to every response, refusals included."""

    def __init__(self, app: object, token: str | None) -> None:
        super().__init__(app)  # type: ignore[arg-type]
        self.token = token

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = self._refusal(request)
        if response is None:
            response = await call_next(request)
        response.headers.update(HEADERS)
        return response

    def _refusal(self, request: Request) -> Response | None:
        """The response that turns the request away (None: it may go on)."""
        token = self.token
        if token is None:
            if _host_name(request.headers.get("host", "")) in LOOPBACK_NAMES:
                return None
            return PlainTextResponse("this inspector answers loopback addresses only", 403)
        if _carries(request, token):
            return None
        offered = request.query_params.get("token")
        if request.url.path == "/" and offered is not None and _matches(offered, token):
            redirect = RedirectResponse("/", status_code=303)
            redirect.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
            return redirect
        return PlainTextResponse(
            "a token is needed: open the address `orchestra ui` printed, or send "
            "'Authorization: Bearer TOKEN'",
            401,
        )


def _host_name(header: str) -> str:
    """The host a ``Host`` header names, without its port (``[::1]:8765`` -> ``[::1]``)."""
    if header.startswith("["):
        return header.partition("]")[0].lower() + "]"
    return header.rsplit(":", 1)[0].lower()


def _carries(request: Request, token: str) -> bool:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and _matches(value.strip(), token):
        return True
    return _matches(request.cookies.get(COOKIE, ""), token)


def _matches(offered: str, token: str) -> bool:
    """Compared in constant time: how long a refusal takes says nothing of the token."""
    return hmac.compare_digest(offered.encode(), token.encode())
