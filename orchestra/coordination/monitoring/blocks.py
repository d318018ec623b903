"""How a run looks in the live status display: a block with its state and totals over its
branch tree, drawn from a :class:`~.view.RunView` (or a snapshot of one) as rich renderables.
Run text (names, errors, questions) is shown as text, never read as markup, on one row each.
"""

from __future__ import annotations

from rich.console import RenderableType
from rich.panel import Panel
from rich.spinner import Spinner
from rich.text import Text
from rich.tree import Tree

from orchestra.models.secrets import redact
from orchestra.text import printable

from .view import BUSY, BranchStatus, BranchView, FanOutView, RunState, RunView

NOTE_LIMIT = 120
"""Characters of an error, a pause reason or a question shown in a run's block."""
WRITING_SHOWN = 100
"""Characters of the end of a reply being written shown on its branch's row."""

_SPINNER = Spinner("dots")
_STYLES = {
    BranchStatus.DONE: "green",
    BranchStatus.FAILED: "red",
    BranchStatus.CANCELLED: "dim",
    BranchStatus.HALTED: "red",
    BranchStatus.USER: "yellow",
    BranchStatus.CONVERGING: "blue",
}
_MARKS = {
    BranchStatus.DONE: "✓",
    BranchStatus.FAILED: "✗",
    BranchStatus.CANCELLED: "-",
    BranchStatus.HALTED: "-",
}
_RUN_STYLES = {
    RunState.SUCCEEDED: "green",
    RunState.FAILED: "red",
    RunState.PAUSED: "yellow",
    RunState.PAUSING: "yellow",
    RunState.WAITING_FOR_USER: "yellow",
    RunState.WAITING_FOR_FOLLOW_UP: "yellow",
    RunState.CANCELLED: "red",
    RunState.HALTED: "red",
}


def _text(text: str, style: str = "") -> Text:
    """Run text (a name, an error, a question) as plain text: never markup, escapes shown."""
    return Text(printable(text, NOTE_LIMIT, one_line=True), style=style)


def _figures(tokens: int, cost: float | None, seconds: float) -> str:
    shown = f"{seconds:.1f}s · {tokens:,} tokens"
    return shown if cost is None else f"{shown} · ${cost:.4f}"


def _spinner_frame(at: float) -> str:
    """The spinner's frame at ``at``: it follows the clock, however often a frame is drawn."""
    frames = _SPINNER.frames
    return frames[int(at * 1000 / _SPINNER.interval) % len(frames)]


def branch_label(branch: BranchView, at: float) -> Text:
    """A branch's line: its id, agent, status (a spinner while a call is in flight), step,
    working time, tokens and cost; what it failed with, or what it asks the user (a spent
    budget: which, and whose answer it waits for)."""
    status = branch.status
    label = Text.assemble((branch.branch_id, "bold"), " ", _text(branch.agent), "  ")
    if status in BUSY:
        label.append(_spinner_frame(at) + " ", style="cyan")
    elif status in _MARKS:
        label.append(_MARKS[status] + " ", style=_STYLES[status])
    label.append(str(status), style=_STYLES.get(status, ""))
    figures = _figures(branch.tokens, branch.cost_usd, branch.elapsed(at))
    label.append(f"  step {branch.step} · {figures}", style="dim")
    if branch.retries or branch.rejected:
        label.append(f" · {branch.retries} retried, {branch.rejected} rejected", style="yellow")
    note = branch.error if status is BranchStatus.FAILED else branch.budget or branch.question
    if note and status in (BranchStatus.FAILED, BranchStatus.USER):
        label.append(": ")
        label.append_text(_text(note, _STYLES[status]))
    return _one_row(label)


def writing_row(branch: BranchView) -> Text | None:
    """The row under a branch whose model is writing its reply: the end of the text so far,
    on one line, with keys redacted. Only up to its last whitespace: a word still being
    written may be the first half of a key, which :func:`redact` would not know yet."""
    settled = redact(branch.writing)
    cut_at = max(settled.rfind(space) for space in (" ", "\n", "\t"))
    words = " ".join(settled[: max(cut_at, 0)].split())
    if not words:
        return None
    shown = words[-WRITING_SHOWN:]
    if len(shown) < len(words):
        shown = "…" + shown
    return _one_row(Text("✎ " + printable(shown, one_line=True), style="italic dim"))


def _one_row(label: Text) -> Text:
    """A row that stays one row on a narrow terminal (cut with "…"): the area's height is
    what it was bounded to."""
    label.no_wrap, label.overflow = True, "ellipsis"
    return label


def _fan_out_label(fan_out: FanOutView) -> Text:
    label = Text(f"fan-out {fan_out.fan_out_id} → ", style="dim")
    label.append_text(_text(", ".join(fan_out.targets), "dim"))
    if fan_out.outcome is not None:
        label.append(
            f": converged ({fan_out.outcome}), {fan_out.succeeded} ok, {fan_out.failed} failed",
            style="dim",
        )
    return _one_row(label)


def _left_out_label(fan_out: FanOutView) -> Text:
    """The row counting a fan-out's children a block leaves out: "… and 970 more (12
    running, 950 done, 8 failed)"."""
    counts = ", ".join(f"{count:,} {status}" for status, count in fan_out.tally.items())
    return _one_row(Text(f"… and {fan_out.tally.total():,} more ({counts})", style="dim"))


def _grow(tree: Tree, view: RunView, branch: BranchView, at: float) -> None:
    writing = writing_row(branch) if branch.writing else None
    if writing is not None:
        tree.add(writing)
    for fan_out, children in view.children(branch):
        node = tree.add(_fan_out_label(fan_out))
        if fan_out.outcome is not None:
            continue  # converged: folded into its one line
        for child in children:
            _grow(node.add(branch_label(child, at)), view, child, at)
        if fan_out.tally:  # a snapshot's count of the children it left out
            node.add(_left_out_label(fan_out))


def _headline(view: RunView, at: float) -> Text:
    state = view.shown_state
    line = Text.assemble(("run ", "bold"), _text(view.run_id, "bold"), " · ")
    line.append(str(state), style=_RUN_STYLES.get(state, "cyan"))
    note = view.error if state is RunState.FAILED else view.reason
    if note and state in (RunState.FAILED, RunState.PAUSED, RunState.PAUSING):
        line.append(": ")
        line.append_text(_text(note, _RUN_STYLES[state]))
    if view.round > 1:
        line.append(f" · round {view.round}")
    if view.budget and not view.ended:
        line.append(" · ")
        line.append_text(_text(view.budget, "yellow"))
    line.append(f" · {view.steps} steps · {_figures(view.tokens, view.cost_usd, view.elapsed(at))}")
    return _one_row(line)


def run_block(view: RunView, at: float) -> RenderableType:
    """A run's block: its state and totals over its branch tree (as of ``at``; a snapshot
    given rows draws that many rows of it)."""
    root = view.branches.get(view.root) if view.root is not None else None
    if root is None:
        return Panel(Text("starting", style="dim"), title=_headline(view, at), title_align="left")
    tree = Tree(branch_label(root, at), guide_style="dim")
    _grow(tree, view, root, at)
    return Panel(tree, title=_headline(view, at), title_align="left", expand=False)
