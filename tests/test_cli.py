"""The command line, run as users run it: a real subprocess of the installed entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestra", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )


def test_demo_runs_the_research_workflow_offline_on_the_bundled_model() -> None:
    result = run_cli("demo", "--task", "solar power")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Default model: local:smollm2" in result.stdout
    assert "Final response" in result.stdout
    assert "fan-out f1 from Coordinator: WebResearcher, PaperResearcher" in result.stderr
    assert "run succeeded" in result.stderr
    for agent in ("Coordinator", "WebResearcher", "PaperResearcher", "Writer"):
        assert agent in result.stdout


def test_demo_can_draw_the_spec_topologies() -> None:
    result = run_cli("demo", "--topologies")
    assert result.returncode == 0, result.stderr
    for name in ("Summarizer", "Extractor", "Finalizer", "MainProcessor"):
        assert name in result.stdout


def test_topology_command_checks_a_yaml_file(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        "nodes: [User, Planner, Writer]\nedges: ['User -> Planner', 'Planner -> Writer']\n"
    )
    result = run_cli("topology", str(flow), "--mermaid")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("flowchart TD")


def test_topology_command_reports_every_problem_of_a_json_file(tmp_path: Path) -> None:
    flow = tmp_path / "flow.json"
    flow.write_text(json.dumps({"nodes": ["A", "B"], "edges": ["A -> C", "B -> B"]}))
    result = run_cli("topology", str(flow))
    assert result.returncode == 1
    assert "'C' is not a node" in result.stdout
    assert "'B' is unreachable" in result.stdout


def test_topology_command_names_an_unknown_key(tmp_path: Path) -> None:
    flow = tmp_path / "flow.json"
    flow.write_text(json.dumps({"nodes": ["A"], "edge": []}))
    result = run_cli("topology", str(flow))
    assert result.returncode == 1
    assert "'edge'" in result.stdout and "did you mean 'edges'" in result.stdout


def test_topology_command_reports_unreadable_and_malformed_files(tmp_path: Path) -> None:
    missing = run_cli("topology", str(tmp_path / "nope.yaml"))
    assert missing.returncode != 0 and "cannot read" in missing.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    malformed = run_cli("topology", str(bad))
    assert malformed.returncode != 0 and "not valid json" in malformed.stderr
