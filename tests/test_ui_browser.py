"""The web inspector in a real browser (Chromium through Playwright, tests/browser.py) against
a real ``orchestra ui``: the list and its filters, live updates, untrusted text shown as text
with no script run, the token, and the session page drawn from the API's data. Waits are
Playwright's own (they end when the page shows what is expected)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from browser import Server, launch, ui_server, write_sessions
from helpers import final, start_cli
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from orchestra import Agent, AgentRegistry, FunctionModel, Orchestra
from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.models.base import ModelReply

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = launch(playwright)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh context; any dialog it opens (an alert from injected script) is
    recorded in ``page.dialogs`` and dismissed. Tests ask for it after their server, so it is
    closed first (its live stream ended) and the server then stops at once."""
    context = browser.new_context()
    opened = context.new_page()
    dialogs: list[str] = []
    opened.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    opened.dialogs = dialogs  # type: ignore[attr-defined]
    yield opened
    context.close()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "sessions.db"
    write_sessions(path, {"alpha": "write a poem", "beta": HOSTILE})
    write_sessions(path, {"cut": "sum the numbers"}, ended=False)
    return path


@pytest.fixture
def server(store: Path) -> Iterator[Server]:
    with ui_server(store) as running:
        yield running


def rows(page: Page) -> Any:
    return page.locator("#sessions tbody tr")


def test_the_list_shows_the_sessions(server: Server, page: Page) -> None:
    page.goto(server.page_url)
    expect(rows(page)).to_have_count(3)
    expect(page.locator("tr[data-session=alpha] td").nth(1)).to_have_text("finished")
    expect(page.locator("tr[data-session=cut] td").nth(1)).to_have_text("interrupted")
    assert "token" not in page.url  # taken out of the address bar


def test_the_list_is_filtered_by_status_and_searched(server: Server, page: Page) -> None:
    page.goto(server.page_url)
    expect(rows(page)).to_have_count(3)
    page.select_option("#status-filter", "interrupted")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_have_attribute("data-session", "cut")
    page.select_option("#status-filter", "")
    page.fill("#search", "POEM")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_have_attribute("data-session", "alpha")
    page.fill("#search", "nothing like it")
    expect(rows(page)).to_have_count(0)
    expect(page.locator("#list-note")).to_have_text("No session matches.")


def test_hostile_text_is_shown_as_text_and_runs_nothing(server: Server, page: Page) -> None:
    page.goto(server.page_url)
    expect(page.locator("tr[data-session=beta] td").nth(2)).to_have_text(HOSTILE)
    assert page.locator("#sessions img, #sessions script").count() == 0
    assert page.dialogs == []  # type: ignore[attr-defined]


def test_delete_asks_first_and_a_cancel_keeps_the_session(server: Server, page: Page) -> None:
    posted: list[str] = []
    page.on("request", lambda r: r.method == "POST" and posted.append(r.url))
    page.goto(server.page_url)
    page.locator("tr[data-session=beta] button", has_text="Delete").click()
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#confirm-text")).to_contain_text("Delete session beta")
    dialog.locator("button", has_text="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(rows(page)).to_have_count(3)
    assert posted == []


@pytest.fixture
def exposed(store: Path) -> Iterator[Server]:
    """``orchestra ui`` bound to every address (0.0.0.0)."""
    with ui_server(store, "--host", "0.0.0.0") as running:
        yield running


def test_without_the_token_a_non_loopback_server_refuses(exposed: Server, page: Page) -> None:
    """Reached at 127.0.0.1, a server bound to every address has the token alone to guard it."""
    local = exposed.url.replace("0.0.0.0", "127.0.0.1")
    refused = page.request.get(local + "api/sessions")
    assert refused.status == 401
    page.goto(local)  # the plain address: no token in the tab
    expect(page.locator("#note")).to_contain_text("401")
    expect(rows(page)).to_have_count(0)
    page.goto(f"{local}#token={exposed.token}")
    expect(rows(page)).to_have_count(3)


# ---- live updates and the session page: the server's side is issue 14's DATA and ACTIONS ----


def bearer(server: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


def test_the_list_follows_a_run_of_another_process(server: Server, page: Page) -> None:
    flow = server_flow(server, "flow_nodes:wait_for_a_line")
    page.goto(server.page_url)
    expect(rows(page)).to_have_count(3)
    store = Path(server.process.args[server.process.args.index("--store") + 1])
    running = start_cli(
        "run",
        str(flow),
        "--task",
        "x",
        "--session",
        "live",
        "--store",
        str(store),
        "--quiet",
        cwd=flow.parent,
    )
    try:
        assert running.stdin is not None and running.stdout is not None
        assert any("waiting for a line" in line for line in running.stdout)  # A's step began
        status = page.locator("tr[data-session=live] td").nth(1)
        expect(status).to_have_text("running")
        running.stdin.write("go on\n")
        running.stdin.flush()
        expect(status).to_have_text("finished")
        assert running.wait(timeout=60) == 0
    finally:
        running.kill()
        running.communicate()


def server_flow(server: Server, function: str) -> Path:
    store = Path(server.process.args[server.process.args.index("--store") + 1])
    flow = store.parent / "flow.yaml"
    flow.write_text(f"agents: [{{name: A, function: '{function}'}}]\ntopology: {{nodes: [A]}}\n")
    return flow


def test_a_real_session_page_draws_its_graph(server: Server, page: Page) -> None:
    page.goto(server.page_url)
    page.locator("tr[data-session=alpha] a").click()
    expect(page.locator("#graph svg")).to_be_visible()
    expect(page.locator("#session-title")).to_have_text("Session alpha")


DIRECTIVE = "%%{init: {'theme':'dark'}}%%"
PAGE_FILL = "rgb(236, 236, 255)"  # a node's fill in the page's theme (Mermaid's "default")


def node_fill(page: Page) -> str:
    shape = page.locator("#graph svg g.node:not(.active)").first.locator("rect, path").first
    return str(shape.evaluate("(shape) => getComputedStyle(shape).fill"))


def test_a_directive_in_a_stored_node_name_is_shown_as_text(store: Path, page: Page) -> None:
    """A stored fingerprint is data: a Mermaid directive in a node name is drawn as the
    name's text and leaves the page's theme as it is."""
    name = f"A{DIRECTIVE}"
    write_sessions(store, {"styled": "draw it"}, topology=(name,))
    with ui_server(store) as server:
        page.goto(server.page_url)
        page.locator("tr[data-session=styled] a").click()
        expect(page.locator("#graph svg g.node")).to_have_count(1)
        shown = page.locator("#graph svg g.node").text_content() or ""
        assert shown.replace(" ", "") == name.replace(" ", "")  # its words: tspans of their own
        assert node_fill(page) == PAGE_FILL


# ---- acting on a run the inspector hosts (orchestra ui --workflow): end to end -------------

ASKER = """\
agents: [{name: Asker, function: 'terminal_nodes:asker'}]
topology: {nodes: [User, Asker], edges: [User -> Asker, Asker -> User]}
task: "ASK: What is your name?"
"""


@pytest.fixture
def acting(store: Path, tmp_path: Path) -> Iterator[Server]:
    """An inspector hosting runs of the asking workflow, ``asker``."""
    flow = tmp_path / "asker.yaml"
    flow.write_text(ASKER)
    with ui_server(store, "--workflow", str(flow)) as running:
        yield running


def test_a_run_is_started_from_the_list(acting: Server, page: Page) -> None:
    page.goto(acting.page_url)
    expect(page.locator("#workflow option")).to_have_text(["asker"])
    expect(page.locator("#run-task")).to_have_attribute("placeholder", "ASK: What is your name?")
    page.fill("#run-session", "talk")
    page.click("#start-run button[type=submit]")
    expect(page.locator("#session-title")).to_have_text("Session talk")
    page.go_back()
    expect(page.locator("tr[data-session=talk] td").nth(1)).to_have_text("waiting for the user")


def test_delete_after_confirming_removes_the_session(acting: Server, page: Page) -> None:
    page.goto(acting.page_url)
    page.locator("tr[data-session=beta] button", has_text="Delete").click()
    with page.expect_response(lambda r: r.url.endswith("/api/sessions/beta/delete")) as sent:
        page.locator("dialog#confirm button", has_text="Delete").click()
    assert sent.value.status == 200
    expect(page.locator("tr[data-session=beta]")).to_have_count(0)
    expect(rows(page)).to_have_count(2)


def start_asking(page: Page, server: Server) -> Any:
    """A run of ``asker`` started from the list's form as session ``talk``; its question."""
    page.goto(server.page_url)
    expect(page.locator("#start-run")).to_be_visible()
    page.select_option("#workflow", "asker")
    page.fill("#run-session", "talk")
    page.click("#start-run button[type=submit]")
    expect(page.locator("#session-title")).to_have_text("Session talk")
    return asked(page)


def asked(page: Page) -> Any:
    question = page.locator("#questions .question")
    expect(question).to_have_count(1)
    expect(question.locator("pre")).to_have_text("What is your name?")
    return question


def answer(page: Page, question: Any, text: str) -> None:
    question.locator("textarea").fill(text)
    question.locator("button", has_text="Answer").click()
    expect(page.locator("#session-summary")).to_contain_text("finished")
    expect(page.locator("#questions .question")).to_have_count(0)
    page.locator("#timeline rect.step").last.click()
    expect(page.locator("#step-detail")).to_contain_text(f"answer={text!r}")


def test_a_question_is_answered_in_the_page(acting: Server, page: Page) -> None:
    answer(page, start_asking(page, acting), "Ann")
    expect(page.locator("#graph svg")).to_be_visible()
    assert page.dialogs == []  # type: ignore[attr-defined]


def test_a_run_is_paused_then_resumed_in_the_page(acting: Server, page: Page) -> None:
    start_asking(page, acting)
    page.click("#pause")
    expect(page.locator("#session-summary")).to_contain_text("paused")
    expect(page.locator("#questions .question")).to_have_count(0)  # withdrawn till resumed
    page.click("#resume")
    answer(page, asked(page), "Bo")


def test_a_restore_forks_the_history_and_a_resume_goes_on_from_it(
    acting: Server, page: Page
) -> None:
    question = start_asking(page, acting)
    page.fill("#checkpoint-name", "asked")
    page.click("#checkpoint")
    expect(page.locator("#checkpoints li", has_text="asked")).to_have_count(1)
    answer(page, question, "Ann")
    page.locator("#checkpoints li", has_text="asked").locator("button").click()
    expect(page.locator("#session-summary")).to_contain_text("interrupted")
    expect(page.locator("#checkpoints li.restore")).to_have_count(1)
    expect(page.locator("#timeline rect.step.abandoned").first).to_be_visible()
    # the header's count is of the history; it says the timeline's others are abandoned
    expect(page.locator("#session-facts")).to_contain_text("abandoned or cut off")
    page.click("#resume")
    answer(page, asked(page), "Cy")


TUTOR = """\
agents: [{name: Tutor, function: 'terminal_nodes:tutor'}]
topology: {nodes: [User, Tutor], edges: [User -> Tutor, Tutor -> User]}
task: explain
"""


@pytest.fixture
def tutoring(store: Path, tmp_path: Path) -> Iterator[Server]:
    """An inspector hosting runs of the answering workflow, ``tutor``."""
    flow = tmp_path / "tutor.yaml"
    flow.write_text(TUTOR)
    with ui_server(store, "--workflow", str(flow)) as running:
        yield running


def offered(page: Page, response: str) -> Any:
    """The session's one question, once it is the follow-up offer of ``response``."""
    question = page.locator("#questions .question")
    expect(question).to_have_count(1)
    expect(question.locator("pre.response")).to_have_text(response)
    return question


def test_a_conversation_is_started_answered_and_ended_in_the_page(
    tutoring: Server, page: Page
) -> None:
    page.goto(tutoring.page_url)
    page.fill("#run-session", "talk")
    page.check("#run-follow-ups")
    page.click("#start-run button[type=submit]")
    expect(page.locator("#session-title")).to_have_text("Session talk")
    first = offered(page, "Tutor on explain")
    expect(first).to_contain_text("follow_up")
    first.locator("textarea").fill("why?")
    first.locator("button", has_text="Answer").click()
    second = offered(page, "Tutor on why?")
    second.locator("button", has_text="End the conversation").click()
    expect(page.locator("#session-summary")).to_contain_text("finished")
    expect(page.locator("#questions .question")).to_have_count(0)
    expect(page.locator("#timeline rect.step")).to_have_count(2)
    assert page.dialogs == []  # type: ignore[attr-defined]


# ---- the session page against the contract's data (docs/ui.md), served by the test --------

CHART = 'flowchart TD\n    n0["Hub"]\n    n1(["Worker"])\n    n2(["Other"])\n    n0 --> n1\n    n0 --> n2\n'


def step(position: int, branch: str, agent: str, action: str | None, **more: Any) -> dict[str, Any]:
    return {
        "position": position,
        "run": "r1",
        "branch": branch,
        "agent": agent,
        "started": 1_700_000_000.0 + position,
        "duration": 0.5 if action else None,
        "action": action,
        "targets": [],
        "tokens": 15,
        "cost_usd": None,
        "error": None,
        "abandoned": False,
        "cut_off": False,
        "cut_at": None,
        **more,
    }


def branch(id_: str, agent: str, state: str, parent: str | None = None) -> dict[str, Any]:
    return {
        "id": id_,
        "run": "r1",
        "parent": parent,
        "fan_out": "f1" if parent else None,
        "agent": agent,
        "state": state,
        "started": 1_700_000_000.0,
        "ended": None,
    }


VIEW: dict[str, Any] = {
    "summary": {
        "id": "s1",
        "status": "waiting for the user",
        "task": HOSTILE,
        "started": "2023-11-14T22:13:20+00:00",
        "runs": 1,
        "steps": 5,
        "tokens": 75,
        "cost_usd": None,
        "error": None,
        "hosted": True,
        "version": 9,
    },
    "version": 9,
    "graph": {
        "mermaid": CHART,
        "nodes": ["Hub", "Worker", "Other"],
        "entries": ["Hub"],
        "exits": ["Worker", "Other"],
        "node_ids": {"Hub": "n0", "Worker": "n1", "Other": "n2"},
    },
    "active": ["Hub"],
    "runs": [{"name": "r1", "task": HOSTILE, "started": 1.7e9, "ended": None, "state": "running"}],
    "branches": [
        branch("b0", "Hub", "waiting for the user"),
        branch("b1", "Worker", "done", parent="b0"),
        branch("b2", "Other", "done", parent="b0"),
    ],
    "steps": [
        step(2, "b0", "Hub", "parallel_invoke", targets=["Worker", "Other"]),
        step(3, "b1", "Worker", "final_response"),
        step(4, "b2", "Other", "final_response", abandoned=True),
        step(5, "b2", "Other", "final_response"),
        step(6, "b0", "Hub", "ask_user"),
    ],
    "steps_total": 5,
    "questions": [
        {
            "id": "q1",
            "branch": "b0",
            "agent": "Hub",
            "text": HOSTILE,
            "kind": "agent",
            "answerable": True,
        }
    ],
    "checkpoints": [{"id": "c1", "name": "before", "position": 3, "abandoned": False}],
    "restores": [],
}
DETAIL: dict[str, Any] = {
    **step(3, "b1", "Worker", "final_response"),
    "messages": [{"role": "user", "content": HOSTILE}],
    "action": {
        "kind": "call_tool",
        "targets": [],
        "content": None,
        "tool_calls": [{"id": "t1", "name": "search", "arguments": '{"q": "<b>x</b>"}'}],
    },
    "tool_results": [
        {"call_id": "t1", "name": "search", "ok": True, "result": HOSTILE, "duration": 0.25}
    ],
    "retries": [{"attempt": 1, "error": "rate limited"}],
    "tokens": {"prompt": 10, "completion": 5, "total": 15},
    "cost_usd": 0.0021,
    "error": None,
}


@pytest.fixture
def posts(page: Page) -> list[tuple[str, Any]]:
    """The session page's API served from :data:`VIEW` and :data:`DETAIL`; the POSTs it makes,
    recorded (path, body)."""
    made: list[tuple[str, Any]] = []

    def answer(route: Route) -> None:
        request = route.request
        path = re.sub(r"^https?://[^/]+", "", request.url)
        if request.method == "POST":
            made.append((path, request.post_data_json))
            route.fulfill(json={})
        elif path == "/api/sessions/s1":
            route.fulfill(json=VIEW)
        elif path == "/api/sessions/s1/steps/3":
            route.fulfill(json=DETAIL)
        else:
            route.fulfill(status=404, json={"error": "no such thing"})

    page.route(re.compile(r".*/api/(sessions/s1|events).*"), answer)
    return made


def open_session(page: Page, server: Server) -> None:
    page.goto(server.page_url)
    expect(rows(page)).to_have_count(3)
    page.goto(server.url + "#session=s1")
    expect(page.locator("#session-title")).to_have_text("Session s1")


def test_the_session_page_draws_the_graph_with_the_active_node(
    server: Server, page: Page, posts: list[tuple[str, Any]]
) -> None:
    open_session(page, server)
    expect(page.locator("#graph svg g.node")).to_have_count(3)
    active = page.locator("#graph svg g.node.active")
    expect(active).to_have_count(1)
    expect(active).to_contain_text("Hub")
    assert page.dialogs == []  # type: ignore[attr-defined]


def test_a_directive_reaching_mermaid_changes_nothing_the_page_set(
    server: Server, page: Page, posts: list[tuple[str, Any]]
) -> None:
    """Should a directive get past the server's escaping, the page's Mermaid ignores it."""
    VIEW["graph"]["mermaid"] = f"{DIRECTIVE}\n{CHART}"
    try:
        open_session(page, server)
        expect(page.locator("#graph svg g.node")).to_have_count(3)
        assert node_fill(page) == PAGE_FILL
    finally:
        VIEW["graph"]["mermaid"] = CHART


def test_the_timeline_draws_lanes_fan_outs_and_abandoned_steps(
    server: Server, page: Page, posts: list[tuple[str, Any]]
) -> None:
    open_session(page, server)
    timeline = page.locator("#timeline svg")
    expect(timeline.locator("rect.step")).to_have_count(5)
    expect(timeline.locator("text.lane-label")).to_have_count(3)
    expect(timeline.locator("rect.step.abandoned")).to_have_count(1)
    expect(timeline.locator("rect.step.abandoned")).to_have_attribute("data-position", "4")
    expect(timeline.locator("path.fan-out")).to_have_count(2)
    expect(timeline.locator("path.converge")).to_have_count(2)  # both back to Hub's question


def test_a_step_opens_in_the_detail_panel_as_text(
    server: Server, page: Page, posts: list[tuple[str, Any]]
) -> None:
    open_session(page, server)
    page.locator("#timeline rect[data-position='3']").click()
    detail = page.locator("#step-detail")
    expect(detail.locator("h2")).to_have_text("Step 2 of 5 · Worker")  # its ordinal, not record 3
    expect(detail).to_contain_text("3 in the session's log")
    expect(detail).to_contain_text('search({"q": "<b>x</b>"})')
    expect(detail).to_contain_text("attempt 1: rate limited")
    expect(detail).to_contain_text("$0.0021")
    expect(detail.locator("pre", has_text=HOSTILE)).to_have_count(2)  # message and tool result
    assert page.locator("#step-detail img, #step-detail b, #questions img").count() == 0
    assert page.dialogs == []  # type: ignore[attr-defined]


def serve_view(page: Page, view: dict[str, Any]) -> None:
    """``view`` as session s1's, over the :func:`posts` fixture's (the latest route wins)."""
    page.route(re.compile(r".*/api/sessions/s1$"), lambda route: route.fulfill(json=view))


def test_timeline_blocks_say_what_they_are_and_open_from_the_keyboard(
    server: Server, page: Page, posts: list[tuple[str, Any]]
) -> None:
    """A block's tooltip names its agent, action, latency and tokens; its lane lists every agent
    the branch went through; a code step (no action, finished) is not drawn as running."""
    steps = [
        *VIEW["steps"][:4],
        step(6, "b0", "Closer", "ask_user"),
        step(7, "b0", "Tidy", None, duration=0.5),
        step(8, "b0", "Hub", "ask_user"),  # back to Hub: each agent is listed once
    ]
    serve_view(page, {**VIEW, "steps": steps, "steps_total": 7})
    open_session(page, server)
    timeline = page.locator("#timeline svg")
    worker = timeline.locator("rect[data-position='3']")
    expect(worker.locator("title")).to_have_text(
        "Step 2 of 7 (record 3): Worker · final_response · latency 0.50 s · 15 tokens"
    )
    lane = timeline.locator("g.lane").first
    expect(lane.locator("title")).to_have_text("r1 b0 Hub → Closer → Tidy (waiting for the user)")
    expect(lane.locator("text.lane-label")).to_contain_text("r1 b0 Hub → Closer → Tidy")
    expect(timeline.locator("rect[data-position='7']")).to_have_class("step code")
    expect(page.locator("#timeline-legend")).to_contain_text("dashed: running now")
    worker.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#step-detail h2")).to_have_text("Step 2 of 7 · Worker")


def test_the_timeline_stays_readable_for_500_steps(
    server: Server, page: Page, posts: list[tuple[str, Any]]
) -> None:
    """500 steps of half a second: placed by time, each block wide enough to see and click,
    the timeline scrolled sideways rather than squeezed."""
    steps = [step(n, "b0", "Hub", "invoke_agent") for n in range(1, 501)]
    serve_view(
        page, {**VIEW, "branches": [VIEW["branches"][0]], "steps": steps, "steps_total": 500}
    )
    open_session(page, server)
    blocks = page.locator("#timeline rect.step")
    expect(blocks).to_have_count(500)
    widths = blocks.evaluate_all("(all) => all.map((b) => b.getBBox().width)")
    assert min(widths) >= 14
    lefts = blocks.evaluate_all("(all) => all.map((b) => b.getBBox().x)")
    assert lefts == sorted(lefts) and len(set(lefts)) == 500  # in time order, none on another
    scrolled = page.locator("#timeline .timeline-scroll")
    assert scrolled.evaluate("(b) => b.scrollWidth > b.clientWidth")
    # it shows the latest steps, its lanes' labels still in sight
    expect(blocks.last).to_be_in_viewport()
    expect(page.locator("#timeline text.lane-label")).to_be_in_viewport()


def test_a_long_pause_is_cut_out_of_the_timeline(
    server: Server, page: Page, posts: list[tuple[str, Any]]
) -> None:
    """An hour between two steps (a question answered later) is drawn as a narrow break, not
    an hour's width of nothing with the steps squeezed at either end."""
    steps = [step(1, "b0", "Hub", "ask_user"), step(2, "b0", "Hub", "ask_user")]
    steps.append(step(3600, "b0", "Hub", "final_response"))
    serve_view(page, {**VIEW, "branches": [VIEW["branches"][0]], "steps": steps, "steps_total": 3})
    open_session(page, server)
    pause = page.locator("#timeline g.break")
    expect(pause).to_have_count(1)
    expect(pause.locator("title")).to_have_text("nothing ran for 59 min 57.5 s")
    scrolled = page.locator("#timeline .timeline-scroll")
    assert scrolled.evaluate("(b) => b.scrollWidth <= b.clientWidth")
    widths = page.locator("#timeline rect.step").evaluate_all(
        "(all) => all.map((b) => b.getBBox().width)"
    )
    assert min(widths) > 50  # the steps take the room the pause does not


def test_a_short_timeline_takes_its_pane_s_width(
    server: Server, page: Page, posts: list[tuple[str, Any]]
) -> None:
    """...and is drawn again to the new width when the window narrows."""
    page.set_viewport_size({"width": 1400, "height": 800})
    open_session(page, server)
    expect(page.locator("#timeline rect.step")).to_have_count(5)
    box = page.locator("#timeline")
    drawn = "(b) => [...b.querySelectorAll('svg')].reduce((w, s) => w + s.getBoundingClientRect().width, 0)"
    assert box.evaluate(drawn) >= box.evaluate("(b) => b.clientWidth") - 40
    last = page.locator("#timeline rect[data-position='6']")
    wide = last.get_attribute("x") or ""
    page.set_viewport_size({"width": 600, "height": 800})
    expect(last).not_to_have_attribute("x", wide)
    assert float(last.get_attribute("x") or "") < float(wide)
    assert box.evaluate(drawn) <= box.evaluate("(b) => b.clientWidth") + 1


def test_code_steps_and_one_slow_step_fit_the_pane(
    server: Server, page: Page, posts: list[tuple[str, Any]]
) -> None:
    """Sub-millisecond code steps around one 3 s step: every block of this short session lies
    inside its pane, the fan-out and convergence in view (not 40,000 px wide, scrolled to its
    end)."""
    page.set_viewport_size({"width": 1100, "height": 800})
    quick = 0.0001
    steps = [
        step(2, "b0", "Hub", "parallel_invoke", duration=quick, targets=["Worker", "Other"]),
        step(3, "b1", "Worker", "final_response", duration=3.0),
        step(4, "b2", "Other", "ask_user", duration=quick),
        step(5, "b2", "Other", "final_response", duration=quick, started=1_700_000_005.5),
        step(6, "b0", "Hub", "final_response", duration=quick, started=1_700_000_006.0),
    ]
    for taken in steps[:3]:
        taken["started"] = 1_700_000_003.0 + taken["position"] * quick
    serve_view(page, {**VIEW, "steps": steps})
    open_session(page, server)
    blocks = page.locator("#timeline rect.step")
    expect(blocks).to_have_count(5)
    scroller = page.locator("#timeline .timeline-scroll")
    pane = scroller.evaluate("(b) => [b.scrollWidth, b.clientWidth]")
    assert pane[0] <= pane[1], pane
    boxes = blocks.evaluate_all("(all) => all.map((b) => [b.getBBox().x, b.getBBox().width])")
    assert all(x >= 0 and x + width <= pane[1] for x, width in boxes), (boxes, pane)
    expect(page.locator("#timeline path.fan-out")).to_have_count(2)
    expect(page.locator("#timeline path.converge")).to_have_count(2)


def test_a_cut_off_step_is_drawn_and_detailed_as_cut_off_not_running(
    server: Server, page: Page, posts: list[tuple[str, Any]]
) -> None:
    """A step whose run ended first (``cut_off``) has its own look, in the legend too, and its
    detail says cut off; a step running now is still drawn running."""
    cut = step(3, "b1", "Worker", None, cut_off=True)
    serve_view(page, {**VIEW, "steps": [*VIEW["steps"][:1], cut, step(6, "b0", "Hub", None)]})
    page.route(
        re.compile(r".*/api/sessions/s1/steps/3$"),
        lambda r: r.fulfill(json={**DETAIL, "duration": None, "action": None, "cut_off": True}),
    )
    open_session(page, server)
    timeline = page.locator("#timeline svg")
    expect(timeline.locator("rect[data-position='3']")).to_have_class("step cut-off")
    expect(timeline.locator("rect[data-position='6']")).to_have_class("step in-progress")
    expect(timeline.locator("rect[data-position='3'] title")).to_contain_text(
        "cut off · latency: cut off"
    )
    expect(page.locator("#timeline-legend")).to_contain_text("cut off")
    page.locator("#timeline rect[data-position='3']").click()
    detail = page.locator("#step-detail")
    expect(detail).to_contain_text("none: the step was cut off before it returned")
    expect(detail.locator("dd").nth(4)).to_have_text("cut off")


def test_the_labels_say_resume_record_and_no_text(
    server: Server, page: Page, posts: list[tuple[str, Any]]
) -> None:
    """A question of a session nobody runs (interrupted) says to Resume; a checkpoint names the
    record it keeps; an assistant turn of tool calls alone says it has no text."""
    asking = {**VIEW["questions"][0], "answerable": False}
    serve_view(
        page,
        {
            **VIEW,
            "summary": {**VIEW["summary"], "status": "interrupted", "hosted": False},
            "questions": [asking],
        },
    )
    silent = {"role": "assistant", "content": ""}
    page.route(
        re.compile(r".*/api/sessions/s1/steps/3$"),
        lambda r: r.fulfill(json={**DETAIL, "messages": [*DETAIL["messages"], silent]}),
    )
    open_session(page, server)
    expect(page.locator("#questions .hint")).to_contain_text("Resume")
    expect(page.locator("#checkpoints li").first).to_contain_text("before (at record 3)")
    page.locator("#timeline rect[data-position='3']").click()
    expect(page.locator("#step-detail .message.assistant")).to_contain_text(
        "(no text: tool calls only)"
    )


def test_the_step_detail_follows_the_step_it_shows(
    server: Server, page: Page, posts: list[tuple[str, Any]]
) -> None:
    """The panel shows step 3 while it runs; when the session's view says it finished, the
    panel shows it finished without a click."""
    running = {**VIEW, "steps": [step(3, "b1", "Worker", None)], "steps_total": 1}
    finished = {**VIEW, "steps": [step(3, "b1", "Worker", "final_response")], "steps_total": 1}
    details = [{**DETAIL, "duration": None, "action": None, "tool_results": []}]
    held: list[Route] = []
    serve_view(page, running)
    page.route(re.compile(r".*/api/sessions/s1/steps/3$"), lambda r: r.fulfill(json=details[-1]))
    page.route(
        re.compile(r".*/api/events\?session=s1$"), lambda route: held.append(route)
    )  # answered below
    open_session(page, server)
    page.locator("#timeline rect[data-position='3']").click()
    detail = page.locator("#step-detail")
    expect(detail).to_contain_text("none yet: the step is running")
    details.append(DETAIL)
    body = f"event: session\ndata: {json.dumps(finished)}\n\n"
    held[0].fulfill(headers={"Content-Type": "text/event-stream"}, body=body)
    expect(detail).to_contain_text("search(")
    expect(detail.locator("dd").nth(4)).to_have_text("0.50 s")


def test_the_pages_load_with_no_console_error(server: Server, page: Page) -> None:
    """The list and a session's page: no failed request (the favicon is served) and no error."""
    said: list[str] = []
    page.on("console", lambda m: m.type == "error" and said.append(m.text))
    page.on("pageerror", lambda error: said.append(str(error)))
    failed: list[str] = []
    page.on("response", lambda r: r.status >= 400 and failed.append(r.url))
    page.goto(server.page_url)
    expect(rows(page)).to_have_count(3)
    page.locator("tr[data-session=alpha] a").click()
    expect(page.locator("#graph svg")).to_be_visible()
    expect(page.locator("#session-status")).to_have_text("finished")
    icon = page.request.get(server.url + "static/favicon.svg")
    assert icon.status == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert said == [] and failed == []


def test_the_list_shows_an_unknown_cost_as_a_dash_and_a_long_error_in_a_tooltip(
    server: Server, page: Page
) -> None:
    error = "ToolError: " + "x" * 300
    listed = [{**LISTED, "id": "long", "task": "t", "status": "failed", "error": error}]
    body = f"event: sessions\ndata: {json.dumps(listed)}\n\n"
    page.route(
        re.compile(r".*/api/events$"),
        lambda route: route.fulfill(headers={"Content-Type": "text/event-stream"}, body=body),
    )
    page.goto(server.page_url)
    expect(rows(page)).to_have_count(1)
    cells = rows(page).first.locator("td")
    expect(cells.nth(7)).to_have_text("—")
    expect(cells.nth(8)).to_have_attribute("title", error)
    assert cells.nth(8).evaluate("(c) => c.getBoundingClientRect().width") < 400


def test_the_controls_post_json_to_the_contract_routes(
    server: Server, page: Page, posts: list[tuple[str, Any]]
) -> None:
    open_session(page, server)
    question = page.locator("#questions [data-question=q1]")
    expect(question.locator("pre")).to_have_text(HOSTILE)
    question.locator("textarea").fill("the blue one")
    clicks = [
        (question.locator("button", has_text="Answer"), "answer"),
        (page.locator("#checkpoint"), "checkpoint"),
        (page.locator("#pause"), "pause"),
        (page.locator("#checkpoints button", has_text="Restore"), "restore"),
    ]
    page.fill("#checkpoint-name", "mine")
    for button, action in clicks:
        with page.expect_response(lambda r, action=action: r.url.endswith("/" + action)):
            button.click()
    expect(page.locator("#resume")).to_be_disabled()  # waiting, not paused
    assert posts == [
        ("/api/sessions/s1/answer", {"question": "q1", "answer": "the blue one"}),
        ("/api/sessions/s1/checkpoint", {"name": "mine"}),
        ("/api/sessions/s1/pause", {"reason": None}),
        ("/api/sessions/s1/restore", {"checkpoint": "c1"}),
    ]


def test_the_list_is_kept_from_the_event_stream(server: Server, page: Page) -> None:
    """Server-Sent Events read with fetch() (the Bearer header): comments skipped, CRLF line
    ends read; what the stream brings wins over the first request's answer."""
    streamed = [{**listed, "id": "streamed", "task": HOSTILE} for listed in [LISTED]]
    body = (
        ": keep-alive\r\n\r\nevent: sessions\r\ndata: "
        + json.dumps(streamed)
        + "\r\n\r\nevent: other\ndata: {}\n\n"
    )
    authorised: list[str | None] = []

    def stream(route: Route) -> None:
        authorised.append(route.request.headers.get("authorization"))
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)

    page.route(re.compile(r".*/api/events$"), stream)
    page.goto(server.page_url)
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_have_attribute("data-session", "streamed")
    expect(rows(page).first.locator("td").nth(2)).to_have_text(HOSTILE)
    assert authorised[0] == f"Bearer {server.token}"
    assert page.dialogs == []  # type: ignore[attr-defined]


LISTED: dict[str, Any] = {
    "status": "finished",
    "started": "2023-11-14T22:13:20+00:00",
    "runs": 1,
    "steps": 0,
    "tokens": 0,
    "cost_usd": None,
    "error": None,
    "hosted": False,
    "version": 2,
}


def test_a_question_that_becomes_answerable_gets_its_answer_box(
    server: Server, page: Page, posts: list[tuple[str, Any]]
) -> None:
    """A question first seen in the log alone, then waited for by a run hosted here (a
    resume): the box-less one drawn first was once kept, so it could not be answered."""
    shown_only = {**VIEW, "questions": [{**VIEW["questions"][0], "answerable": False}]}
    body = "".join(f"event: session\ndata: {json.dumps(view)}\n\n" for view in (shown_only, VIEW))
    page.route(
        re.compile(r".*/api/events\?session=s1$"),
        lambda route: route.fulfill(headers={"Content-Type": "text/event-stream"}, body=body),
    )
    open_session(page, server)
    question = page.locator("#questions [data-question=q1]")
    expect(question.locator("textarea")).to_have_count(1)
    expect(question).to_have_count(1)


def test_a_session_deleted_while_shown_is_said_and_the_page_stays_live(
    server: Server, page: Page, posts: list[tuple[str, Any]]
) -> None:
    """The stream sends ``{"error": ...}`` for a session deleted while watched: once read as a
    view, it threw, and the page said it was not live."""
    gone = {"error": "session 's1' was deleted"}
    body = "".join(f"event: session\ndata: {json.dumps(view)}\n\n" for view in (VIEW, gone))
    page.route(
        re.compile(r".*/api/events\?session=s1$"),
        lambda route: route.fulfill(headers={"Content-Type": "text/event-stream"}, body=body),
    )
    open_session(page, server)
    expect(page.locator("#note")).to_have_text("session 's1' was deleted")
    expect(page.locator("#live")).not_to_contain_text("not live")
    expect(page.locator("#timeline rect.step")).to_have_count(5)  # the last view still shown


def test_the_graph_marks_the_latest_active_nodes_when_updates_come_while_it_is_drawn(
    server: Server, page: Page, posts: list[tuple[str, Any]]
) -> None:
    """Two views in a row while Mermaid still loads: the draw in flight once marked the first
    view's active nodes, stale, once it was done."""
    later = {**VIEW, "active": ["Worker", "Other"]}
    body = "".join(f"event: session\ndata: {json.dumps(view)}\n\n" for view in (VIEW, later))
    page.route(  # once: the page's reconnection draws no more
        re.compile(r".*/api/events\?session=s1$"),
        lambda route: route.fulfill(headers={"Content-Type": "text/event-stream"}, body=body),
        times=1,
    )
    open_session(page, server)
    active = page.locator("#graph svg g.node.active")
    expect(active).to_have_count(2)
    expect(active).to_contain_text(["Worker", "Other"])


def test_a_session_with_no_run_shows_no_graph_and_no_error(
    server: Server, page: Page, posts: list[tuple[str, Any]]
) -> None:
    """``graph`` is null for a session whose log holds no run: the page read its ``node_ids``
    and showed "Cannot read properties of null"."""
    empty = {**VIEW, "graph": None, "active": [], "runs": [], "branches": [], "steps": []}
    serve_view(page, {**empty, "steps_total": 0, "questions": [], "checkpoints": []})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    open_session(page, server)
    expect(page.locator("#graph")).to_contain_text("no topology to draw")
    assert errors == []


def test_a_step_cut_off_by_a_pause_is_drawn_to_the_pause_not_the_runs_end(
    server: Server, page: Page, posts: list[tuple[str, Any]]
) -> None:
    """A step a pause cut off was drawn up to its run's end, after a resume hours later: one
    block over the whole pause (no break cut out of it), every other step squeezed."""
    t = 1_700_000_000.0
    steps = [
        step(2, "b0", "Hub", "invoke_agent", started=t, duration=1.0),
        step(3, "b0", "Worker", None, started=t + 1, cut_off=True, cut_at=t + 2),
        step(6, "b0", "Worker", "final_response", started=t + 9000, duration=1.0),
    ]
    run = {**VIEW["runs"][0], "ended": t + 9001, "state": "finished"}
    serve_view(page, {**VIEW, "steps": steps, "steps_total": 3, "runs": [run]})
    open_session(page, server)
    timeline = page.locator("#timeline svg")
    cut = float(timeline.locator("rect[data-position='3']").get_attribute("width") or 0)
    done = float(timeline.locator("rect[data-position='6']").get_attribute("width") or 0)
    assert cut <= 2 * done, (cut, done)


def hostile_session(store: Path) -> None:
    """A real run in ``store``: a model whose reply is markup and script, asked a task that is
    too, its final response the same."""

    async def run() -> None:
        backend = SQLiteStorageBackend(store)
        registry = AgentRegistry()
        model = FunctionModel(lambda messages, info: ModelReply(action=final(HOSTILE)))
        registry.register(Agent("A", model, register=False))
        try:
            result = await Orchestra.run(
                HOSTILE,
                {"nodes": ["A"], "edges": []},
                agent_registry=registry,
                context={"session_id": "evil"},
                state_manager=StateManager(backend, auto_save_interval=0),
            )
            assert result.success, result.error
        finally:
            backend.close()

    with ThreadPoolExecutor(1) as worker:  # sync Playwright keeps a loop running on this thread
        worker.submit(lambda: asyncio.run(run())).result()


def test_a_model_reply_of_markup_and_script_is_shown_as_text_end_to_end(
    store: Path, page: Page
) -> None:
    """A real run's model reply ``<script>…<img onerror=…>``, read from the store by the real
    server, shows as text in the session page and the step's detail: no dialog, no element."""
    hostile_session(store)
    with ui_server(store) as server:
        page.goto(server.page_url)
        page.locator("tr[data-session=evil] a").click()
        expect(page.locator("#session-title")).to_have_text("Session evil")
        page.locator("#timeline rect.step").first.click()
        detail = page.locator("#step-detail")
        expect(detail.locator("pre", has_text=HOSTILE).first).to_be_visible()
        assert detail.locator("pre", has_text=HOSTILE).count() >= 2  # the task in, the reply out
        assert page.locator("#step-detail img, #step-detail script, main img").count() == 0
        assert page.dialogs == []  # type: ignore[attr-defined]
        page.close()  # its live stream ends before the server stops
