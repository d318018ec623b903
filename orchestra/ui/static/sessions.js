// The sessions list. Every value from the server (tasks, errors: model and user text) is
// untrusted: it is put in the page with textContent only, never parsed as HTML.
"use strict";

// The token comes in the address's fragment (#token=..., never sent to a server); it is kept
// for this tab only and taken out of the address bar, so it is not bookmarked or shared.
function token() {
  const offered = new URLSearchParams(location.hash.slice(1)).get("token");
  if (offered) {
    sessionStorage.setItem("orchestra-ui-token", offered);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("orchestra-ui-token") || "";
}

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
    const response = await fetch("/api/sessions", {
      headers: { Authorization: "Bearer " + token() },
      credentials: "omit",
    });
    const type = response.headers.get("content-type") || "";
    if (!type.startsWith("application/json")) {
      note.textContent = "The server answered " + response.status + ": " + (await response.text());
      return;
    }
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
