"""The ``orchestra`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Annotated, Any, NamedTuple, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from orchestra.coordination.config import ExecutionConfig, StatusConfig
from orchestra.coordination.orchestra import Orchestra, OrchestraInstance, new_session_id
from orchestra.coordination.results import OrchestraResult
from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.coordination.state.backends import check_session_id
from orchestra.coordination.state.manager import SessionLog
from orchestra.coordination.topology import Edge, PatternConfig, Topology
from orchestra.demo import DEMO_FLOW, DEMO_MAX_TOKENS
from orchestra.errors import (
    ConfigurationError,
    InvalidSessionIdError,
    OrchestraError,
    SessionError,
    SessionNotFoundError,
    TopologyError,
)
from orchestra.models.defaults import default_model_config
from orchestra.workflow import Workflow, load_workflow
from orchestra.workflow_source import WorkflowError, read_source

app = typer.Typer(
    help="Orchestra: durable, fast, observable multi-agent workflows.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


def _roles_table(topology: Topology) -> Table:
    summary = topology.analyze().summary()
    table = Table(show_header=False, box=None, padding=(0, 1))
    for key, value in summary.items():
        items = [f"({', '.join(v)})" if isinstance(v, list) else str(v) for v in value]
        shown = ", ".join(items) if items else "-"
        table.add_row(f"[bold]{key.replace('_', ' ')}[/bold]", shown)
    return table


def show_topology(title: str, topology: Topology) -> None:
    """Print a topology's roles and its Mermaid diagram."""
    console.print(Panel.fit(_roles_table(topology), title=title))
    console.print(topology.to_mermaid(), highlight=False, markup=False)
    console.print()


def _demo_topologies() -> dict[str, Topology]:
    """The topologies of the API page's examples, each in the form the page writes it."""
    return {
        "One node (dict form)": Topology.from_dict({"nodes": ["Summarizer"], "edges": []}),
        "Hub and spoke, parallel spokes": PatternConfig.hub_and_spoke(
            hub="Coordinator",
            spokes=["TechAnalyst", "FinanceAnalyst", "Reporter"],
            parallel_spokes=True,
        ),
        "Pipeline (ETL)": PatternConfig.pipeline(
            stages=[
                {"name": "extract", "agents": ["Extractor"]},
                {"name": "transform", "agents": ["Transformer"]},
                {"name": "load", "agents": ["Loader"]},
            ]
        ),
        "Pattern 1: conditional execution": Topology(
            nodes=["Validator", "ProcessorA", "ProcessorB", "Finalizer"],
            edges=[
                "Validator -> ProcessorA",
                "Validator -> ProcessorB",
                Edge("ProcessorA", "Finalizer", metadata={"condition": "valid"}),
                Edge("ProcessorB", "Finalizer", metadata={"condition": "invalid"}),
            ],
        ),
        "Pattern 4: error recovery": Topology.from_dict(
            {
                "nodes": ["User", "MainProcessor", "ErrorHandler", "Fallback"],
                "edges": [
                    "User -> MainProcessor",
                    "MainProcessor -> User",
                    "MainProcessor -> ErrorHandler",
                    "ErrorHandler -> User",
                    "ErrorHandler -> Fallback",
                    "Fallback -> User",
                ],
            }
        ),
    }


PREVIEW_LINES = 40
PREVIEW_CHARS = 4_000
"""How much of a final response the command line draws. Drawing text in a panel costs rich
time that grows faster than the text (7.5 s for 4 MB, minutes for 50 MB), and a terminal shows
a screenful: a longer response is previewed, and a line under it says where the whole is."""


def _preview(text: str) -> str:
    """The opening of ``text``: at most PREVIEW_LINES lines of at most PREVIEW_CHARS in all
    (only that much of it is read)."""
    head = text[:PREVIEW_CHARS]
    lines = head.split("\n", PREVIEW_LINES)
    return "\n".join(lines[:PREVIEW_LINES]) if len(lines) > PREVIEW_LINES else head


def _print_response(text: str, output: Path | None, again: str | None) -> None:
    """The final response, as text (never read as rich markup), previewed when long; the whole
    of it is written to ``output`` when one was given, else the line under it says how to get
    it (``again``: the command that shows a kept session's result)."""
    if output is not None:
        _save(output, text)
    preview = _preview(text)
    console.print(Panel(escape(preview), title="Final response"))
    if output is not None:
        _say(f"The whole response ({len(text):,} characters) is in {escape(str(output))}")
    elif len(preview) < len(text):
        where = f"{again} --output FILE" if again else "run again with --output FILE"
        _say(
            f"{len(text) - len(preview):,} more characters not shown ({len(text):,} in all); "
            f"the whole response: {escape(where)}"
        )


def _save(output: Path, text: str) -> None:
    """``text`` in the file ``output``, as UTF-8 (what UTF-8 cannot hold, such as a lone
    surrogate a model wrote as an escape, as a backslash escape)."""
    try:
        output.write_text(text, encoding="utf-8", errors="backslashreplace")
    except OSError as error:
        _fail(f"the response could not be written to {output}: {error.strerror or error}", 1)


def _print_result(
    result: OrchestraResult, output: Path | None = None, again: str | None = None
) -> None:
    if result.success:
        _print_response(result.get_final_response_as_text(), output, again)
    elif result.metadata.get("paused"):
        reason = result.metadata.get("pause_reason") or "no reason given"
        console.print(Panel(escape(str(reason)), title="Paused", style="yellow"))
    else:
        console.print(Panel(escape(str(result.error)), title="The run failed", style="red"))
    metrics = result.get_metrics()
    table = Table(title="Per agent")
    for column in ("agent", "steps", "invocations", "time (ms)", "prompt", "completion", "cost"):
        table.add_column(column)
    for name, row in metrics["agents"].items():
        table.add_row(
            name,
            str(row["steps"]),
            str(row["invocations"]),
            f"{row['time_in_agent'] * 1000:.1f}",
            str(row["prompt_tokens"]),
            str(row["completion_tokens"]),
            "-" if row["cost_usd"] is None else f"${row['cost_usd']:.6f}",
        )
    console.print(table)
    branches = Table(title="Branches")
    for column in ("branch", "status", "steps", "agents"):
        branches.add_column(column)
    for branch in result.branch_results:
        branches.add_row(
            branch.branch_id, branch.status, str(branch.step_count), " -> ".join(branch.agents)
        )
    console.print(branches)
    milliseconds = result.total_duration * 1000
    console.print(
        f"{result.total_steps} steps in {milliseconds:.1f} ms, session {result.session_id}"
    )


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
NoStore = Annotated[
    bool, typer.Option("--no-store", help="Keep no session: the run cannot be resumed.")
]
Verbosity = Annotated[int, typer.Option("--verbosity", "-v", min=0, max=2)]
ResumedVerbosity = Annotated[
    int | None,
    typer.Option("--verbosity", "-v", min=0, max=2, help="Default: as the run was started with."),
]
Output = Annotated[
    Path | None,
    typer.Option(
        "--output",
        help="Write the whole final response to this file (the terminal shows its opening).",
    ),
]
AllowModule = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-module",
        help="Import only from this module and the modules below it (repeatable): for a "
        "workflow file you do not trust, whose function and tools name code that will run.",
    ),
]
PAUSED = 3  # the exit code of a run that paused (resume it)
INTERRUPTED = 130


def _fail(message: object, code: int) -> NoReturn:
    _say(f"[red]{escape(str(message))}[/red]")
    raise typer.Exit(code)


def _say(text: str) -> None:
    """A line as it is: never wrapped, so a command in it can be copied."""
    console.print(text, highlight=False, soft_wrap=True)


def _load(
    workflow_path: Path, max_tokens: int | None, allowed_modules: list[str] | None = None
) -> Workflow:
    try:
        return load_workflow(
            workflow_path, max_tokens=max_tokens, allowed_modules=allowed_modules or None
        )
    except OrchestraError as error:
        _fail(error, 2)


def _checked_session(session: str) -> str:
    try:
        return check_session_id(session)
    except InvalidSessionIdError as error:
        raise typer.BadParameter(str(error)) from None


@contextlib.contextmanager
def _store(path: Path) -> Iterator[tuple[StateManager, SQLiteStorageBackend]]:
    """Sessions kept durably, step by step: a run the command line starts is a process that
    can be killed, and ``orchestra resume`` goes on from its last completed step. A path that
    cannot be a store is the command line's mistake (exit code 2)."""
    backend = SQLiteStorageBackend(path)
    try:
        yield StateManager(backend, auto_save_interval=0), backend
    except ConfigurationError as error:
        _fail(error, 2)
    finally:
        backend.close()


async def _state_of(manager: StateManager, session: str) -> str | None:
    """How the session's last run stands (None: no such session); a session that cannot be
    read (damaged, or of a log format this release cannot read) is reported and exits 1."""
    try:
        return _run_state(await manager.load(session))
    except SessionNotFoundError:
        return None
    except SessionError as error:
        _fail(error, 1)


def _run_state(log: SessionLog) -> str:
    """Finished, failed, paused or interrupted: how the last run in a session's log stands."""
    run = log.last_run
    if run is None:
        return "without a run"
    if run.end is None:
        return "interrupted"
    if run.end.paused:
        return "paused"
    return "finished" if run.end.success else "failed"


def _resume_command(base: list[str], session: str, store: Path) -> str:
    """The command that takes the session up again, ready to copy."""
    named = ["--store", str(store)] if store != DEFAULT_STORE or ENV_STORE in os.environ else []
    return shlex.join([*base, session, *named])


def _status(workflow: Workflow, verbosity: int) -> ExecutionConfig:
    return workflow.execution.model_copy(update={"status": StatusConfig.from_verbosity(verbosity)})


class Kept(NamedTuple):
    """A run's session: where it is kept, and the command that takes it up again."""

    manager: StateManager
    session: str
    resume: str


def _finish(
    run: Coroutine[Any, Any, OrchestraResult], kept: Kept | None, output: Path | None
) -> None:
    """Run to the end and report (the whole final response written to ``output``, when one is
    given); when the run can be taken up again, say how."""
    try:
        result = asyncio.run(run)
    except KeyboardInterrupt:
        _interrupted(kept)
    except OrchestraError as error:
        _fail(error, 1)
    _print_result(result, output, None if kept is None else kept.resume)
    if result.metadata.get("paused"):
        if kept is not None:
            _say(f"Resume with: {escape(kept.resume)}")
        raise typer.Exit(PAUSED)
    if not result.success:
        raise typer.Exit(1)


def _interrupted(kept: Kept | None) -> NoReturn:
    """Ctrl-C: say what the log holds, so the advice fits (the run may have been stopped
    before its first record, or after its last)."""
    state = asyncio.run(_state_of(kept.manager, kept.session)) if kept is not None else None
    if kept is None:
        _say("Interrupted.")
    elif state is None:
        _say("Interrupted before the run was recorded: there is nothing to resume.")
    elif state in ("finished", "failed"):
        _say(f"Interrupted as the run ended: it {state} (see `orchestra sessions list`).")
    else:
        _say(f"Interrupted. Resume with: {escape(kept.resume)}")
    raise typer.Exit(INTERRUPTED)


def _execute(
    workflow_path: Path,
    task: str | None,
    verbosity: int,
    max_tokens: int | None,
    store: Path | None,
    session: str | None,
    resume_with: list[str],
    output: Path | None,
    allowed_modules: list[str] | None = None,
) -> None:
    workflow = _load(workflow_path, max_tokens, allowed_modules)
    chosen = task if task is not None else workflow.task
    if chosen is None:
        raise typer.BadParameter("no task: pass --task or give the workflow a 'task'")
    context = dict(workflow.context)
    if session is not None:
        context["session_id"] = _checked_session(session)

    def run(manager: StateManager | None) -> Coroutine[Any, Any, OrchestraResult]:
        return Orchestra.run(
            chosen,
            workflow.topology,
            agent_registry=workflow.registry,
            context=context,
            execution_config=_status(workflow, verbosity),
            error_config=workflow.error_handling,
            max_steps=workflow.max_steps,
            state_manager=manager,
        )

    if store is None:
        _finish(run(None), None, output)
        return
    session_id = context.setdefault("session_id", new_session_id())
    again = _resume_command(resume_with, session_id, store)
    with _store(store) as (manager, _):
        state = asyncio.run(_state_of(manager, session_id))
        if state in ("interrupted", "paused"):
            _fail(
                f"session {session_id!r} has a run {state} on the way; go on with it: {again} "
                f"(or start afresh: orchestra sessions delete {session_id})",
                1,
            )
        _say(f"Session {session_id}, kept in {escape(str(store))}")
        _finish(run(manager), Kept(manager, session_id, again), output)


def _resume(
    workflow_path: Path,
    session: str,
    context: str | None,
    verbosity: int | None,
    max_tokens: int | None,
    store: Path,
    resume_with: list[str],
    output: Path | None,
    allowed_modules: list[str] | None = None,
) -> None:
    extra = _json_object(context, "--context") if context is not None else None
    session = _checked_session(session)
    workflow = _load(workflow_path, max_tokens, allowed_modules)
    if not store.exists():
        _fail(f"no session store at {store}", 1)
    with _store(store) as (manager, _):
        state = asyncio.run(_state_of(manager, session))
        if state is None:
            _fail(f"no session {session!r} in {store}", 1)
        if state == "without a run":
            _fail(f"session {session!r} has no run to resume", 1)
        if state in ("finished", "failed"):  # its result is shown again, nothing is run
            _say(f"Session {session}'s last run {state}: its result, as stored (nothing is run)")
        instance = OrchestraInstance(
            workflow.topology, agent_registry=workflow.registry, state_manager=manager
        )
        again = _resume_command(resume_with, session, store)
        status = None if verbosity is None else StatusConfig.from_verbosity(verbosity)
        _finish(
            instance.resume_session(session, extra, status=status),
            Kept(manager, session, again),
            output,
        )


def _json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise typer.BadParameter(f"{option} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise typer.BadParameter(f"{option} must be a JSON object, got {text!r}")
    return value


@app.command()
def run(
    workflow: Annotated[Path, typer.Argument(help="A workflow file (YAML or JSON).")],
    task: Annotated[str | None, typer.Option(help="The task (default: the file's 'task').")] = None,
    verbosity: Verbosity = 1,
    session: Annotated[
        str | None, typer.Option(help="The session id (default: a new one).")
    ] = None,
    store: Store = DEFAULT_STORE,
    no_store: NoStore = False,
    output: Output = None,
    allow_module: AllowModule = None,
) -> None:
    """Run a workflow file: its agents, topology and execution settings. The run is a durable
    session (see --store): if it is interrupted, `orchestra resume` goes on from its last step."""
    command = ["orchestra", "resume", str(workflow), *_allow_options(allow_module)]
    kept = None if no_store else store
    _execute(workflow, task, verbosity, None, kept, session, command, output, allow_module)


@app.command()
def resume(
    workflow: Annotated[Path, typer.Argument(help="The workflow file the session was run with.")],
    session: Annotated[str, typer.Argument(help="The session id.")],
    context: Annotated[
        str | None,
        typer.Option(help="A JSON object added to what every agent sees from now on."),
    ] = None,
    verbosity: ResumedVerbosity = None,
    store: Store = DEFAULT_STORE,
    output: Output = None,
    allow_module: AllowModule = None,
) -> None:
    """Go on with an interrupted or paused session from its last completed step (a session
    whose last run ended shows its stored result)."""
    command = ["orchestra", "resume", str(workflow), *_allow_options(allow_module)]
    _resume(workflow, session, context, verbosity, None, store, command, output, allow_module)


def _allow_options(modules: list[str] | None) -> list[str]:
    """The --allow-module options again, for the command that resumes the session."""
    return [option for module in modules or [] for option in ("--allow-module", module)]


@app.command()
def demo(
    task: Annotated[str | None, typer.Option(help="What the team should research.")] = None,
    verbosity: Verbosity = 2,
    topologies: Annotated[
        bool, typer.Option("--topologies", help="Also draw the API page's example topologies.")
    ] = False,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Go on with an interrupted demo session.")
    ] = None,
    store: Store = DEFAULT_STORE,
    no_store: NoStore = False,
    output: Output = None,
) -> None:
    """Run the bundled research-and-report workflow on the default model (offline unless
    ORCHESTRA_MODEL, OPENAI_API_KEY, ANTHROPIC_API_KEY or ORCHESTRA_BASE_URL say otherwise)."""
    if resume is not None and (task is not None or no_store):
        raise typer.BadParameter(
            "--resume goes on with a session: --task and --no-store do not apply"
        )
    model = default_model_config()
    console.print(f"Default model: {model.provider}:{model.name}", highlight=False)
    if topologies:
        for title, topology in _demo_topologies().items():
            show_topology(title, topology)
    command = ["orchestra", "demo", "--resume"]
    if resume is not None:
        _resume(DEMO_FLOW, resume, None, verbosity, DEMO_MAX_TOKENS, store, command, output)
    else:
        kept = None if no_store else store
        _execute(DEMO_FLOW, task, verbosity, DEMO_MAX_TOKENS, kept, None, command, output)


sessions_app = typer.Typer(help="The sessions kept in a store: list them, delete them.")
app.add_typer(sessions_app, name="sessions")


@sessions_app.command("list")
def list_sessions(store: Store = DEFAULT_STORE) -> None:
    """Each session with the state of its last run: running (here or in another process),
    interrupted or paused (these two can be resumed), finished or failed."""
    if not store.exists():
        console.print(f"No sessions: no store at {store}", highlight=False)
        return
    with _store(store) as (manager, backend):
        rows, damage = asyncio.run(_session_rows(manager, backend))
    table = Table(title=f"Sessions in {store}")
    for column in ("session", "state", "runs", "steps", "task"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if damage:
        _fail(
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
            rows.append((session_id, escape(f"unreadable: {error}"), "", "", ""))
            continue
        state = "running" if await backend.held(session_id) else _run_state(log)
        rows.append(
            (
                session_id,
                str(state),
                str(len(log.runs)),
                str(steps),
                escape(task if len(task) <= 48 else task[:47] + "…"),
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
        _fail(f"no session store at {store}", 1)
    with _store(store) as (manager, _):
        if not asyncio.run(_delete(manager, sessions)):
            raise typer.Exit(1)


async def _delete(manager: StateManager, sessions: list[str]) -> bool:
    """Delete each session, saying so; False when one could not be (not there, being run)."""
    done = True
    for session_id in sessions:
        try:
            deleted = await manager.delete_session(session_id)
        except OrchestraError as error:
            _say(f"[red]{escape(str(error))}[/red]")
            done = False
            continue
        console.print(f"{session_id}: {'deleted' if deleted else 'no such session'}")
        done = done and deleted
    return done


def _load_topology_file(path: Path) -> Any:
    """The file's data, read within the limits of a workflow file (it may be as hostile)."""
    try:
        return read_source(path).data
    except WorkflowError as error:
        raise typer.BadParameter(str(error)) from None


@app.command("topology")
def topology_command(
    path: Annotated[Path, typer.Argument(help="A topology as JSON or YAML (the dict form).")],
    mermaid_only: Annotated[
        bool, typer.Option("--mermaid", help="Print only the Mermaid diagram.")
    ] = False,
) -> None:
    """Validate a topology file, then print its roles and diagram (exit code 1 if invalid)."""
    data = _load_topology_file(path)
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path} must hold a mapping with 'nodes' and 'edges'")
    try:
        topology = Topology.from_dict(data)
        topology.validate()
    except TopologyError as error:
        console.print(f"[red]{escape(str(path))}:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None
    if mermaid_only:
        typer.echo(topology.to_mermaid())
    else:
        show_topology(str(path), topology)
