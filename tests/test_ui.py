"""The web inspector's first increment (docs/ui.md): the sessions list as JSON and as a page,
each session's state named as the command line names it, a damaged one listed with its error,
the page safe with untrusted text, and a token on every request when bound beyond loopback."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from helpers import run_cli, start_cli

from orchestra.agents.contract import Action, StepOutcome
from orchestra.coordination.config import ErrorHandlingConfig, ExecutionConfig
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.coordination.state.manager import SessionWriter
from orchestra.models.base import Usage
from orchestra.ui.app import COOKIE, create_app, is_loopback
from orchestra.ui.summaries import session_summaries

T = 1_700_000_000.0
HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"


def start(task: Any = "write a poem") -> inp.RunStart:
    return inp.RunStart(
        at=T,
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
    backend = SQLiteStorageBackend(path)
    try:
        found = await session_summaries(StateManager(backend, auto_save_interval=0), backend)
    finally:
        backend.close()
    return {summary["id"]: dict(summary) for summary in found}


async def test_each_session_is_summarised_with_its_state(store: Path) -> None:
    found = await summaries_of(store)
    assert {key: value["status"] for key, value in found.items()} == {
        "done": "finished",
        "failed": "failed",
        "paused": "paused",
        "crashed": "interrupted",
        "running": "running",
        "asking": "waiting for the user",
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


@pytest.fixture
async def client(store: Path) -> AsyncIterator[httpx2.AsyncClient]:
    async with client_of(store, None, "http://127.0.0.1:8765") as found:
        yield found


def client_of(store: Path, token: str | None, base: str) -> Any:
    """A client of the app in this process (its lifespan run, so its store is closed)."""
    app = create_app(store, token)

    class Running:
        async def __aenter__(self) -> httpx2.AsyncClient:
            self.lifespan = app.router.lifespan_context(app)
            await self.lifespan.__aenter__()
            self.client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=base)
            return self.client

        async def __aexit__(self, *exc: object) -> None:
            await self.client.aclose()
            await self.lifespan.__aexit__(None, None, None)

    return Running()


async def test_the_api_lists_the_sessions_as_json_with_untrusted_text_as_data(
    client: httpx2.AsyncClient,
) -> None:
    response = await client.get("/api/sessions")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-content-type-options"] == "nosniff"
    listed = {item["id"]: item for item in response.json()}
    assert len(listed) == 8
    assert listed["failed"]["task"] == HOSTILE  # a JSON string, never markup


async def test_the_page_and_its_script_come_with_a_strict_policy(
    client: httpx2.AsyncClient,
) -> None:
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text  # no inline script: only <script src=...>
    sources = re.findall(r'<script src="([^"]+)"', page.text)
    assert sources == ["/static/sessions.js"]
    script = await client.get(sources[0])
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert script.headers["content-security-policy"] == policy
    assert "textContent" in script.text
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script.text


async def test_bound_to_loopback_only_loopback_host_names_are_answered(store: Path) -> None:
    """A page elsewhere that rebinds its own name to 127.0.0.1 sends its own name as Host."""
    for base in ("http://127.0.0.1:8765", "http://localhost:1", "http://[::1]:8765"):
        async with client_of(store, None, base) as client:
            assert (await client.get("/api/sessions")).status_code == 200
    async with client_of(store, None, "http://evil.example:8765") as client:
        refused = await client.get("/api/sessions")
    assert refused.status_code == 403
    assert refused.headers["x-content-type-options"] == "nosniff"


async def test_beyond_loopback_every_request_needs_the_token(store: Path) -> None:
    token = "s3cret-token"
    async with client_of(store, token, "http://192.0.2.7:8765") as client:
        for path in ("/", "/api/sessions", "/static/sessions.js", "/?token=wrong"):
            refused = await client.get(path)
            assert refused.status_code == 401, path
            assert token not in refused.text
        wrong = await client.get("/api/sessions", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        bearer = await client.get("/api/sessions", headers={"Authorization": f"Bearer {token}"})
        assert bearer.status_code == 200 and len(bearer.json()) == 8


async def test_the_token_in_the_address_is_traded_for_a_strict_cookie(store: Path) -> None:
    token = "s3cret-token"
    async with client_of(store, token, "http://192.0.2.7:8765") as client:
        landing = await client.get(f"/?token={token}")
        assert landing.status_code == 303 and landing.headers["location"] == "/"
        cookie = landing.headers["set-cookie"].lower()
        assert f"{COOKIE}={token}".lower() in cookie
        assert "httponly" in cookie and "samesite=strict" in cookie
        client.cookies.set(COOKIE, token)
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/api/sessions")).status_code == 200
        assert (await client.get("/api/sessions?token=ignored")).status_code == 200


def test_loopback_is_told_apart_from_other_addresses() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.4", "example.com"))


# ---- the command ---------------------------------------------------------------------------


def test_ui_names_a_store_that_does_not_exist(tmp_path: Path) -> None:
    result = run_cli("ui", "--store", str(tmp_path / "nowhere.db"), "--port", "0")
    assert result.returncode == 2
    assert "no session store at" in result.stdout + result.stderr


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
        async with httpx2.AsyncClient(base_url=found.group(1), trust_env=False) as client:
            response = await client.get("/api/sessions", timeout=30)
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
