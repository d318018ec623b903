"""The command line, run as users run it: a real subprocess of the installed entry point."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import textwrap
from pathlib import Path

import pytest
from helpers import run_cli, start_cli
from storage_backends import sqlite_store_damaged_at

from orchestra.coordination.state import SQLiteStorageBackend
from orchestra.coordination.state.records import FORMAT


def test_demo_runs_the_research_workflow_offline_on_the_bundled_model() -> None:
    result = run_cli("demo", "--task", "solar power", "--verbose")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Default model: local:smollm2" in result.stdout
    assert "Final response" in result.stdout
    assert "fan-out f1 from Coordinator: WebResearcher, PaperResearcher" in result.stderr
    assert "run succeeded" in result.stderr
    for agent in ("Coordinator", "WebResearcher", "PaperResearcher", "Writer"):
        assert agent in result.stdout


def test_the_demo_prints_the_same_run_every_time() -> None:
    """The bundled model decodes greedily with a fixed seed, and the parallel researchers take
    it in the order they asked: two runs differ only in their session ids and timings."""
    first, second = (run_cli("demo", "--task", "solar power", "--no-store") for _ in range(2))
    for result in (first, second):
        assert result.returncode == 0, result.stdout + result.stderr
        assert "run succeeded" in result.stderr
    assert session_of(first.stdout) != session_of(second.stdout)
    assert normalised(first.stdout) == normalised(second.stdout)
    assert normalised(first.stderr) == normalised(second.stderr)


def session_of(output: str) -> str:
    """The session id at the end of the demo's output: ``..., session <id>``."""
    return output.rsplit("session ", 1)[1].strip()


def normalised(output: str) -> str:
    """The demo's output with its session id and timings (the step lines', the run's, the
    per-agent table's time column) replaced, and runs of padding closed up."""
    output = re.sub(r"\b[0-9a-f]{32}\b", "<session>", output)
    output = re.sub(r"\(\d+\.\d+ ms\)|\bin \d+\.\d+ ?m?s\b", "<time>", output)
    output = re.sub(r"│ *\d+\.\d+ *(?=│)", "│ <time> ", output)
    return re.sub(r"[ ─━]+", " ", output)


def test_demo_can_draw_the_spec_topologies() -> None:
    result = run_cli("demo", "--topologies")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("Summarizer", "Extractor", "Finalizer", "MainProcessor"):
        assert name in result.stdout


def test_topology_command_checks_a_yaml_file(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        "nodes: [User, Planner, Writer]\nedges: ['User -> Planner', 'Planner -> Writer']\n"
    )
    result = run_cli("topology", str(flow), "--mermaid")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("flowchart TD")


def test_topology_command_reports_every_problem_of_a_json_file(tmp_path: Path) -> None:
    flow = tmp_path / "flow.json"
    flow.write_text(json.dumps({"nodes": ["A", "B"], "edges": ["A -> C", "B -> B"]}))
    result = run_cli("topology", str(flow))
    assert result.returncode == 1
    assert "'C' is not a node" in result.stdout
    assert "'B' is unreachable" in result.stdout


def test_topology_command_names_an_unknown_key(tmp_path: Path) -> None:
    flow = tmp_path / "flow.json"
    flow.write_text(json.dumps({"nodes": ["A"], "edge": []}))
    result = run_cli("topology", str(flow))
    assert result.returncode == 1
    assert "'edge'" in result.stdout and "did you mean 'edges'" in result.stdout


def test_topology_command_reports_unreadable_and_malformed_files(tmp_path: Path) -> None:
    missing = run_cli("topology", str(tmp_path / "nope.yaml"))
    assert missing.returncode != 0 and "cannot read" in missing.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    malformed = run_cli("topology", str(bad))
    assert malformed.returncode != 0 and "bad.json:1: not valid JSON" in malformed.stderr
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(
        "nodes: [A]\nx: &a0 [a, a, a, a, a, a, a, a, a]\n"
        + "".join(f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]\n" for n in range(1, 9))
    )
    expanding = run_cli("topology", str(bomb))
    assert expanding.returncode == 2 and "bomb.yaml:7: expands to more than" in expanding.stderr
    deep = tmp_path / "deep.yaml"
    deep.write_text("nodes: [A]\nx: " + "[" * 500 + "]" * 500 + "\n")
    nested = run_cli("topology", str(deep))
    assert nested.returncode == 2 and "deep.yaml:2: nests deeper than" in nested.stderr


# ---- sessions --------------------------------------------------------------------------------

KILLED_ONCE = """
agents:
  - {name: Intake, function: "flow_nodes:intake"}
  - {name: Review, function: "flow_nodes:die_the_first_time"}
  - {name: Publish, function: "flow_nodes:publish"}
topology:
  nodes: [Intake, Review, Publish]
  edges: [Intake -> Review, Review -> Publish]
task: draft
"""


def killed_once(folder: Path) -> Path:
    """Intake -> Review -> Publish; Review kills its process the first time it runs, and
    Intake and Publish count their steps in ``tally.txt``."""
    flow = folder / "flow.yaml"
    flow.write_text(
        textwrap.dedent(KILLED_ONCE).lstrip()
        + f"context: {{tally: '{folder / 'tally.txt'}', marker: '{folder / 'died'}'}}\n"
    )
    return flow


def session_line(output: str) -> str:
    """The session id from the line ``Session <id>, kept in <store>``."""
    line = next(line for line in output.splitlines() if line.startswith("Session "))
    return line.split()[1].rstrip(",")


def test_a_run_killed_mid_way_is_resumed_from_its_last_step(tmp_path: Path) -> None:
    flow = killed_once(tmp_path)
    killed = run_cli("run", str(flow), "--quiet", cwd=tmp_path)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    session = session_line(killed.stdout)
    assert f"kept in {Path('.orchestra') / 'sessions.db'}" in killed.stdout
    assert (tmp_path / ".orchestra" / "sessions.db").exists()
    listed = run_cli("sessions", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert session in listed.stdout and "interrupted" in listed.stdout

    resumed = run_cli("resume", str(flow), session, "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "draft+Intake+Review+Publish" in resumed.stdout
    assert (tmp_path / "tally.txt").read_text().split() == ["Intake", "Publish"]
    assert "finished" in run_cli("sessions", "list", cwd=tmp_path).stdout

    deleted = run_cli("sessions", "delete", session, cwd=tmp_path)
    assert deleted.returncode == 0 and f"{session}: deleted" in deleted.stdout
    assert session not in run_cli("sessions", "list", cwd=tmp_path).stdout


def test_ctrl_c_stops_a_run_that_resume_then_finishes(tmp_path: Path) -> None:
    flow = killed_once(tmp_path)
    flow.write_text(flow.read_text().replace("die_the_first_time", "interrupt_the_first_time"))
    stopped = run_cli("run", str(flow), "--quiet", cwd=tmp_path)
    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    session = session_line(stopped.stdout)
    assert f"Interrupted. Resume with: orchestra resume {flow} {session}" in stopped.stdout
    resumed = run_cli("resume", str(flow), session, "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (tmp_path / "tally.txt").read_text().split() == ["Intake", "Publish"]


def test_a_session_can_be_named_and_kept_elsewhere(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text("agents: [{name: A, function: 'flow_nodes:shout'}]\ntopology: {nodes: [A]}\n")
    store = tmp_path / "kept" / "mine.db"
    done = run_cli("run", str(flow), "--task", "hi", "--session", "weekly", "--store", str(store))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Session weekly, kept in" in done.stdout
    listed = run_cli("sessions", "list", "--store", str(store))
    assert "weekly" in listed.stdout and "finished" in listed.stdout
    # a finished session is not run again: its stored result is shown (a process killed as
    # its run ended could not show it), and the exit code is the run's
    finished = run_cli("resume", str(flow), "weekly", "--store", str(store))
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "Session weekly's last run finished: its result, as stored" in finished.stdout
    assert "HI" in finished.stdout and "1 steps" in finished.stdout
    assert "run succeeded" not in finished.stderr  # nothing ran, nothing printed as news


def test_a_damaged_or_unreadable_session_is_named_not_a_traceback(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text("agents: [{name: A, function: 'flow_nodes:shout'}]\ntopology: {nodes: [A]}\n")
    store = tmp_path / "s.db"
    done = run_cli("run", str(flow), "--task", "hi", "--session", "ok", "--store", str(store))
    assert done.returncode == 0, done.stdout + done.stderr

    async def copy_as_a_later_release_would_write_it() -> None:
        backend = SQLiteStorageBackend(store)
        try:
            lines = await backend.read("ok")
            later = [lines[0].replace(f'"format":{FORMAT}', '"format":9'), *lines[1:]]
            await backend.append("later", later, durable=True, after=0)
        finally:
            backend.close()

    asyncio.run(copy_as_a_later_release_would_write_it())
    with sqlite3.connect(store) as db:
        db.execute(
            "INSERT INTO appends SELECT 'broken', first, count, replace(records, 'hi', 'ho') "
            "FROM appends WHERE session = 'ok'"
        )
    for session, complaint in (
        ("later", "session 'later' was written in log format 9"),
        ("broken", "session 'broken': the log is damaged at record 1"),
    ):
        for command in (("resume", str(flow)), ("run", str(flow), "--task", "t", "--session")):
            refused = run_cli(*command, session, "--store", str(store))
            assert refused.returncode == 1, refused.stdout + refused.stderr
            assert complaint in refused.stdout
            assert "Traceback" not in refused.stdout + refused.stderr


def test_without_a_store_nothing_is_kept(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text("agents: [{name: A, function: 'flow_nodes:shout'}]\ntopology: {nodes: [A]}\n")
    done = run_cli("run", str(flow), "--task", "hi", "--no-store", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (tmp_path / ".orchestra").exists() and "Session " not in done.stdout


def test_resume_names_what_it_cannot_find(tmp_path: Path) -> None:
    flow = killed_once(tmp_path)
    no_store = run_cli("resume", str(flow), "nope", cwd=tmp_path)
    assert (
        no_store.returncode == 1 and "no session store at .orchestra/sessions.db" in no_store.stdout
    )
    assert run_cli("run", str(flow), "--quiet", cwd=tmp_path).returncode == -9
    unknown = run_cli("resume", str(flow), "nope", cwd=tmp_path)
    assert unknown.returncode == 1 and "no session 'nope'" in unknown.stdout
    bad = run_cli("resume", str(flow), "nope", "--context", "[1]", cwd=tmp_path)
    assert bad.returncode == 2 and "--context must be a JSON object" in bad.stderr
    gone = run_cli("sessions", "delete", "nope", cwd=tmp_path)
    assert gone.returncode == 1 and "nope: no such session" in gone.stdout
    assert "No sessions: no store at" in run_cli("sessions", "list").stdout
    demo = run_cli("demo", "--resume", "nope", cwd=tmp_path)
    assert demo.returncode == 1 and "no session 'nope'" in demo.stdout
    invalid = run_cli("run", str(flow), "--session", "../up", cwd=tmp_path)
    assert invalid.returncode == 2 and "session id '../up' is not allowed" in invalid.stderr
    assert "Session " not in invalid.stdout
    notes = tmp_path / "notes.db"
    notes.write_text("shopping list\n" * 100)
    for command in (("sessions", "list"), ("run", str(flow)), ("resume", str(flow), "x")):
        refused = run_cli(*command, "--store", str(notes))
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "as a session store" in refused.stdout.replace("\n", "")
    missing = tmp_path / "not" / "there.db"
    assert run_cli("sessions", "delete", "x", "--store", str(missing)).returncode == 1
    assert not missing.parent.exists()


def test_a_paused_run_says_so_and_how_to_go_on(tmp_path: Path) -> None:
    flow = killed_once(tmp_path)
    flow.write_text(flow.read_text().replace("die_the_first_time", "pause_the_first_time"))
    paused = run_cli("run", str(flow), "--session", "held", "--quiet", cwd=tmp_path)
    assert paused.returncode == 3, paused.stdout + paused.stderr
    assert "Paused" in paused.stdout and "needs a human" in paused.stdout
    assert "The run failed" not in paused.stdout
    assert f"Resume with: orchestra resume {flow} held" in paused.stdout
    again = run_cli("run", str(flow), "--session", "held", cwd=tmp_path)
    assert again.returncode == 1 and "'held' has a run paused on the way" in again.stdout
    resumed = run_cli("resume", str(flow), "held", "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "draft+Intake+Review+Publish" in resumed.stdout


def test_a_running_session_is_not_taken_up_by_another_process(tmp_path: Path) -> None:
    flow = killed_once(tmp_path)
    flow.write_text(flow.read_text().replace("die_the_first_time", "wait_for_a_line"))
    running = start_cli("run", str(flow), "--session", "busy", "--quiet", cwd=tmp_path)
    try:
        assert running.stdin is not None and running.stdout is not None
        assert any("waiting for a line" in line for line in running.stdout)  # Review's step
        taken = run_cli("resume", str(flow), "busy", "--quiet", cwd=tmp_path)
        assert (
            taken.returncode == 1 and "'busy' is being written by another process" in taken.stdout
        )
        assert "running" in run_cli("sessions", "list", cwd=tmp_path).stdout
        deleting = run_cli("sessions", "delete", "busy", cwd=tmp_path)
        assert deleting.returncode == 1 and "another process" in deleting.stdout
        running.stdin.write("go on\n")
        running.stdin.flush()
        assert running.wait(timeout=60) == 0
        assert (tmp_path / "tally.txt").read_text().split() == ["Intake", "Publish"]
    finally:
        running.kill()
        running.communicate()


def test_sessions_list_names_a_damaged_store_and_lists_what_it_can(tmp_path: Path) -> None:
    """It crashed with a traceback once; now it lists what reads, says the store is damaged
    and exits 1."""
    path = tmp_path / "sessions.db"

    async def write() -> None:
        storage = SQLiteStorageBackend(path)
        try:
            for session_id in ("alpha", "beta", "gamma"):
                for number in range(1, 30):
                    line = json.dumps({"t": "step", "s": number, "pad": "x" * 300})
                    await storage.append(session_id, [line], True, number - 1)
        finally:
            storage.close()

    asyncio.run(write())
    sqlite_store_damaged_at(path, "alpha", "index")
    listed = run_cli("sessions", "list", "--store", str(path))
    output = listed.stdout.replace("\n", "")
    assert listed.returncode == 1, listed.stdout + listed.stderr
    assert "Traceback" not in listed.stdout + listed.stderr
    assert "is damaged" in output and all(name in output for name in ("alpha", "beta", "gamma"))


def repeating(folder: Path, times: int) -> Path:
    """A one-node workflow whose answer is its task written ``times`` times."""
    flow = folder / "flow.yaml"
    flow.write_text(
        "agents: [{name: A, function: 'flow_nodes:repeat'}]\ntopology: {nodes: [A]}\n"
        f"context: {{times: {times}}}\n"
    )
    return flow


def test_a_long_final_response_is_previewed_and_the_line_under_it_says_where_the_whole_is(
    tmp_path: Path,
) -> None:
    """Drawing the whole of a 4 MB response took rich 7.5 s (16 MB: over a minute), and
    printed all of it; now its opening is drawn, and the resume command writes the rest."""
    flow = repeating(tmp_path, 250_000)
    done = run_cli("run", str(flow), "--task", "fifteen chars.\n", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("fifteen chars.") == 40  # the preview's lines
    assert len(done.stdout) < 10_000
    session = session_line(done.stdout)
    pointer = (
        "3,749,401 more characters not shown (3,750,000 in all); the whole response: "
        f"orchestra resume {flow} {session} --output FILE"
    )
    assert pointer in done.stdout
    whole = tmp_path / "whole.txt"
    shown = run_cli("resume", str(flow), session, "--output", str(whole), cwd=tmp_path)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "its result, as stored (nothing is run)" in shown.stdout
    assert f"The whole response (3,750,000 characters) is in {whole}" in shown.stdout
    assert whole.read_text() == "fifteen chars.\n" * 250_000


def test_a_run_without_a_store_writes_its_response_with_output(tmp_path: Path) -> None:
    flow = repeating(tmp_path, 1_000)
    cut = run_cli("run", str(flow), "--task", "0123456789", "--no-store", cwd=tmp_path)
    assert cut.returncode == 0, cut.stdout + cut.stderr
    assert "the whole response: run again with --output FILE" in cut.stdout
    whole = tmp_path / "answer.txt"
    done = run_cli("run", str(flow), "--task", "0123456789", "--no-store", "--output", str(whole))
    assert done.returncode == 0, done.stdout + done.stderr
    assert whole.read_text() == "0123456789" * 1_000
    missing = tmp_path / "no" / "such" / "folder.txt"
    refused = run_cli("run", str(flow), "--task", "x", "--no-store", "--output", str(missing))
    assert refused.returncode == 2  # refused before anything runs: found after, it was lost
    assert f"{missing.parent} is no folder this process can write to" in refused.stdout.replace(
        "\n", ""
    )
    assert "run succeeded" not in refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr


@pytest.mark.parametrize("target", ["folder", "store", "workflow", "wal", "shm", "lock"])
def test_an_output_that_would_overwrite_what_the_run_uses_is_refused_first(
    tmp_path: Path, target: str
) -> None:
    """--output naming the store overwrote the open database after the run (the store was
    damaged from then on); naming a folder lost the response after the run."""
    flow = repeating(tmp_path, 3)
    store = tmp_path / "kept.db"
    output = {
        "folder": tmp_path,
        "store": store,
        "workflow": flow,
        "wal": tmp_path / "kept.db-wal",
        "shm": tmp_path / "kept.db-shm",
        "lock": tmp_path / "kept.db.locks" / "x",
    }[target]
    output.parent.mkdir(exist_ok=True)
    before = flow.read_bytes()
    refused = run_cli(
        "run", str(flow), "--task", "x", "--store", str(store), "--output", str(output)
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "--output" in refused.stdout and "run succeeded" not in refused.stderr
    assert flow.read_bytes() == before and not store.exists()


def test_run_text_is_shown_as_text_on_the_terminal(tmp_path: Path) -> None:
    """Rich turned ":ok:" into an emoji, and control characters reached the terminal as they
    were: ESC [2J cleared the screen, a carriage return overwrote the line."""
    flow = repeating(tmp_path, 1)
    task = "ratio 1:ok: \x1b[2Jclear\rback \u202eevil"
    done = run_cli("run", str(flow), "--task", task, "--no-store", "--verbose")
    assert done.returncode == 0, done.stdout + done.stderr
    shown = done.stdout.replace("\n", "").replace("│", "")
    assert "ratio 1:ok: \\x1b[2Jclear\\x0dback \\u202eevil" in shown
    for stream in (done.stdout, done.stderr):
        assert "\x1b[2J" not in stream and "\r" not in stream and "\u202e" not in stream


def test_a_long_error_is_previewed_too(tmp_path: Path) -> None:
    """Only a final response was previewed: a 4 MB error took 8.6 s to draw, 12 MB printed."""
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        "agents: [{name: A, function: 'flow_nodes:fail_at_length'}]\ntopology: {nodes: [A]}\n"
        "context: {length: 4000000}\nerror_handling: {max_retries: 0}\n"
    )
    failed = run_cli("run", str(flow), "--task", "x", "--no-store")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert len(failed.stdout) < 20_000 and len(failed.stderr) < 20_000
    assert "more characters not shown" in failed.stdout


def test_a_final_response_is_drawn_as_text_not_markup(tmp_path: Path) -> None:
    """Rich read the response as markup: "[/bold]" raised MarkupError, a traceback."""
    flow = tmp_path / "flow.yaml"
    flow.write_text("agents: [{name: A, function: 'flow_nodes:shout'}]\ntopology: {nodes: [A]}\n")
    done = run_cli("run", str(flow), "--task", "[/bold] [red]x", "--no-store")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[/BOLD] [RED]X!" in done.stdout
    assert "more characters not shown" not in done.stdout  # a short response is drawn whole


def test_topology_command_draws_a_label_as_text_not_markup(tmp_path: Path) -> None:
    """Rich read the diagram as markup: "[/bold]" in a condition raised MarkupError."""
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        "nodes: [A, B]\n"
        "edges: [{source: A, target: B, metadata: {condition: '[/bold] ok'}}, 'B -> User']\n"
    )
    drawn = run_cli("topology", str(flow))
    assert drawn.returncode == 0, drawn.stdout + drawn.stderr
    assert 'n0 -->|"[/bold] ok"| n1' in drawn.stdout


def test_the_diagram_is_printed_unwrapped_so_its_source_holds(tmp_path: Path) -> None:
    """A condition label longer than the terminal is wide was wrapped onto two lines."""
    label = "when " + "the reviewer approved it " * 8
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        "nodes: [A, B]\n"
        f"edges: [{{source: A, target: B, metadata: {{condition: '{label}'}}}}, 'B -> User']\n"
    )
    drawn = run_cli("topology", str(flow))
    assert drawn.returncode == 0, drawn.stdout + drawn.stderr
    assert f'    n0 -->|"{label}"| n1' in drawn.stdout.splitlines()


def test_paths_are_printed_as_text_not_markup(tmp_path: Path) -> None:
    """Rich read paths as markup: "[red]" in a folder's name vanished from the topology
    panel's title and the sessions listing (and a closing tag would raise MarkupError)."""
    folder = tmp_path / "[red]x"
    folder.mkdir()
    flow = folder / "flow.yaml"
    flow.write_text("nodes: [A, B]\nedges: ['A -> B']\n")
    drawn = run_cli("topology", str(flow))
    assert drawn.returncode == 0, drawn.stdout + drawn.stderr
    assert "[red]x" in drawn.stdout
    listed = run_cli("sessions", "list", "--store", str(folder / "sessions.db"))
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "[red]x" in listed.stdout


def test_a_damaged_store_is_named_damaged_and_a_new_run_starts_beside_damage(
    tmp_path: Path,
) -> None:
    """A store whose header is damaged exited 2 ("the command line is wrong") or with a
    traceback; it is damage (exit 1). A damaged snapshot page stopped every new run in its
    store; the logs are whole there, and a new session runs."""
    flow = repeating(tmp_path, 2)

    async def write(path: Path) -> None:
        storage = SQLiteStorageBackend(path)
        try:
            for session_id in ("alpha", "beta"):
                await storage.append(session_id, ['{"t": "step", "s": 1}'], True, 0)
                await storage.write_snapshot(session_id, session_id.encode() * 100)
        finally:
            storage.close()

    for where in ("header", "snapshot"):
        asyncio.run(write(tmp_path / f"{where}.db"))
        sqlite_store_damaged_at(tmp_path / f"{where}.db", "alpha", where)
    for command in (("sessions", "list"), ("run", str(flow), "--task", "go.", "--quiet")):
        refused = run_cli(*command, "--store", str(tmp_path / "header.db"))
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "Traceback" not in refused.stdout + refused.stderr
        assert "header.db is damaged" in refused.stdout.replace("\n", "")
    done = run_cli(
        "run", str(flow), "--task", "go.", "--quiet", "--store", str(tmp_path / "snapshot.db")
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "go.go." in done.stdout


def test_verbose_and_quiet_choose_what_a_run_shows(tmp_path: Path) -> None:
    """They replaced --verbosity N: one way to choose."""
    flow = repeating(tmp_path, 1)
    quiet = run_cli("run", str(flow), "--task", "go.", "--no-store", "--quiet")
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert quiet.stderr == ""
    normal = run_cli("run", str(flow), "--task", "go.", "--no-store")
    assert "A: final" in normal.stderr and "response: go." not in normal.stderr
    verbose = run_cli("run", str(flow), "--task", "go.", "--no-store", "-v")
    assert "response: go." in verbose.stderr
    both = run_cli("run", str(flow), "--task", "go.", "--verbose", "--quiet")
    assert both.returncode == 2 and "--verbose and --quiet" in both.stdout + both.stderr
    old = run_cli("run", str(flow), "--task", "go.", "--verbosity", "2")
    assert old.returncode == 2
