"""How a run the command line started ends: its result reported, its exit code, and what to
do next when it paused or was interrupted (resume it from the store, or follow it again on
Temporal, where it goes on without the command)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import typer
from rich.markup import escape

from orchestra.coordination.engine.rounds import NO_CHANNEL
from orchestra.coordination.monitoring.live import close_displays
from orchestra.coordination.results import OrchestraResult
from orchestra.coordination.state import StateManager
from orchestra.errors import OrchestraError, SessionRunningError

from .store import state_of
from .terminal import fail, print_result, say

NOT_OFFERED = "Follow-ups are not offered: standard input (or the screen) is no terminal."

PAUSED = 3  # the exit code of a run that paused (resume it)


INTERRUPTED = 130


class Kept(NamedTuple):
    """A run's session: where it is kept, and the command that takes it up again."""

    manager: StateManager
    session: str
    resume: str


class Followed(NamedTuple):
    """A session on Temporal: the command that follows it again, the one that stops it, whether
    it goes on there now (started, resumed or found running by this command) and whether this
    command resumes it (a paused one stays paused until the resume is sent)."""

    session: str
    command: str
    terminate: str
    goes_on: Callable[[], bool]
    resuming: bool


def finish(
    run: Coroutine[Any, Any, OrchestraResult],
    kept: Kept | None,
    output: Path | None,
    followed: Followed | None = None,
) -> None:
    """Run to the end and report (the whole final response written to ``output``, when one is
    given); when the run can be taken up again, say how (``followed``: a session on Temporal,
    which goes on without this command). The live status area is gone before anything more
    is printed."""
    try:
        result = asyncio.run(run)
    except KeyboardInterrupt:
        close_displays()
        if followed is not None:
            left_on_temporal(followed)
        interrupted(kept)
    except SessionRunningError as error:
        close_displays()
        if followed is None or followed.resuming:  # a resume's: it says what to do
            fail(error, 1)
        fail(
            f"session {followed.session!r} has a run in progress on Temporal; follow it "
            f"with: {followed.command}",
            1,
        )
    except OrchestraError as error:
        close_displays()
        fail(error, 1)
    close_displays()
    if result.metadata.get("follow_ups") == NO_CHANNEL:  # a resume, with no terminal
        say(NOT_OFFERED)
    print_result(result, output, None if kept is None else kept.resume)
    if result.metadata.get("paused"):
        again = followed.command if followed is not None else kept.resume if kept else None
        if again is not None:
            say(f"Resume with: {escape(again)}")
        raise typer.Exit(PAUSED)
    if not result.success:
        raise typer.Exit(1)


def left_on_temporal(followed: Followed) -> NoReturn:
    """Ctrl-C while following a session on Temporal: the session goes on there, unless it was
    interrupted before it started (nothing runs) or before its resume was sent (it stays as
    it was)."""
    session = followed.session
    if followed.goes_on():
        said = (
            f"Interrupted: session {session} goes on on Temporal. Follow it again with: "
            f"{followed.command} (stop it with: {followed.terminate})"
        )
    elif followed.resuming:
        said = (
            f"Interrupted before session {session} was resumed on Temporal: it stays as it "
            f"was. Resume it with: {followed.command}"
        )
    else:
        said = f"Interrupted before session {session} started on Temporal: nothing runs."
    say(escape(said))
    raise typer.Exit(INTERRUPTED)


def interrupted(kept: Kept | None) -> NoReturn:
    """Ctrl-C: say what the log holds, so the advice fits (the run may have been stopped
    before its first record, or after its last)."""
    state = asyncio.run(state_of(kept.manager, kept.session)) if kept is not None else None
    if kept is None:
        say("Interrupted.")
    elif state is None:
        say("Interrupted before the run was recorded: there is nothing to resume.")
    elif state in ("finished", "failed"):
        say(f"Interrupted as the run ended: it {state} (see `orchestra sessions list`).")
    else:
        say(f"Interrupted. Resume with: {escape(kept.resume)}")
    raise typer.Exit(INTERRUPTED)
