"""The API page's examples (docs: orchestra-api.md), run as written with ``src.`` read as ``orchestra.``.

Each example names agents it never defines: the tests build them with scripted models and let
them register in the global registry, as the page's ``Orchestra.run(task, topology)`` expects.
The OrchestraInstance example (pause, resume, checkpoints) and Pattern 3's sessions run in
tests/test_sessions.py (metrics in detail: tests/test_metrics.py); follow-ups in detail in
tests/test_follow_ups.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from helpers import final, invoke

from orchestra import Action, Agent, FunctionAgent, FunctionModel, ScriptedModel
from orchestra.communication import ScriptedUser
from orchestra.coordination import Orchestra
from orchestra.coordination.config import (
    ErrorHandlingConfig,
    ExecutionConfig,
    StatusConfig,
    VerbosityLevel,
)
from orchestra.coordination.orchestra import OrchestraResult
from orchestra.coordination.state import FileStorageBackend, StateManager
from orchestra.coordination.topology import Edge, Labeled, PatternConfig, Topology
from orchestra.models.base import ModelReply, Usage

logger = logging.getLogger("orchestra.spec_examples")


pytestmark = pytest.mark.usefixtures("clean_global_registry")  # the page registers globally


# A topology for the examples that use one without defining it.
topology = {
    "nodes": ["User", "Researcher", "Writer"],
    "edges": ["User -> Researcher", "Researcher -> Writer", "Writer -> User"],
}


def research_team() -> tuple[ScriptedModel, ScriptedModel]:
    researcher = ScriptedModel([invoke(("Writer", "findings: agents everywhere"))])
    writer = ScriptedModel(["# Report\nAI agents are everywhere."])
    Agent("Researcher", researcher)
    Agent("Writer", writer)
    return researcher, writer


# ---- imports ----------------------------------------------------------------------------------


def test_the_pages_imports() -> None:
    import orchestra.coordination as coordination
    import orchestra.coordination.config as config
    import orchestra.coordination.orchestra as orchestra_module

    assert coordination.Orchestra is Orchestra
    assert orchestra_module.OrchestraResult is OrchestraResult
    assert config.ExecutionConfig is ExecutionConfig
    assert config.StatusConfig is StatusConfig
    assert config.VerbosityLevel is VerbosityLevel
    assert config.ErrorHandlingConfig is ErrorHandlingConfig


# ---- Quick Start ------------------------------------------------------------------------------


async def test_one_line_execution() -> None:
    research_team()

    result = await Orchestra.run(task="Research AI trends and write a report", topology=topology)

    assert isinstance(result, OrchestraResult)
    assert result.success, result.error
    assert result.final_response == "# Report\nAI agents are everywhere."
    assert result.was_agent_invoked("Researcher") and result.was_agent_invoked("Writer")


async def test_with_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    research_team()

    result = await Orchestra.run(
        task="Complex research task",
        topology=topology,
        execution_config=ExecutionConfig(
            convergence_timeout=300.0, status=StatusConfig.from_verbosity(1)
        ),
        max_steps=50,
    )

    assert result.success, result.error
    assert result.total_steps == 2
    err = capsys.readouterr().err
    assert "Researcher: invoke_agent(Writer)" in err
    assert "Writer: final_response" in err
    assert "run succeeded" in err


async def test_max_steps_of_the_configuration_example_is_enforced() -> None:
    Agent("Researcher", ScriptedModel([invoke(("Writer", "x"))]))
    Agent("Writer", ScriptedModel(["report"]))
    result = await Orchestra.run(
        task="Complex research task",
        topology=topology,
        execution_config=ExecutionConfig(
            convergence_timeout=300.0, status=StatusConfig.from_verbosity(0)
        ),
        max_steps=1,
    )
    assert not result.success
    assert result.metadata["error_type"] == "StepLimitError"
    assert result.total_steps == 1


# ---- Orchestra.run() examples -----------------------------------------------------------------


async def test_simple_execution() -> None:
    summarizer = ScriptedModel(["A short summary."])
    Agent("Summarizer", summarizer)

    # Simple execution
    result = await Orchestra.run(
        task="Summarize this article", topology={"nodes": ["Summarizer"], "edges": []}
    )

    assert result.success, result.error
    assert result.final_response == "A short summary."
    assert result.total_steps == 1
    assert summarizer.calls[0].messages[1].content == "[Task]\nSummarize this article"


async def test_complex_execution(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the example keeps its state in ./state
    coordinator = ScriptedModel(
        [
            invoke(("TechAnalyst", "tech trends"), ("FinanceAnalyst", "finance trends")),
            invoke(("Reporter", "write it up")),
            final({"report": "markets are up", "sectors": ["tech", "finance"]}),
        ]
    )
    Agent("Coordinator", coordinator)
    Agent("TechAnalyst", ScriptedModel(["tech: AI capex grows"]))
    Agent("FinanceAnalyst", ScriptedModel([final("finance: rates fall")]))
    Agent("Reporter", ScriptedModel(["markets are up"]))

    # Complex execution with all options, as written: no channel is given and the tests run
    # with no terminal (conftest's no_terminal), so follow-ups are not offered (a warning says
    # so, the result too).
    with pytest.warns(UserWarning, match="no user channel"):
        result = await complex_execution()

    assert result.success, result.error
    assert result.metadata["follow_ups"] == "not offered: the run has no user channel"
    assert result.follow_ups == []
    assert result.session_id == "market_analysis_2024"
    assert (tmp_path / "state" / "market_analysis_2024").is_dir()  # a durable session
    assert result.final_response == {
        "report": "markets are up",
        "sectors": ["tech", "finance"],
    }
    assert [b.branch_id for b in result.branch_results] == ["b0", "b1", "b2"]
    assert result.get_branch_by_id("b1").agents == ["TechAnalyst"]  # type: ignore[union-attr]
    assert result.get_agent_invocation_count("Reporter") == 1
    first_call = coordinator.calls[0].messages
    assert json.loads(first_call[1].content.removeprefix("[Task]\n")) == {
        "request": "Analyze market trends",
        "sectors": ["tech", "finance"],
        "depth": "comprehensive",
    }
    assert '"user_preferences": {"format": "detailed"}' in first_call[0].content
    assert "in parallel: TechAnalyst, FinanceAnalyst, Reporter" in first_call[0].content
    results = json.loads(
        coordinator.calls[1]
        .messages[-1]
        .content.removeprefix("[Results of the parallel branches you started]\n")
    )
    assert results == [
        {
            "agent": "TechAnalyst",
            "branch_id": "b1",
            "status": "completed",
            "response": "tech: AI capex grows",
        },
        {
            "agent": "FinanceAnalyst",
            "branch_id": "b2",
            "status": "completed",
            "response": "finance: rates fall",
        },
    ]
    err = capsys.readouterr().err
    assert "[market_analysis_2024]" in err
    assert "fan-out f1 from Coordinator: TechAnalyst, FinanceAnalyst" in err
    assert "converged (met)" in err


async def complex_execution() -> OrchestraResult:
    """The page's "Complex execution with all options", verbatim."""
    return await Orchestra.run(
        task={
            "request": "Analyze market trends",
            "sectors": ["tech", "finance"],
            "depth": "comprehensive",
        },
        topology=PatternConfig.hub_and_spoke(
            hub="Coordinator",
            spokes=["TechAnalyst", "FinanceAnalyst", "Reporter"],
            parallel_spokes=True,
        ),
        context={
            "session_id": "market_analysis_2024",
            "user_preferences": {"format": "detailed"},
        },
        execution_config=ExecutionConfig(
            convergence_timeout=600.0,
            branch_timeout=1200.0,
            status=StatusConfig.from_verbosity(2),
        ),
        state_manager=StateManager(FileStorageBackend("./state")),
        max_steps=100,
        allow_follow_ups=True,
        follow_up_timeout=120.0,
    )


# ---- Follow-up Questions ----------------------------------------------------------------------


async def test_follow_up_questions(monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's Follow-up section, as written, with a user at a (scripted) terminal: after
    the answer, the user asks about superposition; an empty line ends the conversation."""
    user = ScriptedUser(["Can you explain superposition in more detail?", ""])
    monkeypatch.setattr("orchestra.coordination.orchestra.user_channel", lambda: user)
    seen: list[list[str]] = []

    def explainer(messages: Any, info: Any) -> str:
        seen.append([message.content for message in messages])
        return (
            "Qubits hold 0 and 1 at once."
            if len(seen) == 1
            else "Superposition: both, until measured."
        )

    Agent("Explainer", FunctionModel(explainer))
    topology = {"nodes": ["User", "Explainer"], "edges": ["User -> Explainer", "Explainer -> User"]}

    result = await Orchestra.run(
        task="Explain quantum computing",
        topology=topology,
        allow_follow_ups=True,
        follow_up_timeout=60.0,  # Wait 60s for follow-up
    )

    assert result.success, result.error
    assert result.final_response == "Superposition: both, until measured."
    assert [item.question for item in result.follow_ups] == [
        "Can you explain superposition in more detail?"
    ]
    assert result.get_conversation()[0]["response"] == "Qubits hold 0 and 1 at once."
    # the same context: the second round's conversation holds the first
    assert "[Task]\nExplain quantum computing" in seen[1]
    assert "[Follow-up from the user]\nCan you explain superposition in more detail?" in seen[1]
    offers = [question for question in user.questions if question.kind == "follow_up"]
    assert [offer.response for offer in offers] == [
        "Qubits hold 0 and 1 at once.",
        "Superposition: both, until measured.",
    ]
    assert {offer.timeout for offer in offers} == {60.0}


# ---- Example Result Handling ------------------------------------------------------------------


def handle(result: OrchestraResult) -> None:
    """The page's result-handling block, verbatim."""
    if result.success:
        print(f"✅ Success in {result.total_duration:.2f}s")
        print(f"Final response: {result.final_response}")

        # Analyze branch performance
        for branch in result.branch_results:
            print(f"Branch {branch.branch_id}: {branch.status}")
            print(f"  Steps: {branch.step_count}")
            print(f"  Duration: {branch.duration:.2f}s")
    else:
        print(f"❌ Failed: {result.error}")

        # Check which branches failed
        for branch in result.get_failed_branches():
            print(f"Failed branch: {branch.branch_id}")
            print(f"  Error: {branch.error}")

    # Export for analysis
    with open("execution_result.json", "w") as f:
        json.dump(result.to_json(), f, indent=2)


async def run_and_handle(
    capsys: pytest.CaptureFixture[str],
) -> tuple[OrchestraResult, str, dict[str, Any]]:
    """Run the page's task through the globally registered agents, then its result-handling
    block; returns the result, what the block printed and the JSON it saved."""
    task = "Research AI trends and write a report"

    result = await Orchestra.run(task, topology)
    capsys.readouterr()
    handle(result)

    out = capsys.readouterr().out
    return result, out, json.loads(Path("execution_result.json").read_text())


async def test_example_result_handling_on_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    research_team()
    result, out, saved = await run_and_handle(capsys)

    assert out.startswith("✅ Success in ")
    assert "Final response: # Report" in out
    assert "Branch b0: completed\n  Steps: 2\n  Duration: " in out
    assert saved == result.to_json()
    assert OrchestraResult.from_json(saved).to_json() == saved


async def test_example_result_handling_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Agent("Researcher", ScriptedModel([invoke(("Writer", "findings"))]))
    Agent("Writer", ScriptedModel([RuntimeError("model overloaded")]))
    result, out, saved = await run_and_handle(capsys)

    assert out.startswith("❌ Failed: ")
    assert "model overloaded" in out
    assert "Failed branch: b0\n  Error: " in out
    assert saved["success"] is False
    assert saved == result.to_json()


# ---- Advanced patterns ------------------------------------------------------------------------


def conditional_topology() -> Topology:
    # Define conditional topology
    return Topology(
        nodes=["Validator", "ProcessorA", "ProcessorB", "Finalizer"],
        edges=[
            "Validator -> ProcessorA",
            "Validator -> ProcessorB",
            Edge("ProcessorA", "Finalizer", metadata={"condition": "valid"}),
            Edge("ProcessorB", "Finalizer", metadata={"condition": "invalid"}),
        ],
    )


async def test_pattern_1_conditional_execution_with_llm_agents() -> None:
    Agent("Validator", ScriptedModel([invoke(("ProcessorA", "rows 1-10 look valid"))]))
    processor_a = ScriptedModel(
        [
            invoke(("Finalizer", "processed rows")),  # no label: steered
            invoke(("Finalizer", "processed rows"), label="valid"),
        ]
    )
    Agent("ProcessorA", processor_a)
    Agent("ProcessorB", ScriptedModel([]))
    Agent("Finalizer", ScriptedModel(["final: processed rows"]))
    topology = conditional_topology()

    result = await Orchestra.run(task="Process data based on validation", topology=topology)

    assert result.success, result.error
    assert result.final_response == "final: processed rows"
    assert result.was_agent_invoked("ProcessorA")
    assert not result.was_agent_invoked("ProcessorB")
    assert result.branch_results[0].agents == ["Validator", "ProcessorA", "Finalizer"]
    assert 'Finalizer (needs "label": "valid")' in processor_a.calls[0].messages[0].content
    steering = processor_a.calls[1].messages[-1].content
    assert 'needs "label": "valid"' in steering
    assert result.get_metrics()["rejected_actions"] == 1


async def test_pattern_1_conditional_execution_with_function_agents() -> None:
    def validate(data: Any, context: Any) -> Action:
        return Action.invoke("ProcessorA" if data["rows"] else "ProcessorB", data)

    FunctionAgent("Validator", validate)
    FunctionAgent("ProcessorA", lambda data, context: Labeled(f"{len(data['rows'])} rows", "valid"))
    FunctionAgent("ProcessorB", lambda data, context: Labeled("nothing to do", "invalid"))
    FunctionAgent("Finalizer", lambda value, context: f"final: {value}")
    quiet = ExecutionConfig(status=StatusConfig.from_verbosity(VerbosityLevel.QUIET))

    good = await Orchestra.run({"rows": [1, 2]}, conditional_topology(), execution_config=quiet)
    empty = await Orchestra.run({"rows": []}, conditional_topology(), execution_config=quiet)

    assert good.final_response == "final: 2 rows"
    assert good.branch_results[0].agents == ["Validator", "ProcessorA", "Finalizer"]
    assert empty.final_response == "final: nothing to do"
    assert empty.branch_results[0].agents == ["Validator", "ProcessorB", "Finalizer"]


async def test_pattern_2_dynamic_agent_selection() -> None:
    def select(task: Any, context: Any) -> Any:
        specialists = context["available_specialists"]
        choice = specialists[1] if "dataset" in task else specialists[0]
        return Action.invoke(choice, {"task": task, "criteria": context["selection_criteria"]})

    FunctionAgent("Selector", select)
    stats = ScriptedModel(["mean 4.2, sd 1.1"])
    Agent("MLExpert", ScriptedModel([]))
    Agent("StatsExpert", stats)
    Agent("DataExpert", ScriptedModel([]))
    topology = {
        "nodes": ["User", "Selector", "MLExpert", "StatsExpert", "DataExpert"],
        "edges": [
            "User -> Selector",
            "Selector -> MLExpert",
            "Selector -> StatsExpert",
            "Selector -> DataExpert",
            "MLExpert -> User",
            "StatsExpert -> User",
            "DataExpert -> User",
        ],
    }

    # Agents can be selected at runtime
    context = {
        "available_specialists": ["MLExpert", "StatsExpert", "DataExpert"],
        "selection_criteria": "best_match",
    }

    result = await Orchestra.run(task="Analyze this dataset", topology=topology, context=context)

    assert result.success, result.error
    assert result.final_response == "mean 4.2, sd 1.1"
    assert result.was_agent_invoked("StatsExpert")
    assert not result.was_agent_invoked("MLExpert")
    call = stats.calls[0]
    assert call.info.context == context
    shared = call.messages[0].content.split("Shared context:\n", 1)[1]
    assert json.loads(shared) == context
    assert json.loads(call.messages[1].content.split("\n", 1)[1]) == {
        "task": "Analyze this dataset",
        "criteria": "best_match",
    }


def error_recovery_topology() -> dict[str, Any]:
    # Topology with error recovery paths
    return {
        "nodes": ["User", "MainProcessor", "ErrorHandler", "Fallback"],
        "edges": [
            "User -> MainProcessor",
            "MainProcessor -> User",  # Success path
            "MainProcessor -> ErrorHandler",  # Error path
            "ErrorHandler -> User",  # Recovery interaction
            "ErrorHandler -> Fallback",  # Fallback path
            "Fallback -> User",
        ],
    }


async def test_pattern_4_error_recovery() -> None:
    Agent("MainProcessor", ScriptedModel([RuntimeError("parser crashed")]))
    handler = ScriptedModel([invoke(("Fallback", "use the simple parser"))])
    Agent("ErrorHandler", handler)
    Agent("Fallback", ScriptedModel(["processed with the simple parser"]))
    topology = error_recovery_topology()

    result = await Orchestra.run(
        task="Process with error recovery",
        topology=topology,
        error_config=ErrorHandlingConfig(enable_error_routing=True, preserve_error_context=True),
    )

    assert result.success, result.error
    assert result.final_response == "processed with the simple parser"
    assert result.branch_results[0].agents == ["MainProcessor", "ErrorHandler", "Fallback"]
    assert result.get_failed_branches() == []
    request = handler.calls[0].messages[1]
    assert request.content.startswith("[Request from MainProcessor]\n")
    report = json.loads(request.content.split("\n", 1)[1])
    assert report["failed_agent"] == "MainProcessor"
    assert "parser crashed" in report["error"]
    assert report["error_type"] == "AgentStepError"
    assert report["input"] == "Process with error recovery"


async def test_pattern_4_error_handler_may_answer_itself() -> None:
    Agent("MainProcessor", ScriptedModel([RuntimeError("parser crashed")]))
    Agent("ErrorHandler", ScriptedModel(["recovered by the handler"]))
    Agent("Fallback", ScriptedModel([]))

    result = await Orchestra.run(
        task="Process with error recovery",
        topology=error_recovery_topology(),
        error_config=ErrorHandlingConfig(enable_error_routing=True, preserve_error_context=True),
    )

    assert result.success, result.error
    assert result.final_response == "recovered by the handler"
    assert not result.was_agent_invoked("Fallback")


async def test_pattern_4_without_preserved_context() -> None:
    Agent("MainProcessor", ScriptedModel([RuntimeError("parser crashed")]))
    handler = ScriptedModel(["recovered"])
    Agent("ErrorHandler", handler)
    Agent("Fallback", ScriptedModel([]))

    result = await Orchestra.run(
        task="Process with error recovery",
        topology=error_recovery_topology(),
        error_config=ErrorHandlingConfig(enable_error_routing=True, preserve_error_context=False),
    )

    assert result.success, result.error
    report = json.loads(handler.calls[0].messages[1].content.split("\n", 1)[1])
    assert set(report) == {"failed_agent", "error"}


async def test_pattern_4_without_error_routing_the_run_fails() -> None:
    Agent("MainProcessor", ScriptedModel([RuntimeError("parser crashed")]))
    Agent("ErrorHandler", ScriptedModel([]))
    Agent("Fallback", ScriptedModel([]))

    result = await Orchestra.run(
        task="Process with error recovery", topology=error_recovery_topology()
    )

    assert not result.success
    assert "parser crashed" in (result.error or "")
    assert result.metadata["error_type"] == "AgentStepError"
    assert not result.was_agent_invoked("ErrorHandler")


# ---- Configuration options --------------------------------------------------------------------


async def test_execution_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    research_team()
    task = "Research AI trends and write a report"

    config = ExecutionConfig(
        # Timeouts
        convergence_timeout=300.0,
        branch_timeout=600.0,
        step_timeout=120.0,
        # Behavior
        dynamic_convergence_enabled=True,
        steering_mode="auto",
        # Output
        status=StatusConfig.from_verbosity(VerbosityLevel.NORMAL),
    )

    result = await Orchestra.run(task=task, topology=topology, execution_config=config)

    assert result.success, result.error
    assert (config.convergence_timeout, config.branch_timeout, config.step_timeout) == (
        300.0,
        600.0,
        120.0,
    )
    assert config.dynamic_convergence_enabled is True
    assert config.steering_mode == "auto"
    assert config.status.enabled and config.status.verbosity is VerbosityLevel.NORMAL
    err = capsys.readouterr().err
    assert "Writer: final_response" in err


async def test_metrics_collection(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As written: the default exporters, /metrics and a table on stderr. The port is the
    environment's choice (ORCHESTRA_PROMETHEUS_PORT), here a free one: 9464 may be taken on the
    machine running the tests, or by a second run of them."""
    from orchestra.coordination.monitoring import MetricsCollector

    monkeypatch.setenv("ORCHESTRA_PROMETHEUS_PORT", "0")

    Agent("Researcher", ScriptedModel([invoke(("Writer", "findings"))]))
    Agent("Writer", ScriptedModel([ModelReply(content="# Report", usage=Usage(120, 30))]))
    task = "Research AI trends and write a report"

    metrics = MetricsCollector(
        enabled=True, export_interval=60, exporters=["prometheus", "console"]
    )

    result = await Orchestra.run(task=task, topology=topology, metrics_collector=metrics)

    # Access metrics
    print(f"API calls: {metrics.get_metric('api_calls')}")
    print(f"Token usage: {metrics.get_metric('total_tokens')}")

    metrics.close()
    assert result.success, result.error
    assert metrics.prometheus_url is None
    captured = capsys.readouterr()
    assert "API calls: 2\nToken usage: 150\n" in captured.out
    assert "Orchestra metrics" in captured.err


# ---- Best practices ---------------------------------------------------------------------------


async def test_best_practice_1_handle_results(caplog: pytest.LogCaptureFixture) -> None:
    Agent("Summarizer", ScriptedModel([]))  # runs out of replies: the run fails
    result = await Orchestra.run(
        task="Summarize this article", topology={"nodes": ["Summarizer"], "edges": []}
    )

    with caplog.at_level(logging.ERROR, logger=logger.name):
        if not result.success:
            logger.error(f"Execution failed: {result.error}")
            # Handle failure

    assert result.metadata["error_type"] == "ScriptExhaustedError"
    assert "Execution failed: " in caplog.text
    assert "'Summarizer'" in caplog.text


async def test_best_practice_2_set_appropriate_timeouts() -> None:
    research_team()
    config = ExecutionConfig(
        step_timeout=30.0,  # Quick operations
        convergence_timeout=300.0,  # Parallel coordination
    )

    result = await Orchestra.run(
        task="Research AI trends", topology=topology, execution_config=config
    )

    assert result.success, result.error


async def test_best_practice_4_quiet_in_production(capsys: pytest.CaptureFixture[str]) -> None:
    research_team()

    # Production
    status = StatusConfig.from_verbosity(VerbosityLevel.QUIET)

    result = await Orchestra.run(
        task="Research AI trends",
        topology=topology,
        execution_config=ExecutionConfig(status=status),
    )

    assert result.success, result.error
    assert status.enabled is False
    assert status.verbosity is VerbosityLevel.QUIET
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


async def test_best_practice_4_verbose_for_debugging(capsys: pytest.CaptureFixture[str]) -> None:
    Agent(
        "Researcher",
        ScriptedModel([invoke(("Editor", "x")), invoke(("Writer", "findings"))]),
    )
    Agent("Writer", ScriptedModel(["report"]))

    # Debugging
    status = StatusConfig.from_verbosity(VerbosityLevel.VERBOSE)

    result = await Orchestra.run(
        task="Research AI trends",
        topology=topology,
        execution_config=ExecutionConfig(status=status),
    )

    assert result.success, result.error
    assert status.enabled and status.show_actions
    assert status.verbosity is VerbosityLevel.VERBOSE
    err = capsys.readouterr().err
    assert "Researcher: rejected ('Editor' is not an agent" in err
    assert "Researcher: invoke_agent(Writer)" in err
    assert "run succeeded" in err


@pytest.mark.parametrize(
    ("level", "enabled", "show_actions"),
    [(0, False, False), (1, True, False), (2, True, True)],
)
def test_from_verbosity_accepts_ints_and_levels(
    level: int, enabled: bool, show_actions: bool
) -> None:
    for value in (level, VerbosityLevel(level)):
        status = StatusConfig.from_verbosity(value)
        assert status.verbosity is VerbosityLevel(level)
        assert status.enabled is enabled
        assert status.show_actions is show_actions
