"""The public API stays type-checked and lint-clean: the same tools a contributor runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_mypy_strict_is_clean() -> None:
    result = run_tool("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_lint_and_format_are_clean() -> None:
    lint = run_tool("ruff", "check", "orchestra", "tests", "dev.py")
    assert lint.returncode == 0, lint.stdout
    fmt = run_tool("ruff", "format", "--check", "orchestra", "tests", "dev.py")
    assert fmt.returncode == 0, fmt.stdout
