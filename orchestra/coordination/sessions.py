"""The sessions this process is running: reachable by id (to pause or checkpoint a run), and
held so that a session has one writer at a time here (storage holds it across processes)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable
from dataclasses import dataclass

from orchestra.errors import SessionError

from .engine.runner import Runner
from .state.manager import SessionWriter


@dataclass
class LiveRun:
    """A run in progress, reachable by session id (to pause it or checkpoint it)."""

    session_id: str
    runner: Runner
    writer: SessionWriter | None


LIVE: dict[str, LiveRun] = {}
CLAIMED: set[str] = set()
"""Sessions with a run starting or in progress in this process: one run per session at once."""


def claim(session_id: str) -> None:
    """Hold the session for one writer (a run, a checkpoint, a restore) in this process."""
    if session_id in CLAIMED:
        raise SessionError(
            f"session {session_id!r} has a run starting, running or finishing; pause it or "
            "wait for it"
        )
    CLAIMED.add(session_id)


async def let_go(session_id: str, ending: Awaitable[None] | None) -> None:
    """Free a claimed session once ``ending`` (its writer closing or abandoning) is over.

    The ending is finished even if the caller is cancelled meanwhile, and the session stays
    claimed until it is: a run started sooner would write under a writer still writing."""
    if ending is None:
        CLAIMED.discard(session_id)
        return
    finishing = asyncio.ensure_future(ending)
    finishing.add_done_callback(functools.partial(_freed, session_id))
    try:
        await asyncio.shield(finishing)
    except asyncio.CancelledError:
        if not finishing.done():  # nobody is left to hear how it ends: a failure is reported
            finishing.add_done_callback(functools.partial(_unheard, session_id))
        raise


def _freed(session_id: str, finishing: asyncio.Future[None]) -> None:
    CLAIMED.discard(session_id)
    if not finishing.cancelled():
        finishing.exception()  # retrieved here; a caller still awaiting it raises it


def _unheard(session_id: str, finishing: asyncio.Future[None]) -> None:
    error = None if finishing.cancelled() else finishing.exception()
    if error is not None:
        asyncio.get_running_loop().call_exception_handler(
            {
                "message": f"session {session_id!r}: its last records could not be written "
                "after its run was cancelled; a resume goes on from its last durable step",
                "exception": error,
            }
        )
