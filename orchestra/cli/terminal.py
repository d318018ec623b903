"""What the command line prints: results, topologies, lines to copy. Text that comes from a
run (a model's response, an error, a path) is printed as text: never read as rich markup or
emoji codes, its control characters shown as escapes (see
:mod:`orchestra.text`), and bounded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from orchestra.agents.contract import render
from orchestra.coordination.results import OrchestraResult
from orchestra.coordination.topology import Topology
from orchestra.text import printable

console = Console(emoji=False)  # ":ok:" in a response or a path is text, not an emoji


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
    console.print(Panel.fit(_roles_table(topology), title=escape(title)))
    console.print(topology.to_mermaid(), highlight=False, markup=False, soft_wrap=True)
    console.print()


PREVIEW_LINES = 40
PREVIEW_CHARS = 4_000
"""How much of a final response the command line draws. Drawing text in a panel costs rich
time that grows faster than the text (7.5 s for 4 MB, minutes for 50 MB), and a terminal shows
a screenful: a longer response is previewed, and a line under it says where the whole is."""


def _preview(text: str) -> str:
    """The opening of ``text``: at most PREVIEW_LINES lines of at most PREVIEW_CHARS in all
    (only that much of it is read)."""
    head = text[:PREVIEW_CHARS]
    lines = head.split("\n", PREVIEW_LINES)
    return "\n".join(lines[:PREVIEW_LINES]) if len(lines) > PREVIEW_LINES else head


def _print_response(result: OrchestraResult, output: Path | None, again: str | None) -> None:
    """The final response, previewed when long; the whole of it is written to ``output`` when
    one was given (with follow-ups, every round: its question, then its response), else the
    line under it says how to get it (``again``: the command that shows a kept session's
    result)."""
    text = result.get_final_response_as_text()
    rounds = 1 + len(result.follow_ups)
    saved = text if rounds == 1 else _conversation(result)
    if output is not None:
        _save(output, saved)
    title = "Final response" if rounds == 1 else f"Final response (round {rounds} of {rounds})"
    shown = _panel(text, title)
    if output is not None:
        what = "response" if rounds == 1 else f"conversation ({rounds} rounds)"
        say(f"The whole {what} ({len(saved):,} characters) is in {escape(str(output))}")
        return
    where = f"{again} --output FILE" if again else "run again with --output FILE"
    if shown < len(text):
        say(
            f"{len(text) - shown:,} more characters not shown ({len(text):,} in all); "
            f"the whole response: {escape(where)}"
        )
    if rounds > 1:
        say(f"Every round of the conversation ({rounds} rounds): {escape(where)}")


def _conversation(result: OrchestraResult) -> str:
    """Every round of a conversation as text: the question, then the response."""
    parts = []
    for item in result.get_conversation():
        number = item["round"]
        parts.append(f"# Round {number}: question\n\n{render(item['question'])}\n")
        parts.append(f"# Round {number}: response\n\n{render(item['response'])}\n")
    return "\n".join(parts)


def _panel(text: str, title: str, style: str = "") -> int:
    """Draw ``text`` (its preview) in a panel; how many of its characters were drawn."""
    preview = _preview(text)
    console.print(Panel(escape(printable(preview)), title=title, style=style))
    return len(preview)


def _bounded_panel(text: str, title: str, style: str) -> None:
    shown = _panel(text, title, style)
    if shown < len(text):
        say(f"{len(text) - shown:,} more characters not shown ({len(text):,} in all)")


def check_output(output: Path | None, *kept: Path | None) -> None:
    """Refuse (exit 2), before anything runs, an ``--output`` the response could not be
    written to, or one that would overwrite a file the run uses (``kept``: the workflow file,
    the session store): found after the run, the response would be lost."""
    if output is None:
        return
    if output.is_dir():
        fail(f"--output {output} is a folder: name a file", 2)
    folder = output.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        fail(f"--output {output}: {folder} is no folder this process can write to", 2)
    target = output.resolve()
    for path in kept:
        if path is not None and _belongs_to(target, path.resolve()):
            fail(f"--output {output} is a file of {path}, which the run uses", 2)


def _belongs_to(target: Path, used: Path) -> bool:
    """Whether ``target`` is ``used`` or one of the files SQLite and the store keep beside it
    (its write-ahead log held a finished session that an --output over it lost)."""
    beside = (f"{used.name}-wal", f"{used.name}-shm", f"{used.name}-journal")
    return (
        target == used
        or (target.parent == used.parent and target.name in beside)
        or used.with_name(f"{used.name}.locks") in target.parents
    )


def _save(output: Path, text: str) -> None:
    """``text`` in the file ``output``, as UTF-8 (what UTF-8 cannot hold, such as a lone
    surrogate a model wrote as an escape, as a backslash escape)."""
    try:
        output.write_text(text, encoding="utf-8", errors="backslashreplace")
    except OSError as error:
        fail(f"the response could not be written to {output}: {error.strerror or error}", 1)


def print_result(
    result: OrchestraResult, output: Path | None = None, again: str | None = None
) -> None:
    if result.success:
        _print_response(result, output, again)
    elif result.metadata.get("paused"):
        reason = str(result.metadata.get("pause_reason") or "no reason given")
        _bounded_panel(reason, "Paused", "yellow")
    else:
        _bounded_panel(str(result.error), "The run failed", "red")
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
    milliseconds = result.total_duration * 1000
    console.print(
        f"{result.total_steps} steps in {milliseconds:.1f} ms, session {result.session_id}"
    )


def fail(message: object, code: int) -> NoReturn:
    say(f"[red]{escape(str(message))}[/red]")
    raise typer.Exit(code)


def say(text: str) -> None:
    """A line as it is: never wrapped, so a command in it can be copied."""
    console.print(printable(text), highlight=False, soft_wrap=True)
