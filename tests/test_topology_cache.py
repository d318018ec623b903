"""A run's topology setup, kept between runs: a plain topology's analysis and fingerprint by
its shape, a plain topology dict's topology by its content. What is kept is never stale (a
topology or dict changed between runs is read anew), never shared by two topologies that
differ, and bounded (thousands of topologies built in a loop do not stay alive)."""

from __future__ import annotations

import asyncio
import gc
import itertools
import weakref
from typing import Any

import pytest
from helpers import final, invoke, quiet

from orchestra import Agent, AgentRegistry, Orchestra, ScriptedModel
from orchestra.coordination.topology import Timeout, Topology, TopologyAnalysis
from orchestra.coordination.topology.analysis import PLAIN_CACHE_SIZE, plain_analysis
from orchestra.coordination.topology.shared import SHARED_CACHE_SIZE, shared_topology
from orchestra.coordination.wiring import topology_fingerprint
from orchestra.errors import TopologyError


def fresh(topology: Topology) -> TopologyAnalysis:
    """The analysis made without any cache."""
    return TopologyAnalysis._inspect(topology)


def uncached_fingerprint(topology: Topology) -> tuple[str, ...]:
    return topology_fingerprint(fresh(topology))


def big(value: Any, context: Any) -> bool:
    return bool(value)


RING = {"nodes": ["A", "B", "C"], "edges": ["A -> B", "B -> C", "C -> A"], "entry_point": "A"}

VARIANTS: list[dict[str, Any]] = [
    RING,
    {**RING, "edges": ["B -> C", "A -> B", "C -> A"]},  # the same edges, tried in another order
    {**RING, "edges": ["A -> B", "B -> C", "C -> A", "A -> C"]},
    {**RING, "entry_point": "B"},
    {**RING, "exit_points": ["C"]},
    {**RING, "nodes": ["C", "B", "A"]},
    {**RING, "rules": ["max_steps(3)"]},
    {**RING, "rules": ["max_steps(4)"]},
    {**RING, "rules": [Timeout(1)]},
    {**RING, "rules": [Timeout(1.0)]},  # equal to Timeout(1), but a float
    {**RING, "rules": ["budget(A, max_tokens=10)"]},
    {**RING, "edges": ["A -> B", "A -> C", "B -> C", "C -> A"], "rules": ["parallel(B, C)"]},
    {**RING, "nodes": ["User", "A", "B", "C"], "edges": ["User -> A", *RING["edges"]]},
    {**RING, "nodes": ["A", {"name": "B", "metadata": {"convergence_policy": "any"}}, "C"]},
    {**RING, "edges": [*RING["edges"][1:], {"source": "A", "target": "B", "metadata": {}}]},
    {
        **RING,
        "edges": [*RING["edges"][1:], {"source": "A", "target": "B", "metadata": {"c": big}}],
    },
]


def test_every_topology_gets_the_analysis_and_fingerprint_it_would_get_uncached() -> None:
    analyses = []
    for variant in VARIANTS:
        for _ in range(2):  # the second from the cache
            topology = Topology.from_dict(variant)
            analysis = topology.analyze()
            assert analysis == fresh(topology), variant
            assert type(analysis.timeout) is type(fresh(topology).timeout), variant
            assert topology_fingerprint(analysis) == uncached_fingerprint(topology), variant
        analyses.append(analysis)
    shapes = [analysis.shape for analysis in analyses if analysis.shape is not None]
    assert len(shapes) == len(set(shapes)) == len(VARIANTS) - 2  # those with metadata: none


def test_equal_plain_topologies_share_an_analysis_but_each_sees_its_own_nodes() -> None:
    first, second = Topology.from_dict(RING), Topology.from_dict(RING)
    hits = plain_analysis.cache_info().hits
    one, other = first.analyze(), second.analyze()
    assert plain_analysis.cache_info().hits > hits
    assert one.shape == other.shape
    assert one.node("A") is first.node("A") and other.node("A") is second.node("A")
    assert one.edge("A", "B") is first.edge("A", "B")
    assert other.out_edges("A") == (second.edge("A", "B"),)
    assert other.out_edges("A")[0] is second.edge("A", "B")


def test_a_topology_changed_after_its_analysis_is_analysed_anew() -> None:
    topology = Topology.from_dict(RING)
    before = topology.analyze()
    topology.add_edge("A -> C")
    after = topology.analyze()
    assert after.successors("A") == ("B", "C")
    assert after == fresh(topology) and after != before
    assert topology_fingerprint(after) != topology_fingerprint(before)
    topology.remove_edge("A", "C")
    topology.entry_point = "B"
    assert topology.analyze().entries == ("B",)


def test_a_node_metadata_changed_in_place_after_the_analysis_is_in_its_fingerprint() -> None:
    topology = Topology.from_dict(RING)
    analysis = topology.analyze()
    plain = topology_fingerprint(analysis)
    topology.node("B").metadata["convergence_policy"] = "any"  # no mutator: the same analysis
    assert topology.analyze() is analysis
    changed = topology_fingerprint(analysis)
    assert changed != plain and any(line.startswith("policy B") for line in changed)


def test_an_invalid_plain_topology_is_refused_at_each_analysis_as_uncached() -> None:
    data = {"nodes": ["A", "B"], "edges": ["A -> B", "B -> A"]}
    with pytest.raises(TopologyError) as expected:
        fresh(Topology.from_dict(data))
    for _ in range(2):
        with pytest.raises(TopologyError) as refused:
            Topology.from_dict(data).analyze()
        assert refused.value.problems == expected.value.problems
    for _ in range(2):  # a parse error is not remembered either
        with pytest.raises(TopologyError, match="cannot parse edge"):
            Topology(nodes=["A"], edges=["A -> "])


def test_a_plain_dict_shares_its_topology_and_a_changed_dict_gets_its_new_one() -> None:
    data = {"nodes": ["A", "B"], "edges": ["A -> B"], "entry_point": "A"}
    shared = shared_topology(data)
    assert shared_topology(dict(data)) is shared
    data["edges"].append("B -> A")  # changed in place: the same dict, the same list
    changed = shared_topology(data)
    assert changed is not shared and changed.edge("B", "A") is not None
    assert shared.edge("B", "A") is None
    with_metadata = {**data, "metadata": {"owner": "me"}}
    assert shared_topology(with_metadata) is not shared_topology(with_metadata)
    assert shared_topology(with_metadata).metadata == {"owner": "me"}


def chain(*names: str) -> AgentRegistry:
    """Agents handing the work on along ``names``, the last one answering."""
    return AgentRegistry(
        [
            Agent(name, ScriptedModel([invoke((after, "go"))]), register=False)
            for name, after in itertools.pairwise(names)
        ]
        + [Agent(names[-1], ScriptedModel([final("done")]), register=False)]
    )


async def run_path(topology: Any, registry: AgentRegistry) -> list[str]:
    result = await Orchestra.run(
        "task", topology, agent_registry=registry, execution_config=quiet()
    )
    assert result.success, result.error
    return [step["agent"] for step in result.get_execution_trace()]


@pytest.mark.parametrize("form", ["dict", "Topology"])
def test_a_topology_changed_between_runs_is_run_as_it_now_is(form: str) -> None:
    data = {"nodes": ["A", "B"], "edges": ["A -> B"], "entry_point": "A"}
    topology: Any = data if form == "dict" else Topology.from_dict(data)
    assert asyncio.run(run_path(topology, chain("A", "B"))) == ["A", "B"]
    if form == "dict":  # changed in place: only its content says so
        data["nodes"].append("C")
        data["edges"].append("B -> C")
    else:
        topology.add_node("C")
        topology.add_edge("B -> C")
    assert asyncio.run(run_path(topology, chain("A", "B", "C"))) == ["A", "B", "C"]


def test_thousands_of_topologies_built_in_a_loop_do_not_stay_alive() -> None:
    gc.collect()
    kept: list[weakref.ref[Any]] = []
    for number in range(10_000):
        agent = Agent(f"A{number}", ScriptedModel([]), register=False)
        topology = Topology(nodes=[agent, "B"], edges=[f"A{number} -> B"])
        fingerprint = topology_fingerprint(topology.analyze())
        assert f"node A{number}" in fingerprint
        kept += [weakref.ref(agent), weakref.ref(topology)]
        shared = shared_topology({"nodes": [f"N{number}", "B"], "edges": [f"N{number} -> B"]})
        kept.append(weakref.ref(shared))
    del agent, topology, shared
    gc.collect()
    alive = [ref for ref in kept if ref() is not None]
    assert len(alive) <= SHARED_CACHE_SIZE  # the shared topologies of the latest dicts
    assert plain_analysis.cache_info().currsize <= PLAIN_CACHE_SIZE
