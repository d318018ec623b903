"""The code in the README and the user docs runs as written."""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def run_block(block: str, source: str) -> None:
    """Run a snippet; one that uses top-level ``await`` runs inside a coroutine."""
    if "await " in block:
        wrapped = "async def _snippet():\n" + textwrap.indent(block, "    ")
        namespace: dict[str, object] = {}
        exec(compile(wrapped, source, "exec"), namespace)
        asyncio.run(namespace["_snippet"]())  # type: ignore[operator]
    else:
        exec(compile(block, source, "exec"), {})


def test_readme_python_examples_run() -> None:
    blocks = python_blocks(ROOT / "README.md")
    assert blocks
    for block in blocks:
        run_block(block, "README.md")


def test_engine_guide_opening_example_runs() -> None:
    run_block(python_blocks(ROOT / "docs" / "engine.md")[0], "docs/engine.md")


def test_scale_out_guide_example_runs_on_temporal(
    temporal_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/scale-out.md's one-machine example: a worker and a client on a real dev server."""
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_server)
    (block,) = [b for b in python_blocks(ROOT / "docs" / "scale-out.md") if "TEMPORAL_ADDRESS" in b]
    exec(compile(block, "docs/scale-out.md", "exec"), {})
