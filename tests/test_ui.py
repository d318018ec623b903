"""The web inspector's first increment (docs/ui.md): the sessions list as JSON and as a page,
each session's state named as the command line names it, a damaged one listed with its error,
the page safe with untrusted text, the summaries built off the event loop, and a token on
every API request, loopback included."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from helpers import run_cli, start_cli

from orchestra.agents.contract import Action, StepOutcome
from orchestra.coordination.config import ErrorHandlingConfig, ExecutionConfig
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.coordination.state.manager import SessionWriter
from orchestra.errors import StorageUnavailableError
from orchestra.models.base import Usage
from orchestra.ui import catalog
from orchestra.ui.app import STATIC, allowed_hosts, create_app
from orchestra.ui.catalog import Catalog

T = 1_700_000_000.0
HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"
TOKEN = "s3cret-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def start(task: Any = "write a poem", at: float = T) -> inp.RunStart:
    return inp.RunStart(
        at=at,
        task=task,
        context={},
        max_steps=10,
        config=ExecutionConfig(),
        error_config=ErrorHandlingConfig(),
        topology=("A",),
    )


def step(action: Action, tokens: int = 15, cost: float | None = 0.01) -> inp.StepResult:
    usage = Usage(prompt_tokens=tokens - 5, completion_tokens=5, cost_usd=cost)
    return inp.StepResult(
        at=T + 1,
        branch_id="b0",
        outcome=StepOutcome(action=action, usage=usage),
        messages=(),
        duration=0.5,
    )


def end(*, paused: bool = False, success: bool = True, error: str | None = None) -> inp.RunEnd:
    return inp.RunEnd(at=T + 2, paused=paused, success=success, error=error)


BEGIN = inp.StepBegin(at=T + 0.5, branch_id="b0")


async def write(manager: StateManager, session: str, *records: inp.Record) -> SessionWriter:
    """The session's log holding ``records``, durable; the writer still holds it."""
    writer, _ = await manager.open(session)
    for record in records:
        writer.record(record)
    await writer.flush()
    return writer


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Path]:
    """A store with a session in each state; two of them held by a writer, as a run in
    progress in another process holds its session, for as long as the test runs."""
    path = tmp_path / "sessions.db"
    backend = SQLiteStorageBackend(path)
    manager = StateManager(backend, auto_save_interval=0)
    for session, records in {
        "done": [start(), BEGIN, step(Action.final("ok")), end()],
        "failed": [
            start(HOSTILE),
            BEGIN,
            step(Action.final("x")),
            end(success=False, error="boom"),
        ],
        "paused": [start(), end(paused=True)],
        "crashed": [start({"topic": "cats"}), BEGIN, step(Action.final("ok"), cost=None)],
    }.items():
        await (await write(manager, session, *records)).close()
    held = [
        await write(manager, "running", start(), BEGIN),
        await write(manager, "asking", start(), BEGIN, step(Action.ask_user("which one?"))),
        # its run ended, its writer not let go yet: the log, not the lock, says how it stands
        await write(manager, "ending", start(), BEGIN, step(Action.final("ok")), end()),
        await write(manager, "pausing", start(), end(paused=True)),
    ]
    await backend.append("damaged", ['{"s": 7, "t": "run"}'], durable=True, after=0)
    await (await write(manager, "bad-step", start())).close()  # then a step no step is like:
    await backend.append("bad-step", ['{"s": 2, "t": "step", "at": 1}'], durable=True, after=1)
    try:
        yield path
    finally:
        for writer in held:
            await writer.close()
        backend.close()


async def summaries_of(path: Path) -> dict[str, dict[str, Any]]:
    return {summary["id"]: dict(summary) for summary in await session_summaries(path)}


async def session_summaries(path: Path) -> list[dict[str, Any]]:
    """The sessions list, as the app's catalog builds it."""
    found = Catalog(path)
    try:
        return await found.sessions(None)
    finally:
        found.close()


async def test_each_session_is_summarised_with_its_state(store: Path) -> None:
    found = await summaries_of(store)
    assert {key: value["status"] for key, value in found.items()} == {
        "done": "finished",
        "failed": "failed",
        "paused": "paused",
        "crashed": "interrupted",
        "running": "running",
        "asking": "waiting for the user",
        "ending": "finished",
        "pausing": "paused",
        "damaged": "damaged",
        "bad-step": "damaged",
    }
    done = found["done"]
    assert done["task"] == "write a poem"
    assert done["started"] == "2023-11-14T22:13:20+00:00"
    assert (done["runs"], done["steps"], done["tokens"], done["cost_usd"]) == (1, 1, 15, 0.01)
    assert found["crashed"]["task"] == "{'topic': 'cats'}"
    assert found["crashed"]["cost_usd"] is None  # no price known
    assert found["failed"]["error"] == "boom"
    assert "out of sequence" in found["damaged"]["error"]
    assert found["bad-step"]["error"].startswith(  # read only to count its tokens: still named
        "session 'bad-step': record 2 (step) cannot be read: fields 'branch_id'"
    )


async def test_a_long_task_is_cut_and_a_key_in_it_redacted(tmp_path: Path) -> None:
    backend = SQLiteStorageBackend(tmp_path / "s.db")
    manager = StateManager(backend, auto_save_interval=0)
    await (await write(manager, "long", start("word " * 1000), end())).close()
    key = "sk-proj-" + "a1B2c3D4" * 6
    await (await write(manager, "keyed", start(f"use {key} please"), end())).close()
    backend.close()
    found = await summaries_of(tmp_path / "s.db")
    task = found["long"]["task"]
    assert task.startswith("word word") and task.endswith("(4,880 more characters)")
    assert key not in found["keyed"]["task"] and found["keyed"]["task"].startswith("use ")


async def test_any_failure_in_one_session_makes_it_damaged_not_the_list(tmp_path: Path) -> None:
    """A start time out of any calendar's range (OverflowError, not a ValueError) once made
    the whole list a 500."""
    backend = SQLiteStorageBackend(tmp_path / "s.db")
    manager = StateManager(backend, auto_save_interval=0)
    await (await write(manager, "victim", start(at=1e20), end())).close()
    await (await write(manager, "fine", start(), end())).close()
    backend.close()
    found = await summaries_of(tmp_path / "s.db")
    assert found["fine"]["status"] == "finished"
    assert found["victim"]["status"] == "damaged"
    assert found["victim"]["error"].startswith("session 'victim': OverflowError")


async def test_the_summaries_are_built_off_the_event_loop(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first summary waits until the event loop lets it go: were it built on the loop,
    the loop could not, and the wait would run out."""
    entered, release = threading.Event(), threading.Event()
    waits: list[bool] = []
    summarised = catalog.summarised

    def held_up(log: Any, held: bool) -> Any:
        if not waits:
            entered.set()
            waits.append(release.wait(10))
        return summarised(log, held)

    monkeypatch.setattr(catalog, "summarised", held_up)
    building = asyncio.create_task(session_summaries(store))
    assert await asyncio.to_thread(entered.wait, 10)
    release.set()  # the loop goes on while the worker builds
    assert len(await building) == 10
    assert waits == [True]


@pytest.fixture
async def client(store: Path) -> AsyncIterator[httpx2.AsyncClient]:
    async with client_of(store, "http://127.0.0.1:8765") as found:
        found.headers.update(BEARER)
        yield found


def client_of(store: Path, base: str, bound: str = "127.0.0.1") -> httpx2.AsyncClient:
    """A client of the app in this process, bound (as the command would be) to ``bound``."""
    app = create_app(store, TOKEN, allowed_hosts(bound))
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=base)


async def test_the_api_lists_the_sessions_as_json_with_untrusted_text_as_data(
    client: httpx2.AsyncClient,
) -> None:
    response = await client.get("/api/sessions")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-content-type-options"] == "nosniff"
    listed = {item["id"]: item for item in response.json()}
    assert len(listed) == 10
    assert listed["failed"]["task"] == HOSTILE  # a JSON string, never markup


async def test_an_unexpected_error_is_a_500_with_the_headers_and_no_detail(
    client: httpx2.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: Any) -> list[Any]:
        raise RuntimeError("private task text")

    monkeypatch.setattr("orchestra.ui.catalog.Catalog.sessions", broken)
    failed = await client.get("/api/sessions")
    assert failed.status_code == 500
    assert failed.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in failed.headers["content-security-policy"]
    assert "private" not in failed.text and "error" in failed.json()


async def test_a_store_whose_server_does_not_answer_is_a_503_naming_it(
    client: httpx2.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage is worth trying again (a 503), not a refusal of the request (a 4xx)."""

    async def down(*_: Any) -> list[Any]:
        raise StorageUnavailableError("could not list the sessions: db:5432 failed to answer")

    monkeypatch.setattr("orchestra.ui.catalog.Catalog.sessions", down)
    failed = await client.get("/api/sessions")
    assert failed.status_code == 503
    assert failed.json() == {"error": "could not list the sessions: db:5432 failed to answer"}


async def test_the_page_and_its_script_come_with_a_strict_policy(
    client: httpx2.AsyncClient,
) -> None:
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self';" in policy
    # only styles may be inline (Mermaid styles its SVG so): no script, inline or evaluated
    assert "unsafe" not in policy.replace("style-src 'self' 'unsafe-inline';", "")
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text  # no inline script: only <script src=...>
    sources = re.findall(r'<script type="module" src="([^"]+)"', page.text)
    assert sources == ["/static/main.js"]
    scripts = sorted(path.name for path in STATIC.glob("*.js"))  # the vendored Mermaid aside
    assert scripts == [
        "api.js",
        "detail.js",
        "graph.js",
        "list.js",
        "main.js",
        "page.js",
        "session.js",
        "timeline.js",
    ]
    texts = []
    for name in scripts:
        script = await client.get(f"/static/{name}")
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]
        assert script.headers["content-security-policy"] == policy
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in script.text, (name, sink)
        texts.append(script.text)
    assert "textContent" in "".join(texts)
    # the token: from the fragment, kept for the tab, out of the address bar, sent as Bearer
    for use in ("location.hash", "sessionStorage", "history.replaceState", "Bearer "):
        assert use in texts[0]  # api.js
    vendored = await client.get("/static/vendor/mermaid.min.js")
    assert vendored.status_code == 200 and "javascript" in vendored.headers["content-type"]


async def test_only_the_bound_host_is_answered(store: Path) -> None:
    """A page elsewhere that rebinds its own name to 127.0.0.1 sends its own name as Host."""
    for base in ("http://127.0.0.1:8765", "http://localhost:1", "http://[::1]:8765"):
        async with client_of(store, base) as client:
            assert (await client.get("/api/sessions", headers=BEARER)).status_code == 200
    for host in ("evil.example:8765", "[::1]evil.com:80", "127.0.0.1.evil.com", "localhost."):
        async with client_of(store, "http://127.0.0.1:8765") as client:
            refused = await client.get("/api/sessions", headers={**BEARER, "Host": host})
        assert refused.status_code == 403, host
        assert refused.headers["x-content-type-options"] == "nosniff"
    async with client_of(store, "http://192.0.2.7:8765", bound="192.0.2.7") as client:
        assert (await client.get("/api/sessions", headers=BEARER)).status_code == 200
        assert (await client.get("/", headers={"Host": "localhost"})).status_code == 403
    async with client_of(store, "http://example.net:8765", bound="0.0.0.0") as client:
        assert (await client.get("/api/sessions", headers=BEARER)).status_code == 200


async def test_any_loopback_address_bound_is_answered(store: Path) -> None:
    """Bound to 127.0.0.2, a browser sends ``Host: 127.0.0.2:PORT``: once refused (403)."""
    async with client_of(store, "http://127.0.0.2:8765", bound="127.0.0.2") as client:
        assert (await client.get("/api/sessions", headers=BEARER)).status_code == 200
    async with client_of(store, "http://[::1]:8765", bound="0:0:0:0:0:0:0:1") as client:
        assert (await client.get("/api/sessions", headers=BEARER)).status_code == 200
    assert allowed_hosts("127.0.0.2") == {"127.0.0.2", "127.0.0.1", "localhost", "[::1]"}
    assert allowed_hosts("192.168.1.4") == {"192.168.1.4"}
    assert allowed_hosts("::") is None


async def test_every_api_request_needs_the_token_loopback_included(store: Path) -> None:
    """Any local user could otherwise read every session. No cookie and no ``?token=``: the
    page and its files hold no data and are served without it."""
    async with client_of(store, "http://127.0.0.1:8765") as client:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Cookie": f"token={TOKEN}"}):
            refused = await client.get("/api/sessions", headers=headers)
            assert refused.status_code == 401
            assert TOKEN not in refused.text
        assert (await client.get(f"/api/sessions?token={TOKEN}")).status_code == 401
        page = await client.get(f"/?token={TOKEN}")
        assert page.status_code == 200 and "set-cookie" not in page.headers
        assert (await client.get("/static/main.js")).status_code == 200
        bearer = await client.get("/api/sessions", headers=BEARER)
        assert bearer.status_code == 200 and len(bearer.json()) == 10
        assert "set-cookie" not in bearer.headers


# ---- the command ---------------------------------------------------------------------------


def test_ui_names_a_store_that_does_not_exist(tmp_path: Path) -> None:
    result = run_cli("ui", "--store", str(tmp_path / "nowhere.db"), "--port", "0")
    assert result.returncode == 2
    assert "no session store at" in result.stdout + result.stderr


async def test_ui_with_a_workflow_makes_the_store_of_a_fresh_project(tmp_path: Path) -> None:
    """Its workflows are there to start runs, the first of a project included: the store is
    made as ``orchestra run --store`` makes it (a watch-only inspector refuses, above)."""
    (tmp_path / "flow.yaml").write_text(
        "agents: [{name: A, function: 'flow_nodes:shout'}]\ntopology: {nodes: [A]}\n"
    )
    server = start_cli("ui", "--workflow", "flow.yaml", "--port", "0", cwd=tmp_path)
    try:
        assert server.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 60)
        assert "listening on http://127.0.0.1:" in line, line
        assert (tmp_path / ".orchestra" / "sessions.db").is_file()
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def busy_port() -> Iterator[int]:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        yield taken.getsockname()[1]
    finally:
        taken.close()


def test_ui_names_a_port_in_use(store: Path, busy_port: int) -> None:
    result = run_cli("ui", "--store", str(store), "--port", str(busy_port))
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{busy_port}: the port is in use" in result.stdout


async def test_ui_serves_the_sessions_over_loopback(store: Path) -> None:
    """The real command: it prints the address it listens on (port 0: any free one) before it
    serves, and answers there."""
    server = start_cli("ui", "--store", str(store), "--port", "0", cwd=store.parent)
    try:
        assert server.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 60)
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+/)", line)
        assert found, line
        opened = await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 60)
        token = re.search(r"open (http://127\.0\.0\.1:\d+/)#token=(\S+)", opened)
        assert token and token.group(1) == found.group(1), opened
        async with httpx2.AsyncClient(base_url=found.group(1), trust_env=False) as client:
            refused = await client.get("/api/sessions", timeout=30)
            response = await client.get(
                "/api/sessions", headers={"Authorization": f"Bearer {token.group(2)}"}, timeout=30
            )
        assert refused.status_code == 401
        assert response.status_code == 200
        assert {item["id"] for item in response.json()} >= {"done", "asking", "damaged"}
    finally:
        server.terminate()
        server.wait(timeout=30)


async def test_a_session_a_real_run_wrote_is_listed(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text("agents: [{name: A, function: 'flow_nodes:shout'}]\ntopology: {nodes: [A]}\n")
    store = tmp_path / "sessions.db"
    done = run_cli("run", str(flow), "--task", HOSTILE, "--session", "real", "--store", str(store))
    assert done.returncode == 0, done.stdout + done.stderr
    real = (await summaries_of(store))["real"]
    assert (real["status"], real["task"], real["runs"], real["steps"]) == (
        "finished",
        HOSTILE,
        1,
        1,
    )


# ---- a session's page and live updates (docs/ui.md) ------------------------------------------


async def test_a_session_s_view_and_step_as_json_absent_and_damaged_named(
    client: httpx2.AsyncClient,
) -> None:
    view = (await client.get("/api/sessions/asking")).json()
    assert view["summary"]["status"] == "waiting for the user" and view["version"] == 3
    [question] = view["questions"]
    assert (question["text"], question["answerable"]) == ("which one?", False)
    position = view["steps"][0]["position"]
    detail = await client.get(f"/api/sessions/asking/steps/{position}")
    assert detail.status_code == 200 and detail.json()["action"]["kind"] == "ask_user"
    absent = await client.get("/api/sessions/nowhere")
    assert absent.status_code == 404 and "'nowhere'" in absent.json()["error"]
    no_step = await client.get("/api/sessions/asking/steps/99")
    assert no_step.status_code == 404 and "record 99" in no_step.json()["error"]
    damaged = await client.get("/api/sessions/bad-step")
    assert damaged.status_code == 422
    assert damaged.json()["error"].startswith("session 'bad-step': record 2 (step)")
    assert damaged.headers["x-content-type-options"] == "nosniff"
    rows = {row["id"]: row for row in (await client.get("/api/sessions")).json()}
    assert rows["asking"]["version"] == 3 and rows["asking"]["hosted"] is False
    assert (await client.get("/api/events", headers={"Authorization": ""})).status_code == 401


class Host:
    """A stand-in for the inspector's RunHost (the protocol the read side uses)."""

    def __init__(self) -> None:
        self.version = 0
        self.asked: list[dict[str, Any]] = []

    def hosts(self, session_id: str) -> bool:
        return session_id == "live"

    def questions(self, session_id: str) -> list[dict[str, Any]]:
        return self.asked if session_id == "live" else []


async def events_of(response: httpx2.Response) -> AsyncIterator[tuple[str, Any]]:
    """The (event, data) pairs of a Server-Sent Events stream, as they arrive."""
    name, data = "", ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif not line and name:
            yield name, json.loads(data)
            name, data = "", ""


async def test_live_events_send_the_state_then_each_change(store: Path) -> None:
    """Over a real server: the state at once, then an event when another writer appends (a
    run in another process) and when the host changes what the store does not show; the
    store watcher stops once its last client left."""
    backend = SQLiteStorageBackend(store)
    manager = StateManager(backend, auto_save_interval=0)
    await (await write(manager, "live", start(), BEGIN)).close()
    host = Host()
    app = create_app(store, TOKEN, allowed_hosts("127.0.0.1"), host)
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    base = f"http://127.0.0.1:{listening.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    try:
        async with (
            httpx2.AsyncClient(base_url=base, trust_env=False, timeout=60) as client,
            client.stream("GET", "/api/events?session=live", headers=BEARER) as response,
        ):
            assert response.headers["content-type"].startswith("text/event-stream")
            events = events_of(response)
            first = dict([await anext(events), await anext(events)])
            assert first["session"]["version"] == 2 and first["session"]["active"] == []
            live = {row["id"]: row for row in first["sessions"]}["live"]
            assert (live["hosted"], live["version"]) == (True, 2)
            writer, _ = await manager.open("live")
            writer.record(step(Action.final("done")))
            await writer.flush()
            name, data = await anext(events)
            while name != "session":  # the list changed too
                name, data = await anext(events)
            assert data["version"] == 3 and data["steps"][0]["action"] == "final_response"
            host.asked.append(
                {"id": "live:r1:q1", "branch": "b0", "agent": "A", "text": "?", "kind": "agent"}
            )
            host.version += 1
            name, data = await anext(events)
            while name != "session":
                name, data = await anext(events)
            assert data["questions"][0]["answerable"] is True
            await writer.close()
    finally:
        server.should_exit = True
        await serving
        backend.close()
    assert app.state.watcher._thread is None
