"""Durable sessions: OrchestraInstance's execute / pause / resume / checkpoints, Orchestra.run
with a state manager, the durability policy, damaged and foreign logs, and tool calls in doubt.

Every test runs against all four storage backends: a folder of segment files, a SQLite file,
and real Redis and PostgreSQL servers on loopback (started once per test session, see
conftest.py), each test in its own namespace.
Steps are held in flight with asyncio events, never with sleeps; a run that must die mid-way
runs in a subprocess (this module, imported there: see ``subprocess_main``) and SIGKILLs itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from services import output_of
from storage_backends import (
    Storage,
    close_backend,
    first_segment,
    open_backend,
    tear,
)

from orchestra import (
    Agent,
    AgentRegistry,
    ExecutionConfig,
    FunctionAgent,
    FunctionModel,
    Orchestra,
    PatternConfig,
    StatusConfig,
    tool,
)
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import (
    FileStorageBackend,
    PostgresStorageBackend,
    RedisStorageBackend,
    StateManager,
)
from orchestra.coordination.state import records as records_module
from orchestra.errors import (
    ConfigurationError,
    InvalidSessionIdError,
    RecordTooLargeError,
    SessionCorruptedError,
    SessionError,
    SessionFormatError,
    SessionNotFoundError,
)
from orchestra.models import Message, StepInfo

QUIET = ExecutionConfig(status=StatusConfig.from_verbosity(0))
TESTS = Path(__file__).parent
T = TypeVar("T")


async def wait(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, 5)


async def records(storage: Storage, session_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in await storage.read(session_id)]


async def flip_byte(storage: Storage, session_id: str, number: int) -> None:
    """Flip one bit of one byte in the middle of the session's ``number``-th stored record."""

    def flipped(line: str) -> str:
        middle = len(line) // 2
        return line[:middle] + chr(ord(line[middle]) ^ 0x01) + line[middle + 1 :]

    if isinstance(storage, FileStorageBackend):  # "@<length>" append headers, then records
        segment = first_segment(storage.directory / session_id)
        lines = segment.read_text().split("\n")
        records = [index for index, line in enumerate(lines) if line[:1] not in ("@", "\0", "")]
        lines[records[number - 1]] = flipped(lines[records[number - 1]])
        segment.write_text("\n".join(lines))
        return
    if isinstance(storage, RedisStorageBackend):
        client = await storage._client()
        key = storage._key(session_id)
        await client.lset(key, number - 1, flipped(await client.lindex(key, number - 1)))
        return
    if isinstance(storage, PostgresStorageBackend):
        pool = await storage._pool()
        line = await pool.fetchval(
            f"SELECT line FROM {storage.table} WHERE session = $1 AND seq = $2", session_id, number
        )
        await pool.execute(
            f"UPDATE {storage.table} SET line = $1 WHERE session = $2 AND seq = $3",
            flipped(line),
            session_id,
            number,
        )
        return
    with sqlite3.connect(storage.path) as db:  # one row per append, one line per record
        first, text = db.execute(
            "SELECT first, records FROM appends WHERE session = ? AND first <= ? "
            "ORDER BY first DESC LIMIT 1",
            (session_id, number),
        ).fetchone()
        batch = text.split("\n")
        batch[number - first] = flipped(batch[number - first])
        db.execute(
            "UPDATE appends SET records = ? WHERE session = ? AND first = ?",
            ("\n".join(batch), session_id, first),
        )
    db.close()


# ---- workflows -----------------------------------------------------------------------------


class Hold:
    """Holds an agent's step in flight: ``entered`` is set when it starts, and it finishes once
    ``release`` is set."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self) -> None:
        self.entered.set()
        await self.release.wait()


def pipeline_instance(
    storage: Storage,
    functions: dict[str, Callable[[Any, Any], Any]],
    auto_save_interval: float = 0,
) -> OrchestraInstance:
    """A sequential pipeline of function agents, one stage each, in the order given."""
    topology = PatternConfig.pipeline(
        stages=[{"name": name.lower(), "agents": [name]} for name in functions]
    )
    registry = AgentRegistry(
        [FunctionAgent(name, fn, register=False) for name, fn in functions.items()]
    )
    return OrchestraInstance(
        topology=topology,
        agent_registry=registry,
        initial_config=QUIET,
        state_manager=StateManager(storage, auto_save_interval=auto_save_interval),
    )


class PausablePipeline:
    """First -> Second. ``paused(session_id)`` starts a run and pauses it (from outside) while
    First's step is in flight, so the session ends up paused with First's step kept."""

    def __init__(self, storage: Storage) -> None:
        self.holds: dict[str, Hold] = {}
        self.calls: Counter[str] = Counter()

        async def first(task: Any, context: Any) -> str:
            self.calls["First"] += 1
            hold = self.holds.get(context["session_id"])
            if hold is not None:
                await hold()
            return f"{task}+first"

        def second(data: Any, context: Any) -> str:
            self.calls["Second"] += 1
            return f"{data}+second"

        self.orchestra = pipeline_instance(storage, {"First": first, "Second": second})

    async def paused(self, session_id: str) -> None:
        hold = self.holds[session_id] = Hold()
        running = asyncio.create_task(
            self.orchestra.execute("job", context={"session_id": session_id})
        )
        await wait(hold.entered.wait())
        assert await self.orchestra.pause_session(session_id, "for the test") is True
        hold.release.set()
        result = await wait(running)
        assert result.metadata.get("paused") is True, result.error


CHAT_SESSION = "chat"
CHAT_TOPOLOGY = {
    "nodes": ["User", "Writer", "Gate"],
    "edges": ["User -> Writer", "Writer <-> Gate", "Writer -> User"],
}
TOOL_SESSION = "till"
TOOL_TOPOLOGY = {"nodes": ["User", "Cashier"], "edges": ["User -> Cashier", "Cashier -> User"]}


def chat_instance(
    storage: Storage, gate: Callable[[Any, Any], Any], seen: list[list[Message]]
) -> OrchestraInstance:
    """Writer (an LLM agent) asks Gate (code) for approval, then answers from its whole
    conversation; it refuses to answer when its earlier messages are missing."""

    def writer(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
        seen.append(list(messages))
        if messages[-1].content.startswith("[Task]"):
            request = f"approve a draft for: {messages[-1].content.split(chr(10), 1)[1]}"
            return {
                "next_action": "invoke_agent",
                "action_input": [{"agent_name": "Gate", "request": request}],
            }
        roles = [m.role for m in messages]
        if roles != ["system", "user", "assistant", "user"]:
            raise RuntimeError(f"the conversation was lost: roles {roles}")
        asked = json.loads(messages[2].content)["action_input"][0]["request"]
        return {
            "next_action": "final_response",
            "action_input": {
                "response": {
                    "task": messages[1].content,
                    "asked": asked,
                    "gate": messages[3].content,
                }
            },
        }

    registry = AgentRegistry(
        [
            Agent("Writer", FunctionModel(writer), register=False),
            FunctionAgent("Gate", gate, register=False),
        ]
    )
    return OrchestraInstance(
        CHAT_TOPOLOGY,
        agent_registry=registry,
        initial_config=QUIET,
        state_manager=StateManager(storage, auto_save_interval=0),
    )


def approve(request: Any) -> str:
    return f"approved ({request})"


def tool_instance(
    storage: Storage, idempotent: bool, on_call: Callable[[int, str], None]
) -> OrchestraInstance:
    """Cashier (an LLM agent) charges a card through a tool, then answers with its result."""

    @tool(idempotent=idempotent)
    def charge_card(amount: int, currency: str) -> str:
        """Charge the customer's card.

        Args:
            amount: how much to charge
            currency: the currency of the amount
        """
        on_call(amount, currency)
        return f"charged {amount} {currency}"

    def cashier(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
        if messages[-1].role == "tool":
            return {"next_action": "final_response", "action_input": {"response": "paid"}}
        return {
            "next_action": "call_tool",
            "action_input": [
                {"name": "charge_card", "arguments": {"amount": 42, "currency": "EUR"}}
            ],
        }

    registry = AgentRegistry(
        [Agent("Cashier", FunctionModel(cashier), tools=[charge_card], register=False)]
    )
    return OrchestraInstance(
        TOOL_TOPOLOGY,
        agent_registry=registry,
        initial_config=QUIET,
        state_manager=StateManager(storage, auto_save_interval=0),
    )


# ---- the subprocess side -------------------------------------------------------------------


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


async def _subprocess_run(scenario: str, kind: str, root: Path, mode: str) -> None:
    storage = open_backend(kind, root)
    if scenario == "chat":
        hold = Hold()

        async def gate(request: Any, context: Any) -> str:
            if mode == "kill":
                _kill_self()
            await hold()
            return approve(request)

        orchestra = chat_instance(storage, gate, [])
        running = asyncio.create_task(
            orchestra.execute("write the report", context={"session_id": CHAT_SESSION})
        )
        if mode == "pause":  # pause while Gate's step is in flight
            await wait(hold.entered.wait())
            assert await orchestra.pause_session(CHAT_SESSION, "waiting for a human")
            hold.release.set()
        result = await wait(running)
    else:
        orchestra = tool_instance(
            storage, mode == "idempotent", lambda amount, currency: _kill_self()
        )
        result = await orchestra.execute("charge 42 EUR", context={"session_id": TOOL_SESSION})
    print(
        json.dumps({"success": result.success, "metadata": result.metadata, "error": result.error})
    )
    close_backend(storage)


def subprocess_main(argv: Sequence[str]) -> None:
    scenario, kind, root, mode = argv
    asyncio.run(_subprocess_run(scenario, kind, Path(root), mode))


async def in_subprocess(scenario: str, kind: str, root: Path, mode: str) -> tuple[int, str]:
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_sessions as t; " + (
        "t.subprocess_main(sys.argv[1:])"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        scenario,
        kind,
        str(root),
        mode,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = await output_of(process, 30)
    assert process.returncode is not None
    return process.returncode, output


# ---- 1. the OrchestraInstance example: pause, resume with more context, checkpoints --------


async def test_pause_keeps_the_step_in_flight_and_resume_adds_context(storage: Storage) -> None:
    calls: Counter[str] = Counter()
    hold = Hold()
    loader_contexts: list[dict[str, Any]] = []

    async def extractor(task: Any, context: Any) -> dict[str, Any]:
        calls["Extractor"] += 1
        return {"rows": [1, 2, 3], "batch": context["batch_id"], "task": task}

    async def transformer(data: dict[str, Any], context: Any) -> dict[str, Any]:
        calls["Transformer"] += 1
        await hold()
        return {**data, "rows": [row * 10 for row in data["rows"]]}

    async def loader(data: dict[str, Any], context: Any) -> str:
        calls["Loader"] += 1
        loader_contexts.append(dict(context))
        return f"{data['task']}: loaded {sum(data['rows'])} rows of batch {data['batch']}"

    orchestra = pipeline_instance(
        storage, {"Extractor": extractor, "Transformer": transformer, "Loader": loader}
    )
    running = asyncio.create_task(
        orchestra.execute(
            task="Process customer data",
            context={"batch_id": "2024_Q1", "session_id": "session_123"},
            max_steps=50,
        )
    )
    await wait(hold.entered.wait())
    checkpoint_id = await orchestra.create_checkpoint("session_123", "before_critical_operation")
    assert await orchestra.pause_session("session_123", "Manual review required") is True
    hold.release.set()
    paused = await wait(running)

    assert paused.success is False
    assert paused.error is None
    assert paused.metadata["paused"] is True
    assert paused.metadata["pause_reason"] == "Manual review required"
    assert paused.final_response is None
    assert paused.session_id == "session_123"
    assert checkpoint_id in paused.checkpoint_ids
    assert dict(calls) == {"Extractor": 1, "Transformer": 1}
    assert await orchestra.pause_session("session_123") is False  # no longer running
    assert "session_123" in await orchestra.list_sessions()

    resumed = await wait(
        orchestra.resume_session("session_123", additional_context={"review_complete": True})
    )
    assert resumed.success, resumed.error
    assert resumed.error is None
    assert "paused" not in resumed.metadata
    assert resumed.final_response == "Process customer data: loaded 60 rows of batch 2024_Q1"
    assert dict(calls) == {"Extractor": 1, "Transformer": 1, "Loader": 1}  # nothing re-ran
    assert loader_contexts[0]["review_complete"] is True
    assert loader_contexts[0]["batch_id"] == "2024_Q1"
    log = await orchestra.state_manager.load("session_123")  # type: ignore[union-attr]
    assert len(log.runs) == 1 and log.last_run is not None and log.last_run.finished
    assert checkpoint_id in log.checkpoints


async def test_an_agent_can_pause_its_own_session(storage: Storage) -> None:
    """pause_session called by an agent during its own step: that step finishes and is kept,
    and the log stays whole (resumable)."""
    calls: Counter[str] = Counter()
    holder: list[OrchestraInstance] = []

    async def reviewer(task: Any, context: Any) -> str:
        calls["Reviewer"] += 1
        assert await holder[0].pause_session(context["session_id"], "needs a human") is True
        return f"{task}+reviewed"

    def publisher(data: Any, context: Any) -> str:
        calls["Publisher"] += 1
        return f"{data}+published"

    orchestra = pipeline_instance(storage, {"Reviewer": reviewer, "Publisher": publisher})
    holder.append(orchestra)
    paused = await wait(orchestra.execute("doc", context={"session_id": "self-paused"}))
    assert paused.success is False and paused.error is None
    assert paused.metadata.get("paused") is True

    stored = await records(storage, "self-paused")
    assert [r["s"] for r in stored] == list(range(1, len(stored) + 1))  # no record lost
    assert [r["t"] for r in stored] == ["run", "begin", "pause", "step", "end"]
    resumed = await wait(orchestra.resume_session("self-paused"))
    assert resumed.success, resumed.error
    assert resumed.final_response == "doc+reviewed+published"
    assert dict(calls) == {"Reviewer": 1, "Publisher": 1}


# ---- 2. resume in a new process --------------------------------------------------------------


@pytest.mark.parametrize("interruption", ["kill", "pause"])
async def test_resume_in_a_new_process_restores_the_conversation(
    storage: Storage, backend_kind: str, tmp_path: Path, interruption: str
) -> None:
    code, output = await in_subprocess("chat", backend_kind, tmp_path, interruption)
    if interruption == "kill":
        assert code == -signal.SIGKILL, output
    else:
        assert code == 0, output
        reported = json.loads(output.strip().splitlines()[-1])
        assert reported["success"] is False and reported["metadata"]["paused"] is True

    gate_calls: list[Any] = []

    def gate(request: Any, context: Any) -> str:
        gate_calls.append(request)
        return approve(request)

    seen: list[list[Message]] = []
    resumed = await wait(chat_instance(storage, gate, seen).resume_session(CHAT_SESSION))
    assert resumed.success, resumed.error

    # the Writer's first step was not taken again here: its conversation came from the log
    assert len(seen) == 1
    assert [m.role for m in seen[0]] == ["system", "user", "assistant", "user"]
    assert seen[0][1].content == "[Task]\nwrite the report"
    assert "approve a draft for: write the report" in seen[0][2].content
    # Gate's step completed before a pause (kept) but not before the kill (taken again here)
    assert len(gate_calls) == (1 if interruption == "kill" else 0)

    uninterrupted = await wait(
        chat_instance(storage, gate, []).execute(
            "write the report", context={"session_id": "chat-uninterrupted"}
        )
    )
    assert uninterrupted.success, uninterrupted.error
    assert resumed.final_response == uninterrupted.final_response
    assert resumed.final_response == {
        "task": "[Task]\nwrite the report",
        "asked": "approve a draft for: write the report",
        "gate": "[Response from Gate]\napproved (approve a draft for: write the report)",
    }


# ---- 3. checkpoints -------------------------------------------------------------------------


async def test_restore_checkpoint_continues_from_there_and_keeps_the_abandoned_future(
    storage: Storage,
) -> None:
    calls: Counter[str] = Counter()
    hold = Hold()

    def first(task: Any, context: Any) -> str:
        calls["A"] += 1
        return f"{task}>a"

    async def second(data: Any, context: Any) -> str:
        calls["B"] += 1
        if calls["B"] == 1:
            await hold()
        return f"{data}>b"

    def third(data: Any, context: Any) -> str:
        calls["C"] += 1
        return f"{data}>c"

    orchestra = pipeline_instance(storage, {"A": first, "B": second, "C": third})
    running = asyncio.create_task(orchestra.execute("go", context={"session_id": "cp"}))
    await wait(hold.entered.wait())
    checkpoint_id = await orchestra.create_checkpoint("cp")  # after A's step, B in flight
    with pytest.raises(SessionError, match="cp"):
        await orchestra.restore_checkpoint(checkpoint_id)  # the session is running
    hold.release.set()
    first_run = await wait(running)
    assert first_run.success, first_run.error
    assert first_run.final_response == "go>a>b>c"
    assert first_run.checkpoint_ids == [checkpoint_id]

    before = await storage.read("cp")
    assert await orchestra.restore_checkpoint(checkpoint_id) is True
    after = await storage.read("cp")
    assert after[: len(before)] == before  # the abandoned future stays in the raw log
    assert len(after) == len(before) + 1

    resumed = await wait(orchestra.resume_session("cp"))
    assert resumed.success, resumed.error
    assert resumed.final_response == "go>a>b>c"
    assert dict(calls) == {"A": 1, "B": 2, "C": 2}  # the steps after the checkpoint ran again
    raw = await records(storage, "cp")
    assert len(raw) > len(after)
    assert [r["t"] for r in raw].count("end") == 2  # the abandoned run's end is still there
    log = await orchestra.state_manager.load("cp")  # type: ignore[union-attr]
    assert len(log.runs) == 1 and log.last_run is not None and log.last_run.finished

    # the API page promises a bool: an id that names no checkpoint is False, whatever is wrong
    assert await orchestra.restore_checkpoint("cp@no-such-checkpoint") is False
    assert await orchestra.restore_checkpoint("not-a-checkpoint-id") is False
    assert await orchestra.restore_checkpoint("no-such-session@checkpoint-1") is False
    assert await orchestra.restore_checkpoint("../escape@checkpoint-1") is False
    assert await orchestra.list_sessions() == ["cp"]  # none of them created anything
    with pytest.raises(TypeError, match="checkpoint_id must be str"):
        await orchestra.restore_checkpoint(None)  # type: ignore[arg-type]


async def test_restoring_a_checkpoint_of_an_abandoned_history(storage: Storage) -> None:
    """A checkpoint on a history that a later restore abandoned stays in the log, but restoring
    it is refused (False, nothing recorded). Restoring it used to keep only the records of the
    *current* history up to its position, so the session silently went back to another state
    (here: before Y's step, which then ran again). The session stays where the last restore
    (to after-x) put it."""
    calls: Counter[str] = Counter()
    holds: dict[str, Hold] = {}

    def stage(name: str) -> Callable[[Any, Any], Any]:
        async def work(data: Any, context: Any) -> str:
            calls[name] += 1
            hold = holds.pop(name, None)
            if hold is not None:
                await hold()
            return f"{data}>{name.lower()}"

        return work

    orchestra = pipeline_instance(storage, {name: stage(name) for name in ("X", "Y", "Z")})

    async def paused_in(name: str, go: Callable[[], Any]) -> None:
        hold = holds[name] = Hold()
        running = asyncio.create_task(go())
        await wait(hold.entered.wait())
        assert await orchestra.pause_session("cps")
        hold.release.set()
        assert (await wait(running)).metadata.get("paused") is True

    await paused_in("X", lambda: orchestra.execute("go", context={"session_id": "cps"}))
    after_x = await orchestra.create_checkpoint("cps", "after-x")
    await paused_in("Y", lambda: orchestra.resume_session("cps"))
    after_y = await orchestra.create_checkpoint("cps", "after-y")
    assert await orchestra.restore_checkpoint(after_x)
    before = await storage.read("cps")
    assert await orchestra.restore_checkpoint(after_y) is False  # on the abandoned history
    assert await storage.read("cps") == before
    resumed = await wait(orchestra.resume_session("cps"))
    assert resumed.success, resumed.error
    assert resumed.final_response == "go>x>y>z"
    assert dict(calls) == {"X": 1, "Y": 2, "Z": 1}  # from after-x: Y's step ran again


async def test_a_checkpoint_name_may_hold_an_at_sign(storage: Storage) -> None:
    pipeline = PausablePipeline(storage)
    await pipeline.paused("named")
    checkpoint_id = await pipeline.orchestra.create_checkpoint("named", "before@noon")
    assert checkpoint_id == "named@before@noon"
    assert await pipeline.orchestra.restore_checkpoint(checkpoint_id)


KEY = "sk-ant-api03-" + "A1b2C3d4" * 6


@pytest.mark.parametrize(
    "name", ["x" * 129, "line\nbreak", f"key {KEY}", " padded", "%%{init: {}}%%"]
)
async def test_a_checkpoint_name_its_id_could_not_be_given_back_with_is_refused(
    storage: Storage, name: str
) -> None:
    """Ids are shown redacted, escaped and cut: a name that would change there is refused,
    the error naming the argument and quoting no secret."""
    pipeline = PausablePipeline(storage)
    await pipeline.paused("named")
    with pytest.raises(ConfigurationError, match="checkpoint_name") as refused:
        await pipeline.orchestra.create_checkpoint("named", name)
    assert KEY not in str(refused.value) and "\n" not in str(refused.value)


# ---- 4. Orchestra.run with a state manager -------------------------------------------------


async def test_orchestra_run_sessions_and_multi_session_workflow(storage: Storage) -> None:
    manager = StateManager(storage, auto_save_interval=0)

    def worker(task: Any, context: Any) -> dict[str, Any]:
        return {"phase": context["phase"], "task": task, "built_on": context.get("previous")}

    registry = AgentRegistry([FunctionAgent("Worker", worker, register=False)])
    topology = PatternConfig.pipeline(stages=[{"name": "work", "agents": ["Worker"]}])

    async def run(task: str, context: dict[str, Any]) -> Any:
        return await wait(
            Orchestra.run(
                task=task,
                topology=topology,
                agent_registry=registry,
                context=context,
                execution_config=QUIET,
                state_manager=manager,
            )
        )

    previous = None
    for phase in ("research", "analysis", "report"):
        result = await run(
            f"{phase} the topic",
            {"session_id": "project_123", "phase": phase, "previous": previous},
        )
        assert result.success, result.error
        assert result.session_id == "project_123"
        assert result.final_response["phase"] == phase
        assert result.final_response["built_on"] == previous
        previous = result.final_response
        assert "project_123" in await manager.list_sessions()

    log = await manager.load("project_123")
    assert len(log.runs) == 3
    assert [run.start.context["phase"] for run in log.runs] == [
        "research",
        "analysis",
        "report",
    ]
    assert all(run.finished for run in log.runs)

    generated = await run("no session named", {"phase": "adhoc"})
    assert generated.success, generated.error
    assert generated.session_id and generated.session_id != "project_123"
    assert sorted(await manager.list_sessions()) == sorted(["project_123", generated.session_id])
    assert len((await manager.load(generated.session_id)).runs) == 1


# ---- 5. durability policy -------------------------------------------------------------------


@pytest.mark.parametrize("interval", [0, 3600])
async def test_durability_policy(storage: Storage, interval: float) -> None:
    seen_mid_run: list[list[dict[str, Any]]] = []

    def first(task: Any, context: Any) -> dict[str, Any]:
        return {"made_by": "First", "task": task}

    async def second(data: Any, context: Any) -> str:
        seen_mid_run.append(await records(storage, "durable"))
        return "stored"

    orchestra = pipeline_instance(
        storage, {"First": first, "Second": second}, auto_save_interval=interval
    )
    result = await wait(orchestra.execute("keep it", context={"session_id": "durable"}))
    assert result.success, result.error

    (mid_run,) = seen_mid_run
    if interval == 0:
        assert [r["t"] for r in mid_run] == ["run", "begin", "step"]
        assert mid_run[2]["branch_id"] == "b0"
        assert mid_run[2]["outcome"]["value"] == {"made_by": "First", "task": "keep it"}
    else:
        assert [r["t"] for r in mid_run] == ["run"]
    after = await records(storage, "durable")
    assert [r["t"] for r in after] == ["run", "begin", "step", "begin", "step", "end"]
    assert after[4]["outcome"]["value"] == "stored"
    assert after[-1]["success"] is True


# ---- 6. damaged and foreign logs, invalid ids -----------------------------------------------


async def test_a_damaged_record_is_reported_and_other_sessions_still_load(
    storage: Storage,
) -> None:
    pipeline = PausablePipeline(storage)
    orchestra = pipeline.orchestra
    for session_id in ("damaged", "healthy"):
        await pipeline.paused(session_id)

    await flip_byte(storage, "damaged", 2)
    with pytest.raises(SessionCorruptedError, match="damaged"):
        await orchestra.state_manager.load("damaged")  # type: ignore[union-attr]
    with pytest.raises(SessionCorruptedError, match="damaged"):
        await orchestra.resume_session("damaged")

    log = await orchestra.state_manager.load("healthy")  # type: ignore[union-attr]
    assert log.last_run is not None and not log.last_run.finished
    resumed = await wait(orchestra.resume_session("healthy"))
    assert resumed.success, resumed.error
    assert resumed.final_response == "job+first+second"
    assert dict(pipeline.calls) == {"First": 2, "Second": 1}
    assert sorted(await orchestra.list_sessions()) == ["damaged", "healthy"]


@pytest.mark.parametrize("backend_kind", ["file", "sqlite"])  # the servers append atomically
async def test_a_torn_last_record_is_ignored_and_appends_continue(
    backend_kind: str, tmp_path: Path
) -> None:
    storage = open_backend(backend_kind, tmp_path)
    await PausablePipeline(storage).paused("torn")
    intact = await storage.read("torn")
    close_backend(storage)

    # a crash in the middle of an append: half a record, never acknowledged
    record = '{"t":"step","branch":"b0","step":9,"pad":"%s"}' % ("x" * 1000)
    if backend_kind == "file":
        tear(first_segment(tmp_path / "state" / "torn"), [record], lost=lambda n: n >= 1)
    else:
        db = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO appends VALUES ('torn', ?, 1, ?)", (len(intact) + 1, record))
        db.close()  # never committed

    storage = open_backend(backend_kind, tmp_path)  # a new process after the crash
    try:
        assert await storage.read("torn") == intact
        pipeline = PausablePipeline(storage)
        orchestra = pipeline.orchestra
        checkpoint_id = await orchestra.create_checkpoint("torn", "after-the-crash")
        stored = await records(storage, "torn")
        assert len(stored) == len(intact) + 1
        assert stored[-1]["t"] == "checkpoint" and stored[-1]["checkpoint_id"] == checkpoint_id
        resumed = await wait(orchestra.resume_session("torn"))
        assert resumed.success, resumed.error
        assert resumed.final_response == "job+first+second"
        assert dict(pipeline.calls) == {"Second": 1}
    finally:
        close_backend(storage)


async def test_a_log_of_an_unknown_format_is_refused(storage: Storage) -> None:
    pipeline = PausablePipeline(storage)
    orchestra = pipeline.orchestra
    await pipeline.paused("today")
    lines = await records(storage, "today")
    lines[0]["format"] = 99  # written by a later release
    await storage.append(
        "tomorrow", [json.dumps(r, separators=(",", ":")) for r in lines], durable=True, after=0
    )

    with pytest.raises(SessionFormatError, match="tomorrow") as raised:
        await orchestra.state_manager.load("tomorrow")  # type: ignore[union-attr]
    assert "99" in str(raised.value)
    with pytest.raises(SessionFormatError, match="tomorrow"):
        await orchestra.resume_session("tomorrow")
    assert (await orchestra.state_manager.load("today")).last_run is not None  # type: ignore[union-attr]


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "", "x" * 200])
async def test_invalid_session_ids_are_refused(
    storage: Storage, tmp_path: Path, bad_id: str
) -> None:
    orchestra = pipeline_instance(storage, {"Only": lambda task, context: task})
    with pytest.raises(InvalidSessionIdError):
        await orchestra.state_manager.load(bad_id)  # type: ignore[union-attr]
    with pytest.raises(InvalidSessionIdError):
        await orchestra.resume_session(bad_id)
    with pytest.raises(InvalidSessionIdError):  # not silently replaced by a made-up id
        await orchestra.execute("job", context={"session_id": bad_id})
    assert await orchestra.list_sessions() == []
    assert not (tmp_path / "x").exists()  # nothing escaped the storage


# ---- 7. tool calls in doubt after a crash ---------------------------------------------------


@pytest.mark.parametrize("idempotent", [False, True])
async def test_a_tool_call_cut_off_by_a_crash(
    storage: Storage, backend_kind: str, tmp_path: Path, idempotent: bool
) -> None:
    mode = "idempotent" if idempotent else "once"
    code, output = await in_subprocess("tool", backend_kind, tmp_path, mode)
    assert code == -signal.SIGKILL, output  # killed inside the tool
    stored = await records(storage, TOOL_SESSION)
    assert stored[-1]["t"] == "tool_started"  # durable before the call, no result after it

    calls: list[tuple[int, str]] = []
    orchestra = tool_instance(
        storage, idempotent, lambda amount, currency: calls.append((amount, currency))
    )
    result = await wait(orchestra.resume_session(TOOL_SESSION))
    if idempotent:
        assert result.success, result.error
        assert result.final_response == "paid"
        assert calls == [(42, "EUR")]
        return
    assert result.success is False
    assert calls == []  # not run a second time
    (failed,) = result.get_failed_branches()
    assert failed.error_type == "ToolInDoubtError"
    for error in (failed.error, result.error):
        assert error is not None
        assert "charge_card" in error
        assert "'amount': 42" in error and "'currency': 'EUR'" in error


# ---- 8. deleting, finished sessions, no state manager ---------------------------------------


async def test_delete_session_and_resume_of_a_finished_session(storage: Storage) -> None:
    orchestra = pipeline_instance(storage, {"Only": lambda task, context: f"did {task}"})
    done = await wait(orchestra.execute("job", context={"session_id": "gone"}))
    assert done.success, done.error
    kept = await wait(orchestra.execute("job", context={"session_id": "kept"}))
    assert kept.success, kept.error
    assert sorted(await orchestra.list_sessions()) == ["gone", "kept"]

    # a finished session is not run again: resuming it gives the result its run gave (its
    # caller may have crashed before seeing it), and get_result gives it too
    length = len(await orchestra.state_manager.storage.read("gone"))  # type: ignore[union-attr]
    again = await wait(orchestra.resume_session("gone"))
    assert again == done
    assert [type(e) for e in again.events] == [type(e) for e in done.events]
    assert all(event.replayed for event in again.events)
    assert await orchestra.get_result("gone") == done
    assert len(await orchestra.state_manager.storage.read("gone")) == length  # nothing written

    assert await orchestra.delete_session("gone") is True
    assert await orchestra.list_sessions() == ["kept"]
    with pytest.raises(SessionNotFoundError, match="gone"):
        await orchestra.resume_session("gone")
    with pytest.raises(SessionNotFoundError):
        await orchestra.state_manager.load("gone")  # type: ignore[union-attr]
    assert await orchestra.delete_session("gone") is False
    assert (await orchestra.state_manager.load("kept")).last_run is not None  # type: ignore[union-attr]


async def test_an_instance_without_state_manager_has_no_sessions(storage: Storage) -> None:
    orchestra = OrchestraInstance(
        PatternConfig.pipeline(stages=[{"name": "only", "agents": ["Only"]}]),
        agent_registry=AgentRegistry([FunctionAgent("Only", lambda t, c: t, register=False)]),
        initial_config=QUIET,
    )
    result = await wait(orchestra.execute("job", context={"session_id": "volatile"}))
    assert result.success, result.error
    assert result.session_id == "volatile"
    with pytest.raises(ConfigurationError, match="state_manager"):
        await orchestra.resume_session("volatile")
    with pytest.raises(ConfigurationError, match="state_manager"):
        await orchestra.create_checkpoint("volatile")
    with pytest.raises(ConfigurationError, match="state_manager"):
        await orchestra.restore_checkpoint("volatile@checkpoint-1")
    with pytest.raises(ConfigurationError, match="state_manager"):
        await orchestra.list_sessions()
    assert await storage.list_sessions() == []  # nothing was stored anywhere


async def test_a_session_running_here_is_not_deleted(storage: Storage) -> None:
    """Another process's delete was refused, but a delete from the same process wiped the log
    of a run in progress, which then failed on its next append."""
    pipeline = PausablePipeline(storage)
    hold = pipeline.holds["busy"] = Hold()
    running = asyncio.create_task(pipeline.orchestra.execute("job", context={"session_id": "busy"}))
    await wait(hold.entered.wait())
    with pytest.raises(SessionError, match="'busy'"):
        await pipeline.orchestra.delete_session("busy")
    hold.release.set()
    result = await wait(running)
    assert result.success and result.final_response == "job+first+second", result.error
    assert await pipeline.orchestra.delete_session("busy") is True


async def test_a_session_is_rebuilt_only_with_the_topology_it_was_run_with(
    storage: Storage,
) -> None:
    pipeline = PausablePipeline(storage)
    await pipeline.paused("shaped")
    other = pipeline_instance(storage, {"First": lambda t, c: t, "Other": lambda t, c: t})
    for rebuild in (other.resume_session("shaped"), other.get_result("shaped")):
        with pytest.raises(SessionError, match=r"'shaped' was recorded with a different topology"):
            await rebuild
    nobody = OrchestraInstance(  # no agent at all: a session that does not exist has no result
        PatternConfig.pipeline(stages=[{"name": "only", "agents": ["Nobody"]}]),
        agent_registry=AgentRegistry([]),
        state_manager=StateManager(storage, auto_save_interval=0),
    )
    assert await nobody.get_result("no-such-session") is None


@pytest.mark.parametrize("backend_kind", ["file", "sqlite"])
async def test_a_record_over_the_size_limit_is_refused_before_it_is_written(
    backend_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A YAML alias bomb once wrote a 303 MB run header. Now the header is refused, naming
    the session and its largest field, and nothing already stored is lost; a step whose
    result is over the limit fails that step; a record over it found in a log is damage."""
    monkeypatch.setattr(records_module, "MAX_RECORD_CHARS", 4000)
    storage = open_backend(backend_kind, tmp_path)
    try:
        orchestra = pipeline_instance(storage, {"Only": lambda task, context: task[:10]})
        done = await wait(orchestra.execute("small", context={"session_id": "kept"}))
        assert done.success, done.error
        kept = await storage.read("kept")
        with pytest.raises(ConfigurationError, match=r"'huge'.*over the limit.*'task'") as info:
            await wait(orchestra.execute("x" * 5000, context={"session_id": "huge"}))
        assert "too large to store" in str(info.value)
        assert "register the type" not in str(info.value)  # no advice that cannot help
        assert not await storage.exists("huge") and await storage.read("kept") == kept

        big = pipeline_instance(storage, {"Only": lambda task, context: "y" * 5000})
        failed = await wait(big.execute("small", context={"session_id": "step"}))
        assert not failed.success and "over the limit" in str(failed.error)
        assert failed.metadata["error_type"] == RecordTooLargeError.__name__
        assert "register the type" not in str(failed.error)

        await storage.append("stored", ["z" * 5000], durable=True, after=0)
        with pytest.raises(SessionCorruptedError, match=r"'stored': record 1 .*over the limit"):
            await orchestra.state_manager.load("stored")  # type: ignore[union-attr]
    finally:
        close_backend(storage)
