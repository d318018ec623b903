"""Values the API accepts are stored by a durable run exactly as a run without a session takes
them: a subclass of a scalar where text or a number belongs, a step whose messages the log
cannot hold, dataclasses registered for storage, the run's context as agents get it. (Tool
call ids: test_openai_adapter.py.)"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
from pathlib import Path
from typing import Any

import pytest
from helpers import final, quiet
from test_sessions import wait

from orchestra import Action, Agent, AgentRegistry, BaseAgent, FunctionAgent, ScriptedModel
from orchestra.agents.contract import StepOutcome, StepRequest
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import FileStorageBackend, StateManager, register_type
from orchestra.models.base import Message

HUB_WEB = {"nodes": ["User", "Hub", "Web"], "edges": ["User -> Hub", "Hub <-> Web"]}


class Node(enum.StrEnum):
    HUB = "Hub"
    WEB = "Web"


def instance(tmp_path: Path, agents: list[Any], durable: bool = True) -> OrchestraInstance:
    return OrchestraInstance(
        HUB_WEB,
        agent_registry=AgentRegistry(agents),
        initial_config=quiet(),
        state_manager=StateManager(FileStorageBackend(tmp_path), auto_save_interval=0)
        if durable
        else None,
    )


def web() -> FunctionAgent:
    return FunctionAgent("Web", lambda request, context: f"web {request}", register=False)


async def kinds(orchestra: OrchestraInstance, session_id: str) -> list[str]:
    assert orchestra.state_manager is not None
    lines = await orchestra.state_manager.storage.read(session_id)
    return [json.loads(line)["t"] for line in lines]


@pytest.mark.parametrize("durable", [False, True], ids=["no-session", "session"])
async def test_str_enum_members_name_agents_and_targets_in_a_durable_run(
    tmp_path: Path, durable: bool
) -> None:
    """The API takes them (they are str); a durable run aborted with an internal error, or
    failed the step, as its log refused anything but an exact str."""
    hub = Agent(
        Node.HUB,
        ScriptedModel(
            [{"next_action": "invoke_agent", "action_input": [{"agent_name": "Web"}]}, final("ok")]
        ),
        register=False,
    )
    orchestra = instance(tmp_path, [hub, web()], durable)
    result = await wait(orchestra.execute("go", context={"session_id": "named"}))
    assert result.success and result.final_response == "ok", result.error
    invoker = FunctionAgent(
        "Hub",
        lambda request, context: (
            Action.invoke(Node.WEB, "x") if request == "go" else Action.final(request)
        ),
        register=False,
    )
    orchestra = instance(tmp_path / "fn", [invoker, web()], durable)
    result = await wait(orchestra.execute("go", context={"session_id": "invoked"}))
    assert result.success and result.final_response == "web x", result.error
    if durable:
        stored = await orchestra.get_result("invoked")
        assert stored is not None and stored.final_response == "web x"


async def test_a_str_enum_pause_reason_and_checkpoint_name_are_kept(tmp_path: Path) -> None:
    """The pausing step failed (the run ended failed, not paused), and create_checkpoint
    raised UnstorableValueError."""

    class Why(enum.StrEnum):
        LUNCH = "lunch"

    async def hub(request: Any, context: Any) -> Any:
        if request == "go":
            await orchestra.pause_session("lunch", Why.LUNCH)
            return Action.invoke("Web", "x")
        return Action.final(request)

    orchestra = instance(tmp_path, [FunctionAgent("Hub", hub, register=False), web()])
    result = await wait(orchestra.execute("go", context={"session_id": "lunch"}))
    assert result.metadata.get("paused") is True and result.error is None, result.error
    assert await orchestra.create_checkpoint("lunch", Why.LUNCH) == "lunch@lunch"
    stored = await orchestra.get_result("lunch")
    assert stored is not None and stored.metadata["pause_reason"] == "lunch"
    resumed = await wait(orchestra.resume_session("lunch"))
    assert resumed.success and resumed.final_response == "web x", resumed.error


class Scribbler(BaseAgent):
    """Adds a message the log cannot hold (content that is no text) to its conversation."""

    def __init__(self, fails: bool) -> None:
        self.name = "Hub"
        self.fails = fails

    async def step(self, request: StepRequest) -> StepOutcome:
        request.messages.append(Message("assistant", 42, name="Hub"))  # type: ignore[arg-type]
        if self.fails:
            raise ValueError("gave up")
        return StepOutcome(action=Action.final("done"))


@pytest.mark.parametrize("fails", [False, True], ids=["step-done", "step-failed"])
async def test_a_step_whose_messages_cannot_be_stored_fails_its_branch_not_the_run(
    tmp_path: Path, fails: bool
) -> None:
    """The step was refused, and its failure recorded with the same messages was refused
    again: the run aborted with an internal error. Now the failure is recorded without them."""
    orchestra = instance(tmp_path, [Scribbler(fails), web()])
    result = await wait(orchestra.execute("go", context={"session_id": "scribbled"}))
    assert not result.success
    (branch,) = result.branch_results
    assert branch.status == "failed"
    assert branch.error_type == ("AgentStepError" if fails else "UnstorableValueError")
    assert "internal error" not in (result.error or "")
    assert await kinds(orchestra, "scribbled") == ["run", "begin", "step_failed", "end"]
    stored = await orchestra.get_result("scribbled")
    assert stored is not None and stored.error == result.error


@dataclasses.dataclass
class Scaled:
    value: int
    factor: dataclasses.InitVar[int]

    def __post_init__(self, factor: int) -> None:
        self.value *= factor


@dataclasses.dataclass
class Labelled:
    text: str

    def __init__(self, raw: str) -> None:
        self.text = raw.strip()


@dataclasses.dataclass
class Counted:
    value: int
    scale: dataclasses.InitVar[int] = 1
    seen: int = dataclasses.field(init=False, default=0)


@pytest.mark.parametrize("cls", [Scaled, Labelled], ids=["init-var", "own-init"])
def test_a_dataclass_that_cannot_be_rebuilt_from_its_fields_is_refused_when_registered(
    cls: type,
) -> None:
    """It was taken: the live run stored it, and reading the log back failed (the session
    was lost)."""
    with pytest.raises(TypeError, match=rf"{cls.__name__}\(.*\) does not take exactly"):
        register_type(cls)
    register_type(cls, name=f"tests.{cls.__name__}", encode=vars, decode=lambda d: d)


def test_a_dataclass_whose_extra_parameters_have_defaults_is_taken() -> None:
    assert register_type(Counted) is Counted


async def test_the_context_is_a_dict_agents_can_read_copy_dump_and_return(tmp_path: Path) -> None:
    """It was a mappingproxy: json.dumps and copy.deepcopy raised, and returning it from a
    step failed the step in a durable run (a type the log cannot store)."""

    def reader(task: Any, context: Any) -> Any:
        copied = copy.deepcopy(context)
        copied["mine"] = True  # a copy is the agent's own
        return Action.final({"dumped": json.loads(json.dumps(context)), "context": context})

    orchestra = OrchestraInstance(
        {"nodes": ["Reader"], "edges": []},
        agent_registry=AgentRegistry([FunctionAgent("Reader", reader, register=False)]),
        initial_config=quiet(),
        state_manager=StateManager(FileStorageBackend(tmp_path), auto_save_interval=0),
    )
    context = {"session_id": "read", "region": {"name": "eu"}}
    result = await wait(orchestra.execute("go", context=context))
    assert result.success, result.error
    assert result.final_response == {"dumped": context, "context": context}
    stored = await orchestra.get_result("read")
    assert stored is not None and stored.final_response == result.final_response
    assert type(stored.final_response["context"]) is dict


async def test_an_agent_that_changes_the_context_fails_naming_why(tmp_path: Path) -> None:
    def writer(task: Any, context: Any) -> Any:
        context["seen"] = True
        return Action.final("wrote")

    result = await wait(
        instance(tmp_path, [FunctionAgent("Hub", writer, register=False), web()]).execute(
            "go", context={"session_id": "changed"}
        )
    )
    assert not result.success
    assert "the run's context is read-only" in (result.error or "")


@pytest.mark.parametrize("pause", [False, True], ids=["live", "paused-between"])
async def test_the_context_handed_on_by_a_step_is_the_next_agents_own(
    tmp_path: Path, pause: bool
) -> None:
    """Live, the next agent got the run's read-only context itself and failed to change its
    input; paused and resumed between the two steps, it got the plain dict the log gave back,
    and the run succeeded: the resumed run was not the live one."""

    async def hand_on(task: Any, context: Any) -> Any:
        if pause:
            await orchestra.pause_session("handed", "between")
        return context

    def change(work: Any, context: Any) -> Any:
        work["seen"] = True
        return Action.final(work)

    orchestra = OrchestraInstance(
        {"nodes": ["A", "B"], "edges": ["A -> B", "B -> User"]},
        agent_registry=AgentRegistry(
            [
                FunctionAgent("A", hand_on, register=False),
                FunctionAgent("B", change, register=False),
            ]
        ),
        initial_config=quiet(),
        state_manager=StateManager(FileStorageBackend(tmp_path), auto_save_interval=0),
    )
    result = await wait(orchestra.execute("go", context={"session_id": "handed", "k": 1}))
    if pause:
        assert result.metadata.get("paused") is True
        result = await wait(orchestra.resume_session("handed"))
    assert result.success, result.error
    assert result.final_response == {"session_id": "handed", "k": 1, "seen": True}
