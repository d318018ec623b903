"""Acting on sessions from the web inspector (docs/ui.md, "Acting on a session", "Starting
runs"): runs hosted in the inspector's process, started from a workflow file, answered, paused,
resumed, checkpointed, restored and deleted through the POST routes, each of them refusing a
cross-site request; and ``orchestra demo --ui``."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from helpers import run_cli, start_cli

from orchestra.communication.channels import Question
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.coordination.state.manager import run_state
from orchestra.errors import SessionError, StorageUnavailableError
from orchestra.ui import host as host_module
from orchestra.ui.app import allowed_hosts, create_app
from orchestra.ui.host import STOPPED, RunHost, WebChannel
from orchestra.workflow import load_workflow

TOKEN = "s3cret-token"
BASE = "http://127.0.0.1:8765"
JSON = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
T = 1_700_000_000.0
WAIT = 60  # a bound on each wait: a hang fails the test, it never paces it

ASKER = """\
agents: [{name: Asker, function: 'terminal_nodes:asker'}]
topology: {nodes: [User, Asker], edges: [User -> Asker, Asker -> User]}
task: "ASK: What is your name?"
"""

OTHER = """\
agents: [{name: Shouter, function: 'flow_nodes:shout'}]
topology: {nodes: [Shouter]}
task: hello
"""


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[RunHost]:
    """A host over a new store with the asking workflow (``asker``) and another (``other``)."""
    for name, text in (("asker", ASKER), ("other", OTHER)):
        (tmp_path / f"{name}.yaml").write_text(text)
    flows = {name: load_workflow(tmp_path / f"{name}.yaml") for name in ("asker", "other")}
    found = RunHost(tmp_path / "sessions.db", flows)
    try:
        yield found
    finally:
        await found.close()


@asynccontextmanager
async def client_of(host: RunHost) -> AsyncIterator[httpx2.AsyncClient]:
    """A client of the app over ``host``, in this process, sending JSON with the token."""
    app = create_app(host.store, TOKEN, allowed_hosts("127.0.0.1"), host)
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url=BASE, headers=JSON) as found:
        yield found


@pytest.fixture
async def client(host: RunHost) -> AsyncIterator[httpx2.AsyncClient]:
    async with client_of(host) as found:
        yield found


async def until(host: RunHost, ready: Callable[[], Any]) -> Any:
    """``ready()``'s value once it is truthy, waiting on the host's changes, never a clock."""

    async def wait() -> Any:
        seen = host.version
        while not (value := ready()):
            seen = await host.changed(seen)
        return value

    return await asyncio.wait_for(wait(), WAIT)


async def question(host: RunHost, session: str) -> dict[str, Any]:
    """The session's one waiting question, once it is asked."""
    found: list[dict[str, Any]] = await until(host, lambda: host.questions(session))
    assert len(found) == 1, found
    return found[0]


async def ended(host: RunHost, session: str) -> str:
    """How the session's last run stands once no run of the host runs it."""
    await until(host, lambda: not host.hosts(session))
    return run_state(await host.manager.load(session))


async def final(host: RunHost, session: str) -> str:
    """The final response of the session's last run, as its log keeps it."""
    flow = host.workflows["asker"]
    keeper = OrchestraInstance(flow.topology, flow.registry, state_manager=host.manager)
    result = await keeper.get_result(session)
    assert result is not None
    return str(result.final_response)


async def post(client: httpx2.AsyncClient, path: str, body: Any) -> httpx2.Response:
    return await client.post(path, json=body)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (StorageUnavailableError("could not read session 'talk': db failed to answer"), 503),
        (SessionError("session 'talk' is being written by another process"), 409),
    ],
    ids=["outage", "refusal"],
)
async def test_an_action_the_stores_server_did_not_answer_is_a_503_not_a_conflict(
    client: httpx2.AsyncClient, monkeypatch: pytest.MonkeyPatch, error: Exception, status: int
) -> None:
    """An outage is worth trying again; a refusal by the store (another writer) is a 409."""

    async def failing(*_: Any) -> None:
        raise error

    monkeypatch.setattr(RunHost, "pause", failing)
    answered = await post(client, "/api/sessions/talk/pause", {})
    assert answered.status_code == status and answered.json() == {"error": str(error)}


async def test_a_run_started_from_the_page_is_answered_there_and_finishes(
    host: RunHost, client: httpx2.AsyncClient
) -> None:
    listed = await client.get("/api/workflows")
    assert listed.json() == [
        {"name": "asker", "task": "ASK: What is your name?"},
        {"name": "other", "task": "hello"},
    ]
    started = await post(client, "/api/runs", {"workflow": "asker", "session": "talk"})
    assert started.status_code == 200, started.text
    assert started.json() == {"session": "talk"}
    asked = await question(host, "talk")
    assert (asked["agent"], asked["text"], asked["kind"]) == (
        "Asker",
        "What is your name?",
        "agent",
    )
    assert host.hosts("talk")
    answered = await post(
        client, "/api/sessions/talk/answer", {"question": asked["id"], "answer": "Ann"}
    )
    assert answered.status_code == 200, answered.text
    assert await ended(host, "talk") == "finished"
    assert await final(host, "talk") == "answer='Ann'"
    assert host.questions("talk") == []


async def test_a_paused_run_is_resumed_with_the_workflow_it_was_run_with(
    host: RunHost, client: httpx2.AsyncClient
) -> None:
    await post(client, "/api/runs", {"workflow": "asker", "session": "talk"})
    await question(host, "talk")
    paused = await post(client, "/api/sessions/talk/pause", {"reason": "lunch"})
    assert paused.status_code == 200, paused.text
    assert not host.hosts("talk")  # it answers once the run stopped
    assert run_state(await host.manager.load("talk")) == "paused"
    assert host.questions("talk") == []  # withdrawn: asked again on resume
    resumed = await post(client, "/api/sessions/talk/resume", {})
    assert resumed.json() == {"session": "talk", "workflow": "asker"}
    asked = await question(host, "talk")
    await post(client, "/api/sessions/talk/answer", {"question": asked["id"], "answer": "Bo"})
    assert await ended(host, "talk") == "finished"
    assert await final(host, "talk") == "answer='Bo'"


async def test_of_two_resumes_at_once_exactly_one_goes_on_and_stays_hosted(
    host: RunHost, client: httpx2.AsyncClient
) -> None:
    """A double click on "resume": the session is claimed before the first await, so the
    second is refused, and the run that goes on stays the host's (paused, deleted, closed)."""
    await post(client, "/api/runs", {"workflow": "asker", "session": "talk"})
    await question(host, "talk")
    await post(client, "/api/sessions/talk/pause", {})
    both = await asyncio.gather(
        post(client, "/api/sessions/talk/resume", {}),
        post(client, "/api/sessions/talk/resume", {}),
    )
    assert sorted(response.status_code for response in both) == [200, 409], both
    [refused] = [response for response in both if response.status_code == 409]
    assert "session 'talk'" in refused.json()["error"]
    await question(host, "talk")
    assert host.hosts("talk")
    paused = await post(client, "/api/sessions/talk/pause", {})
    assert paused.status_code == 200, paused.text
    assert run_state(await host.manager.load("talk")) == "paused"


async def test_of_two_starts_in_one_session_at_once_exactly_one_goes_on(
    host: RunHost, client: httpx2.AsyncClient
) -> None:
    start = {"workflow": "asker", "session": "dup"}
    both = await asyncio.gather(post(client, "/api/runs", start), post(client, "/api/runs", start))
    assert sorted(response.status_code for response in both) == [200, 409], both
    [refused] = [response for response in both if response.status_code == 409]
    assert "session 'dup'" in refused.json()["error"]
    await question(host, "dup")
    assert host.hosts("dup")
    await host.close()  # the run that went on is the one closing pauses
    assert run_state(await StateManager(SQLiteStorageBackend(host.store)).load("dup")) == "paused"


async def test_a_second_answer_is_told_the_question_was_answered_already(
    host: RunHost, client: httpx2.AsyncClient
) -> None:
    """A double click on "answer": the second gets the host's own 409 naming the session,
    listing that session's waiting questions only."""
    await post(client, "/api/runs", {"workflow": "asker", "session": "dup"})
    await post(client, "/api/runs", {"workflow": "asker", "session": "else"})
    asked = await question(host, "dup")
    await question(host, "else")
    body = {"question": asked["id"], "answer": "Ann"}
    both = await asyncio.gather(
        post(client, "/api/sessions/dup/answer", body),
        post(client, "/api/sessions/dup/answer", body),
    )
    assert [response.status_code for response in both] == [200, 409], both
    assert both[1].json()["error"] == (
        f"session 'dup': question {asked['id']!r} was answered already "
        "(none of its questions is waiting)"
    )
    assert await ended(host, "dup") == "finished"
    again = await post(client, "/api/sessions/dup/answer", body)
    assert again.status_code == 409 and "answered already" in again.json()["error"]
    elsewhere = await post(client, "/api/sessions/else/answer", body)
    assert elsewhere.status_code == 404, elsewhere.text  # not a question of that session


async def test_resume_refuses_a_workflow_of_another_topology_naming_it(
    host: RunHost, client: httpx2.AsyncClient
) -> None:
    await post(client, "/api/runs", {"workflow": "asker", "session": "talk"})
    await question(host, "talk")
    await post(client, "/api/sessions/talk/pause", {})
    wrong = await post(client, "/api/sessions/talk/resume", {"workflow": "other"})
    assert wrong.status_code == 400
    assert "workflow 'other' is not the one session 'talk' was run with" in wrong.json()["error"]
    unknown = await post(client, "/api/sessions/talk/resume", {"workflow": "nope"})
    assert unknown.status_code == 400
    assert "no workflow 'nope'" in unknown.json()["error"]
    assert run_state(await host.manager.load("talk")) == "paused"


async def test_checkpoint_restore_and_resume_fork_the_history(
    host: RunHost, client: httpx2.AsyncClient
) -> None:
    """A checkpoint taken through the running run's writer; after the run finished, a restore
    sends the session back there and a resume asks again: the second answer is the result."""
    await post(client, "/api/runs", {"workflow": "asker", "session": "talk"})
    first = await question(host, "talk")
    made = await post(client, "/api/sessions/talk/checkpoint", {"name": "asked"})
    assert made.json() == {"checkpoint": "talk@asked"}
    await post(client, "/api/sessions/talk/answer", {"question": first["id"], "answer": "Ann"})
    assert await ended(host, "talk") == "finished"
    restored = await post(client, "/api/sessions/talk/restore", {"checkpoint": "talk@asked"})
    assert restored.status_code == 200, restored.text
    assert run_state(await host.manager.load("talk")) == "interrupted"
    await post(client, "/api/sessions/talk/resume", {"workflow": "asker"})
    again = await question(host, "talk")
    assert again["id"] != first["id"] and again["text"] == first["text"]
    await post(client, "/api/sessions/talk/answer", {"question": again["id"], "answer": "Cy"})
    assert await ended(host, "talk") == "finished"
    assert await final(host, "talk") == "answer='Cy'"


async def test_a_checkpoint_the_page_lists_is_restored_by_the_id_it_lists(
    host: RunHost, client: httpx2.AsyncClient
) -> None:
    """A name whose id the page could not give back (long, multi-line, key-like) is refused
    with 400 naming the field; an accepted one is listed verbatim and restored by that id."""
    await post(client, "/api/runs", {"workflow": "asker", "session": "talk"})
    await question(host, "talk")
    await post(client, "/api/sessions/talk/pause", {})
    key = "sk-ant-api03-" + "A1b2C3d4" * 6
    for name in ("x" * 129, "line\nbreak", f"key {key}"):
        made = await post(client, "/api/sessions/talk/checkpoint", {"name": name})
        assert made.status_code == 400, made.text
        assert "checkpoint_name" in made.json()["error"] and key not in made.text
    name = f"before lunch @12:30 {'y' * 108}"  # 128 characters
    made = await post(client, "/api/sessions/talk/checkpoint", {"name": name})
    assert made.json() == {"checkpoint": f"talk@{name}"}
    view = (await client.get("/api/sessions/talk")).json()
    [listed] = view["checkpoints"]
    assert listed["id"] == f"talk@{name}"
    restored = await post(client, "/api/sessions/talk/restore", {"checkpoint": listed["id"]})
    assert restored.status_code == 200, restored.text


async def test_a_session_at_rest_is_checkpointed_and_restored_without_a_hosted_run(
    tmp_path: Path, host: RunHost, client: httpx2.AsyncClient
) -> None:
    """A session another process ran (here: a run of the host's own, long over) is acted on
    from its log alone."""
    await post(client, "/api/runs", {"workflow": "other", "session": "calm"})
    assert await ended(host, "calm") == "finished"
    made = await post(client, "/api/sessions/calm/checkpoint", {})
    checkpoint = made.json()["checkpoint"]
    assert checkpoint.startswith("calm@")
    restored = await post(client, "/api/sessions/calm/restore", {"checkpoint": checkpoint})
    assert restored.status_code == 200, restored.text


async def test_delete_refuses_a_running_session_then_deletes_it(
    host: RunHost, client: httpx2.AsyncClient
) -> None:
    await post(client, "/api/runs", {"workflow": "asker", "session": "talk"})
    asked = await question(host, "talk")
    refused = await post(client, "/api/sessions/talk/delete", {})
    assert refused.status_code == 409
    assert "session 'talk' is running here" in refused.json()["error"]
    await post(client, "/api/sessions/talk/answer", {"question": asked["id"], "answer": "Ann"})
    await ended(host, "talk")
    deleted = await post(client, "/api/sessions/talk/delete", {})
    assert deleted.json() == {"session": "talk", "deleted": True}
    gone = await post(client, "/api/sessions/talk/delete", {})
    assert gone.status_code == 404
    assert "no session 'talk'" in gone.json()["error"]


async def test_a_session_another_process_runs_is_not_acted_on_here(
    host: RunHost, client: httpx2.AsyncClient
) -> None:
    """Held by a writer of another store connection (as another process's run holds it):
    pause is that process's, and resume, restore and delete wait for it."""
    await post(client, "/api/runs", {"workflow": "other", "session": "calm"})
    await ended(host, "calm")
    backend = SQLiteStorageBackend(host.store)
    writer, _ = await StateManager(backend, auto_save_interval=0).open("calm")
    at = writer.length
    writer.record(inp.Checkpoint(at=T, checkpoint_id="calm@x", name="x", position=at, at_rest=True))
    await writer.flush()  # its first append holds the session until the writer closes
    try:
        pause = await post(client, "/api/sessions/calm/pause", {})
        assert pause.status_code == 409
        assert "session 'calm' is not run by this inspector" in pause.json()["error"]
        for action, body in [
            ("delete", {}),
            ("resume", {}),
            ("checkpoint", {}),
            ("restore", {"checkpoint": "calm@x"}),
        ]:
            refused = await post(client, f"/api/sessions/calm/{action}", body)
            assert refused.status_code == 409, (action, refused.text)
            assert "being run by another process" in refused.json()["error"]
    finally:
        await writer.close()
        backend.close()


async def test_errors_name_what_is_at_fault(host: RunHost, client: httpx2.AsyncClient) -> None:
    await post(client, "/api/runs", {"workflow": "other", "session": "calm"})
    await ended(host, "calm")
    cases = [
        ("/api/runs", {"workflow": "nope"}, 400, "no workflow 'nope' in this inspector"),
        ("/api/runs", {"workflow": 3}, 400, "field 'workflow' must be a string"),
        ("/api/runs", {"workflow": "other", "session": "a/b"}, 400, "a/b"),
        ("/api/sessions/ghost/pause", {}, 404, "no session 'ghost'"),
        ("/api/sessions/ghost/checkpoint", {}, 404, "no session 'ghost'"),
        ("/api/sessions/calm/answer", {"question": "q9", "answer": "x"}, 404, "question 'q9'"),
        ("/api/sessions/calm/resume", {}, 409, "session 'calm' is finished"),
        ("/api/sessions/calm/restore", {"checkpoint": "calm@nope"}, 404, "'calm@nope'"),
        ("/api/sessions/calm/restore", {"checkpoint": "other@x"}, 400, "not a checkpoint of"),
    ]
    for path, body, status, text in cases:
        response = await post(client, path, body)
        assert (response.status_code, text in response.json()["error"]) == (status, True), (
            path,
            response.text,
        )


async def test_cross_site_requests_are_refused(host: RunHost, client: httpx2.AsyncClient) -> None:
    body = b'{"workflow": "other"}'
    path = "/api/runs"
    headers = {"Content-Type": "application/json"}
    no_token = await client.post(path, content=body, headers={"Authorization": ""})
    assert no_token.status_code == 401
    plain = await client.post(path, content=body, headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415
    form = await client.post(
        path,
        content=b"workflow=other",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 415
    foreign = await client.post(
        path, content=body, headers={**headers, "Origin": "http://evil.example"}
    )
    assert foreign.status_code == 403
    assert "'http://evil.example' is refused" in foreign.json()["error"]
    other_port = await client.post(
        path, content=body, headers={**headers, "Origin": "http://127.0.0.1:9999"}
    )
    assert other_port.status_code == 403
    assert await host.manager.list_sessions() == []  # none of them started a run
    own = await client.post(path, content=body, headers={**headers, "Origin": BASE})
    assert own.status_code == 200, own.text
    assert all(response.headers["X-Content-Type-Options"] == "nosniff" for response in (form, own))


async def test_closing_the_host_pauses_its_runs(tmp_path: Path) -> None:
    (tmp_path / "asker.yaml").write_text(ASKER)
    host = RunHost(tmp_path / "sessions.db", {"asker": load_workflow(tmp_path / "asker.yaml")})
    session = await host.start_run("asker", None, "talk")
    await question(host, session)
    await host.close()
    log = await StateManager(SQLiteStorageBackend(tmp_path / "sessions.db")).load("talk")
    assert run_state(log) == "paused"
    assert log.last_run is not None
    pauses = [entry.record for entry in log.last_run.entries if entry.kind == "pause"]
    assert [pause.reason for pause in pauses] == [STOPPED]  # type: ignore[attr-defined]


async def test_demo_ui_serves_its_run_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """The real command, on the bundled offline model: its run is in the store when the
    address is printed; Ctrl-C pauses it (unless it already finished) and stops the server."""
    server = start_cli(
        "demo", "--ui", "--port", "0", "--store", str(tmp_path / "s.db"), cwd=tmp_path
    )
    try:
        assert server.stdout is not None
        lines = []
        while not lines or not lines[-1].startswith("open "):
            line = await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), WAIT)
            assert line, lines
            lines.append(line)
        started = re.search(r"started session (\w+)", "".join(lines))
        opened = re.search(r"open (http://127\.0\.0\.1:\d+/)#token=(\S+)", lines[-1])
        assert started and opened, lines
        bearer = {"Authorization": f"Bearer {opened.group(2)}"}
        async with httpx2.AsyncClient(base_url=opened.group(1), trust_env=False) as client:
            sessions = await client.get("/api/sessions", headers=bearer, timeout=WAIT)
            flows = await client.get("/api/workflows", headers=bearer, timeout=WAIT)
        assert started.group(1) in {item["id"] for item in sessions.json()}
        assert [flow["name"] for flow in flows.json()] == ["demo"]
        server.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(server.wait, WAIT) == 130  # as every command's Ctrl-C
        log = await StateManager(SQLiteStorageBackend(tmp_path / "s.db")).load(started.group(1))
        assert run_state(log) in ("paused", "finished")  # paused as the server stopped, never cut
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


async def drained(lines: AsyncIterator[str]) -> None:
    async for _ in lines:
        pass


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
async def test_one_signal_stops_the_server_with_a_page_listening(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """The page always holds /api/events open, and uvicorn waits for open responses before
    it shuts down: the stream ends as the server begins to exit, so one Ctrl-C (or SIGTERM)
    stops it cleanly and its hosted run is paused."""
    (tmp_path / "asker.yaml").write_text(ASKER)
    (tmp_path / "s.db").touch()  # an empty SQLite database
    server = start_cli(
        *("ui", "--store", str(tmp_path / "s.db"), "--port", "0"),
        *("--workflow", str(tmp_path / "asker.yaml")),
        cwd=tmp_path,
        stderr=True,
    )
    try:
        assert server.stdout is not None and server.stderr is not None
        line = ""
        while not line.startswith("open "):
            line = await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), WAIT)
            assert line
        opened = re.search(r"open (http://127\.0\.0\.1:\d+/)#token=(\S+)", line)
        assert opened, line
        bearer = {"Authorization": f"Bearer {opened.group(2)}"}
        async with httpx2.AsyncClient(
            base_url=opened.group(1), headers=bearer, trust_env=False, timeout=WAIT
        ) as client:
            started = await client.post("/api/runs", json={"workflow": "asker", "session": "cc"})
            assert started.status_code == 200, started.text
            async with client.stream("GET", "/api/events?session=cc") as events:
                lines = events.aiter_lines()
                async for data in lines:  # until the page would show the question
                    if data.startswith("data: ") and '"questions":[{' in data:
                        break
                server.send_signal(stop)
                await asyncio.wait_for(drained(lines), WAIT)  # it ends: the server is exiting
        code = await asyncio.to_thread(server.wait, WAIT)
        errors = server.stderr.read()
        assert code in (130, -stop), errors  # as every command's Ctrl-C; SIGTERM kills
        assert "Traceback" not in errors and "Error" not in errors, errors
        log = await StateManager(SQLiteStorageBackend(tmp_path / "s.db")).load("cc")
        assert run_state(log) == "paused"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_ui_names_a_workflow_file_at_fault(tmp_path: Path) -> None:
    """A workflow file is loaded before the server starts: a mistake in it, or two files of one
    name, is said plainly (exit code 2), nothing served."""
    store = tmp_path / "sessions.db"
    store.write_bytes(b"")  # a store file: the command checks it is there first
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "flow.yaml").write_text(OTHER)
    broken = tmp_path / "broken.yaml"
    broken.write_text(OTHER.replace("topology", "topolgy"))
    twice = run_cli(
        "ui", "--store", str(store), "--port", "0",
        "--workflow", str(tmp_path / "a" / "flow.yaml"),
        "--workflow", str(tmp_path / "b" / "flow.yaml"),
    )  # fmt: skip
    assert twice.returncode == 2
    assert "two workflow files are named 'flow'" in twice.stdout
    bad = run_cli("ui", "--store", str(store), "--port", "0", "--workflow", str(broken))
    assert bad.returncode == 2
    assert "broken.yaml" in bad.stdout and "topolgy" in bad.stdout


def test_demo_ui_refuses_options_it_cannot_honour(tmp_path: Path) -> None:
    refused = run_cli("demo", "--ui", "--no-store", cwd=tmp_path)
    assert refused.returncode == 2
    assert "--ui runs the demo in the web inspector" in refused.stdout + refused.stderr


async def test_the_web_channel_remembers_a_bounded_number_of_answered_questions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each answered question was remembered for the life of the inspector; the oldest now go
    once ``ANSWERED_KEPT`` are kept (a late second answer to one of them is told it waits for
    no answer, rather than that it was answered)."""
    monkeypatch.setattr(host_module, "ANSWERED_KEPT", 3)
    channel = WebChannel(lambda: None)
    for number in range(5):
        asking = asyncio.ensure_future(channel.ask(Question(f"q{number}", "s", "b0", "A", "?")))
        await asyncio.sleep(0)  # it is asked
        channel.answer(f"q{number}", "yes")
        assert await asking == "yes"
    assert [channel.answered("s", f"q{n}") for n in range(5)] == [False, False, True, True, True]
