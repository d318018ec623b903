"""The code in the README and the user docs runs as written."""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path

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
