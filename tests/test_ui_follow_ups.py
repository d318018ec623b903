"""Conversations started from the web inspector (docs/ui.md, "Starting runs", "Acting on a
session"): ``POST /api/runs`` with ``follow_ups`` makes the run offer each round's final
response on the page; a follow-up answer starts the next round at the entry agent, an empty
answer ends the conversation, and a paused conversation offers the same round again on resume."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from test_ui_actions import client_of, ended, post, question, until

from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.results import OrchestraResult
from orchestra.ui.host import RunHost
from orchestra.workflow import load_workflow

TUTOR = """\
agents: [{name: Tutor, function: 'terminal_nodes:tutor'}]
topology: {nodes: [User, Tutor], edges: [User -> Tutor, Tutor -> User]}
task: explain
"""


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[RunHost]:
    """A host over a new store with the answering workflow ``tutor``."""
    (tmp_path / "tutor.yaml").write_text(TUTOR)
    found = RunHost(tmp_path / "sessions.db", {"tutor": load_workflow(tmp_path / "tutor.yaml")})
    try:
        yield found
    finally:
        await found.close()


@pytest.fixture
async def client(host: RunHost) -> AsyncIterator[httpx2.AsyncClient]:
    async with client_of(host) as found:
        yield found


async def start(client: httpx2.AsyncClient, **more: Any) -> None:
    started = await post(client, "/api/runs", {"workflow": "tutor", "session": "talk", **more})
    assert started.status_code == 200, started.text


async def offer(host: RunHost, after: str | None = None) -> dict[str, Any]:
    """The session's follow-up offer, once one other than ``after`` (an id) waits."""
    await until(host, lambda: [q for q in host.questions("talk") if q["id"] != after])
    asked = await question(host, "talk")
    assert asked["kind"] == "follow_up", asked
    return asked


async def result(host: RunHost) -> OrchestraResult:
    flow = host.workflows["tutor"]
    keeper = OrchestraInstance(flow.topology, flow.registry, state_manager=host.manager)
    found = await keeper.get_result("talk")
    assert found is not None
    return found


async def test_a_conversation_started_from_the_page_goes_round_by_round_until_ended(
    host: RunHost, client: httpx2.AsyncClient
) -> None:
    await start(client, follow_ups=True)
    first = await offer(host)
    assert (first["agent"], first["response"]) == ("Tutor", "Tutor on explain")
    view = (await client.get("/api/sessions/talk")).json()
    assert [(q["id"], q["kind"], q["response"], q["answerable"]) for q in view["questions"]] == [
        (first["id"], "follow_up", "Tutor on explain", True)
    ]
    answered = await post(
        client, "/api/sessions/talk/answer", {"question": first["id"], "answer": "why?"}
    )
    assert answered.status_code == 200, answered.text
    second = await offer(host, after=first["id"])
    assert second["response"] == "Tutor on why?"  # round 2 ran at the entry agent
    view = (await client.get("/api/sessions/talk")).json()
    # the same run and branch: round 2 goes on in the conversation, not in a new run
    assert [(step["run"], step["branch"], step["agent"]) for step in view["steps"]] == [
        ("r1", "b0", "Tutor"),
        ("r1", "b0", "Tutor"),
    ]
    assert len(view["runs"]) == 1
    assert view["steps"][-1]["action"] == "final_response"
    ending = await post(
        client, "/api/sessions/talk/answer", {"question": second["id"], "answer": ""}
    )
    assert ending.status_code == 200, ending.text
    assert await ended(host, "talk") == "finished"
    done = await result(host)
    assert done.final_response == "Tutor on why?"
    assert [(f.question, f.final_response, f.success) for f in done.follow_ups] == [
        ("why?", "Tutor on why?", True)
    ]
    view = (await client.get("/api/sessions/talk")).json()
    assert view["questions"] == []
    assert view["summary"]["status"] == "finished"


async def test_a_run_started_without_follow_ups_ends_after_its_answer(
    host: RunHost, client: httpx2.AsyncClient
) -> None:
    await start(client)
    assert await ended(host, "talk") == "finished"
    done = await result(host)
    assert (done.final_response, done.follow_ups) == ("Tutor on explain", [])


async def test_a_paused_conversation_offers_the_same_round_again_on_resume(
    host: RunHost, client: httpx2.AsyncClient
) -> None:
    await start(client, follow_ups=True, follow_up_timeout=600)
    first = await offer(host)
    paused = await post(client, "/api/sessions/talk/pause", {"reason": "lunch"})
    assert paused.status_code == 200, paused.text
    assert host.questions("talk") == []
    resumed = await post(client, "/api/sessions/talk/resume", {})
    assert resumed.status_code == 200, resumed.text
    again = await offer(host)
    assert (again["id"], again["response"]) == (first["id"], "Tutor on explain")
    await post(client, "/api/sessions/talk/answer", {"question": again["id"], "answer": "more"})
    last = await offer(host, after=again["id"])
    await post(client, "/api/sessions/talk/answer", {"question": last["id"], "answer": ""})
    assert await ended(host, "talk") == "finished"
    assert [f.final_response for f in (await result(host)).follow_ups] == ["Tutor on more"]


async def test_an_unanswered_offer_ends_the_conversation_after_its_timeout(
    host: RunHost, client: httpx2.AsyncClient
) -> None:
    await start(client, follow_ups=True, follow_up_timeout=0.01)
    assert await ended(host, "talk") == "finished"
    assert (await result(host)).final_response == "Tutor on explain"


@pytest.mark.parametrize(
    ("more", "field"),
    [
        ({"follow_ups": "yes"}, "follow_ups"),
        ({"follow_ups": True, "follow_up_timeout": -1}, "follow_up_timeout"),
        ({"follow_ups": True, "follow_up_timeout": "soon"}, "follow_up_timeout"),
        ({"follow_ups": True, "follow_up_timeout": 10**400}, "follow_up_timeout"),
    ],
)
async def test_bad_follow_up_fields_are_refused_naming_the_field(
    host: RunHost, client: httpx2.AsyncClient, more: dict[str, Any], field: str
) -> None:
    refused = await post(client, "/api/runs", {"workflow": "tutor", "session": "talk", **more})
    assert refused.status_code == 400, refused.text
    assert f"field '{field}'" in refused.json()["error"]
    assert not host.hosts("talk")
    assert (await client.get("/api/sessions/talk")).status_code == 404
