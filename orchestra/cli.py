"""The ``orchestra`` command line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from orchestra.coordination.config import StatusConfig
from orchestra.coordination.orchestra import Orchestra
from orchestra.coordination.results import OrchestraResult
from orchestra.coordination.topology import Edge, PatternConfig, Topology
from orchestra.demo import DEMO_FLOW, DEMO_MAX_TOKENS
from orchestra.errors import OrchestraError, TopologyError
from orchestra.models.defaults import default_model_config
from orchestra.workflow import load_workflow

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
    console.print(topology.to_mermaid(), highlight=False)
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


def _print_result(result: OrchestraResult) -> None:
    if result.success:
        console.print(Panel(result.get_final_response_as_text(), title="Final response"))
    else:
        console.print(Panel(str(result.error), title="The run failed", style="red"))
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
    console.print(
        f"{result.total_steps} steps in {result.total_duration * 1000:.1f} ms, session {result.session_id}"
    )


def _execute(workflow_path: Path, task: str | None, verbosity: int, max_tokens: int | None) -> None:
    try:
        workflow = load_workflow(workflow_path, max_tokens=max_tokens)
    except OrchestraError as error:
        console.print(f"[red]{error}[/red]", highlight=False)
        raise typer.Exit(2) from None
    chosen = task if task is not None else workflow.task
    if chosen is None:
        raise typer.BadParameter("no task: pass --task or give the workflow a 'task'")
    result = asyncio.run(
        Orchestra.run(
            chosen,
            workflow.topology,
            agent_registry=workflow.registry,
            context=workflow.context,
            execution_config=workflow.execution.model_copy(
                update={"status": StatusConfig.from_verbosity(verbosity)}
            ),
            error_config=workflow.error_handling,
            max_steps=workflow.max_steps,
        )
    )
    _print_result(result)
    if not result.success:
        raise typer.Exit(1)


@app.command()
def run(
    workflow: Annotated[Path, typer.Argument(help="A workflow file (YAML or JSON).")],
    task: Annotated[str | None, typer.Option(help="The task (default: the file's 'task').")] = None,
    verbosity: Annotated[int, typer.Option("--verbosity", "-v", min=0, max=2)] = 1,
) -> None:
    """Run a workflow file: its agents, topology and execution settings."""
    _execute(workflow, task, verbosity, None)


@app.command()
def demo(
    task: Annotated[str | None, typer.Option(help="What the team should research.")] = None,
    verbosity: Annotated[int, typer.Option("--verbosity", "-v", min=0, max=2)] = 2,
    topologies: Annotated[
        bool, typer.Option("--topologies", help="Also draw the API page's example topologies.")
    ] = False,
) -> None:
    """Run the bundled research-and-report workflow on the default model (offline unless
    ORCHESTRA_MODEL, OPENAI_API_KEY, ANTHROPIC_API_KEY or ORCHESTRA_BASE_URL say otherwise)."""
    model = default_model_config()
    console.print(f"Default model: {model.provider}:{model.name}", highlight=False)
    if topologies:
        for title, topology in _demo_topologies().items():
            show_topology(title, topology)
    _execute(DEMO_FLOW, task, verbosity, DEMO_MAX_TOKENS)


def _load_topology_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise typer.BadParameter(f"cannot read {path}: {error.strerror}") from None
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise typer.BadParameter(
            f"{path} is not valid {path.suffix.lstrip('.')}: {error}"
        ) from None


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
        console.print(f"[red]{path}:[/red] {error}", highlight=False)
        raise typer.Exit(1) from None
    if mermaid_only:
        typer.echo(topology.to_mermaid())
    else:
        show_topology(str(path), topology)
