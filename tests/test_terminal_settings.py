"""What a workflow file and the command line set about talking to a run: how long a question
waits for its answer (``communication:`` in the file, ``--user-timeout``), a budget's error
naming the file's key to raise, and a budget question labelled as the budget's on the terminal.
"""

from __future__ import annotations

import asyncio
import io
import os
import sqlite3
import textwrap
from pathlib import Path

import pytest
from helpers import run_cli
from pydantic import ValidationError
from test_budget_questions import fan_out
from test_terminal_channel import ASKER_FLOW, PROMPT, ended, flow, pipe, prompts, spawn

from orchestra import Orchestra, ScriptedUser, TerminalChannel
from orchestra.communication import CommunicationManager, ProgrammaticChannel, Question
from orchestra.coordination.config import CommunicationConfig, ExecutionConfig
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.coordination.state.backends import frame, unframe
from orchestra.workflow import WorkflowError, load_workflow

__all__ = ["pipe"]  # the fixture, used by name

WAIT = 60.0


def test_a_workflow_files_user_timeout_gives_the_default_answer(tmp_path: Path) -> None:
    """The command line had no way to bound a terminal question's wait: it waited for good."""
    flow(
        tmp_path,
        ASKER_FLOW
        + "communication: {user_timeout: 0.3, on_user_timeout: default, default_answer: pass}\n",
    )
    child = spawn(tmp_path, "run", "flow.yaml", "--quiet", "--no-store")
    child.expect(PROMPT)
    child.expect("> ")
    output, code = ended(child)  # nothing typed: the question's time runs out
    assert code == 0, output
    assert "no answer to question q1 within 0.3s" in output
    assert "'pass'" in " ".join(output.split())  # the agent went on with the default answer


def test_user_timeout_on_the_command_line_takes_the_files_place(tmp_path: Path) -> None:
    flow(tmp_path, ASKER_FLOW + "communication: {user_timeout: 3600}\n")
    child = spawn(tmp_path, "run", "flow.yaml", "--quiet", "--no-store", "--user-timeout", "0.3")
    child.expect(PROMPT)
    child.expect("> ")
    output, code = ended(child)
    assert code == 1, output
    flat = " ".join(output.split())
    assert "no answer to question q1 within 0.3s: the asking branch fails" in flat
    assert "The run failed" in flat and "did not answer" in flat
    assert "within 0.3s (--user-timeout; question" in flat  # not CommunicationConfig's field


def test_a_workflow_files_user_timeout_is_named_by_its_key(tmp_path: Path) -> None:
    flow(tmp_path, ASKER_FLOW + "communication: {user_timeout: 0.3}\n")
    child = spawn(tmp_path, "run", "flow.yaml", "--quiet", "--no-store")
    child.expect(PROMPT)
    child.expect("> ")
    output, code = ended(child)
    assert code == 1, output
    assert "within 0.3s (communication.user_timeout of flow.yaml; question" in " ".join(
        output.split()
    )


@pytest.mark.parametrize("seconds", ["inf", "1e400"])
@pytest.mark.parametrize("command", ["run", "resume", "demo"])
def test_an_infinite_user_timeout_is_refused_by_name(
    tmp_path: Path, command: str, seconds: str
) -> None:
    """``inf`` passed the option's ``min=`` and ended in a 63-line pydantic traceback."""
    flow(tmp_path, ASKER_FLOW)
    given = {"run": ["flow.yaml"], "resume": ["flow.yaml", "s"], "demo": []}
    done = run_cli(command, *given[command], "--user-timeout", seconds, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Invalid value for '--user-timeout'" in done.stderr
    assert "is not a finite number of seconds" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("{user_timeout: 0}", r"flow.yaml:4: communication.user_timeout: Input should be greater"),
        ("{on_user_timeout: retry}", r"flow.yaml:4: communication.on_user_timeout: Input should"),
        ("{channel: stdin}", r"flow.yaml:4: communication.channel: not a setting a workflow"),
        ("{terminal: false}", r"flow.yaml:4: communication.terminal: not a setting a workflow"),
        ("{user_timeout: true}", r"flow.yaml:4: communication.user_timeout: Input should be a"),
        ("{user_timeout: '60'}", r"flow.yaml:4: communication.user_timeout: Input should be a"),
        ("5", r"flow.yaml:4: communication: Input should be a valid dictionary$"),
        ("[1]", r"flow.yaml:4: communication: Input should be a valid dictionary$"),
    ],
)
def test_a_bad_communication_setting_names_its_line_and_key(
    tmp_path: Path, settings: str, message: str
) -> None:
    path = flow(tmp_path, ASKER_FLOW + f"communication: {settings}\n")
    with pytest.raises(WorkflowError, match=message):
        load_workflow(path)


async def test_a_budget_set_in_a_workflow_file_names_the_files_key(tmp_path: Path) -> None:
    """Its error said to raise ``ExecutionConfig.budget.max_steps``, a Python field."""
    path = tmp_path / "flow.yaml"
    text = """
        agents:
          - {name: A, function: flow_nodes:shout}
          - {name: B, function: flow_nodes:shout}
        topology: {nodes: [A, B], edges: [A -> B]}
        execution:
          budget: {max_steps: 1}
          agent_budgets: {B: {max_tokens: 100}}
        """
    path.write_text(textwrap.dedent(text).lstrip())
    workflow = load_workflow(path)
    result = await Orchestra.run(
        "hello",
        workflow.topology,
        agent_registry=workflow.registry,
        execution_config=workflow.execution,
        communication_config=CommunicationConfig(terminal=False),
    )
    assert result.error is not None
    assert f"raise it in execution.budget.max_steps of {path} to go further" in result.error


BUDGET_FLOW = """
    agents:
      - {name: A, function: flow_nodes:shout}
      - {name: B, function: flow_nodes:shout}
    topology: {nodes: [A, B], edges: [A -> B]}
    execution:
      budget: {max_steps: 1}
    """


def budget_session(path: Path, store: Path) -> OrchestraInstance:
    """The workflow at ``path``, its sessions kept in ``store``, asking no one."""
    workflow = load_workflow(path)
    return OrchestraInstance(
        workflow.topology,
        agent_registry=workflow.registry,
        initial_config=workflow.execution,
        communication_manager=CommunicationManager(None),
        state_manager=StateManager(SQLiteStorageBackend(str(store))),
    )


def stored_header(store: Path) -> str:
    """The run header's record, as the store holds it."""
    db = sqlite3.connect(store)
    try:
        lines = [
            line
            for (rows,) in db.execute("SELECT records FROM appends")
            for line in rows.splitlines()
        ]
    finally:
        db.close()
    return next(unframe("s", "test", line) for line in lines if '"t":"run"' in line)


async def test_a_workflow_files_name_is_not_kept_in_the_runs_stored_config(
    tmp_path: Path,
) -> None:
    """The header kept ``"settings_file": "<the path as given>"``: an absolute path in every
    session log, and stale once the file moved (a resume takes it from the file it is given)."""
    path = tmp_path / "flow.yaml"
    path.write_text(textwrap.dedent(BUDGET_FLOW).lstrip())
    store = tmp_path / "sessions.db"
    result = await budget_session(path, store).execute("hello", {"session_id": "s"})
    assert f"execution.budget.max_steps of {path} to go further" in str(result.error)
    header = stored_header(store)
    assert "settings_file" not in header and str(path) not in header


async def test_a_resume_names_the_keys_of_the_workflow_file_it_was_given(tmp_path: Path) -> None:
    """The name came from the log: after the file moved, the error named where it had been."""
    path = flow(
        tmp_path,
        ASKER_FLOW.replace('task: "ASK', 'execution: {budget: {max_steps: 1}}\ntask: "ASK'),
    )
    store = tmp_path / "sessions.db"

    def session(workflow_path: Path, channel: ProgrammaticChannel) -> OrchestraInstance:
        workflow = load_workflow(workflow_path)
        return OrchestraInstance(
            workflow.topology,
            agent_registry=workflow.registry,
            initial_config=workflow.execution,
            communication_manager=CommunicationManager(channel),
            state_manager=StateManager(SQLiteStorageBackend(str(store))),
        )

    channel = ProgrammaticChannel()
    instance = session(path, channel)
    running = asyncio.create_task(instance.execute("ASK: name?", {"session_id": "s"}))
    await asyncio.wait_for(channel.next_question(), WAIT)
    assert await instance.pause_session("s")
    await asyncio.wait_for(running, WAIT)

    moved = path.rename(tmp_path / "moved.yaml")
    channel = ProgrammaticChannel()
    resuming = asyncio.create_task(session(moved, channel).resume_session("s"))
    asked = await asyncio.wait_for(channel.next_question(), WAIT)
    channel.answer(asked.id, "Ada")
    budget = await asyncio.wait_for(channel.next_question(), WAIT)
    assert budget.kind == "budget"
    channel.answer(budget.id, "no")
    result = await asyncio.wait_for(resuming, WAIT)
    assert f"raise it in execution.budget.max_steps of {moved} to go further" in str(result.error)


async def test_a_log_that_kept_the_workflow_files_name_still_loads(tmp_path: Path) -> None:
    """Logs written before the name was kept out hold it in their header's config."""
    path = tmp_path / "flow.yaml"
    path.write_text(textwrap.dedent(BUDGET_FLOW).lstrip())
    store = tmp_path / "sessions.db"
    await budget_session(path, store).execute("hello", {"session_id": "s"})
    header = stored_header(store)
    older = header.replace('"agent_budgets":', '"settings_file":"flow.yaml","agent_budgets":')
    db = sqlite3.connect(store)
    with db:
        db.execute(
            "UPDATE appends SET records = replace(records, ?, ?)", (frame(header), frame(older))
        )
    db.close()
    assert stored_header(store) == older
    result = await budget_session(path, store).get_result("s")
    assert result is not None and not result.success
    assert "max_steps" in str(result.error)


def test_a_workflow_file_cannot_set_the_settings_files_name(tmp_path: Path) -> None:
    """It was accepted and silently overwritten; Python cannot set it either."""
    path = flow(tmp_path, ASKER_FLOW + "execution: {settings_file: other.yaml}\n")
    with pytest.raises(WorkflowError, match=r"flow.yaml:4: execution.settings_file: Extra"):
        load_workflow(path)
    with pytest.raises(ValidationError, match="settings_file"):
        ExecutionConfig(settings_file="other.yaml")  # type: ignore[call-arg]


async def test_a_budget_question_is_the_budgets_not_the_agents() -> None:
    """It was labelled '? Hub asks', though the engine asks on the budget's behalf."""
    user = ScriptedUser(["10"])
    result, _ = await fan_out(user)
    assert result.success, result.error
    assert [question.kind for question in user.questions] == ["budget"]


async def test_the_terminal_labels_a_budget_question_as_the_budgets(
    pipe: tuple[int, int],
) -> None:
    read, write = pipe
    shown = io.StringIO()
    channel = TerminalChannel(read, shown)
    asked = Question("run:t:budget-q1", "run", "b2", "Boss", "The run budget's ...", "budget")
    os.write(write, b"20\n")
    assert await channel.ask(asked) == "20"
    await prompts(shown, 1)
    assert "? Budget question before Boss's next step (branch b2, question budget-q1):" in (
        shown.getvalue()
    )
    assert "Boss asks" not in shown.getvalue()
