"""Questions to the user in whole runs: a question whose branch is cancelled is withdrawn from
the channel, concurrent runs sharing a channel never share a question id, a channel that
raises fails only the asking branch, and ask_user after tool calls in the same reply is asked.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from functools import partial
from typing import Any

import helpers
import pytest
from helpers import ask, final, fn, invoke, llm, quiet, statuses

from orchestra import (
    CommunicationConfig,
    OrchestraResult,
    ProgrammaticChannel,
    ScriptedModel,
    ScriptedUser,
    Topology,
)
from orchestra.communication.channels import Question
from orchestra.models.base import ModelReply, ToolCall

WAIT = 3.0  # every run here takes well under a second; a hang fails after WAIT
run = partial(helpers.run, wait=WAIT)


async def run_asker_beside(
    sibling: str, work: Callable[[Any, Any], Any], channel: Any, hub: ScriptedModel | None = None
) -> OrchestraResult:
    """Hub calls Asker, who asks the user through ``channel``, and ``sibling`` (code doing
    ``work``) in parallel; under the 'any' policy the sibling alone can carry the run. ``hub``
    (to inspect its calls) must script the same two replies as the default."""
    if hub is None:
        hub = ScriptedModel([invoke(("Asker", "q"), (sibling, "work")), final("hub done")])
    topology = Topology(
        nodes=["Hub", "Asker", sibling],
        edges=["Hub <-> Asker", f"Hub <-> {sibling}", "Asker -> User"],
        rules=[f"parallel(Asker, {sibling})"],
        entry_point="Hub",
        exit_points=["Hub"],
    )
    return await run(
        "task",
        topology,
        [llm("Hub", hub), llm("Asker", ScriptedModel([ask("which one?")])), fn(sibling, work)],
        config=quiet(convergence_policy="any"),
        communication_config=CommunicationConfig(channel=channel),
    )


async def test_a_cancelled_question_is_withdrawn_from_the_channel() -> None:
    """'any' cancels the branch waiting for the user; its question must leave the queue as
    well as channel.pending, or the next reader of next_question() gets a question that can
    no longer be answered (answer() raises)."""
    channel = ProgrammaticChannel()
    asked = asyncio.Event()

    class Recording(ProgrammaticChannel):
        async def ask(self, question: Question) -> Any:
            asked.set()
            return await channel.ask(question)

    async def fast(value: Any, ctx: Any) -> Any:
        await asyncio.wait_for(asked.wait(), WAIT)
        return "fast"

    result = await run_asker_beside("Fast", fast, Recording())
    assert result.success, result.error
    assert statuses(result)["b1"] == "cancelled"
    assert channel.pending == []
    with pytest.raises(TimeoutError):
        stale = await asyncio.wait_for(channel.next_question(), 0.05)
        pytest.fail(f"a cancelled question is still queued: {stale}")


async def test_questions_of_concurrent_runs_sharing_a_channel_have_distinct_ids() -> None:
    """Two concurrent runs of one session share a channel. Their questions must get distinct
    ids (both used to be "s:q1": the second overwrote the first's future, and the first run
    could never be answered)."""
    channel = ProgrammaticChannel()
    topology = {"nodes": ["A"], "edges": ["A -> User"]}

    def one_run(answer_prefix: str) -> Any:
        model = ScriptedModel([ask("name?"), final(f"{answer_prefix} done")])
        return run(
            "task",
            topology,
            [llm("A", model)],
            context={"session_id": "s"},
            communication_config=CommunicationConfig(channel=channel),
        )

    async def answer_two() -> list[str]:
        ids = []
        for _ in range(2):
            question = await channel.next_question()
            ids.append(question.id)
            channel.answer(question.id, "Ada")
        return ids

    ids, first, second = await asyncio.wait_for(
        asyncio.gather(answer_two(), one_run("first"), one_run("second")), WAIT
    )
    assert len(set(ids)) == 2, ids
    assert all(i.startswith("s:") and i.endswith(":q1") for i in ids), ids
    assert first.success and second.success
    assert (first.final_response, second.final_response) == ("first done", "second done")
    assert channel.pending == []


async def test_a_channel_raising_fails_only_the_asking_branch() -> None:
    """A channel that raises something other than an OrchestraError (a UI's ConnectionError)
    must not escape _ask_user as an InternalError that aborts the whole run: the branch that
    asked fails with a UserInputError naming the channel's error, Hub hears of it with its
    sibling's answer, and 'any' lets the sibling carry the run."""

    class Broken:
        async def ask(self, question: Question) -> Any:
            raise ConnectionError("UI went away")

    async def slow(value: Any, ctx: Any) -> Any:
        await asyncio.sleep(0.05)
        return "slow but fine"

    hub = ScriptedModel([invoke(("Asker", "q"), ("Slow", "work")), final("hub done")])
    result = await run_asker_beside("Slow", slow, Broken(), hub)
    assert result.metadata.get("error_type") != "InternalError", result.error
    assert result.success, result.error
    assert result.final_response == "hub done"
    assert statuses(result) == {"b0": "completed", "b1": "failed", "b2": "completed"}
    asker = result.get_branch_by_id("b1")
    assert asker is not None
    assert asker.error_type == "UserInputError"
    assert asker.error == (
        "the user channel failed on the question of agent 'Asker' ('which one?'): "
        "ConnectionError: UI went away"
    )
    heading, _, body = hub.calls[1].messages[-1].content.partition("\n")
    assert heading == "[Results of the parallel branches you started]"
    assert [(item["agent"], item["status"]) for item in json.loads(body)] == [
        ("Asker", "failed"),
        ("Slow", "completed"),
    ]


async def test_tools_then_ask_user_asks_the_user() -> None:
    """A reply may carry tool calls and an action; the tools run first, then the action. When
    the action is ask_user, the user must be asked after the tools (tools_completed put the
    branch in WAITING_USER but the runner only asked right after a step, so nobody ever
    asked and the run hung)."""
    looked_up: list[str] = []

    def lookup(q: str) -> str:
        looked_up.append(q)
        return f"found {q}"

    first = ModelReply(action=ask("which one?"), tool_calls=(ToolCall("lookup", {"q": "x"}, "c1"),))
    model = ScriptedModel([first, final("done")])
    agent = llm("A", model, tools=[lookup])
    user = ScriptedUser(["the first"])
    result = await run(
        "task",
        {"nodes": ["A"], "edges": ["A -> User"]},
        [agent],
        communication_config=CommunicationConfig(channel=user),
    )
    assert result.success, result.error
    assert result.final_response == "done"
    assert looked_up == ["x"]  # the tool ran, once, before the question
    assert [q.text for q in user.questions] == ["which one?"]
    assert len(model.calls) == 2


async def test_a_channel_answered_by_id_alone_keeps_only_the_questions_still_waiting() -> None:
    """A ProgrammaticChannel whose questions are answered by id (a web page, a service) and
    never taken out with next_question once kept every question it was asked: a long-lived
    inspector's channel grew by one entry per question for ever. A question still waiting is
    handed out as before, however many answered ones came and went meanwhile."""
    channel = ProgrammaticChannel()
    waiting = asyncio.ensure_future(channel.ask(Question("long", "run", "b0", "A", "still?")))
    await asyncio.sleep(0)  # it is asked
    for number in range(1000):
        asking = asyncio.ensure_future(channel.ask(Question(f"q{number}", "run", "b1", "A", "?")))
        await asyncio.sleep(0)
        channel.answer(f"q{number}", "yes")
        assert await asking == "yes"
    assert len(channel._questions) < 50
    assert (await channel.next_question()).id == "long"
    channel.answer("long", "done")
    assert await waiting == "done"
