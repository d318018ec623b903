"""Agents: registries (explicit and global), pools, tools, prompts and conversation memory."""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import pytest
from helpers import fn, invoke, llm, of, quiet, run

from orchestra import (
    Agent,
    AgentPool,
    AgentRegistry,
    BaseAgent,
    Edge,
    FunctionAgent,
    FunctionModel,
    Orchestra,
    OrchestraResult,
    PatternConfig,
    ScriptedModel,
    Topology,
)
from orchestra.agents import AgentReplacedWarning, StepOutcome, StepRequest
from orchestra.agents.contract import Action
from orchestra.coordination.engine import events as ev
from orchestra.errors import ConfigurationError
from orchestra.models import Message, StepInfo

pytestmark = pytest.mark.usefixtures("clean_global_registry")  # agents register by default


def echo(name: str) -> FunctionAgent:
    return fn(name, lambda request, context: request)


# ---- AgentRegistry ----------------------------------------------------------------------------


def test_registry_from_instances() -> None:
    a, b = echo("A"), echo("B")
    registry = AgentRegistry([a, b])
    assert registry.names() == ["A", "B"]
    assert registry.get("A") is a
    assert registry.get("B") is b
    assert registry.get("C") is None
    assert "A" in registry
    assert "C" not in registry
    assert 3 not in registry
    assert len(registry) == 2


def test_registry_register_unregister_clear() -> None:
    registry = AgentRegistry()
    assert registry.names() == []
    assert len(registry) == 0
    a = echo("A")
    registry.register(a)
    assert registry.get("A") is a
    assert "A" in registry
    registry.unregister("A")
    assert "A" not in registry
    registry.unregister("A")  # unregistering an absent name is harmless
    registry.register(a)
    registry.clear()
    assert registry.names() == []


def test_reregistering_a_name_replaces_with_a_warning() -> None:
    first, second = echo("A"), echo("A")
    registry = AgentRegistry([first])
    with pytest.warns(AgentReplacedWarning, match="'A'"):
        registry.register(second)
    assert registry.get("A") is second
    assert registry.names() == ["A"]


def test_duplicate_names_in_the_constructor_warn() -> None:
    first, second = echo("A"), echo("A")
    with pytest.warns(AgentReplacedWarning):
        registry = AgentRegistry([first, second])
    assert registry.get("A") is second


def test_registering_the_same_agent_again_is_silent() -> None:
    a = echo("A")
    registry = AgentRegistry([a])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry.register(a)
    assert registry.get("A") is a


class Nameless:
    pass


class EmptyName:
    name = ""


@pytest.mark.parametrize("thing", [Nameless(), EmptyName(), "A", 3, None])
def test_registering_something_without_a_name(thing: Any) -> None:
    with pytest.raises(TypeError, match="no name"):
        AgentRegistry().register(thing)
    with pytest.raises(TypeError, match="no name"):
        AgentRegistry([thing])


def test_agent_replaced_warning_is_a_user_warning() -> None:
    assert issubclass(AgentReplacedWarning, UserWarning)


# ---- the global default registry --------------------------------------------------------------


def test_default_registry_is_one_shared_instance() -> None:
    assert AgentRegistry.default() is AgentRegistry.default()


def test_agents_register_globally_by_default() -> None:
    agent = Agent("Writer", ScriptedModel([]))
    function = FunctionAgent("Shaper", lambda request, context: request)
    hidden = Agent("Hidden", ScriptedModel([]), register=False)
    hidden_function = FunctionAgent("HiddenFn", lambda request, context: request, register=False)
    registry = AgentRegistry.default()
    assert registry.get("Writer") is agent
    assert registry.get("Shaper") is function
    assert "Hidden" not in registry
    assert "HiddenFn" not in registry
    assert hidden.name == "Hidden" and hidden_function.name == "HiddenFn"


def test_global_reregistration_warns_and_replaces() -> None:
    Agent("Writer", ScriptedModel([]))
    with pytest.warns(AgentReplacedWarning):
        second = Agent("Writer", ScriptedModel([]))
    assert AgentRegistry.default().get("Writer") is second


async def test_run_without_agent_registry_uses_the_global_registry() -> None:
    Agent("Planner", ScriptedModel([invoke(("Writer", "outline"))]))
    FunctionAgent("Writer", lambda request, context: f"text for {request}")
    result = await Orchestra.run(
        "write",
        {"nodes": ["Planner", "Writer"], "edges": ["Planner -> Writer"]},
        execution_config=quiet(),
    )
    assert result.success, result.error
    assert result.final_response == "text for outline"


async def test_run_without_agent_registry_reports_missing_agents() -> None:
    Agent("Planner", ScriptedModel([]))
    result = await Orchestra.run(
        "write",
        {"nodes": ["Planner", "Writer"], "edges": ["Planner -> Writer"]},
        execution_config=quiet(),
    )
    assert not result.success
    assert result.metadata["error_type"] == "AgentNotFoundError"
    assert "'Writer'" in (result.error or "")
    assert "'Planner'" not in (result.error or "")


async def test_an_explicit_registry_wins_over_the_global_one() -> None:
    FunctionAgent("Solo", lambda request, context: "global")
    local = FunctionAgent("Solo", lambda request, context: "local", register=False)
    result = await Orchestra.run(
        "t",
        {"nodes": ["Solo"], "edges": []},
        agent_registry=AgentRegistry([local]),
        execution_config=quiet(),
    )
    assert result.final_response == "local"


async def test_an_explicit_registry_lacking_an_agent_does_not_fall_back_to_the_global_one() -> None:
    FunctionAgent("Solo", lambda request, context: "global")
    other = FunctionAgent("Other", lambda request, context: "other", register=False)
    topology = {"nodes": ["Solo"], "edges": []}
    missing = await Orchestra.run(
        "t", topology, agent_registry=AgentRegistry([other]), execution_config=quiet()
    )
    assert missing.metadata["error_type"] == "AgentNotFoundError"


async def test_an_explicit_empty_registry_does_not_fall_back_to_the_global_one() -> None:
    FunctionAgent("Solo", lambda request, context: "global")
    empty = await Orchestra.run(
        "t",
        {"nodes": ["Solo"], "edges": []},
        agent_registry=AgentRegistry(),
        execution_config=quiet(),
    )
    assert empty.final_response != "global"
    assert empty.success is False
    assert empty.metadata["error_type"] == "AgentNotFoundError"


# ---- AgentPool --------------------------------------------------------------------------------


class Worker(BaseAgent):
    """A code agent that records which instance served which branch."""

    served: list[tuple[str, int]]
    active = 0
    peak = 0

    def __init__(self, name: str = "W") -> None:
        self.name = name
        self.cleaned = False

    async def step(self, request: StepRequest) -> StepOutcome:
        Worker.served.append((request.info.branch_id, id(self)))
        Worker.active += 1
        Worker.peak = max(Worker.peak, Worker.active)
        try:
            await asyncio.sleep(0)  # let the other branches run (a yield, not a wait)
            if request.input.content == "fail":
                raise RuntimeError("worker failed")
            return StepOutcome(value=f"done {request.input.content}", by_code=True)
        finally:
            Worker.active -= 1


@pytest.fixture(autouse=True)
def reset_worker() -> None:
    Worker.served = []
    Worker.active = 0
    Worker.peak = 0


def dispatcher(items: Sequence[Any]) -> FunctionAgent:
    return fn(
        "Dispatch",
        lambda request, context: Action.invoke_parallel([("W", item) for item in items]),
    )


async def run_pool(pool: AgentPool, items: Sequence[Any], **options: Any) -> OrchestraResult:
    return await run(
        "go",
        {"nodes": ["Dispatch", "W"], "edges": ["Dispatch -> W"]},
        [dispatcher(items), pool],
        **options,
    )


def test_pool_instances_do_not_register_but_the_pool_does() -> None:
    pool = AgentPool(lambda: Agent("Analyst", ScriptedModel([])), 3)
    registry = AgentRegistry.default()
    assert registry.names() == ["Analyst"]
    assert registry.get("Analyst") is pool
    assert pool.name == "Analyst"
    assert pool.size == 3
    assert len(pool.instances) == 3
    assert len({id(instance) for instance in pool.instances}) == 3
    assert pool.available == 3


def test_pool_with_register_false_registers_nothing() -> None:
    AgentPool(lambda: Agent("Analyst", ScriptedModel([])), 2, register=False)
    assert AgentRegistry.default().names() == []


def test_pool_accepts_an_agent_class_as_factory() -> None:
    pool = AgentPool(Worker, 2, register=False)
    assert all(isinstance(instance, Worker) for instance in pool.instances)


def test_agents_built_after_a_pool_register_again() -> None:
    AgentPool(lambda: Agent("Analyst", ScriptedModel([])), 2)
    later = Agent("Writer", ScriptedModel([]))
    assert AgentRegistry.default().get("Writer") is later


def test_pool_with_mismatched_names() -> None:
    counter = iter(range(10))
    with pytest.raises(ConfigurationError, match="share one name"):
        AgentPool(lambda: Worker(f"W{next(counter)}"), 2, register=False)
    assert AgentRegistry.default().names() == []


@pytest.mark.parametrize("size", [0, -1, True, 1.5, "2", None])
def test_pool_size_must_be_a_positive_integer(size: Any) -> None:
    with pytest.raises(ConfigurationError, match="size"):
        AgentPool(Worker, size, register=False)


async def test_parallel_branches_each_lease_their_own_instance() -> None:
    pool = AgentPool(Worker, 3, register=False)
    result = await run_pool(pool, [1, 2, 3])
    assert result.success, result.error
    assert [item["response"] for item in result.final_response] == ["done 1", "done 2", "done 3"]
    assert sorted(branch for branch, _ in Worker.served) == ["b1", "b2", "b3"]
    instances = [instance for _, instance in Worker.served]
    assert len(set(instances)) == 3
    assert set(instances) == {id(instance) for instance in pool.instances}
    assert Worker.peak == 3  # they really ran side by side
    assert pool.available == 3


async def test_a_pool_smaller_than_the_fan_out_makes_branches_wait() -> None:
    pool = AgentPool(Worker, 2, register=False)
    result = await run_pool(pool, [1, 2, 3, 4, 5])
    assert result.success, result.error
    assert len(result.final_response) == 5
    assert {item["status"] for item in result.final_response} == {"completed"}
    assert len(Worker.served) == 5
    assert Worker.peak <= 2
    assert {instance for _, instance in Worker.served} <= {id(i) for i in pool.instances}
    assert pool.available == 2


async def test_a_pool_of_one_serves_every_branch_in_turn() -> None:
    pool = AgentPool(Worker, 1, register=False)
    result = await run_pool(pool, ["a", "b", "c"])
    assert result.success, result.error
    assert Worker.peak == 1
    assert {instance for _, instance in Worker.served} == {id(pool.instances[0])}
    assert pool.available == 1


async def test_every_lease_is_released_when_the_run_fails() -> None:
    pool = AgentPool(Worker, 2, register=False)
    result = await run_pool(pool, [1, "fail", 3, 4])
    assert not result.success
    assert result.metadata["error_type"] == "ConvergenceError"
    assert pool.available == 2
    # the pool is usable again by the next run
    again = await run_pool(pool, [1, 2])
    assert again.success, again.error
    assert pool.available == 2


async def test_every_lease_is_released_when_the_run_hits_a_limit() -> None:
    pool = AgentPool(Worker, 2, register=False)
    result = await run_pool(pool, [1, 2, 3, 4], max_steps=3)
    assert not result.success
    assert result.metadata["error_type"] == "StepLimitError"
    assert pool.available == 2


async def test_pool_of_llm_agents_in_a_hub_and_spoke() -> None:
    def analyst() -> Agent:
        return Agent("Analyst", FunctionModel(lambda messages, info: f"seen by {info.branch_id}"))

    pool = AgentPool(analyst, 2, register=False)
    hub = llm("Hub", ScriptedModel([invoke(("Analyst", "x"), ("Analyst", "y")), "summary"]))
    topology = Topology(
        nodes=["Hub", "Analyst", "Other"],
        edges=["Hub <-> Analyst", "Hub <-> Other"],
        rules=["parallel(Analyst, Other)"],
        entry_point="Hub",
    )
    result = await run("t", topology, [hub, pool, echo("Other")])
    assert result.success, result.error
    assert result.final_response == "summary"
    assert pool.available == 2
    results = hub.model.calls[1].messages[-1].content  # type: ignore[attr-defined]
    assert "seen by b1" in results and "seen by b2" in results


class SyncCleanup(Worker):
    def cleanup(self) -> None:
        self.cleaned = True


class AsyncCleanup(Worker):
    async def cleanup(self) -> None:
        await asyncio.sleep(0)
        self.cleaned = True


async def test_cleanup_calls_sync_and_async_hooks_and_closes_the_pool() -> None:
    kinds = iter([SyncCleanup, AsyncCleanup, Worker])
    pool = AgentPool(lambda: next(kinds)(), 3, register=False)
    leased = await pool.acquire()
    pool.release(leased)
    await pool.cleanup()
    assert pool.closed
    assert [instance.cleaned for instance in pool.instances] == [True, True, False]  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="cleaned up"):
        await pool.acquire()


async def test_release_of_a_foreign_instance_is_refused() -> None:
    pool = AgentPool(Worker, 1, register=False)
    with pytest.raises(ConfigurationError, match="does not belong"):
        pool.release(Worker())


async def test_a_run_with_a_cleaned_up_pool_reports_a_configuration_error() -> None:
    pool = AgentPool(Worker, 2, register=False)
    await pool.cleanup()
    result = await run_pool(pool, [1, 2])
    assert not result.success
    assert "cleaned up" in (result.error or "")
    # using a closed pool is the caller's mistake, not an internal failure of Orchestra
    assert result.metadata["error_type"] == "ConfigurationError"


# ---- tools ------------------------------------------------------------------------------------

MAIN_THREAD = threading.get_ident()


def add(a: int, b: int) -> dict[str, Any]:
    return {"sum": a + b, "in_main_thread": threading.get_ident() == MAIN_THREAD}


async def shout(text: str) -> str:
    await asyncio.sleep(0)
    return text.upper()


def broken(reason: str) -> str:
    raise ValueError(f"tool broke: {reason}")


def tool_call(*calls: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "next_action": "call_tool",
        "action_input": [{"name": name, "arguments": arguments} for name, arguments in calls],
    }


async def run_tools_agent(replies: list[Any]) -> tuple[OrchestraResult, ScriptedModel]:
    model = ScriptedModel(replies)
    agent = llm("Tooler", model, tools=[add, shout, broken])
    result = await run("compute", {"nodes": ["Tooler"], "edges": []}, [agent])
    return result, model


async def test_tools_run_and_results_come_back_as_a_tool_message() -> None:
    result, model = await run_tools_agent(
        [tool_call(("add", {"a": 2, "b": 3}), ("shout", {"text": "hi"})), "the sum is 5"]
    )
    assert result.success, result.error
    assert result.final_response == "the sum is 5"
    first, second = model.calls[1].messages[-2:]
    assert (first.role, first.name, first.tool_call_id) == ("tool", "add", "call_0")
    assert first.content == 'ok: {"sum": 5, "in_main_thread": false}'  # sync tools run in a thread
    assert (second.role, second.name, second.tool_call_id) == ("tool", "shout", "call_1")
    assert second.content == "ok: HI"
    # each call's events come as it starts and as it finishes (the calls run concurrently)
    started = [(e.tool, e.call_id) for e in of(result, ev.ToolCallStarted)]
    assert started == [("add", "call_0"), ("shout", "call_1")]
    completed = of(result, ev.ToolCallCompleted)
    assert sorted((e.tool, e.call_id, e.ok) for e in completed) == [
        ("add", "call_0", True),
        ("shout", "call_1", True),
    ]
    # a tool follow-up is a step, not an invocation
    assert result.total_steps == 2
    assert result.get_agent_invocation_count("Tooler") == 1


async def test_a_raising_tool_is_reported_to_the_model_not_a_crash() -> None:
    result, model = await run_tools_agent(
        [tool_call(("broken", {"reason": "disk full"}), ("add", {"a": 1, "b": 1})), "recovered"]
    )
    assert result.success, result.error
    assert result.final_response == "recovered"
    broken, added = model.calls[1].messages[-2:]
    assert (broken.name, broken.content) == ("broken", "error: ValueError: tool broke: disk full")
    assert (added.name, added.tool_call_id) == ("add", "call_1")
    assert added.content.startswith("ok:")
    completed = of(result, ev.ToolCallCompleted)  # the two run at once, on threads
    assert {e.tool: e.ok for e in completed} == {"broken": False, "add": True}


async def test_a_tool_called_with_wrong_arguments_is_reported_to_the_model() -> None:
    result, model = await run_tools_agent([tool_call(("add", {"a": 1})), "ok"])
    assert result.success, result.error
    message = model.calls[1].messages[-1]
    assert (message.name, message.tool_call_id) == ("add", "call_0")
    assert (
        message.content == "error: ToolError: invalid arguments for tool 'add': b: Field required"
    )


async def test_an_unknown_tool_steers_the_model() -> None:
    result, model = await run_tools_agent([tool_call(("delete_all", {})), "fine"])
    assert result.success, result.error
    assert result.get_metrics()["rejected_actions"] == 1
    steering = model.calls[1].messages[-1]
    assert "no tool 'delete_all'" in steering.content
    assert "call_tool with one of: add, shout, broken" in steering.content


def test_tools_are_named_by_function_name() -> None:
    agent = Agent("T", ScriptedModel([]), tools=[add, shout], register=False)
    assert [spec.name for spec in agent.tool_specs] == ["add", "shout"]
    assert Agent("U", ScriptedModel([]), register=False).tool_specs == ()
    assert echo("F").tool_specs == ()


# ---- constructor checks -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", None, 3, ["A"]])
def test_agent_name_must_be_a_non_empty_string(name: Any) -> None:
    with pytest.raises(TypeError, match="name"):
        Agent(name, ScriptedModel([]), register=False)


@pytest.mark.parametrize("model", [None, "gpt-4", object(), lambda messages, info: "x"])
def test_agent_model_must_have_complete(model: Any) -> None:
    with pytest.raises(TypeError, match="complete"):
        Agent("A", model, register=False)


def test_agent_tools_must_be_callable() -> None:
    with pytest.raises(TypeError):
        Agent("A", ScriptedModel([]), tools=["search"], register=False)  # type: ignore[list-item]


@pytest.mark.parametrize("name", ["", None, 3])
def test_function_agent_name_must_be_a_non_empty_string(name: Any) -> None:
    with pytest.raises(TypeError, match="name"):
        FunctionAgent(name, lambda request, context: request, register=False)


@pytest.mark.parametrize("fn", [None, "fn", 3])
def test_function_agent_fn_must_be_callable(fn: Any) -> None:
    with pytest.raises(TypeError, match="callable"):
        FunctionAgent("F", fn, register=False)


def test_failed_construction_registers_nothing() -> None:
    with pytest.raises(TypeError):
        Agent("A", object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        FunctionAgent("F", 3)  # type: ignore[arg-type]
    assert AgentRegistry.default().names() == []


def test_base_agent_is_abstract() -> None:
    with pytest.raises(TypeError):
        BaseAgent()  # type: ignore[abstract]


# ---- the LLM agent's system prompt ------------------------------------------------------------


async def test_system_prompt_names_peers_actions_labels_and_context() -> None:
    boss_model = ScriptedModel(["done"])
    boss = Agent("Boss", boss_model, instruction="You run the team.", tools=[add], register=False)
    topology = Topology(
        nodes=["User", "Boss", "Helper", "Guarded"],
        edges=[
            "User -> Boss",
            "Boss -> User",
            "Boss <-> Helper",
            Edge("Boss", "Guarded", metadata={"condition": "approved"}),
            "Guarded -> User",
        ],
        rules=["parallel(Helper, Guarded)"],
    )
    result = await run(
        "plan the launch",
        topology,
        [boss, echo("Helper"), echo("Guarded")],
        context={"deadline": "friday", "budget": 10},
    )
    assert result.success, result.error
    system = boss_model.calls[0].messages[0]
    assert system.role == "system"
    prompt = system.content
    assert "You are Boss." in prompt
    assert "You run the team." in prompt
    assert "Helper (answers back to you)" in prompt
    assert 'Guarded (needs "label": "approved")' in prompt
    assert "in parallel: Helper, Guarded" in prompt
    for action in ("invoke_agent", "final_response", "ask_user", "call_tool"):
        assert f"- {action}" in prompt
    assert "Tools: add." in prompt
    assert 'Shared context:\n{"deadline": "friday", "budget": 10}' in prompt
    task = boss_model.calls[0].messages[1]
    assert (task.role, task.content) == ("user", "[Task]\nplan the launch")
    info = boss_model.calls[0].info
    assert info.context == {"deadline": "friday", "budget": 10}


async def test_system_prompt_leaves_out_what_the_agent_may_not_do() -> None:
    model = ScriptedModel([invoke(("Next", "x"))])
    first = llm("First", model)
    result = await run(
        "t", {"nodes": ["First", "Next"], "edges": ["First -> Next"]}, [first, echo("Next")]
    )
    assert result.success, result.error
    prompt = model.calls[0].messages[0].content
    assert "Peers: Next." in prompt
    assert "final_response" not in prompt
    assert "ask_user" not in prompt
    assert "call_tool" not in prompt
    assert "Shared context" not in prompt
    assert "answers back" not in prompt


async def test_system_prompt_shows_each_runs_own_context() -> None:
    model = FunctionModel(lambda messages, info: messages[0].content)
    agent = llm("Solo", model)
    for number in range(50):
        result = await run("t", {"nodes": ["Solo"], "edges": []}, [agent], context={"run": number})
        assert f'{{"run": {number}}}' in result.final_response, f"run {number}"


async def test_the_session_id_is_not_in_the_prompt_so_sessions_run_alike() -> None:
    """The demo's writer saw its generated session id in the prompt and, in one session of
    ten, asked the user instead of writing its report."""
    seen: list[Any] = []

    def answer(messages: Sequence[Message], info: Any) -> str:
        seen.append(dict(info.context))
        return messages[0].content

    agent = llm("Solo", FunctionModel(answer))
    prompts = []
    for session in ("first", "second"):
        context = {"session_id": session, "phase": "draft"}
        result = await run("t", {"nodes": ["Solo"], "edges": []}, [agent], context=context)
        assert result.session_id == session
        assert seen[-1] == context  # agents' code still sees it
        prompts.append(result.final_response)
    assert prompts[0] == prompts[1]
    assert 'Shared context:\n{"phase": "draft"}' in prompts[0]


async def test_a_dict_task_reaches_an_llm_agent_as_json_text() -> None:
    model = ScriptedModel(["ok"])
    agent = llm("Solo", model)
    await run(
        {"request": "analyse", "sectors": ["tech"]}, {"nodes": ["Solo"], "edges": []}, [agent]
    )
    assert model.calls[0].messages[1].content == (
        '[Task]\n{"request": "analyse", "sectors": ["tech"]}'
    )


# ---- conversation memory ----------------------------------------------------------------------


def conversation(messages: Sequence[Message]) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in messages if m.role != "system"]


async def test_an_agent_called_twice_in_a_branch_remembers() -> None:
    seen: list[tuple[str, list[tuple[str, str]]]] = []

    def spoke(messages: Sequence[Message], info: StepInfo) -> str:
        seen.append((info.branch_id, conversation(messages)))
        return f"answer {len(seen)}"

    hub_model = ScriptedModel([invoke(("Spoke", "first")), invoke(("Spoke", "second")), "done"])
    hub = llm("Hub", hub_model)
    result = await run(
        "t",
        PatternConfig.hub_and_spoke("Hub", ["Spoke"]),
        [hub, llm("Spoke", FunctionModel(spoke))],
    )
    assert result.success, result.error
    assert seen == [
        ("b0", [("user", "[Request from Hub]\nfirst")]),
        (
            "b0",
            [
                ("user", "[Request from Hub]\nfirst"),
                ("assistant", "answer 1"),
                ("user", "[Request from Hub]\nsecond"),
            ],
        ),
    ]
    # the hub also remembers: its last call holds the whole exchange
    assert conversation(hub_model.calls[2].messages) == [
        ("user", "[Task]\nt"),
        ("assistant", hub_model.calls[1].messages[2].content),
        ("user", "[Response from Spoke]\nanswer 1"),
        ("assistant", hub_model.calls[2].messages[4].content),
        ("user", "[Response from Spoke]\nanswer 2"),
    ]


async def test_the_same_agent_in_parallel_branches_has_separate_conversations() -> None:
    seen: dict[str, list[list[tuple[str, str]]]] = {}

    def spoke(messages: Sequence[Message], info: StepInfo) -> str:
        seen.setdefault(info.branch_id, []).append(conversation(messages))
        return f"answer in {info.branch_id}"

    hub = llm(
        "Hub",
        ScriptedModel(
            [invoke(("Spoke", "warm-up")), invoke(("Spoke", "p1"), ("Spoke", "p2")), "done"]
        ),
    )
    topology = Topology(
        nodes=["Hub", "Spoke", "Other"],
        edges=["Hub <-> Spoke", "Hub <-> Other"],
        rules=["parallel(Spoke, Other)"],
        entry_point="Hub",
    )
    result = await run("t", topology, [hub, llm("Spoke", FunctionModel(spoke)), echo("Other")])
    assert result.success, result.error
    assert seen == {
        "b0": [[("user", "[Request from Hub]\nwarm-up")]],
        "b1": [[("user", "[Request from Hub]\np1")]],
        "b2": [[("user", "[Request from Hub]\np2")]],
    }
