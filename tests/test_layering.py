"""The package's import graph: every module imports alone, and the layers have no cycle.

A cycle hidden by the import order of ``orchestra/__init__.py`` once made
``python -c "import orchestra.models.retry"`` fail in a clean interpreter ("partially initialized
module"). So every module is imported first, on its own; and the graph of imports between the
package's parts (a subpackage, or a module of its own at the top of ``orchestra`` or
``orchestra.coordination``) must have no cycle — the ``__init__`` of ``orchestra`` and of
``orchestra.coordination``, which gather names for users from every layer, counted as parts of
their own, so that a module importing through them is seen to depend on all they import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "orchestra"
SUBPACKAGES = {"agents", "models", "tools", "communication", "ui", "temporal"}
COORDINATION_SUBPACKAGES = {"engine", "state", "topology", "monitoring"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def test_every_module_imports_on_its_own() -> None:
    """Each module imported first, in a fresh set of Orchestra modules (one interpreter: the
    third-party packages stay loaded, which no import cycle of ours depends on)."""
    names = sorted(name for name in modules() if name != "orchestra.__main__")  # runs the CLI
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'orchestra']:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as error:\n"
        "        failed.append(f'{name}: {type(error).__name__}: {error}')\n"
        "print('\\n'.join(failed))\n"
    )
    run = subprocess.run(  # the limit only catches a hang: a loaded 2-CPU machine took 2 min
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "", run.stdout


def part_of(module: str) -> str:
    """The part a module belongs to: its subpackage, or itself."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in SUBPACKAGES:
        return ".".join(parts[:2])
    if len(parts) > 2 and parts[1] == "coordination" and parts[2] in COORDINATION_SUBPACKAGES:
        return ".".join(parts[:3])
    return module


def imports_of(path: Path, module: str, known: dict[str, Path]) -> Iterator[str]:
    """The Orchestra modules ``module`` imports: when it is loaded, and inside its functions
    (an import put off to a call hides a cycle, it does not remove it); not the ones only a
    type checker reads."""
    is_package = path.name == "__init__.py"

    def visit(body: list[ast.stmt]) -> Iterator[str]:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if not isinstance(node, ast.Import | ast.ImportFrom):
                yield from visit(
                    [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
                )
            elif isinstance(node, ast.Import):
                yield from (a.name for a in node.names if a.name.split(".")[0] == "orchestra")
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = module.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                if base.split(".")[0] != "orchestra":
                    continue
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    yield target if target in known else base

    yield from visit(ast.parse(path.read_text()).body)


def test_the_parts_of_the_package_import_each_other_without_a_cycle() -> None:
    known = modules()
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        for target in imports_of(path, module, known):
            source, destination = part_of(module), part_of(target)
            if source != destination:
                graph.setdefault(source, set()).add(destination)
    assert cycles(graph) == []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of ``graph`` with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found
