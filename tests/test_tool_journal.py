"""The tool journal of a durable session: a tool runs only once its start is durable, and a
resumed run takes only results journaled by its own run, never an earlier run's.

Every test runs against all four storage backends (see conftest.py). A crash is simulated by
copying a prefix of a finished session's log into a new session (``crash_copy``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from helpers import Watched, crash_copy, final, kinds, quiet, stamping_instance
from storage_backends import Storage
from test_sessions import wait

from orchestra import Action, Agent, AgentRegistry, BaseAgent, FunctionModel, tool
from orchestra.agents.contract import InputKind, StepOutcome, StepRequest
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import StateManager
from orchestra.models import Message, StepInfo
from orchestra.models.base import ToolCall, ToolSpec


async def test_a_tool_runs_only_after_its_start_is_durable(storage: Storage) -> None:
    """Each of three parallel tool calls runs only once its ``tool_started`` record is
    durable. (SessionWriter.flush used to return early to a caller whose record another
    caller had taken out of the buffer but not yet written: the third call ran before its
    start was durable, so a crash then would run the non-idempotent tool again.)"""
    watched = Watched(storage)
    executed: list[str] = []
    too_early: list[str] = []

    def check() -> None:
        started = sum(1 for r in watched.durable if r["t"] == "tool_started")
        if started < len(executed):
            too_early.append(executed[-1])

    orchestra = stamping_instance(watched, 3, executed, check)
    result = await wait(orchestra.execute("stamp", context={"session_id": "stamps"}))
    assert result.success, result.error
    assert sorted(executed) == ["d0", "d1", "d2"]
    assert too_early == []


async def test_a_resumed_run_does_not_take_an_earlier_runs_tool_result(storage: Storage) -> None:
    """The tool journal is keyed by (branch, step, call id) within one run of a session: the
    second run of a session has the same keys as the first, so when it crashed between its
    step and its tool call, its resume used to return the first run's result and never run
    the tool of the second."""
    charged: list[int] = []

    def till() -> OrchestraInstance:
        @tool
        def charge_card(amount: int) -> str:
            """Charge the customer's card.

            Args:
                amount: how much to charge
            """
            charged.append(amount)
            return f"charged {amount}"

        def cashier(messages: Sequence[Message], info: StepInfo) -> dict[str, Any]:
            if messages[-1].role == "tool":
                return final(messages[-1].content)
            amount = int(messages[-1].content.split()[-1])
            return {
                "next_action": "call_tool",
                "action_input": [{"name": "charge_card", "arguments": {"amount": amount}}],
            }

        return OrchestraInstance(
            {"nodes": ["User", "Cashier"], "edges": ["User -> Cashier", "Cashier -> User"]},
            agent_registry=AgentRegistry(
                [Agent("Cashier", FunctionModel(cashier), tools=[charge_card], register=False)]
            ),
            initial_config=quiet(),
            state_manager=StateManager(storage, auto_save_interval=0),
        )

    first = await wait(till().execute("charge 42", context={"session_id": "till"}))
    assert first.success, first.error
    second = await wait(till().execute("charge 7", context={"session_id": "till"}))
    assert second.success, second.error
    lines = await storage.read("till")
    run_two = len(lines) - kinds(lines)[::-1].index("run") - 1
    assert kinds(lines)[run_two : run_two + 3] == ["run", "begin", "step"]

    # a crash in the second run after its step was recorded, before its tool started
    await crash_copy(storage, "till", "till-crashed", run_two + 3)
    charged.clear()
    resumed = await wait(till().resume_session("till-crashed"))
    assert resumed.success, resumed.error
    assert charged == [7]
    assert "charged 7" in str(resumed.final_response)


class HandBuilt(BaseAgent):
    """An agent of code that builds its tool calls by hand, with no ids (ToolCall's default),
    or one id twice."""

    def __init__(self) -> None:
        self.name = "Clerk"
        self.ran: list[str] = []

    async def step(self, request: StepRequest) -> StepOutcome:
        if request.input.kind is InputKind.TOOL_RESULTS:
            results = [(item["call_id"], item["result"]) for item in request.input.content]
            return StepOutcome(action=Action.final(results), by_code=True)
        calls = [
            ToolCall("a", {}),
            ToolCall("b", {}),
            ToolCall("c", {}, "x"),
            ToolCall("d", {}, "x"),
        ]
        return StepOutcome(action=Action.call_tools(calls), by_code=True)

    @property
    def tool_specs(self) -> tuple[ToolSpec, ...]:
        return tuple(ToolSpec(name, f"tool {name}", {"type": "object"}) for name in "abcd")

    async def call_tool(self, call: ToolCall) -> Any:
        self.ran.append(call.name)
        return f"{call.name} done"


async def test_calls_built_with_no_id_or_one_id_twice_are_each_run_once(storage: Storage) -> None:
    """Calls sharing an id were one call to the engine: the first ran, the others never did and
    were given its result."""
    clerk = HandBuilt()
    orchestra = OrchestraInstance(
        {"nodes": ["Clerk"], "edges": []},
        agent_registry=AgentRegistry([clerk]),
        initial_config=quiet(),
        state_manager=StateManager(storage, auto_save_interval=0),
    )
    result = await wait(orchestra.execute("go", context={"session_id": "by-hand"}))
    assert result.success, result.error
    assert sorted(clerk.ran) == ["a", "b", "c", "d"]
    assert result.final_response == [
        ("call_0", "a done"),
        ("call_1", "b done"),
        ("x", "c done"),
        ("call_3", "d done"),
    ]
    stored = await orchestra.get_result("by-hand")
    assert stored is not None and stored.final_response == result.final_response
