"""The ``orchestra`` commands: run a workflow file, resume it, the demo, check a topology."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import warnings
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from orchestra.communication.terminal import user_channel
from orchestra.coordination.config import (
    ExecutionConfig,
    StatusConfig,
    VerbosityLevel,
)
from orchestra.coordination.engine.rounds import NO_CHANNEL
from orchestra.coordination.execution import closed_on_temporal
from orchestra.coordination.orchestra import Orchestra, OrchestraInstance, new_session_id
from orchestra.coordination.results import OrchestraResult
from orchestra.coordination.state import StateManager
from orchestra.coordination.state.backends import check_session_id
from orchestra.coordination.state.manager import ON_TEMPORAL
from orchestra.coordination.topology import Topology
from orchestra.demo import DEMO_FLOW, DEMO_MAX_TOKENS, spec_topologies
from orchestra.errors import (
    InvalidSessionIdError,
    TopologyError,
)
from orchestra.models.defaults import default_model_config
from orchestra.workflow import Workflow
from orchestra.workflow_source import WorkflowError, read_source

from .ending import NOT_OFFERED, Followed, Kept, finish
from .store import DEFAULT_STORE, Store, open_store, resume_command, sessions_app, state_of
from .temporal import (
    ApiKeyEnv,
    Following,
    Namespace,
    TaskQueue,
    Temporal,
    Tls,
    connect_options,
    executor_for,
    exiting_at_once,
    follow_command,
    following,
    refuse_store,
    worker_command,
)
from .terminal import check_output, console, fail, say, show_topology
from .ui import Host as UiHost
from .ui import Port as UiPort
from .ui import demo_ui, ui_command
from .workflows import AllowModule, load

if TYPE_CHECKING:
    from orchestra.temporal import TemporalExecutor

app = typer.Typer(
    help="Orchestra: durable, fast, observable multi-agent workflows.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(sessions_app, name="sessions")
app.command("ui")(ui_command)
app.command("worker")(worker_command)


NoStore = Annotated[
    bool, typer.Option("--no-store", help="Keep no session: the run cannot be resumed.")
]


Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Also show each step's action, tool calls with their arguments, retries, rejected "
        "replies and convergence.",
    ),
]


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Show nothing while the run works.")]


def _level(verbose: bool, quiet: bool) -> VerbosityLevel:
    """The level the flags choose (NORMAL with neither)."""
    if verbose and quiet:
        raise typer.BadParameter("--verbose and --quiet: give one of them")
    if verbose:
        return VerbosityLevel.VERBOSE
    return VerbosityLevel.QUIET if quiet else VerbosityLevel.NORMAL


def _resumed_level(verbose: bool, quiet: bool) -> VerbosityLevel | None:
    """The level the flags choose for a resumed run (None with neither: as it was started)."""
    return _level(verbose, quiet) if verbose or quiet else None


Output = Annotated[
    Path | None,
    typer.Option(
        "--output",
        help="Write the whole final response to this file (the terminal shows its opening).",
    ),
]


FollowUps = Annotated[
    bool,
    typer.Option(
        "--follow-ups",
        help="After the answer, take follow-up questions on the terminal, each a new round in "
        "the same conversation; an empty line (or Ctrl-D) ends it.",
    ),
]


FollowUpTimeout = Annotated[
    float,
    typer.Option(
        "--follow-up-timeout",
        min=0.001,
        help="Seconds to wait for a follow-up before the conversation ends (with --follow-ups).",
    ),
]


def _finite(seconds: float | None) -> float | None:
    """``inf`` (or ``1e400``) passes ``min=``, and reached the run's config as a traceback."""
    if seconds is not None and not math.isfinite(seconds):
        raise typer.BadParameter(f"{seconds} is not a finite number of seconds")
    return seconds


UserTimeout = Annotated[
    float | None,
    typer.Option(
        "--user-timeout",
        min=0.001,
        callback=_finite,
        help="Seconds an agent's question (or a budget's) waits for an answer; the workflow "
        "file's communication.on_user_timeout says what an unanswered one does (default: the "
        "file's communication.user_timeout, else no limit).",
    ),
]


def _timeout_options(user_timeout: float | None) -> list[str]:
    """The --user-timeout option again, for the command that resumes the session."""
    return [] if user_timeout is None else ["--user-timeout", f"{user_timeout:g}"]


def _checked_session(session: str) -> str:
    try:
        return check_session_id(session)
    except InvalidSessionIdError as error:
        raise typer.BadParameter(str(error)) from None


def _status(workflow: Workflow, verbosity: VerbosityLevel) -> ExecutionConfig:
    return workflow.execution.model_copy(update={"status": StatusConfig.from_verbosity(verbosity)})


def _execute(
    workflow_path: Path,
    task: str | None,
    verbosity: VerbosityLevel,
    max_tokens: int | None,
    store: Path | None,
    session: str | None,
    resume_with: list[str],
    output: Path | None,
    allowed_modules: list[str] | None = None,
    follow_up_timeout: float | None = None,
    user_timeout: float | None = None,
    executor: TemporalExecutor | None = None,
    connect: list[str] | None = None,
) -> None:
    """Run the workflow; ``follow_up_timeout`` (None: no follow-ups) makes it a conversation;
    ``user_timeout`` (the command line's) bounds a question in place of the file's;
    ``executor`` runs it on Temporal (whose workers keep its log: ``store`` is None), reached
    again with the ``connect`` options."""
    check_output(output, workflow_path, store)
    workflow = load(workflow_path, max_tokens, allowed_modules)
    channel = user_channel()
    if follow_up_timeout is not None and channel is None:
        say(NOT_OFFERED)
        follow_up_timeout = None
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
            communication_config=workflow.communication_config(channel, user_timeout),
            error_config=workflow.error_handling,
            max_steps=workflow.max_steps,
            state_manager=manager,
            allow_follow_ups=follow_up_timeout is not None,
            follow_up_timeout=follow_up_timeout or 60.0,
            executor=executor,
        )

    followed = None
    if executor is not None:
        session_id = context.setdefault("session_id", new_session_id())
        say(f"Session {session_id}, on Temporal ({escape(repr(executor))})")
        again = follow_command(resume_with, session_id, connect or [])
        followed = following(executor, session_id, again, connect or [], resuming=False)
    if store is None:
        finish(run(None), None, output, followed)
        return
    session_id = context.setdefault("session_id", new_session_id())
    again = resume_command(resume_with, session_id, store)
    with open_store(store) as (manager, _):
        state = asyncio.run(state_of(manager, session_id))
        if state == ON_TEMPORAL:
            fail(
                f"session {session_id!r} has a run on Temporal on the way; follow it with "
                f"orchestra resume {workflow_path} {session_id} --temporal "
                f"HOST:PORT --task-queue QUEUE. {closed_on_temporal(session_id)}",
                1,
            )
        if state in ("interrupted", "paused"):
            fail(
                f"session {session_id!r} has a run {state} on the way; go on with it: {again} "
                f"(or start afresh: orchestra sessions delete {session_id})",
                1,
            )
        say(f"Session {session_id}, kept in {escape(str(store))}")
        finish(run(manager), Kept(manager, session_id, again), output)


def _resume(
    workflow_path: Path,
    session: str,
    context: str | None,
    verbosity: VerbosityLevel | None,
    max_tokens: int | None,
    store: Path,
    resume_with: list[str],
    output: Path | None,
    allowed_modules: list[str] | None = None,
    user_timeout: float | None = None,
) -> None:
    """Resume the session embedded, from its log in ``store``."""
    extra = _json_object(context, "--context") if context is not None else None
    session = _checked_session(session)
    check_output(output, workflow_path, store)
    workflow = load(workflow_path, max_tokens, allowed_modules)
    if not store.exists():
        fail(f"no session store at {store}", 1)
    with open_store(store) as (manager, _):
        state = asyncio.run(state_of(manager, session))
        if state is None:
            fail(f"no session {session!r} in {store}", 1)
        if state == "without a run":
            fail(f"session {session!r} has no run to resume", 1)
        if state in ("finished", "failed"):  # its result is shown again, nothing is run
            say(f"Session {session}'s last run {state}: its result, as stored (nothing is run)")
        asking = workflow.communication_config(user_channel(), user_timeout)
        instance = OrchestraInstance(
            workflow.topology,
            agent_registry=workflow.registry,
            initial_config=workflow.execution,  # its file names the limits (the log keeps none)
            communication_manager=asking.manager(),
            state_manager=manager,
        )
        again = resume_command(resume_with, session, store)
        status = None if verbosity is None else StatusConfig.from_verbosity(verbosity)
        with warnings.catch_warnings():  # said as `run` says it (NOT_OFFERED), not as Python does
            warnings.filterwarnings("ignore", f".*follow-ups are {NO_CHANNEL}", UserWarning)
            finish(
                instance.resume_session(session, extra, status=status),
                Kept(manager, session, again),
                output,
            )


def _resume_on_temporal(
    workflow_path: Path,
    session: str,
    context: str | None,
    verbosity: VerbosityLevel | None,
    output: Path | None,
    allowed_modules: list[str] | None,
    user_timeout: float | None,
    executor: TemporalExecutor,
    again: Followed,
) -> None:
    """Follow the session on Temporal again: a paused run is resumed, a running one followed,
    a finished one's result shown as it was (``executor.resume``)."""
    extra = _json_object(context, "--context") if context is not None else None
    session = _checked_session(session)
    check_output(output, workflow_path, None)
    workflow = load(workflow_path, None, allowed_modules)
    instance = OrchestraInstance(
        workflow.topology,
        agent_registry=workflow.registry,
        initial_config=workflow.execution,
        communication_manager=workflow.communication_config(user_channel(), user_timeout).manager(),
        executor=executor,
    )
    status = None if verbosity is None else StatusConfig.from_verbosity(verbosity)
    say(f"Session {session}, on Temporal ({escape(repr(executor))})")
    finish(
        instance.resume_session(session, extra, status=status),
        None,
        output,
        again,
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
    verbose: Verbose = False,
    quiet: Quiet = False,
    session: Annotated[
        str | None, typer.Option(help="The session id (default: a new one).")
    ] = None,
    store: Store = DEFAULT_STORE,
    no_store: NoStore = False,
    output: Output = None,
    allow_module: AllowModule = None,
    follow_ups: FollowUps = False,
    follow_up_timeout: FollowUpTimeout = 60.0,
    user_timeout: UserTimeout = None,
    temporal: Temporal = None,
    task_queue: TaskQueue = "orchestra",
    namespace: Namespace = "default",
    tls: Tls = False,
    api_key_env: ApiKeyEnv = None,
    *,
    ctx: typer.Context,
) -> None:
    """Run a workflow file: its agents, topology and execution settings. The run is a durable
    session (see --store): if it is interrupted, `orchestra resume` goes on from its last step
    (a conversation too: its follow-ups are asked again). With --temporal it is a session on
    Temporal, run by the workers (`orchestra worker`) hosting the file."""
    command = [
        "orchestra",
        "resume",
        str(workflow),
        *_allow_options(allow_module),
        *_timeout_options(user_timeout),
    ]
    kept = None if no_store else store
    executor, connect = None, None
    if temporal is not None:
        source = ctx.get_parameter_source("store")
        refuse_store(source is not None and source.name == "COMMANDLINE")
        executor = executor_for(temporal, task_queue, namespace, tls, api_key_env)
        connect, kept = connect_options(temporal, task_queue, namespace, tls, api_key_env), None
    with exiting_at_once() if executor is not None else contextlib.nullcontext():
        _execute(
            workflow,
            task,
            _level(verbose, quiet),
            None,
            kept,
            session,
            command,
            output,
            allow_module,
            follow_up_timeout if follow_ups else None,
            user_timeout,
            executor,
            connect,
        )


@app.command()
def resume(
    workflow: Annotated[Path, typer.Argument(help="The workflow file the session was run with.")],
    session: Annotated[str, typer.Argument(help="The session id.")],
    context: Annotated[
        str | None,
        typer.Option(help="A JSON object added to what every agent sees from now on."),
    ] = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
    store: Store = DEFAULT_STORE,
    output: Output = None,
    allow_module: AllowModule = None,
    user_timeout: UserTimeout = None,
    temporal: Following = None,
    task_queue: TaskQueue = "orchestra",
    namespace: Namespace = "default",
    tls: Tls = False,
    api_key_env: ApiKeyEnv = None,
    *,
    ctx: typer.Context,
) -> None:
    """Go on with an interrupted or paused session from its last completed step (a session
    whose last run ended shows its stored result). It shows as much as the run was started
    with, unless --verbose or --quiet says otherwise. With --temporal, a session on Temporal
    is followed again (and resumed when paused)."""
    command = [
        "orchestra",
        "resume",
        str(workflow),
        *_allow_options(allow_module),
        *_timeout_options(user_timeout),
    ]
    level = _resumed_level(verbose, quiet)
    if temporal is not None:
        source = ctx.get_parameter_source("store")
        refuse_store(source is not None and source.name == "COMMANDLINE")
        executor = executor_for(temporal, task_queue, namespace, tls, api_key_env)
        connect = connect_options(temporal, task_queue, namespace, tls, api_key_env)
        again = following(
            executor, session, follow_command(command, session, connect), connect, resuming=True
        )
        with exiting_at_once():
            _resume_on_temporal(
                workflow,
                session,
                context,
                level,
                output,
                allow_module,
                user_timeout,
                executor,
                again,
            )
        return
    _resume(
        workflow, session, context, level, None, store, command, output, allow_module, user_timeout
    )


def _allow_options(modules: list[str] | None) -> list[str]:
    """The --allow-module options again, for the command that resumes the session."""
    return [option for module in modules or [] for option in ("--allow-module", module)]


@app.command()
def demo(
    task: Annotated[str | None, typer.Option(help="What the team should research.")] = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
    topologies: Annotated[
        bool, typer.Option("--topologies", help="Also draw the API page's example topologies.")
    ] = False,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Go on with an interrupted demo session.")
    ] = None,
    store: Store = DEFAULT_STORE,
    no_store: NoStore = False,
    output: Output = None,
    user_timeout: UserTimeout = None,
    ui: Annotated[
        bool,
        typer.Option(
            "--ui", help="Run it in the web inspector (see `orchestra ui`), in the store."
        ),
    ] = False,
    host: UiHost = "127.0.0.1",
    port: UiPort = 8765,
    open_page: Annotated[
        bool, typer.Option("--open", help="With --ui: open the page in a browser.")
    ] = False,
) -> None:
    """Run the bundled research-and-report workflow on the default model (offline unless
    ORCHESTRA_MODEL, OPENAI_API_KEY, ANTHROPIC_API_KEY or ORCHESTRA_BASE_URL say otherwise).
    With --ui, the web inspector serves the store with the demo workflow, one run of it
    started; it runs until Ctrl-C."""
    if resume is not None and (task is not None or no_store):
        raise typer.BadParameter(
            "--resume goes on with a session: --task and --no-store do not apply"
        )
    if ui:
        if resume is not None or no_store or output is not None or user_timeout is not None:
            raise typer.BadParameter(
                "--ui runs the demo in the web inspector, kept in the store: it takes no "
                "--resume, --no-store, --output or --user-timeout"
            )
        demo_ui(task, store, host, port, open_page)
        return
    model = default_model_config()
    console.print(f"Default model: {model.provider}:{model.name}", highlight=False, markup=False)
    if topologies:
        for title, topology in spec_topologies().items():
            show_topology(title, topology)
    command = ["orchestra", "demo", *_timeout_options(user_timeout), "--resume"]
    if resume is not None:
        level = _resumed_level(verbose, quiet)
        _resume(
            DEMO_FLOW,
            resume,
            None,
            level,
            DEMO_MAX_TOKENS,
            store,
            command,
            output,
            user_timeout=user_timeout,
        )
    else:
        kept = None if no_store else store
        level = _level(verbose, quiet)
        _execute(
            DEMO_FLOW,
            task,
            level,
            DEMO_MAX_TOKENS,
            kept,
            None,
            command,
            output,
            user_timeout=user_timeout,
        )


def _load_topology_file(path: Path) -> Any:
    """The file's data, read within the limits of a workflow file (it may be as hostile)."""
    try:
        source = read_source(path)
        source.require_mapping("'nodes' and 'edges'")
    except WorkflowError as error:
        raise typer.BadParameter(str(error)) from None
    return source.data


@app.command("topology")
def topology_command(
    path: Annotated[Path, typer.Argument(help="A topology as JSON or YAML (the dict form).")],
    mermaid_only: Annotated[
        bool, typer.Option("--mermaid", help="Print only the Mermaid diagram.")
    ] = False,
) -> None:
    """Validate a topology file, then print its roles and diagram (exit code 1 if invalid)."""
    data = _load_topology_file(path)
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
