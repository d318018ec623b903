"""A run's topology setup, kept between runs: a plain topology's analysis and fingerprint by
its shape, a plain topology dict's topology by its content. What is kept is never stale (a
topology or dict changed between runs is read anew), never shared by two topologies that
differ, and bounded (thousands of topologies built in a loop do not stay alive)."""

from __future__ import annotations

import asyncio
import enum
import gc
import itertools
import json
import tracemalloc
import weakref
from types import MappingProxyType
from typing import Any

import pytest
from helpers import final, invoke, quiet

from orchestra import Agent, AgentRegistry, Orchestra, ScriptedModel
from orchestra.coordination.topology import Timeout, Topology, TopologyAnalysis
from orchestra.coordination.topology.analysis import PLAIN_CACHE_SIZE, plain_analysis, plain_key
from orchestra.coordination.topology.model import (
    CACHED_PARTS_LIMIT,
    CACHED_TEXT_LIMIT,
    _known_name,
)
from orchestra.coordination.topology.rules import BudgetRule, Parallel
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


class Role(str, enum.Enum):  # noqa: UP042 -- the case found: str() gives "Role.A"
    """Names equal to the plain names ``A``, ``B``, ``C`` (and hashing alike), of another type."""

    A = "A"
    B = "B"
    C = "C"


def role_topology() -> Topology:
    return Topology([Role.A, Role.B, Role.C], [(Role.A, Role.B), (Role.A, Role.C)])


def str_topology() -> Topology:
    return Topology(["A", "B", "C"], ["A -> B", "A -> C"])


PLAIN_FINGERPRINT = (  # as the previous version recorded it: a session of it must resume
    "fingerprint 2",
    "edges A -> B, C",
    "entries A",
    "exit B",
    "exit C",
    "node A",
    "node B",
    "node C",
)


@pytest.mark.parametrize("first", [role_topology, str_topology])
def test_names_equal_to_plain_ones_but_of_another_type_never_share_an_analysis(
    first: Any,
) -> None:
    first().analyze()  # whichever the process analysed first decides nothing for the other
    for make, kind in ((str_topology, str), (role_topology, Role), (str_topology, str)):
        topology = make()
        analysis = topology.analyze()
        assert [type(name) for name in analysis.agents] == [kind] * 3
        assert [type(name) for name in analysis.node_names] == [kind] * 3
        assert topology_fingerprint(analysis) == uncached_fingerprint(topology)
    assert topology_fingerprint(str_topology().analyze()) == PLAIN_FINGERPRINT
    assert plain_key(role_topology()) is None


class Name(str):
    """A plain subclass of str: equal to, hashing, printing and repr'd as the plain name."""


def test_rule_names_of_another_type_never_share_an_analysis() -> None:
    def make(kind: type[str]) -> Topology:
        return Topology(
            ["A", "B", "C"],
            ["A -> B", "A -> C"],
            [Parallel((kind("B"), kind("C"))), BudgetRule(kind("B"), ((kind("max_tokens"), 10),))],
        )

    make(Name).analyze()
    plain = make(str).analyze()
    assert [type(name) for name in plain.parallel_groups[0]] == [str, str]
    assert type(plain.budget_rules[0].scope) is str
    assert type(plain.budget_rules[0].limits[0][0]) is str
    named = make(Name).analyze()
    assert type(named.parallel_groups[0][0]) is Name
    assert type(named.budget_rules[0].limits[0][0]) is Name


def test_a_budget_whose_limits_are_lists_as_read_from_json_is_analysed_and_run() -> None:
    limits = json.loads('[["max_tokens", 100]]')
    data = {"nodes": ["A", "B"], "edges": ["A -> B"], "entry_point": "A"}
    for _ in range(2):
        topology = Topology.from_dict(data)
        topology.add_rule(BudgetRule("run", limits))
        analysis = topology.analyze()
        assert analysis == fresh(topology)
        assert topology_fingerprint(analysis) == uncached_fingerprint(topology)
        assert analysis.budget_rules[0].budget().max_tokens == 100
    assert asyncio.run(run_path(topology, chain("A", "B"))) == ["A", "B"]


def test_long_names_and_rejected_ones_are_not_kept() -> None:
    long_name = "N" * (CACHED_TEXT_LIMIT + 1)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for number in range(50):  # untrusted input: 50 rejected dicts with a 100 KB name each
            rejected = f"{number}" + "x" * 100_000 + "!"
            with pytest.raises(TopologyError):
                shared_topology({"nodes": [rejected], "edges": []})
            with pytest.raises(TopologyError):
                Topology([f"{number}!"])  # short and rejected: never kept either
        del rejected
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 1_000_000  # kept, they were 5 MB
    names = _known_name.cache_info().currsize
    with pytest.raises(TopologyError):
        Topology(["short but rejected!"])
    assert _known_name.cache_info().currsize == names
    for data in (
        {"nodes": [long_name, "B"], "edges": [f"{long_name} -> B"]},
        {"nodes": ["A", "B"], "edges": ["A -> B"], "entry_point": "A" * (CACHED_TEXT_LIMIT + 1)},
    ):
        assert shared_topology(data) is not shared_topology(data)
    assert plain_key(Topology([long_name, "B"], [f"{long_name} -> B"])) is None


def test_a_big_topology_is_analysed_afresh_and_its_dict_not_kept() -> None:
    names = [f"N{number}" for number in range(CACHED_PARTS_LIMIT)]
    data = {"nodes": names, "edges": [f"{a} -> {b}" for a, b in itertools.pairwise(names)]}
    built = shared_topology(data)
    assert shared_topology(data) is not built
    assert plain_key(built) is None
    analysis = built.analyze()
    assert analysis.shape is None and analysis == fresh(built)
    assert topology_fingerprint(analysis) == uncached_fingerprint(built)
    small = {"nodes": names[:10], "edges": data["edges"][:9]}
    assert shared_topology(small) is shared_topology(small)
    assert plain_key(shared_topology(small)) is not None


def test_no_two_analyses_share_a_mapping_one_of_them_may_change() -> None:
    def make() -> Topology:
        return Topology(["A", "B", "C", "D"], ["A -> B", "A -> C", "B -> D", "C -> D"])

    one, other = make().analyze(), make().analyze()
    assert one.shape == other.shape is not None
    for name in (
        "convergence_points",
        "_nodes",
        "_edges",
        "_successors",
        "_predecessors",
        "_out_edges",
        "_parallel_membership",
    ):
        mine, theirs = getattr(one, name), getattr(other, name)
        assert mine is not theirs or type(mine) is MappingProxyType, name
    with pytest.raises(TypeError):
        del one.convergence_points["D"]  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        one._successors["A"] = ()  # type: ignore[index]
    assert dict(make().analyze().convergence_points) == {"D": frozenset({"A"})}
    assert make().analyze().successors("A") == ("B", "C")


@pytest.mark.parametrize("metadata", [["x"], "x"])
def test_a_two_way_edge_with_invalid_metadata_is_named_as_written(metadata: Any) -> None:
    edge = {"source": "A", "target": "B", "bidirectional": True, "metadata": metadata}
    with pytest.raises(TopologyError) as refused:
        Topology(["A", "B"], [edge])
    assert [(p.kind, p.subject, p.message) for p in refused.value.problems] == [
        ("invalid_metadata", "A <-> B", "edge 'A <-> B': metadata must be a mapping")
    ]
