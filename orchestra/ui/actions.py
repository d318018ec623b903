"""The inspector's state-changing routes: start a run, answer a question, pause, resume,
checkpoint, restore, delete; and the list of workflows runs can be started from.

Each is a POST of a JSON object, answered with a JSON object. A cross-site page cannot make
one: besides the Bearer token (which a form or another origin's script does not have), the
body must be ``application/json`` (a form can send only form types and text/plain: 415) and an
``Origin`` header, when the browser sends one, must be this server's own (403). Refusals are
``{"error": ...}`` naming the session, question, checkpoint or workflow at fault: 400 for a
request that cannot be right, 404 for something that is not there, 409 for a session whose
state does not allow it now.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestra.agents.contract import timeout_problem
from orchestra.errors import (
    InvalidSessionIdError,
    OrchestraError,
    SessionError,
    SessionNotFoundError,
    StorageUnavailableError,
    UserInputError,
)

from .host import RunHost

Body = dict[str, Any]
Action = Callable[[RunHost, str, Body], Awaitable[Body]]


class Refused(Exception):
    """A request answered with ``status`` and ``message``, nothing done."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def action_routes(host: RunHost) -> list[Route]:
    """The routes of the module docstring, acting through ``host``."""
    session_actions: dict[str, Action] = {
        "answer": _answer,
        "pause": _pause,
        "resume": _resume,
        "checkpoint": _checkpoint,
        "restore": _restore,
        "delete": _delete,
    }

    async def workflows(_: Request) -> Response:
        return JSONResponse(host.workflow_list())

    async def runs(request: Request) -> Response:
        return await _answered(request, lambda body: _start(host, body))

    def session_route(name: str, act: Action) -> Route:
        async def endpoint(request: Request) -> Response:
            session_id = request.path_params["session"]
            return await _answered(request, lambda body: act(host, session_id, body))

        return Route(f"/api/sessions/{{session}}/{name}", endpoint, methods=["POST"])

    return [
        Route("/api/workflows", workflows),
        Route("/api/runs", runs, methods=["POST"]),
        *(session_route(name, act) for name, act in session_actions.items()),
    ]


async def _answered(request: Request, act: Callable[[Body], Awaitable[Body]]) -> Response:
    """The action's answer, or the refusal of a cross-site request, a bad body, or what the
    session's state does not allow."""
    try:
        _check_origin(request)
        return JSONResponse(await act(await _body(request)))
    except Refused as refused:
        return JSONResponse({"error": str(refused)}, refused.status)
    except OrchestraError as error:
        return JSONResponse({"error": str(error)}, _status(error))


def _check_origin(request: Request) -> None:
    """An ``Origin``, when sent, must be this server's own: scheme, host and port."""
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin is not None and origin.lower() != own.lower():
        raise Refused(403, f"a request from {origin!r} is refused: only this page may act")


async def _body(request: Request) -> Body:
    """The request's JSON object (415 for another content type, 400 for no object)."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/json":
        raise Refused(415, "the body must be JSON (Content-Type: application/json)")
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise Refused(400, f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise Refused(400, "the body must be a JSON object")
    return body


def _status(error: OrchestraError) -> int:
    if isinstance(error, SessionNotFoundError | UserInputError):
        return 404
    if isinstance(error, StorageUnavailableError):
        return 503
    if isinstance(error, SessionError) and not isinstance(error, InvalidSessionIdError):
        return 409
    return 400


def _optional(body: Body, field: str) -> str | None:
    """The body's ``field``: a string, or None when it is null or absent."""
    return None if body.get(field) is None else _required(body, field)


def _required(body: Body, field: str) -> str:
    """The body's ``field``, which must be a string."""
    value = body.get(field)
    if not isinstance(value, str):
        raise Refused(400, f"field {field!r} must be a string, got {_shown(value)}")
    return value


async def _start(host: RunHost, body: Body) -> Body:
    workflow = _required(body, "workflow")
    follow_ups = body.get("follow_ups", False)
    if not isinstance(follow_ups, bool):
        raise Refused(400, f"field 'follow_ups' must be true or false, got {_shown(follow_ups)}")
    seconds = body.get("follow_up_timeout")
    problem = timeout_problem(seconds, "field 'follow_up_timeout'")  # the library's own check
    if problem is not None:
        raise Refused(400, problem)
    session = await host.start_run(
        workflow, _optional(body, "task"), _optional(body, "session"), follow_ups, seconds
    )
    return {"session": session}


def _shown(value: Any) -> str:
    """A wrong field's value, as an error quotes it: its JSON, cut short."""
    return json.dumps(value)[:60]


async def _answer(host: RunHost, session_id: str, body: Body) -> Body:
    question = _required(body, "question")
    answer = _required(body, "answer")
    await host.answer(session_id, question, answer)
    return {"session": session_id, "question": question}


async def _pause(host: RunHost, session_id: str, body: Body) -> Body:
    await host.pause(session_id, _optional(body, "reason"))
    return {"session": session_id}


async def _resume(host: RunHost, session_id: str, body: Body) -> Body:
    workflow = await host.resume(session_id, _optional(body, "workflow"))
    return {"session": session_id, "workflow": workflow}


async def _checkpoint(host: RunHost, session_id: str, body: Body) -> Body:
    return {"checkpoint": await host.checkpoint(session_id, _optional(body, "name"))}


async def _restore(host: RunHost, session_id: str, body: Body) -> Body:
    checkpoint = _required(body, "checkpoint")
    await host.restore(session_id, checkpoint)
    return {"session": session_id, "checkpoint": checkpoint}


async def _delete(host: RunHost, session_id: str, body: Body) -> Body:
    await host.delete(session_id)
    return {"session": session_id, "deleted": True}
