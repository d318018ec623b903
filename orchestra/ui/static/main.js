// The page's router: the sessions list at "/", a session's page at "/#session=ID".
"use strict";

import { token } from "./api.js";
import { showList } from "./list.js";
import { showSession } from "./session.js";

let current = null; // the AbortController of the shown view's live stream

function route() {
  token(); // take a #token= out of the address before reading the route
  if (current) {
    current.abort();
  }
  current = new AbortController();
  const session = new URLSearchParams(location.hash.slice(1)).get("session");
  document.getElementById("list-view").hidden = session !== null;
  document.getElementById("session-view").hidden = session === null;
  document.getElementById("note").textContent = "";
  if (session === null) {
    showList(current.signal);
  } else {
    showSession(session, current.signal);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("#confirm button")) {
    button.addEventListener("click", () => document.getElementById("confirm").close(button.value));
  }
  window.addEventListener("hashchange", route);
  route();
});
