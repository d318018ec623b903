// The sessions list: filtered by status, searched by id or task, kept live from the server's
// event stream, with delete (after a confirmation) and a form to start a run of a workflow.
"use strict";

import { element, follow, getJSON, money, postJSON } from "./api.js";
import { confirmDelete, liveStatus, report, sessionLink } from "./page.js";

let sessions = [];
let streamed = 0; // lists the stream brought: a request answered after one is already stale

function shown() {
  const status = document.getElementById("status-filter").value;
  const words = document.getElementById("search").value.trim().toLowerCase();
  return sessions.filter(
    (s) =>
      (status === "" || s.status === status) &&
      (words === "" || (s.id + " " + (s.task || "")).toLowerCase().includes(words)),
  );
}

function deleteButton(session) {
  const button = element("button", "Delete");
  button.type = "button";
  button.addEventListener("click", () =>
    confirmDelete(session.id).then((deleted) => deleted && refresh(), report),
  );
  return button;
}

// An error can be long (a traceback's last line, a damaged log's reason): one short line in
// the list, the whole text in the cell's tooltip.
function errorCell(error) {
  const cell = element("td", error, "error-text");
  if (error) cell.setAttribute("title", error);
  return cell;
}

function row(session) {
  const tr = element("tr");
  tr.dataset.session = session.id;
  const link = element("td");
  link.appendChild(sessionLink(session.id));
  const actions = element("td");
  actions.appendChild(deleteButton(session));
  tr.append(
    link,
    element("td", session.status, session.status.split(" ")[0]),
    element("td", session.task),
    element("td", session.started),
    element("td", session.runs),
    element("td", session.steps),
    element("td", session.tokens),
    element("td", money(session.cost_usd)),
    errorCell(session.error),
    actions,
  );
  return tr;
}

function render() {
  const listed = shown();
  document.querySelector("#sessions tbody").replaceChildren(...listed.map(row));
  const note =
    sessions.length === 0
      ? "No sessions in this store yet."
      : listed.length === 0
        ? "No session matches."
        : "";
  document.getElementById("list-note")?.remove();
  if (note) {
    const paragraph = element("p", note);
    paragraph.id = "list-note";
    document.getElementById("sessions").after(paragraph);
  }
}

function update(list) {
  sessions = list;
  render();
}

function refresh() {
  const before = streamed;
  return getJSON("/api/sessions").then((list) => before === streamed && update(list), report);
}

async function offerWorkflows() {
  let workflows;
  try {
    workflows = await getJSON("/api/workflows");
  } catch {
    return; // no workflows to offer: the inspector only watches
  }
  const form = document.getElementById("start-run");
  const select = document.getElementById("workflow");
  select.replaceChildren(...workflows.map((w) => element("option", w.name)));
  form.hidden = workflows.length === 0;
  select.onchange = () => {
    const chosen = workflows.find((w) => w.name === select.value);
    document.getElementById("run-task").placeholder = chosen && chosen.task ? chosen.task : "";
  };
  select.onchange();
}

async function startRun(event) {
  event.preventDefault();
  const task = document.getElementById("run-task").value;
  const session = document.getElementById("run-session").value.trim();
  try {
    const started = await postJSON("/api/runs", {
      workflow: document.getElementById("workflow").value,
      task: task === "" ? null : task,
      session: session === "" ? null : session,
      follow_ups: document.getElementById("run-follow-ups").checked,
    });
    location.hash = "session=" + encodeURIComponent(started.session);
  } catch (error) {
    report(error);
  }
}

let wired = false;

export function showList(signal) {
  if (!wired) {
    wired = true;
    document.getElementById("status-filter").addEventListener("change", render);
    document.getElementById("search").addEventListener("input", render);
    document.getElementById("filters").addEventListener("submit", (e) => e.preventDefault());
    document.getElementById("start-run").addEventListener("submit", startRun);
  }
  refresh();
  offerWorkflows();
  const streamedList = (name, data) => {
    if (name === "sessions") {
      streamed += 1;
      update(data);
    }
  };
  follow("/api/events", streamedList, liveStatus, signal);
}
