// One step in full: what it added to the conversation, its action, tool calls with their
// arguments and results, tokens, cost, latency, errors and retries. All of it is text.
"use strict";

import { element, getJSON, money, seconds } from "./api.js";

function section(title, ...children) {
  const part = element("div", null, "detail-part");
  part.append(element("h3", title), ...children);
  return part;
}

function messages(list) {
  return list.map((m) => {
    const item = element("div", null, "message " + m.role);
    item.append(element("span", m.role, "role"), element("pre", m.content));
    return item;
  });
}

function action(found) {
  if (!found) {
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
    ["started", new Date(step.started * 1000).toISOString()],
    ["latency", step.duration === null ? "running" : seconds(step.duration)],
    ["tokens", `${step.tokens.total} (${step.tokens.prompt} prompt, ${step.tokens.completion} completion)`],
    ["cost", money(step.cost_usd) || "unknown"],
  ];
  if (step.abandoned) rows.push(["abandoned", "yes: a restore forked the history before it"]);
  for (const [name, value] of rows) {
    list.append(element("dt", name), element("dd", value));
  }
  return list;
}

// Shows the step at ``position`` of ``session`` in ``box``.
export async function showStep(box, session, position) {
  box.hidden = false;
  box.replaceChildren(element("p", "loading step " + position + "…"));
  const path = "/api/sessions/" + encodeURIComponent(session) + "/steps/" + position;
  let step;
  try {
    step = await getJSON(path);
  } catch (error) {
    box.replaceChildren(element("p", "step " + position + ": " + error.message, "error"));
    return;
  }
  const parts = [element("h2", "Step " + step.position), facts(step)];
  if (step.error) parts.push(section("Error", element("pre", step.error, "error")));
  if (step.retries.length) {
    parts.push(section("Retries", ...step.retries.map((r) => element("pre", `attempt ${r.attempt}: ${r.error}`))));
  }
  parts.push(section("Messages", ...messages(step.messages)));
  parts.push(section("Action", ...action(step.action)));
  if (step.tool_results.length) parts.push(section("Tool results", ...toolResults(step.tool_results)));
  box.replaceChildren(...parts);
}
