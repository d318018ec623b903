"""Mermaid flowcharts of topologies."""

from __future__ import annotations

import re
from html.entities import html5

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestra.coordination.topology import Edge, PatternConfig, Topology


def node_ids(chart: str) -> dict[str, str]:
    """Map each drawn node's text to its generated id."""
    found: dict[str, str] = {}
    for line in chart.splitlines():
        match = re.match(r'^\s+(n\d+)[\[\(\{]+"(.*?)"[\]\)\}]+$', line)
        if match:
            found[match.group(2)] = match.group(1)
    return found


def node_line(chart: str, name: str) -> str:
    ids = node_ids(chart)
    node_id = ids[name]
    return next(
        line.strip() for line in chart.splitlines() if re.match(rf"^\s+{node_id}[\[\(\{{]", line)
    )


def edge_lines(chart: str) -> list[str]:
    return [line.strip() for line in chart.splitlines() if "--" in line]


def is_valid_condition(payload: object, context: object) -> bool:
    return True


def test_starts_with_flowchart_and_draws_every_node() -> None:
    topology = Topology(["Planner", "Writer", "Editor"], ["Planner -> Writer", "Writer -> Editor"])
    chart = topology.to_mermaid()
    assert chart.splitlines()[0] == "flowchart TD"
    assert set(node_ids(chart)) == {"Planner", "Writer", "Editor"}
    ids = node_ids(chart)
    assert f"{ids['Planner']} --> {ids['Writer']}" in edge_lines(chart)
    assert f"{ids['Writer']} --> {ids['Editor']}" in edge_lines(chart)


def test_one_node_topology_draws() -> None:
    chart = Topology.from_dict({"nodes": ["Summarizer"], "edges": []}).to_mermaid()
    assert chart.startswith("flowchart TD")
    assert "Summarizer" in chart


def test_bidirectional_pair_draws_once_with_double_arrow() -> None:
    topology = PatternConfig.hub_and_spoke("Hub", ["S1", "S2"])
    chart = topology.to_mermaid()
    ids = node_ids(chart)
    lines = edge_lines(chart)
    assert f"{ids['Hub']} <--> {ids['S1']}" in lines
    assert f"{ids['Hub']} <--> {ids['S2']}" in lines
    assert len(lines) == 2
    assert " --> " not in chart


def test_two_one_way_edges_written_separately_still_draw_as_pair() -> None:
    topology = Topology(["A", "B"], ["A -> B", "B -> A"], entry_point="A")
    lines = edge_lines(topology.to_mermaid())
    assert len(lines) == 1
    assert "<-->" in lines[0]


def test_self_loop_draws_as_a_one_way_arrow() -> None:
    # A -> A is one directed edge, not a bidirectional pair
    topology = Topology(["A", "B"], ["A -> A", "A -> B"])
    chart = topology.to_mermaid()
    ids = node_ids(chart)
    assert f"{ids['A']} --> {ids['A']}" in edge_lines(chart)
    assert "<-->" not in chart


def test_pair_with_different_conditions_draws_two_arrows() -> None:
    topology = Topology(
        ["A", "B"],
        [
            {"source": "A", "target": "B", "metadata": {"condition": "go"}},
            {"source": "B", "target": "A", "metadata": {"condition": "back"}},
        ],
        entry_point="A",
    )
    chart = topology.to_mermaid()
    ids = node_ids(chart)
    lines = edge_lines(chart)
    assert f'{ids["A"]} -->|"go"| {ids["B"]}' in lines
    assert f'{ids["B"]} -->|"back"| {ids["A"]}' in lines
    assert "<-->" not in chart


def test_label_condition_is_edge_text() -> None:
    topology = Topology(
        ["Validator", "Fixer", "Finalizer"],
        [
            {"source": "Validator", "target": "Fixer", "metadata": {"condition": "invalid"}},
            {"source": "Validator", "target": "Finalizer", "metadata": {"condition": "valid"}},
            "Fixer -> Finalizer",
        ],
    )
    chart = topology.to_mermaid()
    ids = node_ids(chart)
    lines = edge_lines(chart)
    assert f'{ids["Validator"]} -->|"invalid"| {ids["Fixer"]}' in lines
    assert f'{ids["Validator"]} -->|"valid"| {ids["Finalizer"]}' in lines
    assert f"{ids['Fixer']} --> {ids['Finalizer']}" in lines


def test_bidirectional_edge_with_condition_keeps_its_text() -> None:
    topology = Topology(
        ["A", "B"], [Edge("A", "B", {"condition": "ask"}, bidirectional=True)], entry_point="A"
    )
    chart = topology.to_mermaid()
    ids = node_ids(chart)
    assert f'{ids["A"]} <-->|"ask"| {ids["B"]}' in edge_lines(chart)


def test_callable_condition_shows_its_function_name() -> None:
    topology = Topology(["A", "B"], [Edge("A", "B", {"condition": is_valid_condition})])
    chart = topology.to_mermaid()
    assert "is_valid_condition" in chart
    ids = node_ids(chart)
    assert f'{ids["A"]} -->|"if is_valid_condition()"| {ids["B"]}' in edge_lines(chart)


def test_user_is_a_circle() -> None:
    topology = Topology(["A"], ["User -> A", "A -> User"])
    chart = topology.to_mermaid()
    assert node_line(chart, "User").endswith('(("User"))')
    ids = node_ids(chart)
    assert f"{ids['User']} <--> {ids['A']}" in edge_lines(chart)


def test_convergence_point_is_a_hexagon() -> None:
    topology = Topology(
        ["A", "B", "C", "D", "E"], ["A -> B", "A -> C", "B -> D", "C -> D", "D -> E"]
    )
    chart = topology.to_mermaid()
    assert node_line(chart, "D").endswith('{{"D"}}')
    for name in "ABC":
        assert "{{" not in node_line(chart, name)


def test_exit_is_a_stadium() -> None:
    topology = Topology(["A", "B", "C"], ["A -> B", "A -> C"])
    chart = topology.to_mermaid()
    assert node_line(chart, "B").endswith('(["B"])')
    assert node_line(chart, "C").endswith('(["C"])')
    assert node_line(chart, "A").endswith('["A"]')
    assert "([" not in node_line(chart, "A")


def test_entries_are_marked() -> None:
    topology = PatternConfig.star("Center", ["P1", "P2"])
    chart = topology.to_mermaid()
    ids = node_ids(chart)
    assert "classDef entry" in chart
    assert f"class {ids['P1']},{ids['P2']} entry" in chart
    # the star's center is both a convergence point and the exit: drawn as a hexagon
    assert node_line(chart, "Center").endswith('{{"Center"}}')


@pytest.mark.parametrize("name", ["Data Analyst", "web_search.v2", "my-agent", "Ünïcødé Bot"])
def test_awkward_node_names_draw_quoted_with_generated_ids(name: str) -> None:
    topology = Topology([name, "Sink"], [Edge(name, "Sink")])
    chart = topology.to_mermaid()
    assert f'"{name}"' in chart
    ids = node_ids(chart)
    assert set(ids) == {name, "Sink"}
    assert all(re.fullmatch(r"n\d+", node_id) for node_id in ids.values())
    assert f"{ids[name]} --> {ids['Sink']}" in edge_lines(chart)


def test_quotes_in_labels_are_escaped() -> None:
    topology = Topology(["A", "B"], [Edge("A", "B", {"condition": 'say "yes"'})])
    chart = topology.to_mermaid()
    assert 'say "yes"' not in chart
    assert "say #quot;yes#quot;" in chart
    # every quoted piece of text is balanced on each line
    for line in chart.splitlines():
        assert line.count('"') % 2 == 0


def shown(quoted: str) -> str:
    """What Mermaid shows for the inside of a quoted string: ``<br>`` a line break, ``#code;``
    and ``#name;`` the character they name (it rewrites them as HTML entities)."""

    def one(match: re.Match[str]) -> str:
        code, name = match.group(1), match.group(2)
        if code is not None:
            return chr(int(code))
        return "\n" if name is None else html5[name + ";"]

    return re.sub(r"#(\d+);|#(\w+);|<br>", one, quoted)


EDGE_TEXT = re.compile(r'^    n\d+ (?:<)?-->\|"([^"]*)"\| n\d+$')


@given(st.lists(st.text(), min_size=1, max_size=4))
def test_any_condition_label_draws_one_line_per_edge_that_shows_the_label(
    labels: list[str],
) -> None:
    """A newline in a label broke the diagram's source; so would a quote, ``|``, ``#name;``."""
    targets = [f"T{index}" for index in range(len(labels))]
    edges = [
        Edge("S", target, {"condition": label} if label else {})
        for target, label in zip(targets, labels, strict=True)
    ]
    chart = Topology(["S", *targets], edges).to_mermaid()
    lines = chart.split("\n")
    assert chart.splitlines() == lines  # no other line separator either
    drawn = [line for line in lines if "--" in line]
    assert len(drawn) == len(labels)
    for line, label in zip(drawn, labels, strict=True):
        if not label:
            assert re.fullmatch(r"    n\d+ --> n\d+", line)
            continue
        match = EDGE_TEXT.match(line)
        assert match is not None, line
        assert shown(match.group(1)) == label


@pytest.mark.parametrize(
    ("label", "written"),
    [
        ("approved\nby legal", "approved<br>by legal"),
        ("a|b", "a#124;b"),
        ("#quot; <br>", "#35;quot; #lt;br#gt;"),
        ("`md`", "#96;md#96;"),
        ("x\r\u2028y", "x#13;#8232;y"),
        (
            "%%{init: {'theme':'forest'}}%%",
            "#37;#37;#123;init: #123;'theme':'forest'#125;#125;#37;#37;",
        ),
    ],
)
def test_characters_mermaid_reads_are_written_as_entities(label: str, written: str) -> None:
    chart = Topology(["A", "B"], [Edge("A", "B", {"condition": label})]).to_mermaid()
    assert f'|"{written}"|' in chart


def test_a_condition_cannot_carry_a_mermaid_directive() -> None:
    """Mermaid obeys ``%%{init: ...}%%`` anywhere in its text, a quoted label included."""
    directive = "%%{init: {'theme':'forest','fontFamily':'x'}}%%"
    chart = Topology(["A", "B"], [Edge("A", "B", {"condition": directive})]).to_mermaid()
    assert "%" not in chart and "{init" not in chart


def test_node_names_with_quotes_are_rejected_before_drawing() -> None:
    from orchestra.errors import TopologyError

    with pytest.raises(TopologyError):
        Topology(['Say "hi"'], [])


@pytest.mark.parametrize(
    "nodes, edges, kwargs",
    [
        (["A", "B"], ["A -> Ghost"], {}),  # dangling edge
        (["A", "B", "C"], ["A -> B", "B -> C", "C -> A"], {}),  # no entry
        (["A", "B"], [], {}),  # several entries
        ([], [], {}),  # empty
        (["A"], ["User -> User"], {}),
        (["A", "B"], ["A -> B"], {"entry_point": "Nobody"}),
    ],
)
def test_invalid_topology_still_draws_without_entry_marking(
    nodes: list[str], edges: list[str], kwargs: dict
) -> None:
    topology = Topology(nodes, edges, **kwargs)
    chart = topology.to_mermaid()
    assert chart.startswith("flowchart TD")
    assert "classDef entry" not in chart
    assert "class " not in chart
    for name in nodes:
        assert f'["{name}"]' in chart  # plain boxes: no roles when invalid
    assert "{{" not in chart and "([" not in chart


def test_dangling_edge_is_left_out_of_the_drawing() -> None:
    chart = Topology(["A", "B"], ["A -> B", "A -> Ghost"]).to_mermaid()
    assert "Ghost" not in chart
    ids = node_ids(chart)
    assert edge_lines(chart) == [f"{ids['A']} --> {ids['B']}"]
