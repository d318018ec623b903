"""Retrying model calls that failed for reasons that pass: rate limits, 5xx, timeouts, network."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Protocol

from orchestra.errors import ModelAPIError

from .base import Message, Model, ModelReply, StepInfo

RetryReport = Callable[[str, str, int, float, ModelAPIError], None]
"""(branch_id, agent, attempt, delay, error) -> None: how a retry is reported."""

DeltaReport = Callable[[str, int], None]
"""(text, attempt) -> None: a piece of the reply's text as it arrives, with the number of the
attempt it belongs to (0 for the first call, 1 for its first retry, ...): the text of an
earlier attempt is void once a later one's arrives."""


class RetryPolicy(Protocol):
    """How often and how patiently a model call that failed in passing is tried again.

    ``ErrorHandlingConfig`` is the policy a run configures; any object with these three
    attributes serves (a custom agent may bring its own).
    """

    @property
    def max_retries(self) -> int: ...

    @property
    def retry_initial_delay(self) -> float: ...

    @property
    def retry_max_delay(self) -> float: ...


def retry_delay(attempt: int, error: ModelAPIError, policy: RetryPolicy) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based).

    The provider's Retry-After wins when given; otherwise exponential backoff from
    ``retry_initial_delay`` with equal jitter (half fixed, half random), so parallel branches
    hitting the same rate limit do not retry in lockstep. Never more than ``retry_max_delay``.
    """
    if error.retry_after is not None:
        return min(max(error.retry_after, 0.0), policy.retry_max_delay)
    base = min(policy.retry_initial_delay * 2 ** (attempt - 1), policy.retry_max_delay)
    return float(base / 2 + random.uniform(0, base / 2))


async def complete_with_retries(
    model: Model,
    messages: Sequence[Message],
    info: StepInfo,
    policy: RetryPolicy,
    report: RetryReport | None = None,
    on_delta: DeltaReport | None = None,
) -> ModelReply:
    """Call the model; retry retryable API errors up to ``policy.max_retries`` times.

    A non-retryable error (bad request, authentication, context too long) is raised at once.
    With ``on_delta``, a model that can stream (a ``stream`` method, and no
    ``ModelConfig(stream=False)``) is asked to, and each piece of text is reported with its
    attempt's number; without, or for a model that cannot, ``complete`` is called as ever.
    """
    stream: Callable[..., Awaitable[ModelReply]] | None = (
        getattr(model, "stream", None)
        if on_delta is not None and getattr(getattr(model, "config", None), "stream", True)
        else None
    )
    attempt = 0
    while True:
        try:
            if stream is None or on_delta is None:
                return await model.complete(messages, info)
            return await stream(messages, info, partial(_delta, on_delta, attempt))
        except ModelAPIError as error:
            if not error.retryable or attempt >= policy.max_retries:
                raise
            attempt += 1
            delay = retry_delay(attempt, error, policy)
            if report is not None:
                report(info.branch_id, info.agent_name, attempt, delay, error)
            await asyncio.sleep(delay)


def _delta(report: DeltaReport, attempt: int, text: str) -> None:
    if text:
        report(text, attempt)
