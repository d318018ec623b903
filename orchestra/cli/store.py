"""Where the command line keeps sessions, and the ``orchestra sessions`` commands."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.coordination.state.manager import run_state
from orchestra.errors import (
    ConfigurationError,
    OrchestraError,
    SessionCorruptedError,
    SessionError,
    SessionNotFoundError,
)
from orchestra.text import printable

from .terminal import console, fail, say

DEFAULT_STORE = Path(".orchestra") / "sessions.db"


ENV_STORE = "ORCHESTRA_STORE"


Store = Annotated[
    Path,
    typer.Option(
        "--store",
        envvar=ENV_STORE,
        help="The SQLite file that keeps sessions; every step is durable in it.",
    ),
]


@contextlib.contextmanager
def open_store(path: Path) -> Iterator[tuple[StateManager, SQLiteStorageBackend]]:
    """Sessions kept durably, step by step: a run the command line starts is a process that
    can be killed, and ``orchestra resume`` goes on from its last completed step. A path that
    cannot be a store is the command line's mistake (exit code 2); a store too damaged to be
    opened is not (exit code 1)."""
    backend = SQLiteStorageBackend(path)
    try:
        yield StateManager(backend, auto_save_interval=0), backend
    except ConfigurationError as error:
        fail(error, 2)
    except SessionCorruptedError as error:
        fail(error, 1)
    finally:
        backend.close()


async def state_of(manager: StateManager, session: str) -> str | None:
    """How the session's last run stands (None: no such session); a session that cannot be
    read (damaged, or of a log format this release cannot read) is reported and exits 1."""
    try:
        return run_state(await manager.load(session))
    except SessionNotFoundError:
        return None
    except SessionError as error:
        fail(error, 1)


def resume_command(base: list[str], session: str, store: Path) -> str:
    """The command that takes the session up again, ready to copy."""
    named = ["--store", str(store)] if store != DEFAULT_STORE or ENV_STORE in os.environ else []
    return shlex.join([*base, session, *named])


sessions_app = typer.Typer(help="The sessions kept in a store: list them, delete them.")


@sessions_app.command("list")
def list_sessions(store: Store = DEFAULT_STORE) -> None:
    """Each session with the state of its last run: running (here or in another process),
    interrupted or paused (these two can be resumed), on Temporal (its workers run it: follow
    it with `orchestra resume FILE SESSION --temporal HOST:PORT`), finished or failed."""
    if not store.exists():
        console.print(f"No sessions: no store at {store}", highlight=False, markup=False)
        return
    with open_store(store) as (manager, backend):
        rows, damage = asyncio.run(_session_rows(manager, backend))
    table = Table(title=escape(f"Sessions in {store}"))
    for column in ("session", "state", "runs", "steps", "task"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if damage:
        fail(
            f"the session store {store} is damaged ({'; '.join(damage[:3])}): the sessions "
            "listed are those that could be read",
            1,
        )


async def _session_rows(
    manager: StateManager, backend: SQLiteStorageBackend
) -> tuple[list[tuple[str, str, str, str, str]], list[str]]:
    """The readable sessions' rows, and what is wrong with the store file (listing reads
    every log anyway, so checking the whole file costs no more)."""
    rows = []
    for session_id in await manager.list_sessions():
        try:
            log = await manager.load(session_id)
            run = log.last_run
            steps = run.steps if run else 0
            task = str(run.start.task) if run else ""
        except (OrchestraError, KeyError, TypeError, ValueError) as error:
            rows.append((session_id, escape(printable(f"unreadable: {error}", 200)), "", "", ""))
            continue
        state = "running" if await backend.held(session_id) else run_state(log)
        rows.append(
            (
                session_id,
                str(state),
                str(len(log.runs)),
                str(steps),
                escape(printable(task if len(task) <= 48 else task[:47] + "…")),
            )
        )
    return rows, await backend.damage()


@sessions_app.command("delete")
def delete_sessions(
    sessions: Annotated[list[str], typer.Argument(help="The session ids.")],
    store: Store = DEFAULT_STORE,
) -> None:
    """Delete sessions, their logs and snapshots (exit code 1 if one could not be)."""
    if not store.exists():
        fail(f"no session store at {store}", 1)
    with open_store(store) as (manager, _):
        if not asyncio.run(_delete(manager, sessions)):
            raise typer.Exit(1)


async def _delete(manager: StateManager, sessions: list[str]) -> bool:
    """Delete each session, saying so; False when one could not be (not there, being run)."""
    done = True
    for session_id in sessions:
        try:
            deleted = await manager.delete_session(session_id)
        except OrchestraError as error:
            say(f"[red]{escape(str(error))}[/red]")
            done = False
            continue
        say(escape(f"{session_id}: {'deleted' if deleted else 'no such session'}"))
        done = done and deleted
    return done
