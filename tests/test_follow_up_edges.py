"""Follow-ups at their edges: who remembers what in a new round of a several-entry topology,
per-round loop detection, pooled agents while a follow-up is awaited, a resume with nobody to
offer a follow-up to, the first round's task, timeouts checked alike everywhere, and the run's
user channel when the process has no usable terminal (or the caller wants none).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers import final, fn, llm, of, quiet, run

from orchestra import Action, AgentPool, AgentRegistry, FunctionModel
from orchestra.communication import (
    CommunicationManager,
    ProgrammaticChannel,
    Question,
    ScriptedUser,
    TerminalChannel,
    terminal,
)
from orchestra.coordination import orchestra as entry_points
from orchestra.coordination.config import CommunicationConfig
from orchestra.coordination.engine import events as ev
from orchestra.coordination.engine.rounds import NO_CHANNEL
from orchestra.coordination.orchestra import Orchestra, OrchestraInstance
from orchestra.coordination.state import FileStorageBackend, StateManager
from orchestra.errors import ConfigurationError
from orchestra.models import Message, StepInfo

SOLO = {"nodes": ["User", "Tutor"], "edges": ["User -> Tutor", "Tutor -> User"]}


def rounds_seen(messages: Sequence[Message]) -> int:
    return sum(m.content.startswith(("[Task]", "[Follow-up from the user]")) for m in messages)


class Team:
    """Models for a team: each agent's ``plan(name, messages)`` reply, and what each saw."""

    def __init__(self, plan: Any) -> None:
        self.plan = plan
        self.seen: dict[str, list[list[str]]] = {}

    def __call__(self, messages: Sequence[Message], info: StepInfo) -> Any:
        self.seen.setdefault(info.agent_name, []).append([m.content for m in messages[1:]])
        return self.plan(info.agent_name, messages)

    def agents(self, *names: str) -> list[Any]:
        return [llm(name, FunctionModel(self)) for name in names]


# ---- who remembers what in a new round -----------------------------------------------------


async def test_an_entry_that_handed_over_goes_on_in_its_branchs_conversations() -> None:
    """Tech hands the task to Writer, who answers the user: in round 2, Tech and Writer both
    go on in the conversations they had (the branch is matched by the entry it began at)."""

    def plan(name: str, messages: Sequence[Message]) -> Any:
        last = messages[-1].content
        if name == "Tech" and last.startswith(("[Task]", "[Follow-up")):
            return {"next_action": "invoke_agent", "action_input": [{"agent_name": "Writer"}]}
        return final(f"{name} {rounds_seen(messages)}")

    team = Team(plan)
    result = await run(
        "markets?",
        {
            "nodes": ["User", "Tech", "Finance", "Writer"],
            "edges": [
                "User -> Tech",
                "User -> Finance",
                "Tech -> Writer",
                "Writer -> User",
                "Finance -> User",
            ],
        },
        team.agents("Tech", "Finance", "Writer"),
        allow_follow_ups=True,
        communication_config=CommunicationConfig(channel=ScriptedUser(["and bonds?", ""])),
    )

    assert result.success, result.error
    tech_round_2 = team.seen["Tech"][1]
    assert tech_round_2[0] == "[Task]\nmarkets?"
    assert tech_round_2[-1] == "[Follow-up from the user]\nand bonds?"
    writer_round_2 = team.seen["Writer"][1]
    assert len(writer_round_2) == 3  # its request and answer of round 1, then the new request
    assert writer_round_2[0] == writer_round_2[2]
    assert team.seen["Finance"][1][0] == "[Task]\nmarkets?"


async def test_entries_remember_when_a_convergence_node_fans_out_from_the_user_too() -> None:
    """Tech and Finance converge at C and D: that is a second fan-out from the user, which is
    not the round's entry fan-out. In round 2 the entries still remember round 1; C and D,
    reached only after the convergence, start fresh, as any new fan-out's branches do."""

    def plan(name: str, messages: Sequence[Message]) -> Any:
        if name in ("Tech", "Finance"):
            target = "C" if name == "Tech" else "D"
            item = {"agent_name": target, "request": f"{name} {rounds_seen(messages)}"}
            return {"next_action": "invoke_agent", "action_input": [item]}
        return final(f"{name} saw {len(messages)}")

    team = Team(plan)
    result = await run(
        "markets?",
        {
            "nodes": ["User", "Tech", "Finance", "C", "D"],
            "edges": [
                "User -> Tech",
                "User -> Finance",
                "Tech -> C",
                "Finance -> C",
                "Tech -> D",
                "Finance -> D",
                "C -> User",
                "D -> User",
            ],
        },
        team.agents("Tech", "Finance", "C", "D"),
        allow_follow_ups=True,
        communication_config=CommunicationConfig(channel=ScriptedUser(["and bonds?", ""])),
    )

    assert result.success, result.error
    for entry in ("Tech", "Finance"):
        assert team.seen[entry][1][0] == "[Task]\nmarkets?"
        assert team.seen[entry][1][-1] == "[Follow-up from the user]\nand bonds?"
    assert [len(seen) for seen in team.seen["C"]] == [1, 1]  # fresh in each round
    sources = [e.source for e in of(result, ev.FanOutStarted)]
    assert sources == ["User", "User", "User", "User"]


async def test_ping_pong_counts_each_round_afresh() -> None:
    """One Hub -> Worker call and return per round is no loop: ping_pong(2) lets a second
    round repeat the first."""

    def hub(value: Any, context: Any) -> Any:
        return Action.final(value) if value == "looked up" else Action.invoke("Worker", "look")

    result = await run(
        "q",
        {
            "nodes": ["User", "Hub", "Worker"],
            "edges": ["User -> Hub", "Hub <-> Worker", "Hub -> User"],
            "rules": ["ping_pong(2)"],
        },
        [fn("Hub", hub), fn("Worker", lambda value, context: "looked up")],
        allow_follow_ups=True,
        communication_config=CommunicationConfig(channel=ScriptedUser(["again", "again", ""])),
    )

    assert result.success, result.error
    assert len(result.follow_ups) == 2


async def test_no_pooled_agent_is_held_while_a_follow_up_is_awaited() -> None:
    pool = AgentPool(
        lambda: llm("Tutor", FunctionModel(lambda m, i: final("hi"))), size=1, register=False
    )
    channel = ProgrammaticChannel()
    running = asyncio.create_task(
        run(
            "explain",
            SOLO,
            [pool],
            allow_follow_ups=True,
            communication_config=CommunicationConfig(channel=channel),
        )
    )
    offer = await asyncio.wait_for(channel.next_question(), 30)

    assert pool.available == 1  # another session may use it while the user thinks
    channel.answer(offer.id, "more?")
    second = await asyncio.wait_for(channel.next_question(), 30)
    assert pool.available == 1  # leased again for round 2, and given back again
    channel.answer(second.id, "")
    result = await running
    assert result.success, result.error
    assert len(result.follow_ups) == 1


# ---- resuming with no channel ----------------------------------------------------------------


def instance_of(storage: FileStorageBackend, manager: CommunicationManager) -> OrchestraInstance:
    model = FunctionModel(lambda messages, info: final(f"answer {rounds_seen(messages)}"))
    return OrchestraInstance(
        SOLO,
        agent_registry=AgentRegistry([llm("Tutor", model)]),
        initial_config=quiet(),
        communication_manager=manager,
        state_manager=StateManager(storage, auto_save_interval=0),
    )


async def paused_while_waiting(storage: FileStorageBackend) -> None:
    """A conversation of session "talk" paused while its follow-up f1 is offered."""
    channel = ProgrammaticChannel()
    instance = instance_of(storage, CommunicationManager(channel))
    running = asyncio.create_task(
        instance.execute("explain", {"session_id": "talk"}, allow_follow_ups=True)
    )
    await asyncio.wait_for(channel.next_question(), 30)
    assert await instance.pause_session("talk")
    assert (await running).metadata["paused"] is True


async def test_a_resume_with_no_channel_does_not_offer_follow_ups(tmp_path: Path) -> None:
    storage = FileStorageBackend(str(tmp_path))
    await paused_while_waiting(storage)
    instance = instance_of(storage, CommunicationManager())  # given: no channel, no terminal

    with pytest.warns(UserWarning, match="session 'talk': follow-ups are not offered"):
        result = await instance.resume_session("talk")

    assert result.success, result.error
    assert result.final_response == "answer 1"
    assert result.metadata["follow_ups"] == NO_CHANNEL
    assert "follow_up_error" not in result.metadata
    assert await instance.get_result("talk") == result  # the log says the same


# ---- the first round -------------------------------------------------------------------------


async def test_the_first_round_names_the_task_without_follow_ups() -> None:
    result = await run("explain", SOLO, [fn("Tutor", lambda value, context: "because")])

    assert result.get_conversation() == [{"round": 1, "question": "explain", "response": "because"}]
    assert result.metadata["first_round"]["task"] == "explain"


# ---- timeouts, checked alike ------------------------------------------------------------------


BAD_SECONDS = [10**400, float("inf"), float("nan"), 0, -1, "20", True]


@pytest.mark.parametrize("value", BAD_SECONDS, ids=["huge", "inf", "nan", "0", "-1", "str", "bool"])
async def test_a_follow_up_timeout_that_is_no_finite_number_of_seconds_is_refused(
    value: Any,
) -> None:
    with pytest.raises(ConfigurationError, match="follow_up_timeout must be a positive, finite"):
        await Orchestra.run("x", SOLO, allow_follow_ups=True, follow_up_timeout=value)


@pytest.mark.parametrize("value", [10**400, float("inf"), 0], ids=["huge", "inf", "0"])
def test_channel_timeouts_are_checked_like_follow_up_timeouts(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="TerminalChannel user_timeout must be a posit"):
        TerminalChannel(0, user_timeout=value)
    with pytest.raises(ConfigurationError, match="CommunicationManager user_timeout must be a"):
        CommunicationManager(ProgrammaticChannel(), user_timeout=value)


async def test_code_asking_with_a_huge_timeout_fails_its_branch_naming_it() -> None:
    result = await run(
        "task",
        {"nodes": ["User", "Asker"], "edges": ["User -> Asker", "Asker -> User"]},
        [fn("Asker", lambda value, context: Action.ask_user("ok?", timeout=10**400))],
        communication_config=CommunicationConfig(channel=ScriptedUser(["yes"])),
    )

    assert not result.success
    assert result.metadata["error_type"] == "ActionError"
    assert "ask_user's timeout must be a positive, finite number of seconds" in str(result.error)
    assert "OverflowError" not in str(result.error)


# ---- the terminal as the default channel -----------------------------------------------------


class Closed:
    """A standard stream that has been closed."""

    closed = True

    def isatty(self) -> bool:
        raise ValueError("I/O operation on closed file")


class Tty:
    """A standard stream open on a terminal."""

    closed = False

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return 0


def standard_streams(monkeypatch: pytest.MonkeyPatch, broken: Sequence[str], state: Any) -> None:
    for name in ("stdin", "stderr", "stdout"):
        monkeypatch.setattr(sys, name, state if name in broken else Tty())


@pytest.mark.parametrize("broken", [("stdin",), ("stderr", "stdout")], ids=["input", "screen"])
@pytest.mark.parametrize("state", [None, Closed()], ids=["none", "closed"])
def test_a_missing_or_closed_standard_stream_is_no_terminal(
    monkeypatch: pytest.MonkeyPatch, broken: Sequence[str], state: Any
) -> None:
    standard_streams(monkeypatch, broken, state)

    assert terminal.user_channel() is None


def test_standard_streams_on_a_terminal_are_the_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    standard_streams(monkeypatch, (), None)

    assert isinstance(terminal.user_channel(), TerminalChannel)


class Keyboard:
    """Stands for the terminal in a test: it must never be asked."""

    async def ask(self, question: Question) -> Any:
        raise AssertionError(f"the terminal was asked {question.text!r}")


async def test_terminal_false_means_no_user_even_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(entry_points, "user_channel", Keyboard)

    with pytest.warns(UserWarning, match="no user channel"):
        result = await run(
            "explain",
            SOLO,
            [fn("Tutor", lambda value, context: "because")],
            allow_follow_ups=True,
            communication_config=CommunicationConfig(terminal=False),
        )

    assert result.success, result.error
    assert result.metadata["follow_ups"] == NO_CHANNEL
