"""Property tests: any input either builds a sound topology or fails with a TopologyError."""

from __future__ import annotations

from collections import deque
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestra.coordination.topology import Timeout, Topology, TopologyAnalysis, parse_rule
from orchestra.errors import TopologyError

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = ["A", "B", "C", "D", "E"]
EXTRA_NAMES = ["User", "Data Analyst", "web.v2"]
BAD_NAMES = ["", "bad name!", " A"]


def two_args(payload: object, context: object) -> bool:
    return True


def one_arg(payload: object) -> bool:
    return True


names = st.sampled_from(NAMES + EXTRA_NAMES)
any_names = st.one_of(names, names, names, names, st.sampled_from(BAD_NAMES))
# hypothesis favours the first element of sampled_from; keep the common case there
ROLLS = st.sampled_from(["usually"] * 16 + ["sometimes"] * 3 + ["rare"])
good_conditions = st.sampled_from([None, None, None, "approved", two_args])
bad_conditions = st.sampled_from(["", "   ", 42, one_arg])


@st.composite
def edges(draw: st.DrawFn, sloppy: bool, declared: list[str] | None = None) -> Any:
    def endpoint() -> str:
        if sloppy:
            return draw(any_names)
        if not declared:
            return draw(names)
        # mostly between declared nodes, sometimes User, rarely an undeclared name
        roll = draw(ROLLS)
        if roll == "rare":
            return draw(names)
        if roll == "sometimes":
            return "User"
        return draw(st.sampled_from(declared))

    source, target = endpoint(), endpoint()
    form = draw(st.sampled_from(["text", "text", "both", "pair", "mapping"]))
    if form == "text":
        return f"{source} -> {target}"
    if form == "both":
        return f"{source} <-> {target}"
    if form == "pair":
        return (source, target)
    item: dict[str, Any] = {"source": source, "target": target}
    condition = draw(st.one_of(good_conditions, bad_conditions) if sloppy else good_conditions)
    if condition is not None:
        item["metadata"] = {"condition": condition}
    if draw(st.booleans()):
        item["bidirectional"] = draw(st.booleans())
    return item


def _directed_keys(edge: Any) -> list[tuple[str, str]]:
    if isinstance(edge, str):
        both = "<->" in edge
        source, target = (part.strip() for part in edge.replace("<->", "->").split("->"))
    elif isinstance(edge, tuple):
        (source, target), both = edge, False
    else:
        source, target, both = edge["source"], edge["target"], edge.get("bidirectional", False)
    return [(source, target), (target, source)] if both else [(source, target)]


@st.composite
def rules(draw: st.DrawFn, sloppy: bool, declared: list[str] | None = None) -> str:
    kind = draw(st.sampled_from(["limit", "parallel", "bad"] if sloppy else ["limit", "parallel"]))
    if kind == "limit":
        keyword = draw(st.sampled_from(["max_steps", "max_agents", "timeout", "ping_pong"]))
        good = ["1", "7", "250"] + (["2.5"] if keyword == "timeout" else [])
        value = draw(st.sampled_from(good + (["0", "-3", "2.5", "x"] if sloppy else [])))
        return f"{keyword}({value})"
    if kind == "parallel":
        if sloppy:
            members = draw(st.lists(any_names, max_size=4))
        else:
            # usually declared agents; sometimes an undeclared name or User (a validation error)
            small = not declared or len(declared) < 2
            pool = names if small or draw(ROLLS) != "usually" else st.sampled_from(declared)
            members = draw(st.lists(pool, min_size=2, max_size=4, unique=True))
        return f"parallel({', '.join(members)})"
    return draw(st.sampled_from(["bogus(1)", "max_steps", "parallel", "()", "timeout(nan)"]))


@st.composite
def random_topologies(draw: st.DrawFn) -> dict[str, Any]:
    """Random graphs over a small alphabet. Mostly well-formed input (so that structural
    validation, not parsing, decides); one in six is sloppy (bad names, duplicates, bad
    rules and conditions). Edges may name undeclared nodes; ``User`` may appear anywhere."""
    sloppy = draw(st.integers(0, 5)) == 0
    if sloppy:
        nodes = draw(st.lists(any_names, max_size=6))
        edge_list = draw(st.lists(edges(sloppy=True), max_size=9))
        rule_list = draw(st.lists(rules(sloppy=True), max_size=3))
        choose = any_names
    else:
        nodes = draw(
            st.lists(names, min_size=draw(st.sampled_from([0, 1, 1, 1])), max_size=6, unique=True)
        )
        edge_list = []
        taken: set[tuple[str, str]] = set()
        for edge in draw(st.lists(edges(sloppy=False, declared=nodes), max_size=8)):
            keys = _directed_keys(edge)
            if taken.isdisjoint(keys) and len(set(keys)) == len(keys):
                taken.update(keys)
                edge_list.append(edge)
        rule_list = []
        limits = set()
        for rule in draw(st.lists(rules(sloppy=False, declared=nodes), max_size=3)):
            keyword = rule.split("(")[0]
            if keyword == "parallel" or keyword not in limits:
                limits.add(keyword)
                rule_list.append(rule)
        choose = names if not nodes or draw(ROLLS) != "usually" else st.sampled_from(nodes)
    data: dict[str, Any] = {"nodes": nodes, "edges": edge_list, "rules": rule_list}
    if draw(st.integers(0, 3)) == 0:
        data["entry_point"] = draw(choose)
    if draw(st.integers(0, 3)) == 0:
        data["exit_points"] = draw(st.lists(choose, max_size=3))
    return data


@st.composite
def sound_topologies(draw: st.DrawFn) -> dict[str, Any]:
    """Topologies valid by construction: a tree from node 0, extra forward edges (a DAG),
    helpers called (``<->``) by inner nodes, optional ``User`` edges and well-formed rules."""
    count = draw(st.integers(1, 6))
    nodes = [f"N{i}" for i in range(count)]
    forward: set[tuple[int, int]] = set()
    for child in range(1, count):
        forward.add((draw(st.integers(0, child - 1)), child))
    for _ in range(draw(st.integers(0, 6))):
        if count > 1:
            a = draw(st.integers(0, count - 2))
            forward.add((a, draw(st.integers(a + 1, count - 1))))
    edge_list: list[Any] = [f"N{a} -> N{b}" for a, b in sorted(forward)]
    inner = sorted({a for a, _ in forward})
    callers = []
    for index in range(draw(st.integers(0, 2)) if inner else 0):
        helper = f"H{index}"
        nodes.append(helper)
        callers.append(draw(st.sampled_from(inner)))
        edge_list.append(f"N{callers[-1]} <-> {helper}")
    user_entry = draw(st.booleans())
    if user_entry:
        edge_list.insert(0, "User -> N0")
    for name in draw(st.lists(st.sampled_from(nodes[:count]), unique=True, max_size=2)):
        edge_list.append(f"{name} -> User")
    rule_list = []
    if len(nodes) >= 2 and draw(st.booleans()):
        group = draw(st.lists(st.sampled_from(nodes), min_size=2, max_size=4, unique=True))
        rule_list.append(f"parallel({', '.join(group)})")
    for keyword, value in (("max_steps", "30"), ("timeout", "12.5"), ("max_agents", "3")):
        if draw(st.booleans()):
            rule_list.append(f"{keyword}({value})")
    data: dict[str, Any] = {"nodes": nodes, "edges": edge_list, "rules": rule_list}
    # a helper answering N0 gives it an incoming edge: then the entry must be named
    if draw(st.booleans()) or (0 in callers and not user_entry):
        data["entry_point"] = "N0"
    return data


# ---- invariants ----------------------------------------------------------------------------


def _reach(starts: Any, step: Any) -> set[str]:
    seen = set(starts)
    queue = deque(seen)
    while queue:
        for nxt in step(queue.popleft()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def check_sound(topology: Topology, analysis: TopologyAnalysis) -> None:
    agents = set(analysis.agents)
    assert agents == {n for n in topology.node_names if n != "User"}
    assert analysis.entries
    assert set(analysis.entries) <= agents
    assert analysis.exits
    assert set(analysis.exits) <= agents
    assert analysis.entry == analysis.entries[0]
    assert _reach(analysis.entries, analysis.successors) == agents
    assert _reach(analysis.exits, analysis.predecessors) == agents
    assert set(analysis.convergence_points) <= agents
    for sources in analysis.convergence_points.values():
        assert sources
        assert all(s in agents or s == "User" for s in sources)
    for group in analysis.parallel_groups:
        assert set(group) <= agents
        assert analysis.may_invoke_in_parallel(group)
    for source, target in (e.key for e in topology.edges):
        assert analysis.edge(source, target) is not None

    again = Topology.from_dict(topology.to_dict())
    again_analysis = again.analyze()
    assert again_analysis.summary() == analysis.summary()
    assert again_analysis.entries == analysis.entries
    assert (again_analysis.max_steps, again_analysis.timeout, again_analysis.max_agents) == (
        analysis.max_steps,
        analysis.timeout,
        analysis.max_agents,
    )

    chart = topology.to_mermaid()
    assert chart.startswith("flowchart TD")
    assert "classDef entry" in chart


def check_error(error: TopologyError) -> None:
    assert error.problems
    text = str(error)
    for problem in error.problems:
        assert isinstance(problem.kind, str) and problem.kind
        assert isinstance(problem.message, str) and problem.message.strip()
        assert problem.message in text
    assert error.kinds == {p.kind for p in error.problems}


# ---- properties ----------------------------------------------------------------------------


@SETTINGS
@given(random_topologies())
def test_random_topology_is_sound_or_a_topology_error(data: dict[str, Any]) -> None:
    try:
        topology = Topology.from_dict(data)
    except TopologyError as error:
        check_error(error)
        return
    try:
        analysis = topology.analyze()
    except TopologyError as error:
        check_error(error)
        chart = topology.to_mermaid()  # an invalid topology still draws
        assert chart.startswith("flowchart TD")
        assert "classDef entry" not in chart
        return
    check_sound(topology, analysis)


@SETTINGS
@given(random_topologies())
def test_validate_and_analyze_agree(data: dict[str, Any]) -> None:
    try:
        topology = Topology.from_dict(data)
    except TopologyError:
        return
    try:
        topology.validate()
    except TopologyError as first:
        try:
            topology.analyze()
        except TopologyError as second:
            assert [p.kind for p in first.problems] == [p.kind for p in second.problems]
        else:
            raise AssertionError("analyze() succeeded where validate() failed")
    else:
        assert topology.analyze() is topology.analyze()


@SETTINGS
@given(sound_topologies())
def test_constructed_topologies_are_valid_and_sound(data: dict[str, Any]) -> None:
    topology = Topology.from_dict(data)
    check_sound(topology, topology.analyze())


@SETTINGS
@given(sound_topologies())
def test_helpers_are_calls_and_never_convergence_points(data: dict[str, Any]) -> None:
    analysis = Topology.from_dict(data).analyze()
    for name in analysis.agents:
        if name.startswith("H"):
            (caller,) = analysis.successors(name)
            assert analysis.is_call(caller, name)
            assert analysis.is_call(name, caller)
            assert not analysis.is_convergence_point(name)


@SETTINGS
@given(st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_timeout_rule_text_round_trips(seconds: float) -> None:
    rule = Timeout(seconds)
    assert parse_rule(rule.to_text()) == rule
