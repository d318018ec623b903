"""One translation of the official SDKs' errors into ModelAPIError, for every adapter.

The ``openai`` and ``anthropic`` SDKs share their error classes' shape (``APIStatusError`` with
``status_code`` and ``response``, ``APITimeoutError``, ``APIConnectionError``, ``APIError``), so
one function calls a request and one parser, and says what failed in the caller's terms.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

from orchestra.errors import ModelAPIError

from .base import ModelReply
from .config import ModelConfig
from .protocol import beyond_reader
from .secrets import redact

RETRYABLE_STATUS = frozenset({408, 409, 429, 529})  # 529: Anthropic's "overloaded"
STATUS_OF_ERROR_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "server_error": 500,
    "api_error": 500,
    "overloaded_error": 529,
}
"""The HTTP status each error type (OpenAI's and Anthropic's ``type`` or ``code``) comes with
on a plain request: an error event inside a stream names only its type, and is classified as
the same error given as a status would be."""


def is_retryable(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def _in_stream(error: Any) -> bool:
    """Whether an APIStatusError is an error event inside a stream that began well: it comes
    with the stream's own status, a success (Anthropic's ``event: error``)."""
    return bool(error.status_code < 400)


def _error_detail(error: Any) -> dict[str, Any] | None:
    """The ``{"type", "message", ...}`` an API error's body carries: OpenAI's SDK gives an
    error chunk of a stream (``data: {"error": {...}}``) as the body itself, Anthropic's
    wraps it as ``{"type": "error", "error": {...}}``."""
    body = getattr(error, "body", None)
    detail = body.get("error", body) if isinstance(body, dict) else None
    return detail if isinstance(detail, dict) and "message" in detail else None


def status_of(detail: dict[str, Any]) -> int | None:
    """The HTTP status an error of this detail has on a plain request: its ``code`` when that
    is one (vLLM's error chunks), else that of its type or code (:data:`STATUS_OF_ERROR_TYPE`);
    None for a type not known."""
    code = detail.get("code")
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600:
        return code
    for name in (detail.get("type"), code):
        if isinstance(name, str) and name in STATUS_OF_ERROR_TYPE:
            return STATUS_OF_ERROR_TYPE[name]
    return None


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from a ``Retry-After`` (or ``retry-after-ms``) header, when present and numeric."""
    if headers is None:
        return None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return float(milliseconds) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to backoff


def error_text(error: Any) -> str:
    """The provider's own explanation from an error body, else the SDK's message."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        detail = body.get("error", body)
        if isinstance(detail, dict) and "message" in detail:
            kind = detail.get("type")
            return f"{kind}: {detail['message']}" if kind else str(detail["message"])
        return json.dumps(detail)[:500]
    return str(getattr(error, "message", error))[:500]


async def call_sdk(
    sdk: ModuleType,
    provider: str,
    config: ModelConfig,
    request: Callable[[], Awaitable[Any]],
    parse: Callable[[Any], ModelReply],
) -> ModelReply:
    """``parse(await request())``, with every failure a ModelAPIError naming provider, model
    and status, marked retryable when trying again may help; a response the SDK could not read
    for its size (see :func:`_unreadable`) a reply the agent is steered about.

    The error is raised here, outside the handler that caught the SDK's: the SDK's exception
    holds the request, its key header included, so it is neither cause nor context of ours.
    """
    outcome = await _outcome(sdk, provider, config, request, parse)
    if isinstance(outcome, ModelAPIError):
        raise outcome
    return outcome


async def _outcome(
    sdk: ModuleType,
    provider: str,
    config: ModelConfig,
    request: Callable[[], Awaitable[Any]],
    parse: Callable[[Any], ModelReply],
) -> ModelReply | ModelAPIError:
    """The parsed response, or the ModelAPIError a failure becomes (its text redacted: a
    server may echo the key it was sent)."""

    def failure(message: str, retryable: bool, **extra: Any) -> ModelAPIError:
        return ModelAPIError(
            redact(message), provider=provider, model=config.name, retryable=retryable, **extra
        )

    def stream_failure(error: Any, detail: dict[str, Any]) -> ModelAPIError:
        """An error event part-way through a streamed reply: retryable as the same error given
        as an HTTP status is."""
        status = status_of(detail)
        retryable = status is not None and is_retryable(status)
        return failure(f"the stream failed: {error_text(error)}", retryable)

    try:
        response = await request()
    except sdk.APIStatusError as error:
        if _in_stream(error):
            return stream_failure(error, _error_detail(error) or {})
        return failure(
            error_text(error),
            is_retryable(error.status_code),
            status=error.status_code,
            retry_after=retry_after_seconds(error.response.headers),
        )
    except sdk.APITimeoutError:
        return failure(f"no answer within {config.timeout}s", True)
    except sdk.APIConnectionError as error:
        where = config.base_url or f"the {provider} API"
        return failure(f"cannot reach {where}: {error.__cause__ or error}", True)
    except (RecursionError, ValueError) as error:
        unreadable = _unreadable(provider, error)
        if unreadable is not None:
            return unreadable
        return failure(f"malformed response: {str(error)[:500]}", False)
    except sdk.APIError as error:
        detail = _error_detail(error)
        if detail is not None and not isinstance(error, sdk.APIResponseValidationError):
            return stream_failure(error, detail)  # OpenAI's error chunk
        return failure(f"malformed response: {str(error)[:500]}", False)
    try:
        return parse(response)
    except (AttributeError, IndexError, TypeError, KeyError) as error:
        return failure(f"malformed response: {str(error)[:500]}", False)


def _unreadable(provider: str, error: RecursionError | ValueError) -> ModelReply | None:
    """The reply to steer about when the SDK's JSON reader gave up on a well-formed body: it
    nests too deep (RecursionError) or holds a number of more digits than ``int`` converts.
    Both are the model's own output (an Anthropic tool call's input is inline JSON), and are
    what a tool call's arguments of the same shape are steered about, so the model is asked
    again. A body that is no JSON at all (JSONDecodeError), or any other ValueError, is the
    server's fault: None, and the caller fails the step without retrying."""
    if not isinstance(error, RecursionError) and (
        type(error) is not ValueError or "integer string conversion" not in str(error)
    ):
        return None
    why = beyond_reader(error)
    return ModelReply(
        content=f"[the {provider} response, not shown: it {why}]", problem=f"the reply {why}"
    )
