"""The topology fingerprint a session log keeps: a rebuilt run is refused another topology, and
is never refused the same one written another way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import quiet
from test_sessions import wait

from orchestra import Action, AgentRegistry, ConvergencePolicy, FunctionAgent, PatternConfig
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import FileStorageBackend, StateManager
from orchestra.coordination.topology import Topology
from orchestra.coordination.wiring import topology_fingerprint
from orchestra.errors import SessionError

BASE: dict[str, Any] = {
    "nodes": ["User", "Hub", "W1", "W2"],
    "edges": ["User -> Hub", "Hub <-> W1", "Hub <-> W2"],
    "rules": ["parallel(W1, W2)"],
}


def fingerprint(topology: Any) -> tuple[str, ...]:
    return topology_fingerprint(Topology.coerce(topology).analyze())


def with_policy(policy: Any, **metadata: Any) -> dict[str, Any]:
    hub = {"name": "Hub", "metadata": {"convergence_policy": policy, **metadata}}
    return {**BASE, "nodes": ["User", hub, "W1", "W2"]}


def edge_to_b(**metadata: Any) -> dict[str, Any]:
    return {"nodes": ["A", "B"], "edges": [{"source": "A", "target": "B", "metadata": metadata}]}


def big(value: Any, context: Any) -> bool:
    return bool(value)


big_from_a_script = type(big)(big.__code__, {"__name__": "__main__"}, "big")


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (
            BASE,
            {**BASE, "edges": ["User -> Hub", "Hub -> W1", "W1 -> Hub", "Hub -> W2", "W2 -> Hub"]},
        ),
        (BASE, {**BASE, "rules": ["parallel(W2, W1)"]}),
        (BASE, {**BASE, "entry_point": "Hub"}),
        (
            PatternConfig.hub_and_spoke("Hub", ["W1", "W2"], parallel_spokes=True),
            {
                **BASE,
                "nodes": ["Hub", "W1", "W2"],
                "edges": BASE["edges"][1:],
                "entry_point": "Hub",
            },
        ),
        (
            with_policy({"k": 1, "on_insufficient": "fail"}),
            with_policy({"on_insufficient": "fail", "k": 1}),
        ),
        (with_policy({"k": 1}), with_policy(ConvergencePolicy(k=1))),
        (with_policy("any"), with_policy(ConvergencePolicy(k=1))),
        (with_policy("all"), with_policy(ConvergencePolicy())),
        (with_policy(0.5), with_policy(ConvergencePolicy(min_ratio=0.5))),
        (with_policy("any"), with_policy("any", owner="someone")),
        (edge_to_b(on_error=True), edge_to_b(on_error=1)),
        ({**BASE, "rules": ["timeout(60)"]}, {**BASE, "rules": ["timeout(60.0)"]}),
        (edge_to_b(condition=big), edge_to_b(condition=big_from_a_script)),
    ],
    ids=[
        "two-way-or-two-edges",
        "parallel-order",
        "entry-given-or-inferred",
        "pattern-or-dict",
        "policy-key-order",
        "policy-yaml-or-code",
        "any-or-k1",
        "all-or-default",
        "ratio-or-min-ratio",
        "other-metadata",
        "on-error-true-or-1",
        "timeout-int-or-float",
        "predicate-of-a-script-or-imported",
    ],
)
def test_forms_the_engine_reads_alike_have_one_fingerprint(one: Any, other: Any) -> None:
    """Each pair was refused as 'a different topology' when a session was resumed."""
    assert fingerprint(one) == fingerprint(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (BASE, {**BASE, "edges": ["User -> Hub", "Hub <-> W2", "Hub <-> W1"]}),
        (BASE, {**BASE, "rules": []}),
        (with_policy("any"), with_policy("all")),
        (edge_to_b(condition="ok"), edge_to_b(condition="done")),
        (edge_to_b(on_error=True), edge_to_b()),
        ({**BASE, "rules": ["max_steps(5)"]}, {**BASE, "rules": ["max_steps(6)"]}),
    ],
    ids=["edge-order", "rules", "policy", "condition", "error-route", "limit"],
)
def test_what_changes_where_work_goes_changes_the_fingerprint(one: Any, other: Any) -> None:
    assert fingerprint(one) != fingerprint(other)


async def test_a_session_is_not_rebuilt_with_its_edges_in_another_order(tmp_path: Path) -> None:
    """Routing tries a node's edges in order: rebuilt with them reversed, a recorded result
    landed on the other agent's branch, silently."""
    storage = FileStorageBackend(tmp_path)

    def instance(edges: list[str]) -> OrchestraInstance:
        route = FunctionAgent("Hub", lambda task, context: Action.final(task), register=False)
        return OrchestraInstance(
            {"nodes": ["User", "Hub", "W1", "W2"], "edges": ["User -> Hub", *edges, "Hub -> User"]},
            agent_registry=AgentRegistry(
                [route, *(FunctionAgent(n, lambda t, c: t, register=False) for n in ("W1", "W2"))]
            ),
            initial_config=quiet(),
            state_manager=StateManager(storage, auto_save_interval=0),
        )

    recorded = instance(["Hub -> W1", "Hub -> W2"])
    assert (await wait(recorded.execute("x", context={"session_id": "ordered"}))).success
    with pytest.raises(SessionError, match="different topology"):
        await instance(["Hub -> W2", "Hub -> W1"]).get_result("ordered")
    stored = await instance(["Hub -> W1", "Hub -> W2"]).get_result("ordered")
    assert stored is not None and stored.final_response == "x"
