"""A session's stored form is data, never code, and what cannot be stored is refused early.

Logs written by the previous format still load and resume; a record or snapshot crafted to run
code when loaded is refused (or ignored) and never run; a value a run produces that has no
stored form fails the step that produced it, naming the agent and the type, before anything is
lost. On all four storage backends.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
import zstandard
from helpers import final, quiet
from storage_backends import Storage
from test_sessions import wait

from orchestra import (
    Agent,
    AgentRegistry,
    CommunicationConfig,
    FunctionAgent,
    Orchestra,
    ScriptedModel,
    ScriptedUser,
    tool,
)
from orchestra.communication.channels import CommunicationManager, ProgrammaticChannel
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import StateManager
from orchestra.coordination.state.snapshots import FORMAT, HEADER, MAX_BYTES
from orchestra.errors import (
    ConfigurationError,
    SessionCorruptedError,
    UserInputError,
)

DATA = Path(__file__).parent / "data"
ORCHESTRA = Path(__file__).parent.parent / "orchestra"


# ---- the previous format -----------------------------------------------------------------------


@tool
def lookup(topic: str) -> dict[str, Any]:
    """Look a topic up.

    Args:
        topic: what to look up
    """
    return {"topic": topic, "hits": 3}


def format_1_instance(storage: Storage, hub_replies: list[Any]) -> OrchestraInstance:
    """The workflow tests/data/format1-paused.jsonl was written by (a release that wrote format
    1): Hub looked something up, called Web and Papers in parallel, and was paused while
    Papers worked."""
    hub = Agent("Hub", ScriptedModel(hub_replies), tools=[lookup], register=False)
    web = FunctionAgent("Web", lambda request, context: ("web", request), register=False)
    papers = FunctionAgent("Papers", lambda r, c: f"papers on {r}", register=False)
    return OrchestraInstance(
        {
            "nodes": ["User", "Hub", "Web", "Papers"],
            "edges": ["User -> Hub", "Hub <-> Web", "Hub <-> Papers", "Hub -> User"],
            "rules": ["parallel(Web, Papers)"],
        },
        agent_registry=AgentRegistry([hub, web, papers]),
        initial_config=quiet(),
        communication_manager=CommunicationManager(ScriptedUser(["economics"])),
        state_manager=StateManager(storage, auto_save_interval=0),
    )


async def test_a_log_written_in_format_1_loads_and_resumes(storage: Storage) -> None:
    lines = (DATA / "format1-paused.jsonl").read_text().splitlines()
    await storage.append("v1", lines, durable=True, after=0)
    model_replies = [
        {"next_action": "ask_user", "action_input": {"question": "Which angle?"}},
        final("report on solar"),
    ]
    orchestra = format_1_instance(storage, model_replies)
    log = await orchestra.state_manager.load("v1")  # type: ignore[union-attr]
    assert log.last_run is not None and log.last_run.end is not None and log.last_run.end.paused
    assert log.last_run.start.task == "Research solar"
    assert log.last_run.start.at == 0.0  # format 1 kept no times

    paused = await orchestra.get_result("v1")
    assert paused is not None and paused.metadata["paused"] is True
    assert paused.metadata["pause_reason"] == "checking the papers"
    assert [(b.branch_id, b.status, b.result) for b in paused.branch_results] == [
        ("b0", "running", None),  # its fan-out converged: Hub is next
        ("b1", "completed", ("web", "solar news")),  # a tuple in format 1, a tuple now
        ("b2", "completed", "papers on solar papers"),
    ]

    result = await wait(orchestra.resume_session("v1"))
    assert result.success, result.error
    assert result.final_response == "report on solar"
    hub = orchestra.agent_registry.get("Hub")  # type: ignore[union-attr]
    seen = hub.model.calls[0].messages  # type: ignore[union-attr]
    assert [m.role for m in seen] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert seen[3].content == 'ok: {"topic": "solar", "hits": 3}'
    assert '"response": ["web", "solar news"]' in seen[5].content
    assert result.get_agent_invocation_count("Web") == 1
    # format 1 kept no times (they read as 0); the gap up to the resume takes them out again,
    # so no duration counts the years since 1970
    assert 0 <= result.total_duration < 60
    assert all(0 <= branch.duration < 60 for branch in result.branch_results)


async def test_a_log_whose_tool_call_has_the_default_empty_id_still_resumes(
    storage: Storage,
) -> None:
    """A code agent's ``ToolCall(name, args)`` is stored with the id "" (format 1 did the
    same). Ids were once made unique whenever an Action was built, decoding included: the
    stored action's call became "call_0" while its result was stored under "", and the log
    was reported damaged."""
    text = (DATA / "format1-paused.jsonl").read_text().replace('"call_0"', '""')
    await storage.append("empty-id", text.splitlines(), durable=True, after=0)
    replies = [{"next_action": "ask_user", "action_input": {"question": "?"}}, final("done")]
    orchestra = format_1_instance(storage, replies)
    assert await orchestra.get_result("empty-id") is not None
    result = await wait(orchestra.resume_session("empty-id"))
    assert result.success and result.final_response == "done", result.error


# ---- stored data that would run code -------------------------------------------------------------


class Planted:
    """What a crafted record would build if it were ever handed to an object decoder: it
    leaves a file behind."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


def planted(path: Path) -> str:
    return base64.b64encode(pickle.dumps(Planted(str(path)))).decode()


async def test_a_record_crafted_to_run_code_is_refused_and_never_run(
    storage: Storage, tmp_path: Path
) -> None:
    """Format 1 stored what JSON could not hold as serialised Python objects, which a loader
    would run. Whoever can write to a shared store could plant one; the session is reported
    damaged, naming the record, and the object is never built."""
    marker = tmp_path / "ran"
    lines = (DATA / "format1-paused.jsonl").read_text().splitlines()
    answer = json.loads(lines[9])  # Web's step: its value was a tagged tuple
    answer["outcome"]["value"] = {"__o__": "pickle", "v": planted(marker)}
    lines[9] = json.dumps(answer)
    await storage.append("planted", lines, durable=True, after=0)
    orchestra = format_1_instance(storage, [final("never")])
    with pytest.raises(SessionCorruptedError, match=r"'planted': record 10 \(step\)") as raised:
        await orchestra.resume_session("planted")
    assert "never loads" in str(raised.value)
    with pytest.raises(SessionCorruptedError):
        await orchestra.get_result("planted")
    assert not marker.exists()


async def test_a_snapshot_of_the_previous_format_is_never_decoded(
    storage: Storage, tmp_path: Path
) -> None:
    """Format 1 snapshots held serialised objects too: a snapshot of another format is not
    read at all, and the run is rebuilt from its log instead."""
    marker = tmp_path / "ran"
    lines = (DATA / "format1-paused.jsonl").read_text().splitlines()
    await storage.append("old-snapshot", lines, durable=True, after=0)
    payload = pickle.dumps(Planted(str(marker)))
    header = struct.pack(">4sBBQI", b"ORCS", 1, 0, len(lines) - 1, zlib.crc32(payload))
    await storage.write_snapshot("old-snapshot", header + payload)
    replies = [{"next_action": "ask_user", "action_input": {"question": "?"}}, final("done")]
    orchestra = format_1_instance(storage, replies)
    result = await wait(orchestra.resume_session("old-snapshot"))
    assert result.success and result.final_response == "done", result.error
    assert not marker.exists()


async def test_a_tag_no_type_has_is_damage_named_by_record(storage: Storage) -> None:
    orchestra, lines = await plain_session(storage)
    header = json.loads(lines[0])
    header["task"] = {"__o__": "builtins.eval", "v": "__import__('os').getcwd()"}
    await storage.append("bad", [json.dumps(header), *lines[1:]], durable=True, after=0)
    with pytest.raises(SessionCorruptedError, match=r"'bad': record 1 \(run\).*builtins\.eval"):
        await orchestra.get_result("bad")


# ---- values with no stored form ------------------------------------------------------------------


class Opaque:
    """A value no codec knows (and none is registered for)."""


async def plain_session(storage: Storage) -> tuple[OrchestraInstance, list[str]]:
    """A one-step session "plain", and its log's lines to craft others from."""
    orchestra = durable_run(
        storage,
        [FunctionAgent("Echo", lambda t, c: t, register=False)],
        {"nodes": ["Echo"], "edges": []},
    )
    await wait(orchestra.execute("hi", context={"session_id": "plain"}))
    return orchestra, await storage.read("plain")


def durable_run(
    storage: Storage, agents: list[Any], topology: dict[str, Any], **options: Any
) -> OrchestraInstance:
    return OrchestraInstance(
        topology,
        agent_registry=AgentRegistry(agents),
        initial_config=quiet(),
        state_manager=StateManager(storage, auto_save_interval=0),
        **options,
    )


async def test_a_step_returning_what_cannot_be_stored_fails_naming_agent_and_type(
    storage: Storage,
) -> None:
    """It used to be stored as its repr and came back as a str. Now the step is refused where it
    happened: its branch fails (error routing applies, as to any failed step) and the steps
    before it are all in the log."""
    agents = [
        FunctionAgent("Reader", lambda task, context: f"read {task}", register=False),
        FunctionAgent("Maker", lambda data, context: {"rows": [Opaque()]}, register=False),
    ]
    orchestra = durable_run(
        storage, agents, {"nodes": ["Reader", "Maker"], "edges": ["Reader -> Maker"]}
    )
    result = await wait(orchestra.execute("doc", context={"session_id": "opaque"}))
    assert not result.success
    (branch,) = result.branch_results
    assert branch.status == "failed" and branch.error_type == "UnstorableValueError"
    assert branch.error is not None
    assert "agent 'Maker' (branch b0) returned a value of type" in branch.error
    assert "test_session_format.Opaque" in branch.error and "field outcome.value" in branch.error
    assert "register_type" in branch.error
    stored = await orchestra.get_result("opaque")
    assert stored is not None and stored.error == result.error  # the log holds it all
    assert [json.loads(line)["t"] for line in await storage.read("opaque")] == [
        "run",
        "begin",
        "step",
        "begin",
        "step_failed",
        "end",
    ]
    plain = await Orchestra.run(  # without a session nothing needs storing: no refusal
        "doc",
        {"nodes": ["Reader", "Maker"], "edges": ["Reader -> Maker"]},
        agent_registry=AgentRegistry(agents),
        execution_config=quiet(),
    )
    assert plain.success and isinstance(plain.final_response["rows"][0], Opaque)


async def test_a_tool_result_that_cannot_be_stored_reaches_the_model_as_an_error(
    storage: Storage,
) -> None:
    """The tool ran (that is not undone); its result cannot be journaled, so the call is
    recorded as failed, naming the type, and the model is told."""

    @tool
    def fetch(key: str) -> Any:
        """Fetch a thing.

        Args:
            key: which
        """
        return Opaque()

    model = ScriptedModel(
        [
            {
                "next_action": "call_tool",
                "action_input": [{"name": "fetch", "arguments": {"key": "k"}}],
            },
            final("coped"),
        ]
    )
    orchestra = durable_run(
        storage,
        [Agent("Fetcher", model, tools=[fetch], register=False)],
        {"nodes": ["Fetcher"], "edges": []},
    )
    result = await wait(orchestra.execute("go", context={"session_id": "tooled"}))
    assert result.success and result.final_response == "coped", result.error
    told = model.calls[1].messages[-1]
    assert told.role == "tool" and told.content.startswith("error: the tool returned a value")
    assert "test_session_format.Opaque" in told.content


async def test_an_answer_that_cannot_be_stored_fails_the_asking_branch(storage: Storage) -> None:
    model = ScriptedModel([{"next_action": "ask_user", "action_input": {"question": "which?"}}])
    orchestra = durable_run(
        storage,
        [Agent("Asker", model, register=False)],
        {"nodes": ["User", "Asker"], "edges": ["User -> Asker", "Asker -> User"]},
        communication_manager=CommunicationManager(ScriptedUser([Opaque()])),
    )
    result = await wait(orchestra.execute("go", context={"session_id": "answered"}))
    assert result.metadata["error_type"] == UserInputError.__name__
    assert result.error is not None and "agent 'Asker' ('which?')" in result.error
    assert "Opaque" in result.error


async def test_a_task_or_context_that_cannot_be_stored_is_refused_before_anything_is_written(
    storage: Storage,
) -> None:
    agents = [FunctionAgent("Echo", lambda t, c: t, register=False)]
    for task, context in (({"doc": Opaque()}, {}), ("fine", {"handle": Opaque()})):
        with pytest.raises(ConfigurationError, match=r"'early'.*Opaque.*register the type"):
            await Orchestra.run(
                task,
                {"nodes": ["Echo"], "edges": []},
                agent_registry=AgentRegistry(agents),
                context={"session_id": "early", **context},
                execution_config=quiet(),
                state_manager=StateManager(storage, auto_save_interval=0),
            )
        assert not await storage.exists("early")
    channel = CommunicationConfig()  # the session is free again: a good run goes through
    result = await Orchestra.run(
        "fine",
        {"nodes": ["Echo"], "edges": []},
        agent_registry=AgentRegistry(agents),
        context={"session_id": "early"},
        execution_config=quiet(),
        communication_config=channel,
        state_manager=StateManager(storage, auto_save_interval=0),
    )
    assert result.success


# ---- the code ------------------------------------------------------------------------------------

_OBJECT_DECODERS = {
    "pickle",
    "_pickle",
    "cPickle",
    "marshal",
    "shelve",
    "dill",
    "cloudpickle",
    "jsonpickle",
}


def test_no_module_can_load_stored_objects() -> None:
    """No object decoder is imported anywhere, nothing is evaluated, and the only ``exec``s
    (the codec compiling its encoders and decoders from Orchestra's own field names) run no
    stored data."""
    execs = []
    for path in sorted(ORCHESTRA.rglob("*.py")):
        source = path.read_text()
        assert "pickle" not in source.lower(), path
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & _OBJECT_DECODERS, path
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in _OBJECT_DECODERS, path
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "eval", path
                if node.func.id == "exec":
                    execs.append(path.relative_to(ORCHESTRA).as_posix())
    assert execs == ["coordination/state/codec.py"] * 2


async def test_a_format_1_session_stays_readable_after_this_release_writes_to_it(
    storage: Storage,
) -> None:
    """The records this release appended after a format-1 log (its resume, a checkpoint) were
    read as format 1, and the session could no longer be read at all."""
    lines = (DATA / "format1-paused.jsonl").read_text().splitlines()
    await storage.append("mixed", lines, durable=True, after=0)
    replies = [{"next_action": "ask_user", "action_input": {"question": "?"}}, final("done")]
    orchestra = format_1_instance(storage, replies)
    checkpoint = await orchestra.create_checkpoint("mixed", "before")
    result = await wait(orchestra.resume_session("mixed"))
    assert result.success, result.error
    again = await orchestra.get_result("mixed")
    assert again is not None and again.final_response == "done"
    assert await orchestra.restore_checkpoint(checkpoint) is True
    log = await orchestra.state_manager.load("mixed")  # type: ignore[union-attr]
    run = log.last_run  # back where the checkpoint was taken: paused, before the resume
    assert run is not None and run.end is not None and run.end.paused


@pytest.mark.parametrize(
    ("record", "change"),
    [
        (0, {"task": {"__o__": "decimal", "v": "not a number"}}),
        (0, {"task": {"__o__": "timedelta", "v": [10**20, 0, 0]}}),
        (0, {"at": 10**400}),
        (0, {"config": {"convergence_timeout": 10**400}}),
        (0, {"t": []}),
        (
            1,
            {
                "t": "step",
                "outcome": {"value": "x", "by_code": True},
                "messages": [],
                "duration": 0.0,
            },
        ),
    ],
    ids=["decimal", "timedelta", "huge-time", "huge-config", "kind-not-text", "step-not-begun"],
)
async def test_a_crafted_record_is_damage_not_a_raw_exception(
    storage: Storage, record: int, change: dict[str, Any]
) -> None:
    """Each of these escaped as a raw InvalidOperation, OverflowError, TypeError or
    AssertionError from load, get_result or resume."""
    orchestra, lines = await plain_session(storage)
    crafted = json.loads(lines[record])
    crafted.update(change)
    lines[record] = json.dumps(crafted)
    await storage.append("crafted", lines, durable=True, after=0)
    for rebuild in (orchestra.get_result("crafted"), orchestra.resume_session("crafted")):
        with pytest.raises(SessionCorruptedError, match="'crafted'"):
            await rebuild


async def snapshot_of(storage: Storage, session_id: str) -> dict[str, Any]:
    data = await storage.read_snapshot(session_id)
    assert data is not None
    header, payload = data[: HEADER.size], data[HEADER.size :]
    if header[5] & 1:
        payload = zstandard.ZstdDecompressor().decompress(payload)
    return json.loads(payload)


async def plant_snapshot(storage: Storage, session_id: str, state: dict[str, Any]) -> None:
    """A snapshot written by whoever can write to the store: its checksum is right (a
    checksum is no signature)."""
    data = await storage.read_snapshot(session_id)
    assert data is not None
    _, version, _, position, at, _ = HEADER.unpack_from(data)
    payload = json.dumps(state).encode()
    header = HEADER.pack(b"ORCS", version, 0, position, at, zlib.crc32(payload))
    await storage.write_snapshot(session_id, header + payload)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda s: s["run"].update(steps="zz"),
        lambda s: s["run"].update(root=None),
        lambda s: s["run"].update(context=[1]),
        lambda s: s["branches"][0].update(status="completed"),
        lambda s: s["branches"][0].update(question=[1]),
        lambda s: s["branches"][0].update(parent="b99"),
        lambda s: s["events"].append({"type": "os.system"}),
        lambda s: s["events"].append({"type": []}),
        lambda s: s["branches"][0].update(transfers=[], transfers_kept=-1),
        lambda s: s["branches"][0].update(input=None),
        lambda s: s["branches"][0].update(question=None),
        lambda s: s["branches"][0].update(status="waiting"),
        lambda s: s["branches"][0].update(agent="Ghost"),
        lambda s: s["branches"].append(dict(s["branches"][1])),
        lambda s: s["branches"][1].pop("fan_out"),
        lambda s: s["fan_outs"][0].update(pending=-5),
    ],
    ids=[
        "steps",
        "no-root",
        "context",
        "done-but-not",
        "question",
        "parent",
        "event",
        "event-type-not-text",
        "transfers-kept",
        "running-with-no-input",
        "asking-no-question",
        "waiting-on-nothing",
        "no-such-node",
        "one-id-twice",
        "child-of-no-fan-out",
        "pending",
    ],
)
async def test_a_crafted_snapshot_is_damage_never_a_hang_or_a_wrong_run(
    storage: Storage, spoil: Any
) -> None:
    """A snapshot's fields were taken unchecked: a wrong type surfaced as a raw error or a
    silently wrong result (total_steps 'zz'), and a root marked done made resume wait forever,
    as did a branch asking no question; an event type that is no text, or a negative count
    kept, raised a raw TypeError or ValueError; an unknown node, an InternalError."""
    orchestra = format_1_instance(storage, [])
    lines = (DATA / "format1-paused.jsonl").read_text().splitlines()
    await storage.append("snap", lines, durable=True, after=0)
    replies = [{"next_action": "ask_user", "action_input": {"question": "?"}}]
    asked = format_1_instance(storage, replies)
    asked.communication = CommunicationManager(ProgrammaticChannel())
    running = asyncio.create_task(asked.resume_session("snap"))
    channel = asked.communication.channel
    await wait(channel.next_question())  # type: ignore[union-attr]
    await asked.pause_session("snap")
    await wait(running)
    state = await snapshot_of(storage, "snap")
    spoil(state)
    await plant_snapshot(storage, "snap", state)
    for rebuild in (orchestra.get_result("snap"), orchestra.resume_session("snap")):
        with pytest.raises(SessionCorruptedError, match="'snap'"):
            await wait(rebuild)


@pytest.mark.parametrize(
    "expanded",
    [b" " * (MAX_BYTES + 1), b"[" + b"[]," * (4 * 1024 * 1024) + b"[]]"],
    ids=["past-the-cap", "a-thousandfold"],
)
async def test_a_snapshot_that_would_expand_past_the_limit_is_refused(
    storage: Storage, expanded: bytes
) -> None:
    """A 32 KiB snapshot could expand to gigabytes; a frame claiming 2**40 bytes raised a raw
    MemoryError; 6 KiB of empty lists under the cap took 1.8 GB to read."""
    orchestra = format_1_instance(storage, [])
    lines = (DATA / "format1-paused.jsonl").read_text().splitlines()
    await storage.append("bomb", lines, durable=True, after=0)
    payload = zstandard.ZstdCompressor().compress(expanded)
    header = HEADER.pack(b"ORCS", FORMAT, 1, len(lines), 0.0, zlib.crc32(payload))
    await storage.write_snapshot("bomb", header + payload)
    with pytest.raises(SessionCorruptedError, match=r"'bomb': its snapshot cannot be read"):
        await orchestra.get_result("bomb")


async def test_format_1_step_errors_and_tagged_contexts_read_as_the_old_run_reported(
    storage: Storage,
) -> None:
    """Format 1 stored what a step raised as it was (the engine then reported it as an
    AgentStepError), and tagged a context holding the tag key: both are lifted to what the
    old release reported and held."""
    lines = (DATA / "format1-paused.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    header["context"] = {"__o__": "dict", "v": {"__o__": "kept", "session_id": "v1"}}
    papers = json.loads(lines[12])
    failed = {
        "t": "step_failed",
        "branch": papers["branch"],
        "step": papers["step"],
        "error": {"type": "RuntimeError", "message": "papers broke"},
        "messages": [],
        "s": papers["s"],
    }
    await storage.append(
        "old-failure",
        [json.dumps(header), *lines[1:12], json.dumps(failed), lines[13]],
        durable=True,
        after=0,
    )
    orchestra = format_1_instance(storage, [])
    log = await orchestra.state_manager.load("old-failure")  # type: ignore[union-attr]
    assert log.last_run is not None
    assert log.last_run.start.context == {"__o__": "kept", "session_id": "v1"}
    paused = await orchestra.get_result("old-failure")
    assert paused is not None
    papers_branch = paused.get_branch_by_id("b2")
    assert papers_branch is not None and papers_branch.error_type == "AgentStepError"
    assert papers_branch.error == "raised RuntimeError: papers broke"


HASH_MODULUS = 2**61 - 1  # every multiple of it hashes to 0


@pytest.mark.parametrize(
    "crafted",
    [
        {"__o__": "set", "v": [n * HASH_MODULUS for n in range(1000)]},
        {"__o__": "frozenset", "v": [n * HASH_MODULUS for n in range(1000)]},
        {"__o__": "map", "v": [[n * HASH_MODULUS, n] for n in range(1000)]},
    ],
    ids=["set", "frozenset", "map"],
)
async def test_keys_crafted_to_share_one_hash_are_damage_not_a_quadratic_read(
    storage: Storage, crafted: dict[str, Any]
) -> None:
    """20,000 such keys took 1.8 s to read and 200,000 would take minutes: whoever can write
    to the store could stall every process that reads the session."""
    orchestra, lines = await plain_session(storage)
    header = json.loads(lines[0])
    header["task"] = crafted
    await storage.append("flood", [json.dumps(header), *lines[1:]], durable=True, after=0)
    with pytest.raises(SessionCorruptedError, match=r"'flood'.*one hash"):
        await orchestra.get_result("flood")


@pytest.mark.parametrize("value", [{-1, -2, 0, 1}, frozenset(range(-50, 50)), {-1: "a", -2: "b"}])
async def test_sets_and_maps_whose_keys_share_a_hash_by_chance_are_kept(
    storage: Storage, value: Any
) -> None:
    orchestra = durable_run(
        storage,
        [FunctionAgent("Make", lambda t, c: value, register=False)],
        {"nodes": ["Make"], "edges": []},
    )
    await wait(orchestra.execute("hi", context={"session_id": "by-chance"}))
    result = await orchestra.get_result("by-chance")
    assert result.final_response == value
