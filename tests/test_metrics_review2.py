"""MetricsCollector second review fixes: errors counted once per failure (a routed step
failure and the branch failure after it are two), one collector per meter_provider for the
provider's life, a bounded OTLP histogram queue drained before close's export, the credential
check on the OTLP URL actually used, a dropped collector freed, and close's bound on a
provider of the application's own."""

from __future__ import annotations

from helpers import fn, invoke, llm, run, spokes

from orchestra import ErrorHandlingConfig, FunctionModel, ScriptedModel
from orchestra.coordination.monitoring import MetricsCollector
from orchestra.errors import ModelAPIError

# ---- 2: errors, one count per failure ----------------------------------------------------------


def _errors(metrics: MetricsCollector) -> dict[tuple[str, str], int]:
    return {
        (row["labels"]["agent"], row["labels"]["type"]): row["value"]
        for row in metrics.snapshot()["errors"]["values"]
    }


def _bad() -> ModelAPIError:
    return ModelAPIError("bad request", provider="t", model="m", status=400, retryable=False)


async def test_a_branch_failing_after_a_routed_step_failure_is_its_own_error() -> None:
    """The routed failure marked the branch, and the StepLimitError at the fallback (no step
    started in between) was taken for that failure and never counted."""
    topology = {
        "nodes": ["A", "Fallback"],
        "edges": [{"source": "A", "target": "Fallback", "metadata": {"on_error": True}}],
    }
    config = ErrorHandlingConfig(
        enable_error_routing=True, max_retries=0, retry_initial_delay=0, retry_max_delay=0
    )
    agents = [llm("A", ScriptedModel([_bad()])), fn("Fallback", lambda value, context: "ok")]
    with MetricsCollector(exporters=[]) as metrics:
        result = await run(
            "go", topology, agents, metrics_collector=metrics, error_config=config, max_steps=1
        )
        assert not result.success
        assert _errors(metrics) == {("A", "ModelAPIError"): 1, ("Fallback", "StepLimitError"): 1}


async def test_a_failed_fan_out_counts_the_workers_error_and_the_convergence_error() -> None:
    """As documented: the worker's failed step once (not again for its branch), and the
    parent branch's ConvergenceError, a failure of its own."""

    def hub(messages: object, info: object) -> dict[str, object]:
        return invoke(("W1", "x"), ("W2", "y"))

    agents = [
        llm("Hub", FunctionModel(hub)),
        llm("W1", ScriptedModel([_bad()])),
        fn("W2", lambda value, context: "fine"),
    ]
    with MetricsCollector(exporters=[]) as metrics:
        result = await run(
            "go",
            spokes("W1", "W2"),
            agents,
            metrics_collector=metrics,
            error_config=ErrorHandlingConfig(max_retries=0),
        )
        assert not result.success
        assert _errors(metrics) == {("W1", "ModelAPIError"): 1, ("Hub", "ConvergenceError"): 1}
