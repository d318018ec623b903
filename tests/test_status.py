"""The status display: a line per step and per branch end, read from the event stream;
``show_actions`` adds what each action carried; replayed events are never printed."""

from __future__ import annotations

import io
from typing import Any

import pytest
from helpers import final, invoke, llm, run, spokes

from orchestra import ExecutionConfig, ScriptedModel, StatusConfig
from orchestra.agents.contract import Action
from orchestra.coordination.engine import events as ev
from orchestra.coordination.monitoring.status import PREVIEW, StatusPrinter, details
from orchestra.models import secrets
from orchestra.models.base import ToolCall


async def printed(status: StatusConfig, capsys: pytest.CaptureFixture[str]) -> list[str]:
    hub = ScriptedModel(
        [
            invoke(("A", "look at the " + "long " * 80 + "list"), ("B", {"k": [1, 2]})),
            final("both done"),
        ]
    )
    agents = [llm("Hub", hub), llm("A", ScriptedModel(["a"])), llm("B", ScriptedModel(["b"]))]
    result = await run("task", spokes("A", "B"), agents, config=ExecutionConfig(status=status))
    assert result.success, result.error
    lines = capsys.readouterr().err.splitlines()
    return [line.split("] ", 1)[1] if line.startswith("[") else line for line in lines]


async def test_show_actions_prints_what_each_action_carried(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It used to be accepted and change nothing."""
    lines = await printed(StatusConfig(verbosity=1, show_actions=True), capsys)
    hub_step = next(i for i, line in enumerate(lines) if "Hub: invoke_agent(A, B)" in line)
    request_a, request_b = lines[hub_step + 1 : hub_step + 3]
    assert request_a.strip().startswith("-> A: look at the long long")
    assert request_a.strip().endswith(" long…")  # cut between words, never inside one
    assert len(request_a.strip()) <= len("-> A: ") + PREVIEW
    assert request_b.strip() == "-> B: {'k': [1, 2]}"
    assert any(line.strip() == "response: both done" for line in lines)


async def test_without_show_actions_a_step_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    lines = await printed(StatusConfig(verbosity=1, show_actions=False), capsys)
    assert not any(line.startswith(" ") for line in lines)
    assert sum(line.startswith("step") for line in lines) == 4


async def test_verbose_shows_actions_and_quiet_shows_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert StatusConfig.from_verbosity(2).show_actions is True
    verbose = await printed(StatusConfig.from_verbosity(2), capsys)
    assert any(line.startswith("fan-out f1 from Hub: A, B") for line in verbose)
    assert any(line.strip().startswith("-> A:") for line in verbose)
    assert await printed(StatusConfig.from_verbosity(0), capsys) == []


@pytest.mark.parametrize(
    ("action", "detail"),
    [
        (Action.ask_user("which one?"), ["question: which one?"]),
        (Action.call_tools([ToolCall("search", {"q": "x"}, "c1")]), ["tool search({'q': 'x'})"]),
        (Action.final({"a": "b\n  c"}), ["response: {'a': 'b\\n c'}"]),
    ],
)
def test_each_kind_of_action_shows_what_it_carries(action: Action, detail: list[str]) -> None:
    out = io.StringIO()
    printer = StatusPrinter(StatusConfig(verbosity=1, show_actions=True), out)
    step: dict[str, Any] = {"run_id": "r", "at": 1.0, "branch_id": "b0", "agent": "A", "step": 1}
    printer(ev.StepCompleted(**step, duration=0.001, action=action))
    printer(ev.StepCompleted(**step, duration=0.001, action=action, replayed=True))
    first, *rest = out.getvalue().splitlines()
    assert first.startswith("[r] step    1     b0 A: ")
    assert [line.strip() for line in rest] == detail  # the replayed one printed nothing


def test_run_text_in_a_status_line_is_escaped_and_bounded() -> None:
    """A model's or a tool's text reached the terminal as it was (ESC [2J cleared the screen)
    and whole (a 4 MB error printed 4 MB)."""
    out = io.StringIO()
    printer = StatusPrinter(StatusConfig(verbosity=1), out)
    error = "\x1b[2Jgone\r" + "e" * 5000
    printer(
        ev.BranchFailed(run_id="r", at=0.0, branch_id="b0", agent="A", error_type="X", error=error)
    )
    line = out.getvalue()
    assert "\x1b" not in line and "\r" not in line
    assert "\\x1b[2Jgone\\x0d" in line and "more characters)" in line
    assert len(line) < 1100


def test_a_key_in_a_tool_calls_arguments_is_redacted() -> None:
    """A model may echo a key into a tool call; its arguments were printed as they were."""
    out = io.StringIO()
    printer = StatusPrinter(StatusConfig.from_verbosity(2), out)
    call = ToolCall("fetch", {"api_key": "sk-proj-4f9Kx2LmQ8zR7vT1nB6wY3hJ0cD5eA"}, "c1")
    step: dict[str, Any] = {"run_id": "r", "at": 1.0, "branch_id": "b0", "agent": "A", "step": 1}
    printer(ev.StepCompleted(**step, duration=0.001, action=Action.call_tools([call])))
    assert "tool fetch({'api_key': '[REDACTED]'})" in out.getvalue()
    assert "4f9Kx2" not in out.getvalue()


def test_a_remembered_key_across_the_preview_cut_is_redacted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The arguments were cut to 400 characters before redact() saw them: a remembered key
    across the cut no longer matched, and collapsing the padding's spaces brought 32 of its
    40 characters into the line shown."""
    monkeypatch.setattr(secrets, "_known", set())
    key = "9f2c6e0d71ab44c5b8e1d0a3f7c6b2e94d1a0c8f"
    secrets.remember(key)
    for pad in (330, 345, 360, 370, 390):
        call = ToolCall("search", {"query": " " * pad, "auth": key}, "c1")
        (line,) = details(Action.call_tools([call]))
        assert key[:8] not in line, (pad, line)
        assert "[REDACTED]" in line or line.endswith("…"), (pad, line)


def test_a_cut_preview_never_ends_inside_a_token() -> None:
    """Half of a key is not a key to redact(): a cut drops the token it falls in."""
    token = "Zq8" * 40  # shaped like nothing redact() knows, and past the cut
    call = ToolCall("t", {"a": "word " * 30, "b": token}, "c1")
    (line,) = details(Action.call_tools([call]))
    assert line.endswith("…)") and "Zq8" not in line and len(line) <= len("tool t()") + PREVIEW


def test_a_newline_in_run_text_cannot_forge_a_status_line() -> None:
    """An error's newlines were printed as they were: "quota\n[forged] run succeeded ..."
    printed a status line no run wrote."""
    out = io.StringIO()
    printer = StatusPrinter(StatusConfig(verbosity=1), out)
    error = "quota\n[forged] run succeeded in 0.01s, 1 steps\u2028[forged] again"
    printer(
        ev.BranchFailed(run_id="r", at=0.0, branch_id="b0", agent="A", error_type="X", error=error)
    )
    (line,) = out.getvalue().splitlines()
    assert line.startswith("[r] branch b0 failed at A: quota\\n[forged]")
    assert "\\u2028[forged] again" in line


def test_verbose_says_when_a_model_call_is_retried() -> None:
    out = io.StringIO()
    printer = StatusPrinter(StatusConfig.from_verbosity(2), out)
    retry = {"run_id": "r", "at": 1.0, "branch_id": "b0", "agent": "A", "attempt": 1}
    printer(ev.ModelCallRetried(**retry, delay=0.5, error="HTTP 429"))
    assert out.getvalue() == "[r]     b0 A: model call failed (HTTP 429), retry 1 in 0.5s\n"
