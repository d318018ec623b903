// What the list and the session page share: the note, the live indicator, links to a
// session, and deleting one after asking.
"use strict";

import { element, postJSON } from "./api.js";

// Deleting cannot be undone: the page asks first, naming the session.
export function confirmDelete(session) {
  const dialog = document.getElementById("confirm");
  dialog.querySelector("#confirm-text").textContent =
    "Delete session " + session + " and its whole history? This cannot be undone.";
  return new Promise((resolve) => {
    dialog.onclose = () => resolve(dialog.returnValue === "ok");
    dialog.returnValue = "cancel";
    dialog.showModal();
  }).then((confirmed) =>
    confirmed
      ? postJSON("/api/sessions/" + encodeURIComponent(session) + "/delete", {}).then(() => true)
      : false,
  );
}

export function report(error) {
  document.getElementById("note").textContent = error.message || String(error);
}

export function liveStatus(text) {
  document.getElementById("live").textContent = text;
}

export function sessionLink(session) {
  const link = element("a", session);
  link.setAttribute("href", "#session=" + encodeURIComponent(session));
  return link;
}
