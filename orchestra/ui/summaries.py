"""The sessions list as plain data: one summary per session in a store, read from its log.

Every reader of a store names a session's state alike: :func:`run_state` is the command line's
wording, and a run that a writer holds now is running (waiting for the user while a question it
asked has no answer yet). A session whose log cannot be read is listed as damaged, with why:
one bad session never hides the others.

The catalog (``catalog.py``) builds them off the event loop, and again only for a session
whose log grew or whose writer came or went.
"""

from __future__ import annotations

import datetime
from typing import TypedDict

from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.state.manager import SessionLog, run_state
from orchestra.errors import OrchestraError

from .fold import Fold
from .shown import record_of, shown

TASK_CHARS = 120
"""Characters of a session's task a summary keeps (the rest is cut, saying how much)."""
ERROR_CHARS = 300
"""Characters of an error a summary keeps."""


class SessionSummary(TypedDict):
    """One row of the sessions list (JSON as it is: ``GET /api/sessions``)."""

    id: str
    status: str
    task: str
    started: str | None  # ISO 8601, UTC
    runs: int
    steps: int
    tokens: int
    cost_usd: float | None
    error: str | None


def summarised(log: SessionLog, held: bool) -> SessionSummary:
    run = log.last_run
    tokens, cost = _usage(log)  # before the state: a record it cannot read makes it damaged
    status = run_state(log)
    if held and status == "interrupted":  # a run with no end, and a writer holds it: going on
        status = "waiting for the user" if _asking(log) else "running"
    error = run.end.error if run and run.end and not run.end.success else None
    first = log.runs[0].start if log.runs else None
    return SessionSummary(
        id=log.session_id,
        status=status,
        task=shown(first.task, TASK_CHARS) if first else "",
        started=_iso(first.at) if first else None,
        runs=len(log.runs),
        steps=sum(r.steps for r in log.runs),
        tokens=tokens,
        cost_usd=cost,
        error=shown(error, ERROR_CHARS) if error else None,
    )


def damaged(session_id: str, error: Exception) -> SessionSummary:
    """The row of a session that cannot be summarised, its error naming the session."""
    reason = str(error) if isinstance(error, OrchestraError) else f"{type(error).__name__}: {error}"
    if f"{session_id!r}" not in reason:
        reason = f"session {session_id!r}: {reason}"
    return SessionSummary(
        id=session_id,
        status="damaged",
        task="",
        started=None,
        runs=0,
        steps=0,
        tokens=0,
        cost_usd=None,
        error=shown(reason, ERROR_CHARS),
    )


def _usage(log: SessionLog) -> tuple[int, float | None]:
    """Tokens and cost (None: no price known) of every step on the session's history."""
    tokens, cost = 0, None
    for run in log.runs:
        for entry in run.entries:
            if entry.kind != inp.StepResult.KIND:
                continue
            usage = record_of(entry, log.session_id).outcome.usage  # type: ignore[attr-defined]
            if usage is not None:
                tokens += usage.total_tokens
                if usage.cost_usd is not None:
                    cost = (cost or 0.0) + usage.cost_usd
    return tokens, cost


def _asking(log: SessionLog) -> bool:
    """Whether the last run waits for the user, per its log: an agent's question, a follow-up
    offer after a round's response (see ``fold``)."""
    run = log.last_run
    if run is None:
        return False
    return bool(Fold(log, [run.header, *run.entries], held=True).questions())


def _iso(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="seconds")
