"""Follow-ups (``allow_follow_ups``): a run that goes on as a conversation, round after round.

After the root's final response the user channel is offered a follow-up; a blank answer or the
timeout ends the conversation, anything else starts a round at the entry agent(s), in the
conversations they already have. Each round is durable: a pause or a crash while a follow-up is
awaited resumes waiting for the same question (tests/test_follow_up_sessions.py), and a rebuilt
result equals the live one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from follow_up_kit import SOLO, TWO_ENTRIES, Tutor, channel_of
from helpers import final, fn, llm, of, quiet, run

from orchestra import Action, FunctionModel
from orchestra.communication import (
    ProgrammaticChannel,
    Question,
    ScriptedUser,
)
from orchestra.coordination.config import Budget, CommunicationConfig
from orchestra.coordination.engine import events as ev
from orchestra.coordination.monitoring.view import BranchStatus as ViewStatus
from orchestra.coordination.monitoring.view import RunState, RunView
from orchestra.coordination.results import OrchestraResult
from orchestra.models import Message, StepInfo


async def test_two_follow_ups_go_on_in_the_agents_conversation() -> None:
    tutor = Tutor()
    user = ScriptedUser(["why?", "and then?", "  "])

    result = await run(
        "explain",
        SOLO,
        [llm("Tutor", FunctionModel(tutor))],
        allow_follow_ups=True,
        communication_config=channel_of(user),
    )

    assert result.success, result.error
    assert result.final_response == "answer 3"
    assert [(item.question, item.final_response, item.steps) for item in result.follow_ups] == [
        ("why?", "answer 2", 1),
        ("and then?", "answer 3", 1),
    ]
    assert all(item.success for item in result.follow_ups)
    assert result.get_conversation() == [
        {"round": 1, "question": "explain", "response": "answer 1"},
        {"round": 2, "question": "why?", "response": "answer 2"},
        {"round": 3, "question": "and then?", "response": "answer 3"},
    ]
    # the third round's input shows everything said before, as one conversation
    third = tutor.seen[2]
    assert third[1:] == [
        "[Task]\nexplain",
        json.dumps({"next_action": "final_response", "action_input": {"response": "answer 1"}}),
        "[Follow-up from the user]\nwhy?",
        json.dumps({"next_action": "final_response", "action_input": {"response": "answer 2"}}),
        "[Follow-up from the user]\nand then?",
    ]
    offers = [(q.id.rsplit(":", 1)[-1], q.kind, q.response) for q in user.questions]
    assert offers == [
        ("f1", "follow_up", "answer 1"),
        ("f2", "follow_up", "answer 2"),
        ("f3", "follow_up", "answer 3"),
    ]
    rounds = [(e.round, e.response, e.total_steps) for e in of(result, ev.RoundCompleted)]
    assert rounds == [(1, "answer 1", 1), (2, "answer 2", 2), (3, "answer 3", 3)]
    assert [(e.round, e.question) for e in of(result, ev.RoundStarted)] == [
        (2, "why?"),
        (3, "and then?"),
    ]
    assert result.total_steps == 3
    assert OrchestraResult.from_json(result.to_json()) == result


@pytest.mark.parametrize("answer", [None, "", "\n \t"])
async def test_a_blank_answer_ends_the_conversation(answer: Any) -> None:
    user = ScriptedUser([answer])

    result = await run(
        "explain",
        SOLO,
        [llm("Tutor", FunctionModel(Tutor()))],
        allow_follow_ups=True,
        communication_config=channel_of(user),
    )

    assert result.success, result.error
    assert result.final_response == "answer 1"
    assert result.follow_ups == []
    assert len(user.questions) == 1


async def test_an_unanswered_offer_times_out_and_the_conversation_ends() -> None:
    """Nobody answers: the offer's own timeout ends the conversation, successfully (never the
    channel's on_user_timeout failure). The root's branch_timeout, shorter than the wait, does
    not run during it, and the wait is no working time: the run's and the root's durations
    are their spans less exactly the span from the offer to its end (read from the events'
    times, so no comparison with a real wait)."""
    channel = ProgrammaticChannel()

    result = await run(
        "explain",
        SOLO,
        [llm("Tutor", FunctionModel(Tutor()))],
        config=quiet(branch_timeout=0.1),
        allow_follow_ups=True,
        follow_up_timeout=0.3,
        communication_config=CommunicationConfig(
            channel=channel, user_timeout=0.01, on_user_timeout="fail"
        ),
    )

    assert result.success, result.error
    assert result.final_response == "answer 1"
    assert result.follow_ups == []
    (started,) = of(result, ev.RunStarted)
    (offered,) = of(result, ev.UserInputRequested)
    (ended,) = of(result, ev.UserInputReceived)
    (completed,) = of(result, ev.RunCompleted)
    (created,) = of(result, ev.BranchCreated)
    (finished,) = of(result, ev.BranchCompleted)
    wait = ended.at - offered.at
    assert wait > 0
    assert result.total_duration == pytest.approx(completed.at - started.at - wait, abs=1e-9)
    root = result.branch_results[0].duration
    assert root == pytest.approx(finished.at - created.at - wait, abs=1e-9)


async def test_the_runs_timeout_rule_counts_each_round_and_never_the_wait() -> None:
    """timeout(0.1) and an offer nobody answers for 0.3 s: the rule stops while the user is
    offered a follow-up, so the run ends as the conversation does, successfully."""
    result = await run(
        "explain",
        {**SOLO, "rules": ["timeout(0.1)"]},
        [llm("Tutor", FunctionModel(Tutor()))],
        allow_follow_ups=True,
        follow_up_timeout=0.3,
        communication_config=channel_of(ProgrammaticChannel()),
    )

    assert result.success, result.error
    assert result.final_response == "answer 1"


async def test_the_live_view_shows_the_wait_for_a_follow_up_and_the_new_round() -> None:
    result = await run(
        "markets?",
        TWO_ENTRIES,
        [llm("Tech", FunctionModel(Tutor())), llm("Finance", FunctionModel(Tutor()))],
        allow_follow_ups=True,
        communication_config=channel_of(ScriptedUser(["bonds?"])),
    )
    view = RunView(result.session_id or "")
    offered = next(n for n, e in enumerate(result.events) if isinstance(e, ev.UserInputRequested))
    for event in result.events[: offered + 1]:
        view(event)

    assert view.shown_state is RunState.WAITING_FOR_FOLLOW_UP
    assert view.running_since is None  # the wait is no working time
    for event in result.events[offered + 1 :]:
        if isinstance(event, ev.RoundStarted):
            assert view.shown_state is RunState.RUNNING
        view(event)

    assert view.shown_state is RunState.SUCCEEDED
    assert view.round == 2
    root = view.branches[view.root or ""]
    assert len(root.fan_outs) == 2  # each round's fan-out to the entries
    assert [view.branches[b].status for b in view.fan_outs[root.fan_outs[1]].children] == [
        ViewStatus.DONE,
        ViewStatus.DONE,
    ]


async def test_a_failure_in_a_follow_up_round_fails_the_run_and_keeps_the_rounds_before() -> None:
    def tutor(messages: Sequence[Message], info: StepInfo) -> Any:
        if "[Follow-up from the user]\nbreak it" in messages[-1].content:
            raise RuntimeError("the model fell over")
        return final("answer")

    result = await run(
        "explain",
        SOLO,
        [llm("Tutor", FunctionModel(tutor))],
        allow_follow_ups=True,
        communication_config=channel_of(ScriptedUser(["again", "break it"])),
    )

    assert not result.success
    assert "the model fell over" in (result.error or "")
    assert result.metadata["first_round"]["response"] == "answer"
    first, second = result.follow_ups
    assert (first.question, first.final_response, first.success) == ("again", "answer", True)
    assert (second.question, second.final_response, second.success) == ("break it", None, False)
    assert "the model fell over" in (second.error or "")
    assert [item["response"] for item in result.get_conversation()] == ["answer", "answer", None]


async def test_a_topology_with_several_entries_has_rounds_too() -> None:
    """The root waits at User for its entries' fan-out; each round fans out again, and each
    entry agent goes on in the conversation it had."""
    seen: dict[str, list[list[str]]] = {"Tech": [], "Finance": []}

    def analyst(messages: Sequence[Message], info: StepInfo) -> Any:
        seen[info.agent_name].append([message.content for message in messages])
        return final(f"{info.agent_name} {len(seen[info.agent_name])}")

    result = await run(
        "markets?",
        TWO_ENTRIES,
        [llm("Tech", FunctionModel(analyst)), llm("Finance", FunctionModel(analyst))],
        allow_follow_ups=True,
        communication_config=channel_of(ScriptedUser(["and bonds?"])),
    )

    assert result.success, result.error
    responses = [item["response"] for item in result.final_response]
    assert responses == ["Tech 2", "Finance 2"]
    assert [item["response"] for item in result.metadata["first_round"]["response"]] == [
        "Tech 1",
        "Finance 1",
    ]
    assert seen["Tech"][1][1:] == [
        "[Task]\nmarkets?",
        json.dumps({"next_action": "final_response", "action_input": {"response": "Tech 1"}}),
        "[Follow-up from the user]\nand bonds?",
    ]
    assert result.follow_ups[0].steps == 2


async def test_max_steps_bounds_each_round() -> None:
    """Two steps a round (a hand-over, then the answer), max_steps=2: every round fits, though
    the conversation takes six steps."""
    topology = {
        "nodes": ["User", "Planner", "Writer"],
        "edges": ["User -> Planner", "Planner -> Writer", "Writer -> User"],
    }
    result = await run(
        "plan",
        topology,
        [
            fn("Planner", lambda value, ctx: Action.invoke("Writer", value)),
            fn("Writer", lambda v, c: f"wrote {v}"),
        ],
        max_steps=2,
        allow_follow_ups=True,
        communication_config=channel_of(ScriptedUser(["more", "again"])),
    )

    assert result.success, result.error
    assert result.total_steps == 6
    assert result.final_response == "wrote again"


async def test_a_round_over_max_steps_fails_naming_the_round() -> None:
    topology = {
        "nodes": ["User", "Planner", "Writer"],
        "edges": ["User -> Planner", "Planner -> Writer", "Writer -> User"],
    }

    def planner(value: Any, ctx: Any) -> Any:
        return Action.invoke("Writer", value)

    def writer(value: Any, ctx: Any) -> Any:
        return Action.invoke("Writer", value) if value == "loop" else Action.final(f"wrote {value}")

    result = await run(
        "plan",
        {**topology, "edges": [*topology["edges"], "Writer -> Writer"]},
        [fn("Planner", planner), fn("Writer", writer)],
        max_steps=3,
        allow_follow_ups=True,
        communication_config=channel_of(ScriptedUser(["loop"])),
    )

    assert not result.success
    assert "round 2 of the conversation reached max_steps=3" in (result.error or "")
    assert result.metadata["first_round"]["response"] == "wrote plan"


async def test_a_run_budget_spans_every_round() -> None:
    """A run budget of two steps counts the conversation, not the round: the first two rounds
    take one step each, and the third is stopped before its first (the user does not raise
    the budget), failing the run."""
    tutor = Tutor()

    class User(ScriptedUser):
        async def ask(self, question: Question) -> Any:
            if question.kind == "follow_up":
                return await super().ask(question)
            return "no"  # the budget's question: not raised

    result = await run(
        "explain",
        SOLO,
        [llm("Tutor", FunctionModel(tutor))],
        config=quiet(budget=Budget(max_steps=2)),
        allow_follow_ups=True,
        communication_config=channel_of(User(["why?", "and then?"])),
    )

    assert not result.success
    assert result.metadata["error_type"] == "BudgetExceededError"
    assert len(tutor.seen) == 2
    assert [item.success for item in result.follow_ups] == [True, False]


async def test_no_channel_means_no_follow_ups_and_one_warning() -> None:
    with pytest.warns(UserWarning, match="no user channel") as warned:
        result = await run(
            "explain",
            SOLO,
            [llm("Tutor", FunctionModel(Tutor()))],
            allow_follow_ups=True,
            communication_config=CommunicationConfig(terminal=False),
        )

    assert len([w for w in warned if "follow-ups" in str(w.message)]) == 1
    assert result.success, result.error
    assert result.final_response == "answer 1"
    assert result.metadata["follow_ups"] == "not offered: the run has no user channel"
    assert of(result, ev.RoundCompleted) == []


async def test_a_channel_failing_on_the_offer_ends_the_conversation_successfully() -> None:
    class Broken:
        async def ask(self, question: Question) -> Any:
            raise ConnectionError("api_key=sk-live-123456789012345678901234 refused")

    result = await run(
        "explain",
        SOLO,
        [llm("Tutor", FunctionModel(Tutor()))],
        allow_follow_ups=True,
        communication_config=channel_of(Broken()),
    )

    assert result.success, result.error
    assert result.final_response == "answer 1"
    error = result.metadata["follow_up_error"]
    assert "ConnectionError" in error or "refused" in error
    assert "sk-live-123456789012345678901234" not in error


# ---- durable conversations ---------------------------------------------------------------------
