"""The inspector's read side (docs/ui.md, "A session's page: what it shows"): a stored
session's log folded into runs, branches, steps, questions, checkpoints and its graph, from
logs real runs wrote, without any of the workflow's code; and the log fields that make it
possible (``StepBegin.agent``, ``parent``, ``fan_out``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT, ask, final, fn, invoke, llm, quiet

from orchestra import (
    AgentRegistry,
    FunctionModel,
    ProgrammaticChannel,
    ScriptedModel,
    ScriptedUser,
)
from orchestra.communication import CommunicationManager
from orchestra.coordination.config import ErrorHandlingConfig
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.coordination.wiring import FINGERPRINT
from orchestra.errors import SessionCorruptedError, SessionNotFoundError
from orchestra.models.base import ModelReply, ToolCall, Usage
from orchestra.ui.catalog import Catalog
from orchestra.ui.graph import session_graph

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"
KEY = "sk-proj-" + "a1B2c3D4" * 6
USAGE = Usage(prompt_tokens=10, completion_tokens=5, cost_usd=0.002)


class Store:
    """A SQLite store real runs write to, and the inspector's catalog over it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.backend = SQLiteStorageBackend(path)
        self.sessions = StateManager(self.backend, auto_save_interval=0)
        self.catalog = Catalog(path)

    def instance(self, topology: Any, *agents: Any, channel: Any = None) -> OrchestraInstance:
        talk = CommunicationManager(channel) if channel is not None else None
        return OrchestraInstance(
            topology, AgentRegistry(list(agents)), quiet(), talk, self.sessions
        )

    async def view(self, session: str, host: Any = None) -> dict[str, Any]:
        return dict(await self.catalog.view(session, host))

    async def records(self, session: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in await self.backend.read(session)]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    found = Store(tmp_path / "sessions.db")
    try:
        yield found
    finally:
        found.catalog.close()
        found.backend.close()


def scripted(*actions: dict[str, Any]) -> ScriptedModel:
    return ScriptedModel([ModelReply(action=action, usage=USAGE) for action in actions])


FAN = {
    "nodes": ["S", "A", "B", "C"],
    "edges": ["S -> A", "S -> B", "A -> C", "B -> C"],
    "rules": ["parallel(A, B)"],
}


async def fanned_out(store: Store) -> None:
    agents = [
        llm("S", scripted(invoke(("A", "left"), ("B", "right")))),
        llm("A", scripted(invoke(("C", "a")))),
        llm("B", scripted(invoke(("C", "b")))),
        llm("C", scripted(final(f"both {HOSTILE} {KEY}"))),
    ]
    result = await asyncio.wait_for(
        store.instance(FAN, *agents).execute("split it", {"session_id": "fan"}), WAIT
    )
    assert result.success, result.error


async def test_a_fan_out_and_its_convergence_fold_into_branches_and_steps(store: Store) -> None:
    await fanned_out(store)
    view = await store.view("fan")
    assert view["version"] == len(await store.backend.read("fan"))
    assert [(r["name"], r["task"], r["state"]) for r in view["runs"]] == [
        ("r1", "split it", "finished")
    ]
    branches = {b["id"]: b for b in view["branches"]}
    assert branches["b0"]["parent"] is None and branches["b0"]["agent"] == "S"
    forked = [b for b in branches.values() if b["parent"] == "b0"]
    assert sorted(b["agent"] for b in forked) == ["A", "B"]
    assert len({b["fan_out"] for b in forked}) == 1 and forked[0]["fan_out"]
    assert all(b["state"] == "done" for b in branches.values()), branches
    steps = view["steps"]
    assert view["steps_total"] == len(steps) == 4
    assert steps[0]["agent"] == "S" and steps[-1]["agent"] == "C"
    first = steps[0]
    assert (first["action"], first["targets"], first["tokens"], first["cost_usd"]) == (
        "parallel_invoke",
        ["A", "B"],
        15,
        0.002,
    )
    assert steps[-1]["action"] == "final_response"
    assert all(s["duration"] is not None and not s["abandoned"] for s in steps)
    assert view["active"] == [] and view["questions"] == []
    graph = view["graph"]
    assert graph["nodes"] == ["A", "B", "C", "S"] and graph["entries"] == ["S"]
    assert graph["exits"] == ["C"]
    ids = graph["node_ids"]
    assert f"{ids['S']} --> {ids['A']}" in graph["mermaid"]
    assert view["summary"]["status"] == "finished" and view["summary"]["tokens"] == 60
    detail = await store.catalog.step("fan", steps[-1]["position"])
    assert detail["action"]["kind"] == "final_response"
    assert HOSTILE in detail["action"]["content"]  # text, shown as text by the page
    assert KEY not in json.dumps(detail) and KEY not in json.dumps(view)
    assert detail["tokens"] == {"prompt": 10, "completion": 5, "total": 15}


async def test_the_runner_records_whose_step_and_where_a_branch_came_from(store: Store) -> None:
    """Each step's begin names its agent; a forked branch's first names its parent and
    fan-out (and only its first); absent fields are left out of the line, as before."""
    await fanned_out(store)
    begins = [r for r in await store.records("fan") if r["t"] == inp.StepBegin.KIND]
    assert begins[0]["agent"] == "S"
    root = [r for r in begins if r["branch_id"] == "b0"]
    assert all("parent" not in r and "fan_out" not in r for r in root)
    children = [r for r in begins if r.get("parent") == "b0"]
    assert sorted(r["agent"] for r in children) == ["A", "B"]
    assert all(r["fan_out"] == children[0]["fan_out"] for r in children)


async def test_a_log_written_before_the_fields_loads_and_folds(store: Store) -> None:
    """A log without ``agent``/``parent``/``fan_out`` (as older logs are) loads: its steps have
    no agent and its branches no parent."""
    writer, _ = await store.sessions.open("old")
    start = inp.RunStart(
        at=1.0,
        task="old",
        context={},
        max_steps=5,
        config=quiet(),
        error_config=ErrorHandlingConfig(),
        topology=("A", "B", "A -> B"),  # a format-1 fingerprint
    )
    for record in (start, inp.StepBegin(at=2.0, branch_id="b0")):
        writer.record(record)
    await writer.flush()
    await writer.close()
    [begin] = [r for r in await store.records("old") if r["t"] == "begin"]
    assert set(begin) == {"s", "t", "at", "branch_id"}
    view = await store.view("old")
    assert [(s["agent"], s["branch"], s["action"]) for s in view["steps"]] == [(None, "b0", None)]
    assert view["branches"][0]["parent"] is None
    assert view["graph"]["nodes"] == ["A", "B"]
    assert "n0 --> n1" in view["graph"]["mermaid"]


async def test_a_tool_call_and_a_question_waiting_show_live(store: Store) -> None:
    """While the run waits for the user: its question (with the id its channel gave it), its
    agent active, the summary waiting; the step's detail holds the tool's result."""
    channel = ProgrammaticChannel()

    def lookup(q: str) -> str:
        return f"found {q} {KEY}"

    first = ModelReply(
        action=ask(f"which one? {HOSTILE}"),
        tool_calls=(ToolCall("lookup", {"q": "x"}, "c1"),),
        usage=USAGE,
    )
    agent = llm("A", ScriptedModel([first, final("done")]), tools=[lookup])
    instance = store.instance(
        {"nodes": ["A"], "edges": ["A -> User"]},
        agent,
        channel=channel,
    )
    running = asyncio.create_task(instance.execute("task", {"session_id": "asks"}))
    try:
        question = await asyncio.wait_for(channel.next_question(), WAIT)
        view = await store.view("asks")
        assert view["summary"]["status"] == "waiting for the user"
        [asked] = view["questions"]
        assert (asked["id"], asked["branch"], asked["agent"], asked["kind"]) == (
            question.id,
            "b0",
            "A",
            "agent",
        )
        assert asked["text"] == f"which one? {HOSTILE}" and not asked["answerable"]
        assert view["active"] == ["A"]
        assert view["branches"][0]["state"] == "waiting for the user"
        [step] = view["steps"]
        assert step["action"] == "ask_user"
        detail = await store.catalog.step("asks", step["position"])
        [result] = detail["tool_results"]
        assert (result["call_id"], result["name"], result["ok"]) == ("c1", "lookup", True)
        assert result["result"].startswith("found x ") and KEY not in result["result"]
        assert detail["action"]["content"] == f"which one? {HOSTILE}"
        channel.answer(question.id, "the first")
        assert (await asyncio.wait_for(running, WAIT)).success
    finally:
        running.cancel()
    view = await store.view("asks")
    assert view["questions"] == [] and view["active"] == []
    assert [s["action"] for s in view["steps"]] == ["ask_user", "final_response"]


async def test_a_follow_up_awaited_is_a_question_and_the_session_waits(store: Store) -> None:
    """The known gap: a run waiting for a follow-up listed as running."""
    channel = ProgrammaticChannel()
    instance = store.instance(
        {"nodes": ["A"], "edges": []},
        llm("A", scripted(final("first answer"))),
        channel=channel,
    )
    running = asyncio.create_task(
        instance.execute("chat", {"session_id": "chat"}, allow_follow_ups=True)
    )
    try:
        offer = await asyncio.wait_for(channel.next_question(), WAIT)
        view = await store.view("chat")
        [question] = view["questions"]
        assert (question["id"], question["kind"]) == (offer.id, "follow_up")
        assert view["summary"]["status"] == "waiting for the user"
        [row] = await store.catalog.sessions(None)
        assert row["status"] == "waiting for the user"
        channel.answer(offer.id, "")
        assert (await asyncio.wait_for(running, WAIT)).success
    finally:
        running.cancel()
    assert (await store.view("chat"))["questions"] == []


async def test_a_plain_reply_is_the_final_response_the_engine_took_it_as(store: Store) -> None:
    """A model's reply with no action is taken as its final response (the engine's own rule):
    so it is shown, its text the content; a code step that returned a value has no action."""
    chain = {"nodes": ["C", "A"], "edges": ["C -> A"]}
    agents = [
        fn("C", lambda value, context: "routed on"),
        llm("A", FunctionModel(lambda messages, info: f"plain {HOSTILE}")),
    ]
    result = await store.instance(chain, *agents).execute("say it", {"session_id": "plain"})
    assert result.success, result.error
    view = await store.view("plain")
    code, model = view["steps"]
    assert (code["agent"], code["action"]) == ("C", None)
    assert (model["agent"], model["action"]) == ("A", "final_response")
    assert (await store.catalog.step("plain", code["position"]))["action"] is None
    action = (await store.catalog.step("plain", model["position"]))["action"]
    assert (action["kind"], action["content"]) == ("final_response", f"plain {HOSTILE}")


async def test_a_plain_reply_the_engine_steered_is_no_final_response(store: Store) -> None:
    """A plain reply where its agent may not finish (no exit, not called) is steered, asked
    again: it was shown as a final response and its branch as done, though the run went on
    (and here failed, the agent never answering otherwise)."""
    chain = {"nodes": ["A", "B"], "edges": ["A -> B"]}
    agents = [
        llm("A", FunctionModel(lambda messages, info: "just words")),
        llm("B", FunctionModel(lambda messages, info: "unused")),
    ]
    result = await store.instance(chain, *agents).execute("say it", {"session_id": "steered"})
    assert not result.success
    view = await store.view("steered")
    assert view["steps"] and all(s["action"] is None for s in view["steps"])
    assert all("may not finish here" in (s["error"] or "") for s in view["steps"])
    assert view["branches"][0]["state"] != "done"
    detail = await store.catalog.step("steered", view["steps"][0]["position"])
    assert detail["action"] is None


async def test_the_detail_names_a_fan_out_and_a_tool_only_turn_as_the_view_does(
    store: Store,
) -> None:
    """A fan-out is ``parallel_invoke`` in the step's detail as in its view entry (one naming);
    an assistant turn made of tool calls alone has empty content, not the JSON word null."""
    await fanned_out(store)
    [first, *_] = (await store.view("fan"))["steps"]
    fan = (await store.catalog.step("fan", first["position"]))["action"]
    assert (fan["kind"], fan["targets"]) == ("parallel_invoke", ["A", "B"])

    def lookup(q: str) -> str:
        return f"found {q}"

    calls = ModelReply(tool_calls=(ToolCall("lookup", {"q": "x"}, "c1"),), usage=USAGE)
    agent = llm(
        "A", ScriptedModel([calls, ModelReply(action=final("done"), usage=USAGE)]), tools=[lookup]
    )
    solo = store.instance({"nodes": ["A"], "edges": []}, agent)
    assert (await solo.execute("look", {"session_id": "tools"})).success
    [called, *_] = (await store.view("tools"))["steps"]
    detail = await store.catalog.step("tools", called["position"])
    contents = [m["content"] for m in detail["messages"] if m["role"] == "assistant"]
    assert contents == [""], detail["messages"]  # no text: the page says it called tools


async def test_a_failed_step_names_its_error_redacted(store: Store) -> None:
    def broken(value: Any, context: Any) -> Any:
        raise RuntimeError(f"kaput {KEY} {HOSTILE}")

    result = await store.instance({"nodes": ["A"], "edges": []}, fn("A", broken)).execute(
        "fail", {"session_id": "bad"}
    )
    assert not result.success
    view = await store.view("bad")
    [step] = view["steps"]
    assert "kaput" in step["error"] and HOSTILE in step["error"] and KEY not in step["error"]
    assert view["branches"][0]["state"] == "failed"
    assert view["runs"][0]["state"] == "failed"
    detail = await store.catalog.step("bad", step["position"])
    assert detail["error"] == step["error"] and detail["action"] is None


async def test_a_restore_marks_what_it_abandoned(store: Store) -> None:
    """A checkpoint after one run, a second run, a restore to the checkpoint: the second run
    and its steps are shown, abandoned; the checkpoint is not."""
    solo = {"nodes": ["A"], "edges": []}
    first = store.instance(solo, llm("A", scripted(final("one"))))
    await first.execute("first", {"session_id": "forked"})
    checkpoint = await first.create_checkpoint("forked", "after one")
    second = store.instance(solo, llm("A", scripted(final("two"))))
    await second.execute("second", {"session_id": "forked"})
    assert await second.restore_checkpoint(checkpoint)
    view = await store.view("forked")
    assert [(r["task"], r["state"]) for r in view["runs"]] == [
        ("first", "finished"),
        ("second", "abandoned"),
    ]
    assert [s["abandoned"] for s in view["steps"]] == [False, True]
    [taken] = view["checkpoints"]
    assert (taken["id"], taken["name"], taken["abandoned"]) == (checkpoint, "after one", False)
    [restore] = view["restores"]
    assert (restore["checkpoint"], restore["to"]) == (checkpoint, taken["position"])
    assert view["summary"]["status"] == "finished"


class FakeHost:
    """A stand-in for the inspector's RunHost: the protocol the read side uses."""

    def __init__(self) -> None:
        self.version = 0
        self.hosted: set[str] = set()
        self.asked: dict[str, list[dict[str, Any]]] = {}

    def hosts(self, session_id: str) -> bool:
        return session_id in self.hosted

    def questions(self, session_id: str) -> list[dict[str, Any]]:
        return self.asked.get(session_id, [])


async def test_a_hosted_question_is_answerable_and_the_list_says_hosted(store: Store) -> None:
    user = ScriptedUser(["Ada"])
    instance = store.instance(
        {"nodes": ["A"], "edges": ["A -> User"]},
        llm("A", scripted(ask("name?"), final("hi"))),
        channel=user,
    )
    await instance.execute("greet", {"session_id": "greet"})
    host = FakeHost()
    host.hosted.add("greet")
    host.asked["greet"] = [
        {
            "id": "greet:r1:budget-q9",
            "branch": "b0",
            "agent": "A",
            "text": "raise?",
            "kind": "budget",
        }
    ]
    [row] = await store.catalog.sessions(host)
    assert row["hosted"] is True and row["version"] == len(await store.backend.read("greet"))
    [question] = (await store.view("greet", host))["questions"]
    assert (question["id"], question["kind"], question["answerable"]) == (
        "greet:r1:budget-q9",
        "budget",
        True,
    )


async def test_a_damaged_record_makes_the_view_an_error_naming_it(store: Store) -> None:
    await fanned_out(store)
    lines = await store.backend.read("fan")
    step_at = next(i for i, line in enumerate(lines, 1) if json.loads(line)["t"] == "step")
    damaged = json.loads(lines[step_at - 1])
    damaged["outcome"] = {"action": 7}
    await store.backend.append(
        "copy", [*lines[: step_at - 1], json.dumps(damaged)], durable=True, after=0
    )
    await store.backend.release("copy")
    with pytest.raises(SessionCorruptedError, match=rf"session 'copy': record {step_at} \(step\)"):
        await store.view("copy")
    with pytest.raises(SessionNotFoundError, match="'nowhere'"):
        await store.view("nowhere")
    rows = {row["id"]: row for row in await store.catalog.sessions(None)}
    assert rows["copy"]["status"] == "damaged" and rows["fan"]["status"] == "finished"


async def test_a_session_is_read_again_only_when_its_log_grew(store: Store) -> None:
    await fanned_out(store)
    await store.catalog.sessions(None)
    read = store.catalog._read["fan"]
    await store.catalog.sessions(None)
    assert store.catalog._read["fan"] is read
    writer, _ = await store.sessions.open("fan")
    writer.record(inp.PauseRequest(at=9.0, reason="look"))
    await writer.flush()
    await writer.close()
    [row] = await store.catalog.sessions(None)
    assert store.catalog._read["fan"] is not read and row["version"] == read.length + 1


def test_node_names_cannot_write_mermaid_syntax() -> None:
    evil = 'X"] --> Y[["pwn'
    graph = session_graph(
        (
            FINGERPRINT,
            f"edges {evil} -> B",
            "entries B",
            f"exit {evil}",
            f"node {evil}",
            "node B",
            "node click B call alert()",
            f"condition {evil} -> B 'a|b' == \"x\"",
        )
    )
    assert graph["node_ids"] == {evil: "n0", "B": "n1", "click B call alert()": "n2"}
    lines = graph["mermaid"].splitlines()
    assert lines[1] == '    n0(["X#quot;] --#gt; Y[[#quot;pwn"])'
    assert lines[3] == '    n2["click B call alert()"]'
    assert lines[4].startswith('    n0 -->|"') and lines[4].endswith('"| n1')
    assert "#124;" in lines[4] and "#quot;x#quot;" in lines[4]
    assert graph["entries"] == ["B"] and graph["exits"] == [evil]


def test_a_stored_node_name_or_condition_cannot_carry_a_mermaid_directive() -> None:
    """A stored fingerprint is data: a directive in it would reconfigure the page's Mermaid."""
    evil = "B%%{init: {'theme':'dark','themeCSS':'.node{display:none}'}}%%"
    graph = session_graph(
        (
            FINGERPRINT,
            f"edges A -> {evil}",
            "entries A",
            "node A",
            f"node {evil}",
            f"condition A -> {evil} {evil}",
        )
    )
    assert "%" not in graph["mermaid"] and "{init" not in graph["mermaid"]
    assert graph["node_ids"][evil] == "n1"
