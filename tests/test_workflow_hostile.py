"""Hostile workflow files: each is refused at its file and line, quickly, with no traceback and
no session; ``--allow-module`` refuses code outside the allowed modules before importing any."""

from __future__ import annotations

import os
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from helpers import TESTS, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestra.errors import ConfigurationError
from orchestra.workflow import load_workflow
from orchestra.workflow_source import (
    MAX_BYTES,
    MAX_CHARS,
    MAX_DEPTH,
    MAX_VALUES,
    WorkflowError,
    read_source,
)

HEAD = "agents:\n  - name: A\n    function: flow_nodes:shout\ntopology: {nodes: [A]}\ntask: hi\n"


@pytest.fixture(autouse=True)
def _flow_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))


def write(tmp_path: Path, text: str | bytes, name: str = "flow.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text).lstrip())
    return path


def refused(path: Path, *, allowed: list[str] | None = None) -> str:
    with pytest.raises(WorkflowError) as info:
        load_workflow(path, allowed_modules=allowed)
    return str(info.value)


def alias_bomb(depth: int) -> str:
    """The probe's file: nine references to the anchor above, ``depth`` levels of anchors."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, depth + 1):
        lines.append(f"a{level}: &a{level} [" + ",".join([f"*a{level - 1}"] * 9) + "]")
    return HEAD + "context:\n" + "".join(f"  {line}\n" for line in lines)


def test_an_alias_bomb_is_refused_at_the_anchor_that_expands_too_far(tmp_path: Path) -> None:
    text = alias_bomb(8)
    assert len(text) < 600  # the probe's 544 bytes took 24 s and 1.8 GB, and a 303 MB header
    message = refused(write(tmp_path, text))
    # a5 stands for 9**6 values, more than MAX_VALUES; a4, 9**5 = 59049, fewer
    assert message.startswith(f"{tmp_path / 'flow.yaml'}:12: expands to more than {MAX_VALUES}")


def test_anchors_an_honest_file_uses_still_work(tmp_path: Path) -> None:
    flow = write(
        tmp_path,
        """
        agents:
          - name: A
            function: flow_nodes:shout
        topology: {nodes: [A]}
        context:
          defaults: &defaults {audience: engineers, tone: plain}
          reports: [*defaults, *defaults, {<<: *defaults, tone: warm}]
        """,
    )
    context = load_workflow(flow).context
    assert context["reports"][2] == {"audience": "engineers", "tone": "warm"}


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (HEAD + "context: {x: " + "[" * 500 + "]" * 500 + "}\n", 6, "nests deeper than 100"),
        # each alias is as deep as its anchor: 60 + 60 levels of lists
        (
            HEAD + "context:\n  a: &deep " + "[" * 60 + "]" * 60 + "\n"
            "  b: " + "[" * 60 + "*deep" + "]" * 60 + "\n",
            8,
            "nests deeper than 100",
        ),
        (HEAD + "context: {x: " + "9" * 5000 + "}\n", 6, "cannot read this value: Exceeds"),
        (HEAD + "context: {when: 2024-13-45}\n", 6, "cannot read this value: month"),
        (HEAD + "context: {x: !!python/object/apply:os.system [true]}\n", 6, "python/object"),
        (HEAD + 'context: {x: "a\x00"}\n', 6, "not valid YAML: character #x0000"),
        (HEAD + "context: {x: [}\n", 6, "not valid YAML"),
        (HEAD.replace("flow_nodes:shout", "os:sep"), 3, "'os:sep' is a str, not a function"),
        (HEAD.replace("flow_nodes:shout", ".flow_nodes:shout"), 3, "is not an import path"),
        (HEAD.replace("flow_nodes:shout", "flow_nodes:__name__"), 3, "names '__name__'"),
        (HEAD.replace("flow_nodes:shout", "flow_nodes.__class__"), 3, "a dunder attribute"),
        (HEAD.replace("flow_nodes:shout", "os.__builtins__:eval"), 3, "names '__builtins__'"),
        (HEAD + "context: {x: !!timestamp garbage}\n", 6, "not a valid timestamp value"),
        (HEAD.replace("flow_nodes:shout", "flow_nodes.__main__:run"), 3, "cannot import"),
        (HEAD + 'context: {x: "\\U0011FFFF"}\n', 6, "not valid YAML: chr() arg not in range"),
        (HEAD + "agents: []\n", 6, "the key 'agents' is already in this mapping (line 1)"),
        (HEAD + "context: {a: 1, 'a': 2}\n", 6, "the key 'a' is already in this mapping"),
        (HEAD + "context: {session_id: 123}\n", 6, "context.session_id: session id 123 is not"),
        (HEAD + "context: {session_id: ../../etc/x}\n", 6, "context.session_id: session id"),
        (HEAD + 'context: {session_id: "nl\\n"}\n', 6, "context.session_id: session id"),
        (HEAD + "execution: {max_steps: 0}\n", 6, "execution.max_steps: Input should be greater"),
        (HEAD + 'execution: {max_steps: "1e400"}\n', 6, "execution.max_steps: Input should be"),
        (HEAD + "execution: {max_steps: true}\n", 6, "execution.max_steps: Input should be"),
        (
            "agents:\n  - {name: A, function: 'flow_nodes:shout'}\n"
            "  - {name: A, function: 'flow_nodes:shout'}\ntopology: {nodes: [A]}\n",
            3,
            "agents[1].name: agent 'A' is already defined (at ",
        ),
        (
            HEAD.replace("{nodes: [A]}", "{nodes: [A, B], edges: [A -> B]}"),
            4,
            "topology.nodes: no agent in this file for node(s) 'B'",
        ),
    ],
)
def test_a_hostile_yaml_file_is_refused_at_its_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    found = refused(write(tmp_path, text))
    assert found.startswith(f"{tmp_path / 'flow.yaml'}:{line}: "), found
    assert message in found, found


def test_a_long_string_anchor_named_by_many_aliases_is_refused(tmp_path: Path) -> None:
    """The reviewer's file: 500 KB named 2,000 times took 7 s and 3.9 GB to fail after the
    session was made; each alias now counts the anchor's characters, so it is refused at once."""
    anchor = "x" * (MAX_CHARS // 40)
    text = HEAD + f"context:\n  s: &s {anchor}\n  l: [" + ",".join(["*s"] * 41) + "]\n"
    assert len(text) < MAX_BYTES
    message = refused(write(tmp_path, text))
    assert message.startswith(
        f"{tmp_path / 'flow.yaml'}:8: expands to more than {MAX_CHARS} characters"
    )
    fits = HEAD + f"context:\n  s: &s {anchor}\n  l: [" + ",".join(["*s"] * 30) + "]\n"
    assert len(load_workflow(write(tmp_path, fits)).context["l"]) == 30


def test_an_honest_edge_a_careless_user_meets_is_said_in_words(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    for text, message in [
        ("", f"{flow}:1: the file is empty; it must hold agents, topology, ..."),
        ("# nothing yet\n", f"{flow}:1: the file is empty; it must hold agents, topology, ..."),
        (
            "just words\n",
            f"{flow}:1: the file must hold a mapping (agents, topology, ...), not a str",
        ),
    ]:
        assert refused(write(tmp_path, text)) == message
    assert load_workflow(write(tmp_path, "\ufeff" + HEAD)).task == "hi"
    head = (
        '{"agents": [{"name": "A", "function": "flow_nodes:shout"}], "topology": {"nodes": ["A"]}'
    )
    json_flow = write(tmp_path, "\ufeff" + head + ', "task": "hi"}', "flow.json")
    assert load_workflow(json_flow).task == "hi"


def test_what_is_not_a_regular_file_is_refused_without_waiting(tmp_path: Path) -> None:
    assert (
        refused(tmp_path)
        == f"{tmp_path}: is a directory, not a file; a workflow file must be a file"
    )
    fifo = tmp_path / "flow.yaml"
    os.mkfifo(fifo)  # no one ever writes to it: opening it for reading used to wait forever
    messages: list[str] = []
    loading = threading.Thread(target=lambda: messages.append(refused(fifo)), daemon=True)
    loading.start()
    loading.join(timeout=30)
    if loading.is_alive():  # let the blocked open return, so the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the load waited for a writer to the pipe")
    assert messages == [f"{fifo}: is a pipe (FIFO), not a file; a workflow file must be a file"]


@pytest.mark.parametrize(
    "model",
    [
        "{provider: openai, name: gpt-4o-mini, base_url: 'http://attacker.example/v1'}",
        "{provider: anthropic, name: claude, base_url: 'http://attacker.example'}",
        "{provider: openai, name: m, api_key: theirs, base_url: 'http://attacker.example/v1'}",
    ],
)
def test_a_file_run_with_allow_module_may_not_choose_the_model_server(
    tmp_path: Path, model: str
) -> None:
    flow = write(
        tmp_path,
        "agents:\n  - name: A\n    function: flow_nodes:shout\n  - name: B\n"
        f"    model: {model}\ntopology: {{nodes: [A, B], edges: [A -> B]}}\n",
    )
    message = refused(flow, allowed=["flow_nodes"])
    assert message.startswith(
        f"{flow}:5: agents[1].model.base_url: a workflow file run with --allow-module may not "
        "set base_url: the server it names would receive your API key"
    ), message
    assert "set ORCHESTRA_BASE_URL" in message
    assert load_workflow(flow).registry  # a file you trust may name its server


def test_a_file_run_with_allow_module_may_not_choose_its_session(tmp_path: Path) -> None:
    flow = write(tmp_path, HEAD + "context: {session_id: yours, note: n}\n")
    assert load_workflow(flow).context["session_id"] == "yours"  # a file you trust may
    assert refused(flow, allowed=["flow_nodes"]) == (
        f"{flow}:6: context.session_id: a workflow file run with --allow-module may not choose "
        "the session it writes into; remove it and pass --session NAME"
    )


YAML_PIECES = [
    *"{}[]:,-&*!|>'\"\\ \n\tabx019.<%?#~\ufeff",
    "!!timestamp ",
    "!!binary ",
    "!!int ",
    "!!float ",
    "!!set ",
    "!!omap ",
    "&a ",
    "*a",
    "<<: ",
    "\\U0011FFFF",
    "\\x",
    "2024-13-45",
]
YAML_TEXT = st.lists(st.sampled_from(YAML_PIECES)).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(YAML_TEXT, st.text(), st.binary()), st.sampled_from(["flow.yaml", "flow.json"]))
def test_any_text_is_a_workflow_or_a_refusal(
    tmp_path_factory: pytest.TempPathFactory, content: str | bytes, name: str
) -> None:
    """Whatever the file holds, the loader gives data or a WorkflowError, never a traceback (a
    module named by the file is never imported: nothing is allowed)."""
    path = tmp_path_factory.mktemp("any") / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    try:
        read_source(path)
        load_workflow(path, allowed_modules=["no_module_is_this"])
    except WorkflowError:
        pass


def test_a_file_that_is_not_utf8_is_refused_at_the_line_of_the_bad_byte(tmp_path: Path) -> None:
    text = HEAD.encode() + "context: {x: caf\xe9}\n".encode("latin-1")
    message = refused(write(tmp_path, text))
    assert (
        message == f"{tmp_path / 'flow.yaml'}:6: not UTF-8 text (byte 0xe9); save the file as UTF-8"
    )


def test_a_file_is_read_only_up_to_the_limit(tmp_path: Path) -> None:
    big = HEAD + "context: {x: '" + "a" * MAX_BYTES + "'}\n"
    assert "larger than 1048576 bytes" in refused(write(tmp_path, big))
    endless = Path("/dev/zero")  # never read at all
    if endless.exists():
        assert "/dev/zero: is a device, not a file" in refused(endless)


def test_a_json_file_is_bounded_too(tmp_path: Path) -> None:
    head = '{"agents": [{"name": "A", "function": "flow_nodes:shout"}],\n"topology": {"nodes": ["A"]},\n'
    deep = head + '"context": {"x": ' + "[" * 5000 + "]" * 5000 + "}}"
    assert refused(write(tmp_path, deep, "flow.json")).startswith(
        f"{tmp_path / 'flow.json'}:3: nests deeper than {MAX_DEPTH}"
    )
    tricky = head + '"context": {"x": "[[[[ not nesting \\" {{{"}}'
    assert load_workflow(write(tmp_path, tricky, "flow.json")).context["x"].startswith("[[[[")
    broken = head + '"context": {"x": }}'
    assert refused(write(tmp_path, broken, "flow.json")).startswith(
        f"{tmp_path / 'flow.json'}:3: not valid JSON"
    )
    huge = head + '"context": {"x": ' + "9" * 5000 + "}}"
    assert "not valid JSON: Exceeds the limit" in refused(write(tmp_path, huge, "flow.json"))


def test_a_module_that_fails_to_import_is_reported_at_its_field(tmp_path: Path) -> None:
    (tmp_path / "broken_nodes.py").write_text("raise RuntimeError('no database here')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        message = refused(write(tmp_path, HEAD.replace("flow_nodes", "broken_nodes")))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("broken_nodes", None)
    assert message == (
        f"{tmp_path / 'flow.yaml'}:3: agents[0].function: importing 'broken_nodes:shout' "
        "failed: RuntimeError: no database here"
    )


SNEAKY = "import pathlib\npathlib.Path(__file__).with_name('imported').touch()\nrun = print\n"


def test_a_module_outside_the_allowed_ones_is_refused_before_any_import(tmp_path: Path) -> None:
    package = tmp_path / "sneakypkg"
    package.mkdir()
    (package / "__init__.py").write_text(SNEAKY)
    (tmp_path / "sneaky.py").write_text(SNEAKY)
    flow = write(
        tmp_path,
        """
        agents:
          - name: A
            function: sneakypkg:run
          - name: B
            model: openai:m
            tools: [sneaky:run]
        topology: {nodes: [A, B], edges: [A -> B]}
        """,
    )
    sys.path.insert(0, str(tmp_path))
    try:
        message = refused(flow, allowed=["sneakypkg"])
        assert message == (
            f"{flow}:6: agents[1].tools[0]: 'sneaky:run' is not in an allowed module "
            "(sneakypkg); nothing was imported"
        )
        assert not (tmp_path / "imported").exists()  # not even the allowed module
        assert "sneaky" not in sys.modules and "sneakypkg" not in sys.modules
    finally:
        sys.path.remove(str(tmp_path))


@pytest.mark.parametrize(
    ("reference", "allowed", "ok"),
    [
        ("flow_nodes:shout", ["flow_nodes"], True),
        ("flow_nodes.shout", ["flow_nodes"], True),
        ("os.path:join", ["os"], True),  # a module below an allowed one
        ("os.path:join", ["os.path"], True),
        ("os:getcwd", ["os.path"], False),  # not the package above it
        ("flow_nodes:shout", ["flow"], False),  # a name is matched whole, never by prefix
        ("flow_nodes:shout", ["flow_nodes.x", "other"], False),
    ],
)
def test_what_an_allowed_module_allows(
    tmp_path: Path, reference: str, allowed: list[str], ok: bool
) -> None:
    flow = write(tmp_path, HEAD.replace("flow_nodes:shout", reference))
    if ok:
        load_workflow(flow, allowed_modules=allowed)
    else:
        assert "is not in an allowed module" in refused(flow, allowed=allowed)


def test_an_allowed_module_must_be_a_module_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="'flow_nodes:shout' is not a module name"):
        load_workflow(write(tmp_path, HEAD), allowed_modules=["flow_nodes:shout"])


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (alias_bomb(8), "flow.yaml:12: expands to more than"),
        (
            HEAD
            + "context:\n  s: &s "
            + "x" * 500_000
            + "\n  l: ["
            + ",".join(["*s"] * 2000)
            + "]\n",
            f"flow.yaml:8: expands to more than {MAX_CHARS} characters",
        ),
        (HEAD + "context: {x: !!timestamp garbage}\n", "flow.yaml:6: not a valid timestamp"),
        (HEAD + "context: {session_id: 123}\n", "flow.yaml:6: context.session_id: session id"),
        (HEAD + "context: {x: " + "[" * 500 + "]" * 500 + "}\n", "flow.yaml:6: nests deeper"),
        (HEAD.replace("flow_nodes:shout", "os:sep"), "flow.yaml:3: agents[0].function: 'os:sep'"),
        (HEAD + "execution: {max_steps: 0}\n", "flow.yaml:6: execution.max_steps:"),
        (HEAD + 'execution: {max_steps: "1e400"}\n', "flow.yaml:6: execution.max_steps:"),
    ],
)
def test_the_cli_exits_2_with_the_line_and_keeps_no_session(
    tmp_path: Path, text: str, where: str
) -> None:
    flow = write(tmp_path, text)
    result = run_cli("run", str(flow), "--quiet", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert where in result.stdout and "Traceback" not in result.stdout + result.stderr
    assert "Session" not in result.stdout and not (tmp_path / ".orchestra").exists()


def test_the_cli_runs_a_file_within_the_allowed_modules_and_refuses_one_outside(
    tmp_path: Path,
) -> None:
    flow = write(tmp_path, HEAD)
    allowed = run_cli("run", str(flow), "--quiet", "--allow-module", "flow_nodes", cwd=tmp_path)
    assert allowed.returncode == 0 and "HI!" in allowed.stdout, allowed.stdout + allowed.stderr
    refused_run = run_cli(
        "run", str(flow), "--allow-module", "mypkg", "--allow-module", "other", "--no-store"
    )
    assert refused_run.returncode == 2
    assert (
        "flow.yaml:3: agents[0].function: 'flow_nodes:shout' is not in an allowed module "
        "(mypkg, other)" in refused_run.stdout
    )
