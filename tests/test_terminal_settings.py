"""What a workflow file and the command line set about talking to a run: how long a question
waits for its answer (``communication:`` in the file, ``--user-timeout``), a budget's error
naming the file's key to raise, and a budget question labelled as the budget's on the terminal.
"""

from __future__ import annotations

import io
import os
import textwrap
from pathlib import Path

import pytest
from test_budget_questions import fan_out
from test_terminal_channel import ASKER_FLOW, PROMPT, ended, flow, pipe, prompts, spawn

from orchestra import Orchestra, ScriptedUser, TerminalChannel
from orchestra.communication import Question
from orchestra.coordination.config import CommunicationConfig
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


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("{user_timeout: 0}", r"flow.yaml:4: communication.user_timeout: Input should be greater"),
        ("{on_user_timeout: retry}", r"flow.yaml:4: communication.on_user_timeout: Input should"),
        ("{channel: stdin}", r"flow.yaml:4: communication.channel: Extra inputs are not"),
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
