// The server's API as the page uses it: the token, JSON requests, and the live event stream.
// Every value the server sends is untrusted (model, tool and user text): callers put it in
// the page with textContent only.
"use strict";

const TOKEN_KEY = "orchestra-ui-token";

// The token comes in the address's fragment (#token=..., never sent to a server); it is kept
// for this tab only and taken out of the address bar, so it is not bookmarked or shared.
export function token() {
  const offered = new URLSearchParams(location.hash.slice(1)).get("token");
  if (offered) {
    sessionStorage.setItem(TOKEN_KEY, offered);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function headers(extra) {
  return { Authorization: "Bearer " + token(), ...extra };
}

// The error a failed answer carries, as a sentence: the server's {"error": ...} when it sent
// one (it names the session, question or checkpoint at fault), else its status and text.
async function failure(response) {
  const type = response.headers.get("content-type") || "";
  if (type.startsWith("application/json")) {
    const body = await response.json();
    return new Error(body.error || "the server answered " + response.status);
  }
  return new Error("the server answered " + response.status + ": " + (await response.text()));
}

export async function getJSON(path) {
  const response = await fetch(path, { headers: headers(), credentials: "omit" });
  if (!response.ok) {
    throw await failure(response);
  }
  return response.json();
}

// A state-changing request: JSON with the Bearer token (a cross-site form can send neither).
export async function postJSON(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    credentials: "omit",
    body: JSON.stringify(body),
  });
  if (!response.ok) {
    throw await failure(response);
  }
  return response.json();
}

// Server-Sent Events read with fetch() (EventSource cannot send the Bearer header): each
// complete event calls onEvent(name, data). Returns at the stream's end; throws on failure.
async function readEvents(path, onEvent, signal) {
  const response = await fetch(path, { headers: headers(), credentials: "omit", signal });
  if (!response.ok || !response.body) {
    throw await failure(response);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) {
      return;
    }
    buffer += value.replace(/\r\n?/g, "\n");
    let end = buffer.indexOf("\n\n");
    while (end >= 0) {
      dispatch(buffer.slice(0, end), onEvent);
      buffer = buffer.slice(end + 2);
      end = buffer.indexOf("\n\n");
    }
  }
}

function dispatch(block, onEvent) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) {
      continue; // a comment: the keep-alive
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") {
      name = value;
    } else if (field === "data") {
      data.push(value);
    }
  }
  if (data.length > 0) {
    onEvent(name, JSON.parse(data.join("\n")));
  }
}

// Follows the stream at ``path`` until ``signal`` aborts, reconnecting after a drop with a
// growing delay (a restarted server is found again without a storm of requests);
// onStatus(text) says whether the page is live.
export async function follow(path, onEvent, onStatus, signal) {
  let delay = 250;
  while (!signal.aborted) {
    try {
      await readEvents(
        path,
        (name, data) => {
          delay = 250;
          onStatus("live");
          onEvent(name, data);
        },
        signal,
      );
      onStatus("reconnecting");
    } catch (error) {
      if (signal.aborted) {
        return;
      }
      onStatus("not live (" + error.message + "); retrying");
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

// An element with its text (never parsed as HTML) and optional class.
export function element(tag, text, className) {
  const made = document.createElement(tag);
  if (text !== undefined && text !== null) {
    made.textContent = String(text);
  }
  if (className) {
    made.className = className;
  }
  return made;
}

// A cost in dollars; "—" when it is unknown (no price for the model: scripted and local ones).
export function money(cost) {
  return cost === null || cost === undefined ? "—" : "$" + cost.toFixed(4);
}

export function seconds(value) {
  return value === null || value === undefined ? "" : value.toFixed(2) + " s";
}

// A view's steps in the log's order, each with its ordinal in the session ({step, ordinal}):
// the view holds the latest 500 of ``steps_total``, so the first may be far from 1.
export function numbered(view) {
  const steps = [...view.steps].sort((a, b) => a.position - b.position);
  const before = view.steps_total - steps.length;
  return steps.map((step, index) => ({ step, ordinal: before + index + 1 }));
}
