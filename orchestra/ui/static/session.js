// A session's page: its summary, controls (pause, resume, checkpoint, delete), pending
// questions with an answer box, the topology graph, checkpoints with restore, and the branch
// timeline whose steps open in the detail panel (which follows the step it shows). Kept live
// from the server's event stream; the timeline is drawn again when its pane's width changes.
"use strict";

import { element, follow, getJSON, money, postJSON } from "./api.js";
import { forgetStep, refreshStep, showStep } from "./detail.js";
import { drawGraph, forgetGraph } from "./graph.js";
import { confirmDelete, liveStatus, report } from "./page.js";
import { drawTimeline } from "./timeline.js";

let session = null; // the id of the session shown
let streamed = 0; // views the stream brought: a request answered after one is already stale
let latest = null; // the view drawn last: a resize draws the timeline again from it
// The badge's class per status: its colour (the status is always written in it too).
const BADGES = {
  running: "status-running",
  "waiting for the user": "status-waiting",
  finished: "status-finished",
  failed: "status-failed",
  damaged: "status-damaged",
  paused: "status-paused",
  interrupted: "status-interrupted",
  "on Temporal": "status-temporal",
};
// what the store cannot tell of a run on Temporal with no end in its log
const ON_TEMPORAL =
  "Its workers run it on Temporal, or Temporal closed its workflow without ending the run " +
  "(terminated, cancelled or timed out), which this store cannot tell: `temporal workflow " +
  "describe -w SESSION` says. A closed one: start it again with `orchestra run --temporal`, " +
  "or delete it.";

function route(action) {
  return "/api/sessions/" + encodeURIComponent(session) + "/" + action;
}

function act(action, body) {
  return postJSON(route(action), body).catch(report);
}

function summary(view) {
  const s = view.summary;
  const badge = document.getElementById("session-status");
  badge.textContent = s.status;
  badge.className = "badge " + (BADGES[s.status] || "");
  badge.title = s.status === "on Temporal" ? ON_TEMPORAL.replace("SESSION", session) : "";
  // the summary counts the steps on the session's history; the timeline also shows those a
  // restore abandoned, so the header says how many of those there are
  const others = view.steps.filter((step) => step.abandoned || step.cut_off).length;
  const aside = others > 0 ? ` (and ${others} abandoned or cut off)` : "";
  const parts = [s.task ? "task: " + s.task : "", `${s.steps} steps${aside}`, `${s.tokens} tokens`, "cost " + money(s.cost_usd)];
  if (s.error) parts.push("error: " + s.error);
  document.getElementById("session-facts").textContent = parts.filter(Boolean).join(" · ");
  // a run on Temporal: its workers run it and write its log (it is not resumed here); it may
  // have been closed there (terminated), which this store cannot tell: it may be deleted
  const running = ["running", "waiting for the user"].includes(s.status);
  document.getElementById("pause").disabled = !(running && s.hosted);
  document.getElementById("resume").disabled = !(s.status === "paused" || s.status === "interrupted");
  document.getElementById("delete").disabled = running;
}

function answerForm(question) {
  const form = element("form", null, "answer");
  const box = element("textarea");
  box.setAttribute("aria-label", "answer to " + question.agent);
  const send = element("button", "Answer");
  send.type = "submit";
  form.append(box, send);
  const reply = (text) => {
    send.disabled = true;
    act("answer", { question: question.id, answer: text }).finally(() => (send.disabled = false));
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    reply(box.value);
  });
  if (question.kind === "follow_up") {
    // an empty answer ends a conversation
    const end = element("button", "End the conversation");
    end.type = "button";
    end.addEventListener("click", () => reply(""));
    form.append(end);
  }
  return form;
}

// Why a question has no answer box here: a run of another process waits for it, or none runs
// (the session was interrupted, or restored): Resume, and the run asks it again.
function unanswerable(view) {
  const running = ["running", "waiting for the user"].includes(view.summary.status);
  return running ? "answered where the run is running" : "no run is running it: Resume the session to answer it";
}

// Questions are kept across updates, so an answer being typed survives them; one that became
// answerable (its run now hosted here), or whose hint changed, is drawn again.
function questions(view) {
  const hint = unanswerable(view);
  const list = view.questions;
  const box = document.getElementById("questions");
  const kept = new Map([...box.children].map((node) => [node.dataset.key, node]));
  const shown = list.map((q) => {
    const key = JSON.stringify([q.id, q.answerable, hint]);
    if (kept.has(key)) return kept.get(key);
    const item = element("div", null, "question");
    item.dataset.question = q.id;
    item.dataset.key = key;
    item.append(element("p", `${q.agent} asks (${q.kind}, branch ${q.branch}):`), element("pre", q.text));
    if (q.response !== null && q.response !== undefined) item.append(element("pre", q.response, "response"));
    item.append(q.answerable ? answerForm(q) : element("p", hint, "hint"));
    return item;
  });
  box.replaceChildren(...shown);
}

function checkpoints(view) {
  const items = view.checkpoints.map((c) => {
    const item = element("li", `${c.name} (at record ${c.position})`, c.abandoned ? "abandoned" : "");
    const restore = element("button", "Restore");
    restore.type = "button";
    restore.addEventListener("click", () => act("restore", { checkpoint: c.id }));
    item.append(" ", restore);
    return item;
  });
  for (const r of view.restores) {
    items.push(element("li", `restored to ${r.checkpoint} at record ${r.position} (back to ${r.to})`, "restore"));
  }
  if (items.length === 0) {
    items.push(element("li", "none yet", "hint"));
  }
  document.getElementById("checkpoints").replaceChildren(...items);
}

function drawSteps(view) {
  const detail = document.getElementById("step-detail");
  drawTimeline(document.getElementById("timeline"), view, (position) =>
    showStep(detail, session, view, position),
  );
}

function render(view) {
  latest = view;
  summary(view);
  questions(view);
  checkpoints(view);
  const total = view.steps_total;
  document.getElementById("steps-note").textContent =
    total > view.steps.length ? `the latest ${view.steps.length} of ${total} steps` : `${total} steps`;
  drawSteps(view);
  refreshStep(document.getElementById("step-detail"), session, view);
  drawGraph(document.getElementById("graph"), view.graph, view.active).catch(report);
}

// The timeline takes its pane's width: drawn again when that width changes (not while the
// page is hidden: the list is shown).
function followWidth() {
  const box = document.getElementById("timeline");
  let width = box.clientWidth;
  new ResizeObserver(() => {
    if (box.clientWidth !== width && box.clientWidth > 0 && latest !== null) {
      width = box.clientWidth;
      drawSteps(latest);
    }
  }).observe(box);
}

let wired = false;

function wire() {
  wired = true;
  followWidth();
  document.getElementById("pause").addEventListener("click", () => act("pause", { reason: null }));
  document.getElementById("resume").addEventListener("click", () => act("resume", { workflow: null }));
  document.getElementById("checkpoint").addEventListener("click", () => {
    const name = document.getElementById("checkpoint-name").value.trim();
    act("checkpoint", { name: name === "" ? null : name });
  });
  document.getElementById("delete").addEventListener("click", () =>
    confirmDelete(session).then((deleted) => deleted && (location.hash = ""), report),
  );
}

export function showSession(id, signal) {
  if (!wired) wire();
  session = id;
  latest = null;
  forgetGraph();
  for (const box of ["questions", "graph", "checkpoints", "timeline"]) {
    document.getElementById(box).replaceChildren();
  }
  forgetStep(document.getElementById("step-detail"));
  document.getElementById("session-status").textContent = "";
  document.getElementById("session-title").textContent = "Session " + id;
  const before = streamed;
  getJSON("/api/sessions/" + encodeURIComponent(id)).then(
    (view) => before === streamed && !signal.aborted && render(view),
    report,
  );
  const path = "/api/events?session=" + encodeURIComponent(id);
  const streamedView = (name, data) => {
    if (name === "session" && "error" in data) {
      report(new Error(data.error)); // deleted or damaged while shown: said, the stream goes on
    } else if (name === "session") {
      streamed += 1;
      render(data);
    }
  };
  follow(path, streamedView, liveStatus, signal);
}
