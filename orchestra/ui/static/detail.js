// One step in full: what it added to the conversation, its action, tool calls with their
// arguments and results, tokens, cost, latency, errors and retries. All of it is text. The
// panel follows the session's view: when the step it shows changes (it finished, failed, was
// abandoned), it is fetched again.
"use strict";

import { element, getJSON, money, numbered, seconds } from "./api.js";

let shown = null; // {session, position, said}: the step in the panel and what the view said of it
let asked = 0; // requests made: the answer to an older one is dropped

function section(title, ...children) {
  const part = element("div", null, "detail-part");
  part.append(element("h3", title), ...children);
  return part;
}

// A message's text; an assistant turn of tool calls alone has none, which is said.
function messages(list) {
  return list.map((m) => {
    const item = element("div", null, "message " + m.role);
    const text = m.content ? element("pre", m.content) : element("p", "(no text: tool calls only)", "hint");
    item.append(element("span", m.role, "role"), text);
    return item;
  });
}

// What the step stands for; with no action: cut off, a code step's value, or still running.
function action(found, step) {
  if (!found) {
    if (step.cut_off) return [element("p", "none: the step was cut off before it returned")];
    if (step.duration !== null) return [element("p", "none: a code step that returned a value")];
    return [element("p", "none yet: the step is running")];
  }
  const parts = [element("p", found.kind + (found.targets.length ? " → " + found.targets.join(", ") : ""))];
  if (found.content !== null && found.content !== undefined) {
    parts.push(element("pre", found.content));
  }
  for (const call of found.tool_calls) {
    parts.push(element("pre", `${call.name}(${call.arguments})  [${call.id}]`, "tool-call"));
  }
  return parts;
}

function toolResults(list) {
  return list.map((r) =>
    element(
      "pre",
      `${r.name} [${r.call_id}] ${r.ok ? "ok" : "failed"} in ${seconds(r.duration)}: ${r.result}`,
      r.ok ? "tool-result" : "tool-result error",
    ),
  );
}

function facts(step) {
  const list = element("dl");
  const rows = [
    ["agent", step.agent],
    ["run / branch", step.run + " / " + step.branch],
    ["record", `${step.position} in the session's log`],
    ["started", new Date(step.started * 1000).toISOString()],
    ["latency", step.duration !== null ? seconds(step.duration) : step.cut_off ? "cut off" : "running"],
    ["tokens", `${step.tokens.total} (${step.tokens.prompt} prompt, ${step.tokens.completion} completion)`],
    ["cost", money(step.cost_usd)],
  ];
  if (step.abandoned) rows.push(["abandoned", "yes: a restore forked the history before it"]);
  for (const [name, value] of rows) {
    list.append(element("dt", name), element("dd", value));
  }
  return list;
}

// Where the step at ``position`` stands in ``view``: its entry (null when it is older than
// the view's latest steps), its ordinal and the session's step count.
function place(view, position) {
  const found = numbered(view).find((n) => n.step.position === position);
  return { entry: found ? found.step : null, ordinal: found ? found.ordinal : null, total: view.steps_total };
}

// "Step 5 of 5 · Writer": the ordinal among the session's steps (the record's position is a
// fact below), and the agent.
function heading(step, where) {
  const number = where.ordinal === null ? `Step at record ${step.position}` : `Step ${where.ordinal} of ${where.total}`;
  return element("h2", step.agent ? `${number} · ${step.agent}` : number);
}

async function load(box, session, position, where) {
  const request = ++asked;
  const path = "/api/sessions/" + encodeURIComponent(session) + "/steps/" + position;
  let step;
  try {
    step = await getJSON(path);
  } catch (error) {
    if (request === asked) box.replaceChildren(element("p", "step " + position + ": " + error.message, "error"));
    return;
  }
  if (request !== asked) return; // another step was picked, or this one changed, meanwhile
  const parts = [heading(step, where), facts(step)];
  if (step.error) parts.push(section("Error", element("pre", step.error, "error")));
  if (step.retries.length) {
    parts.push(section("Retries", ...step.retries.map((r) => element("pre", `attempt ${r.attempt}: ${r.error}`))));
  }
  parts.push(section("Messages", ...messages(step.messages)));
  parts.push(section("Action", ...action(step.action, step)));
  if (step.tool_results.length) parts.push(section("Tool results", ...toolResults(step.tool_results)));
  box.replaceChildren(...parts);
}

// Shows the step at ``position`` of ``session`` (as ``view`` has it) in ``box``.
export function showStep(box, session, view, position) {
  const where = place(view, position);
  shown = { session, position, said: JSON.stringify(where) };
  box.hidden = false;
  box.replaceChildren(element("p", "loading step " + position + "…"));
  return load(box, session, position, where);
}

// Fetches the shown step again when ``view`` says something new of it (its action, duration,
// tokens, error, ordinal or the step count), keeping what is shown until the answer comes.
export function refreshStep(box, session, view) {
  if (shown === null || shown.session !== session) return null;
  const where = place(view, shown.position);
  const said = JSON.stringify(where);
  if (said === shown.said) return null;
  shown.said = said;
  return load(box, session, shown.position, where);
}

// Empties the panel: a session's page opened afresh shows no step.
export function forgetStep(box) {
  shown = null;
  asked += 1;
  box.hidden = true;
  box.replaceChildren();
}
