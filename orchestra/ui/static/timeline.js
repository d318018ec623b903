// A session's branch timeline, drawn as SVG: one lane per branch (labelled with the agents it
// went through), its steps as blocks placed by time when their durations are known (else in
// the order taken), a line from a branch's step to the first step of each branch it forked (a
// fan-out) and from a finished branch's last step back to its parent's next one
// (convergence). Abandoned history (before a restore) is greyed. Each block carries a glyph of
// its action, its agent when there is room, a tooltip, and opens with a click or Enter. It
// takes its box's width and scrolls sideways when the steps need more. Text is set as text only.
"use strict";

import { numbered, seconds } from "./api.js";

const SVG = "http://www.w3.org/2000/svg";
const LANE = 30;
const AXIS = 18; // the time scale's row, above the lanes
const BLOCK_HEIGHT = 18;
const MIN_BLOCK = 14; // the narrowest block: its glyph fits, a click finds it
const GAP = 2; // between a lane's blocks, where a short step was widened to MIN_BLOCK
const ORDER_COLUMN = { min: 26, max: 160 }; // a step's column when drawn by order
const MAX_WIDTH = 40000; // a very long run is scaled down to this rather than drawn wider
const CHAR = 6.5; // about one character of the 11px text
const LABEL = { min: 120, max: 300 };
const TICK_SPACING = 80; // px between the time scale's ticks, at least
// One glyph per kind of step; the legend under the timeline (index.html) says the same.
const GLYPHS = {
  invoke_agent: "→",
  parallel_invoke: "⇉",
  final_response: "✓",
  ask_user: "?",
  call_tool: "⚙",
  code: "ƒ",
  "in-progress": "…",
};

function svg(tag, attributes, text) {
  const made = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    made.setAttribute(name, String(value));
  }
  if (text !== undefined) made.textContent = text;
  return made;
}

function laneKey(run, branch) {
  return run + "/" + branch;
}

// What kind of block a step is: its action; with none, running (no duration yet) or a code
// step that returned a value.
function kind(step) {
  return step.action || (step.duration === null ? "in-progress" : "code");
}

// ``text`` cut to ``width`` pixels, with an ellipsis when cut.
function fitted(text, width) {
  const room = Math.floor(width / CHAR);
  if (text.length <= room) return text;
  return room > 1 ? text.slice(0, room - 1) + "…" : "";
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

// Each step's x and width in the plot (0 at its left edge), and the time scale's ticks: by
// time when any step has a duration, each lane's blocks pushed apart where a short step was
// widened to stay readable; else one column per step in the order taken.
function layout(numberedSteps, available) {
  const steps = numberedSteps.map((n) => n.step);
  const known = steps.filter((s) => s.duration !== null).map((s) => s.duration);
  const start = Math.min(...steps.map((s) => s.started));
  const end = Math.max(...steps.map((s) => s.started + (s.duration || 0)));
  if (known.length === 0 || end <= start) {
    const column = Math.min(ORDER_COLUMN.max, Math.max(ORDER_COLUMN.min, available / steps.length));
    const places = steps.map((_, index) => ({ x: index * column + GAP, width: column - 2 * GAP }));
    return { places, width: steps.length * column, ticks: null };
  }
  const span = end - start;
  const typical = median(known.filter((d) => d > 0)) || span / steps.length;
  const scale = Math.min(Math.max(available / span, MIN_BLOCK / typical), MAX_WIDTH / span);
  const laneEnds = new Map();
  const places = steps.map((step) => {
    const key = laneKey(step.run, step.branch);
    const x = Math.max((step.started - start) * scale, (laneEnds.get(key) ?? -GAP) + GAP);
    const drawn = step.duration === null ? end - step.started : step.duration;
    const width = Math.max(MIN_BLOCK, drawn * scale);
    laneEnds.set(key, x + width);
    return { x, width };
  });
  const width = Math.max(span * scale, ...places.map((p) => p.x + p.width));
  return { places, width, ticks: ticks(span, scale) };
}

// Round times (0.1 s, 0.2 s, 0.5 s, 1 s, ...) at least TICK_SPACING pixels apart.
function ticks(span, scale) {
  const wanted = TICK_SPACING / scale;
  const power = 10 ** Math.floor(Math.log10(wanted));
  const every = [1, 2, 5, 10].map((m) => m * power).find((t) => t >= wanted);
  const digits = Math.max(0, -Math.floor(Math.log10(every)));
  const made = [];
  for (let t = 0; t <= span + every / 2; t += every) {
    made.push({ x: t * scale, label: t.toFixed(digits) + " s" });
  }
  return made;
}

function axis(ticks, left, height) {
  const group = svg("g", { class: "axis", "aria-hidden": "true" });
  if (ticks === null) {
    group.append(svg("text", { x: left, y: AXIS - 6 }, "in the order taken (no durations recorded)"));
    return group;
  }
  for (const tick of ticks) {
    const x = left + tick.x;
    group.append(svg("line", { x1: x, x2: x, y1: AXIS - 4, y2: height }));
    group.append(svg("text", { x: x + 2, y: AXIS - 6 }, tick.label));
  }
  return group;
}

// The agents each lane's steps went through, in order (a branch hands its turn on: the
// Coordinator invokes the Writer on the same branch).
function laneAgents(steps) {
  const agents = new Map();
  for (const step of steps) {
    const key = laneKey(step.run, step.branch);
    if (!agents.has(key)) agents.set(key, []);
    const seen = agents.get(key);
    if (step.agent && seen[seen.length - 1] !== step.agent) seen.push(step.agent);
  }
  return agents;
}

function laneText(branch, agents) {
  const names = agents && agents.length ? agents : [branch.agent || "?"];
  return `${branch.run} ${branch.id} ${names.join(" → ")} (${branch.state})`;
}

// A lane's label, cut to the labels' column; the whole of it is the lane's tooltip.
function laneLabel(text, lane, width) {
  const group = svg("g", { class: "lane" });
  const y = AXIS + lane * LANE + LANE / 2 + 4;
  group.append(svg("title", {}, text), svg("text", { x: 4, y, class: "lane-label" }, fitted(text, width - 8)));
  return group;
}

function describe(step, ordinal, total) {
  const what = {
    "in-progress": "running",
    code: "code step (returned a value)",
  }[kind(step)] || step.action + (step.targets.length ? " → " + step.targets.join(", ") : "");
  const parts = [
    `Step ${ordinal} of ${total} (record ${step.position}): ${step.agent || "unknown agent"}`,
    what,
    step.duration === null ? "latency: running" : "latency " + seconds(step.duration),
    `${step.tokens} tokens`,
  ];
  if (step.cost_usd !== null) parts.push("$" + step.cost_usd.toFixed(4));
  if (step.error) parts.push("error: " + step.error);
  if (step.abandoned) parts.push("abandoned by a restore");
  return parts.join(" · ");
}

function block(numberedStep, total, box, onPick) {
  const { step, ordinal } = numberedStep;
  const classes = ["step", kind(step)];
  if (step.abandoned) classes.push("abandoned");
  if (step.error) classes.push("error");
  const said = describe(step, ordinal, total);
  const rect = svg("rect", {
    ...box,
    rx: 3,
    class: classes.join(" "),
    "data-position": step.position,
    tabindex: 0,
    role: "button",
    "aria-label": said,
  });
  rect.appendChild(svg("title", {}, said));
  rect.addEventListener("click", () => onPick(step.position));
  rect.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      onPick(step.position);
    }
  });
  const glyph = GLYPHS[kind(step)] || "•";
  const text = fitted(step.agent ? `${glyph} ${step.agent}` : glyph, box.width - 4) || fitted(glyph, box.width);
  const label = svg("text", { x: box.x + 3, y: box.y + BLOCK_HEIGHT / 2 + 4, class: "block-text" }, text);
  label.setAttribute("aria-hidden", "true");
  return [rect, label];
}

function link(from, to, className) {
  const bend = Math.max(8, (to.x - from.x) / 2);
  return svg("path", {
    d: `M${from.x},${from.y} C${from.x + bend},${from.y} ${to.x - bend},${to.y} ${to.x},${to.y}`,
    class: className,
  });
}

// The lines of fan-outs and convergence, between the blocks of each forked branch and its
// parent's: ``placed`` maps a lane to its blocks ({position, box}) in the log's order.
function links(branches, placed, laneY) {
  const drawn = [];
  const middle = (found) => ({ x: found.box.x + found.box.width / 2, y: found.box.y + BLOCK_HEIGHT / 2 });
  for (const branch of branches) {
    const own = placed.get(laneKey(branch.run, branch.id)) || [];
    if (!branch.parent || own.length === 0) continue;
    const parent = placed.get(laneKey(branch.run, branch.parent)) || [];
    const first = own[0];
    const before = parent.filter((p) => p.position < first.position).pop();
    const from = before ? middle(before) : { x: first.box.x - 10, y: laneY(branch.run, branch.parent) };
    drawn.push(link(from, middle(first), "fan-out"));
    const last = own[own.length - 1];
    const after = parent.find((p) => p.position > last.position);
    if (branch.state === "done" && after !== undefined) {
      drawn.push(link(middle(last), middle(after), "converge"));
    }
  }
  return drawn;
}

// Draws ``view``'s branches and steps into ``box`` (as wide as the box, or wider, scrolled);
// a click or Enter on a step calls onPick(position).
export function drawTimeline(box, view, onPick) {
  const steps = numbered(view);
  const lanes = new Map(view.branches.map((b, index) => [laneKey(b.run, b.id), index]));
  for (const { step } of steps) {
    const key = laneKey(step.run, step.branch);
    if (!lanes.has(key)) lanes.set(key, lanes.size);
  }
  const agents = laneAgents(steps.map((n) => n.step));
  const texts = view.branches.map((b) => laneText(b, agents.get(laneKey(b.run, b.id))));
  const left = Math.min(LABEL.max, Math.max(LABEL.min, ...texts.map((t) => t.length * CHAR + 12)));
  const laneY = (run, branch) => AXIS + lanes.get(laneKey(run, branch)) * LANE + LANE / 2;
  const height = AXIS + Math.max(lanes.size, 1) * LANE;
  const chart = svg("svg", { class: "timeline", role: "group", "aria-label": "branch timeline" });
  const blocks = [];
  const placed = new Map();
  let width = left + 10;
  if (steps.length > 0) {
    const plan = layout(steps, Math.max(box.clientWidth - left - 20, 100));
    steps.forEach((numberedStep, index) => {
      const { step } = numberedStep;
      const at = plan.places[index];
      const y = laneY(step.run, step.branch) - BLOCK_HEIGHT / 2;
      const area = { x: left + at.x, y, width: at.width, height: BLOCK_HEIGHT };
      const key = laneKey(step.run, step.branch);
      if (!placed.has(key)) placed.set(key, []);
      placed.get(key).push({ position: step.position, box: area });
      blocks.push(...block(numberedStep, view.steps_total, area, onPick));
    });
    chart.appendChild(axis(plan.ticks, left, height));
    width = left + plan.width + 10;
  }
  chart.setAttribute("width", String(Math.ceil(width)));
  chart.setAttribute("height", String(height));
  texts.forEach((text, lane) => chart.appendChild(laneLabel(text, lane, left)));
  chart.append(...links(view.branches, placed, laneY), ...blocks);
  box.replaceChildren(chart);
}
