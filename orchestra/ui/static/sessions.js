// The sessions list. Every value from the server (tasks, errors: model and user text) is
// untrusted: it is put in the page with textContent only, never parsed as HTML.
"use strict";

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) {
    td.className = className;
  }
  row.appendChild(td);
}

function render(sessions) {
  const body = document.querySelector("#sessions tbody");
  body.replaceChildren();
  for (const s of sessions) {
    const row = document.createElement("tr");
    cell(row, s.id);
    cell(row, s.status, s.status.split(" ")[0]);
    cell(row, s.task);
    cell(row, s.started);
    cell(row, s.runs);
    cell(row, s.steps);
    cell(row, s.tokens);
    cell(row, s.cost_usd === null ? "" : "$" + s.cost_usd.toFixed(4));
    cell(row, s.error);
    body.appendChild(row);
  }
  document.getElementById("note").textContent =
    sessions.length === 0 ? "No sessions in this store yet." : "";
}

async function load() {
  const note = document.getElementById("note");
  try {
    const response = await fetch("/api/sessions", { credentials: "same-origin" });
    const data = await response.json();
    if (!response.ok) {
      note.textContent = "The store could not be read: " + data.error;
      return;
    }
    render(data);
  } catch (error) {
    note.textContent = "The sessions could not be fetched: " + error;
  }
}

document.addEventListener("DOMContentLoaded", load);
