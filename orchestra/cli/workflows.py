"""Workflow files as the command line takes them: the ``--allow-module`` option, and loading
a file with every mistake said plainly (exit code 2). Shared by ``run``, ``resume``, ``demo``
and ``ui``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestra.errors import OrchestraError
from orchestra.workflow import Workflow, load_workflow

from .terminal import fail

AllowModule = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-module",
        help="Import only from this module and the modules below it (repeatable): for a "
        "workflow file you do not trust, whose function and tools name code that will run.",
    ),
]


def load(
    workflow_path: Path, max_tokens: int | None, allowed_modules: list[str] | None = None
) -> Workflow:
    """The workflow file, loaded; a mistake in it ends the command (exit code 2)."""
    try:
        return load_workflow(
            workflow_path, max_tokens=max_tokens, allowed_modules=allowed_modules or None
        )
    except OrchestraError as error:
        fail(error, 2)
