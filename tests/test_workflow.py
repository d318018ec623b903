"""``orchestra run FLOW.yaml``: workflow files, run as users run them (a real subprocess)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from helpers import TESTS, run_cli
from servers import Scripted, ScriptedHTTPServer, free_port

from orchestra.errors import ConfigurationError
from orchestra.workflow import WorkflowError, load_workflow


def write(tmp_path: Path, text: str, name: str = "flow.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def chat_reply(content: str) -> Scripted:
    return Scripted(
        200,
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
        },
    )


def test_a_workflow_of_functions_runs_with_its_default_task(tmp_path: Path) -> None:
    flow = write(
        tmp_path,
        """
        agents:
          - name: Shouter
            function: flow_nodes:shout
        topology: {nodes: [Shouter], edges: []}
        task: hello
        """,
    )
    result = run_cli("run", str(flow), "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HELLO!" in result.stdout


def test_a_model_agent_talks_to_an_openai_compatible_server(tmp_path: Path) -> None:
    with ScriptedHTTPServer() as server:
        server.script(chat_reply("The answer is 42."))
        flow = write(
            tmp_path,
            f"""
            agents:
              - name: Oracle
                model: {{provider: openai, name: tiny, base_url: "{server.url}/v1"}}
                instruction: Answer briefly.
                tools: [flow_nodes:word_count]
            topology: {{nodes: [User, Oracle], edges: [User -> Oracle, Oracle -> User]}}
            context: {{audience: testers}}
            """,
        )
        result = run_cli("run", str(flow), "--task", "What is the answer?")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "The answer is 42." in result.stdout
    [request] = server.requests
    assert server.paths == ["/v1/chat/completions"]
    assert request["messages"][0]["role"] == "system"
    assert "testers" in request["messages"][0]["content"]
    assert "What is the answer?" in request["messages"][-1]["content"]
    assert "word_count" in [tool["function"]["name"] for tool in request["tools"]]


def test_an_unreachable_server_is_reported_by_address(tmp_path: Path) -> None:
    flow = write(
        tmp_path,
        f"""
        agents:
          - name: Oracle
            model: {{provider: openai, name: tiny, base_url: "http://127.0.0.1:{free_port()}/v1"}}
        topology: {{nodes: [Oracle], edges: []}}
        error_handling: {{max_retries: 0}}
        task: hi
        """,
    )
    result = run_cli("run", str(flow), "--quiet")
    assert result.returncode == 1
    assert "cannot reach http://127.0.0.1:" in result.stdout


def test_a_missing_api_key_names_the_variable(tmp_path: Path) -> None:
    flow = write(
        tmp_path,
        """
        agents:
          - name: Oracle
            model: openai:gpt-4o-mini
        topology: {nodes: [Oracle], edges: []}
        task: hi
        """,
    )
    result = run_cli("run", str(flow))
    assert result.returncode == 2
    assert "OPENAI_API_KEY" in result.stdout and "flow.yaml:3: agents[0].model" in result.stdout


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("agents: []\ntopology: {nodes: [A]}\n", "flow.yaml:1: agents", "at least 1 item"),
        (
            "agents:\n  - name: A\n    function: flow_nodes:shout\n    colour: red\ntopology: {nodes: [A]}\n",
            "flow.yaml:4: agents[0].colour",
            "Extra inputs are not permitted",
        ),
        (
            "agents:\n  - name: A\n    function: flow_nodes:nope\ntopology: {nodes: [A]}\n",
            "flow.yaml:3: agents[0].function",
            "cannot import 'flow_nodes:nope'",
        ),
        (
            "agents:\n  - name: A\n    function: flow_nodes:shout\ntopology:\n  nodes: [A]\n  edges: [A -> B]\n",
            "flow.yaml:5: topology",
            "'B' is not a node",
        ),
        (
            "agents:\n  - name: A\n    function: flow_nodes:shout\ntopology: {nodes: [A]}\nexecution:\n  step_timeout: -1\n",
            "flow.yaml:6: execution.step_timeout",
            "greater than 0",
        ),
        (
            "agents:\n  - name: A\n    model: {provider: anthropic, name: c, seed: 7}\n"
            "topology: {nodes: [A]}\n",
            "flow.yaml:3: agents[0].model: ModelConfig.seed:",
            "the Anthropic Messages API takes no seed",
        ),
        (
            "agents:\n  - name: A\n    model: {provider: local, name: smollm2, seed: -1}\n"
            "topology: {nodes: [A]}\n",
            "flow.yaml:3: agents[0].model.ModelConfig.seed",
            "greater than or equal to 0",
        ),
        ("agents: [\n", "flow.yaml", "not valid YAML"),
    ],
)
def test_bad_files_are_reported_with_line_and_field(
    tmp_path: Path, text: str, where: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(TESTS))
    with pytest.raises(WorkflowError) as info:
        load_workflow(write(tmp_path, text))
    assert where in str(info.value) and message in str(info.value)


def test_the_cli_reports_a_bad_file_and_a_missing_one(tmp_path: Path) -> None:
    bad = run_cli("run", str(write(tmp_path, "agents: []\ntopology: {nodes: [A]}\n")))
    assert bad.returncode == 2 and "flow.yaml:1: agents" in bad.stdout
    missing = run_cli("run", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stdout


def test_a_workflow_without_a_task_needs_one_on_the_command_line(tmp_path: Path) -> None:
    flow = write(
        tmp_path, "agents: [{name: A, function: 'flow_nodes:shout'}]\ntopology: {nodes: [A]}\n"
    )
    result = run_cli("run", str(flow))
    assert result.returncode == 2 and "no task" in result.stderr


def test_orchestra_model_chooses_the_default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestra.models.defaults import default_model_config

    assert default_model_config({}).provider == "local"
    assert default_model_config({"OPENAI_API_KEY": "k"}).name == "gpt-4o-mini"
    assert default_model_config({"ANTHROPIC_API_KEY": "k"}).provider == "anthropic"
    chosen = default_model_config(
        {"ORCHESTRA_MODEL": "openai:m", "ORCHESTRA_BASE_URL": "http://x/v1"}
    )
    assert (chosen.provider, chosen.name, chosen.base_url) == ("openai", "m", "http://x/v1")
    with pytest.raises(ConfigurationError, match="ORCHESTRA_MODEL"):
        default_model_config({"ORCHESTRA_MODEL": "gpt-4o"})
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert os.environ.get("OPENAI_API_KEY") is None
