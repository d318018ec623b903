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
const PAD = 12; // room at either end of the steps' chart
const TICK_SPACING = 80; // px between the time scale's ticks, at least
const TICK_CHAR = 5.5; // about one character of the scale's 10px text
const BREAK = 24; // px a long pause is drawn as
// A pause is cut out of the time scale when nothing ran for this long: 5 typical steps, and
// at least 2 s (a pause between quick code steps is shown as it was).
const IDLE = { typicals: 5, least: 2 };
// One glyph per kind of step; the legend under the timeline (index.html) says the same.
const GLYPHS = {
  invoke_agent: "→",
  parallel_invoke: "⇉",
  final_response: "✓",
  ask_user: "?",
  call_tool: "⚙",
  code: "ƒ",
  "in-progress": "…",
  "cut-off": "✂",
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

// What kind of block a step is: its action; with none, cut off (its run ended, was killed or
// restored first), running (no duration yet) or a code step that returned a value.
function kind(step) {
  if (step.action) return step.action;
  if (step.cut_off) return "cut-off";
  return step.duration === null ? "in-progress" : "code";
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

// The stretches of time when some step ran: steps' spans merged, a pause longer than
// ``idle`` (a user thinking over a question, a run resumed the next day) splitting them.
function busy(spans, idle) {
  const sorted = [...spans].sort((a, b) => a.from - b.from);
  const stretches = [{ ...sorted[0] }];
  for (const span of sorted.slice(1)) {
    const last = stretches[stretches.length - 1];
    if (span.from - last.to > idle) stretches.push({ ...span });
    else last.to = Math.max(last.to, span.to);
  }
  return stretches;
}

// Where each step ends in time: its duration's end; a step cut off when it was (``cut_at``: its
// run's end, or the last record before a crash; a pause and the resume after it are not part
// of it); a step in flight, at the latest step's end.
function spanOf(step, end) {
  if (step.duration !== null) return { from: step.started, to: step.started + step.duration };
  if (!step.cut_off) return { from: step.started, to: end };
  const stop = step.cut_at;
  return { from: step.started, to: stop !== null && stop !== undefined && stop >= step.started ? stop : step.started };
}

// Each step's x and width in the plot (0 at its left edge), the time scale's ticks and the
// pauses cut out of it: by time when any step has a duration (each lane's blocks pushed
// apart where a short step was widened to stay readable, a long pause drawn as a narrow
// break); else one column per step in the order taken. The steps fit the pane when their
// blocks can (the scale narrowed by what widened blocks add); only a lane of more blocks than
// fit is drawn wider, each typical step a readable block, and scrolled.
function layout(numberedSteps, available) {
  const steps = numberedSteps.map((n) => n.step);
  const known = steps.filter((s) => s.duration !== null).map((s) => s.duration);
  const start = Math.min(...steps.map((s) => s.started));
  const end = Math.max(...steps.map((s) => s.started + (s.duration || 0)));
  if (known.length === 0 || end <= start) {
    const column = Math.min(ORDER_COLUMN.max, Math.max(ORDER_COLUMN.min, available / steps.length));
    const places = steps.map((_, index) => ({ x: index * column + GAP, width: column - 2 * GAP }));
    return { places, width: steps.length * column, ticks: null, breaks: [] };
  }
  const typical = median(known.filter((d) => d > 0)) || (end - start) / steps.length;
  const spans = steps.map((s) => spanOf(s, end));
  const stretches = busy(spans, Math.max(IDLE.least, IDLE.typicals * typical));
  const active = stretches.reduce((sum, t) => sum + Math.max(t.to - t.from, typical), 0);
  const room = available - (stretches.length - 1) * BREAK;
  let scale = room / active;
  let plan = placed(steps, spans, stretches, scale, typical);
  for (let tries = 0; tries < 3 && plan.width > available + 0.5; tries++) {
    const narrower = (room - (plan.width - plan.timed)) / active;
    if (narrower <= 0) break;
    scale = narrower;
    plan = placed(steps, spans, stretches, scale, typical);
  }
  if (plan.width > available + 0.5) {
    // a step no longer than the time each step has on average is drawn MIN_BLOCK wide
    const readable = median(known.map((d) => Math.max(d, active / steps.length)));
    scale = Math.min(Math.max(room / active, MIN_BLOCK / readable), MAX_WIDTH / active);
    plan = placed(steps, spans, stretches, scale, typical);
  }
  const breaks = stretches.slice(1).map((t, i) => ({ x: t.x - BREAK, paused: t.from - stretches[i].to }));
  return { places: plan.places, width: plan.width, ticks: ticks(stretches, start, scale), breaks };
}

// The steps placed at ``scale`` px a second: each stretch's x (set on it), each block's x and
// width, the plot's width and its timed part's (what the stretches take).
function placed(steps, spans, stretches, scale, typical) {
  let offset = 0;
  for (const stretch of stretches) {
    stretch.x = offset;
    offset += Math.max(stretch.to - stretch.from, typical) * scale + BREAK;
  }
  const at = (time) => {
    const stretch = stretches.filter((t) => t.from <= time).pop() || stretches[0];
    return stretch.x + (time - stretch.from) * scale;
  };
  const laneEnds = new Map();
  const places = steps.map((step, index) => {
    const key = laneKey(step.run, step.branch);
    const x = Math.max(at(step.started), (laneEnds.get(key) ?? -GAP) + GAP);
    const width = Math.max(MIN_BLOCK, (spans[index].to - step.started) * scale);
    laneEnds.set(key, x + width);
    return { x, width };
  });
  const timed = offset - BREAK;
  return { places, timed, width: Math.max(timed, ...places.map((p) => p.x + p.width)) };
}

// Round times since the first step (0.1 s, 0.2 s, 0.5 s, 1 s, ...) at least TICK_SPACING
// pixels apart, in each busy stretch.
function ticks(stretches, start, scale) {
  const wanted = TICK_SPACING / scale;
  const power = 10 ** Math.floor(Math.log10(wanted));
  const every = [1, 2, 5, 10].map((m) => m * power).find((t) => t >= wanted);
  const digits = Math.max(0, -Math.floor(Math.log10(every)));
  const made = [];
  for (const stretch of stretches) {
    const first = Math.ceil((stretch.from - start) / every - 1e-9) * every;
    for (let t = first; start + t <= stretch.to; t += every) {
      made.push({ x: stretch.x + (start + t - stretch.from) * scale, label: since(t, digits) });
    }
  }
  return made;
}

// "1.5 s", or "12 min 30 s" past a minute.
function since(seconds, digits) {
  if (seconds < 60) return seconds.toFixed(digits) + " s";
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${(seconds - minutes * 60).toFixed(Math.min(digits, 1))} s`;
}

// The time scale on top; each pause cut out is a break marked "⋯", its length its tooltip.
function axis(plan, left, width, height) {
  const { ticks } = plan;
  const group = svg("g", { class: "axis" });
  if (ticks === null) {
    group.append(svg("text", { x: left, y: AXIS - 6 }, "in the order taken (no durations recorded)"));
    return group;
  }
  let free = 0; // where the last label ended: a tick's label that would overlap it is left out
  for (const tick of ticks) {
    const x = left + tick.x;
    group.append(svg("line", { x1: x, x2: x, y1: AXIS - 4, y2: height }));
    const end = x + tick.label.length * TICK_CHAR + 8;
    if (x < free || end > width) continue; // nor one past the chart's edge
    group.append(svg("text", { x: x + 2, y: AXIS - 6, "aria-hidden": "true" }, tick.label));
    free = end;
  }
  for (const pause of plan.breaks) {
    const mark = svg("g", { class: "break" });
    const x = left + pause.x + BREAK / 2;
    mark.append(
      svg("title", {}, `nothing ran for ${since(pause.paused, 1)}`),
      svg("rect", { x: left + pause.x + 2, y: 0, width: BREAK - 4, height }),
      svg("text", { x: x - 5, y: AXIS - 6 }, "⋯"),
    );
    group.append(mark);
  }
  return group;
}

// The agents each lane's steps went through, each once, in the order first seen (a branch
// hands its turn on: the Coordinator invokes the Writer on the same branch).
function laneAgents(steps) {
  const agents = new Map();
  for (const step of steps) {
    const key = laneKey(step.run, step.branch);
    if (!agents.has(key)) agents.set(key, []);
    const seen = agents.get(key);
    if (step.agent && !seen.includes(step.agent)) seen.push(step.agent);
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

function latency(step) {
  if (step.duration !== null) return "latency " + seconds(step.duration);
  return step.cut_off ? "latency: cut off" : "latency: running";
}

function describe(step, ordinal, total) {
  const what = {
    "in-progress": "running",
    "cut-off": "cut off",
    code: "code step (returned a value)",
  }[kind(step)] || step.action + (step.targets.length ? " → " + step.targets.join(", ") : "");
  const parts = [
    `Step ${ordinal} of ${total} (record ${step.position}): ${step.agent || "unknown agent"}`,
    what,
    latency(step),
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

// The lanes' labels: a column of their own, which stays put while the steps scroll.
function labels(texts, width, height) {
  const column = svg("svg", { class: "timeline lanes", width: Math.ceil(width), height });
  texts.forEach((text, lane) => column.appendChild(laneLabel(text, lane, width)));
  return column;
}

// The steps' chart in ``box``'s scrolled part, which keeps its place across redraws; it
// follows the latest steps while it shows the end (and at first).
function scrolled(box, chart) {
  const before = box.querySelector(".timeline-scroll");
  const atEnd = !before || before.scrollLeft + before.clientWidth >= before.scrollWidth - 2;
  const kept = before ? before.scrollLeft : 0;
  const scroller = document.createElement("div");
  scroller.className = "timeline-scroll";
  scroller.appendChild(chart);
  return { scroller, place: () => (scroller.scrollLeft = atEnd ? scroller.scrollWidth : kept) };
}

// Draws ``view``'s branches and steps into ``box``: the lanes' labels, then the steps as wide
// as the rest of the box, or wider, scrolled; a click or Enter on a step calls onPick(position).
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
  let width = PAD;
  if (steps.length > 0) {
    const plan = layout(steps, Math.max(box.clientWidth - left - 2 * PAD - 4, 100));
    steps.forEach((numberedStep, index) => {
      const { step } = numberedStep;
      const at = plan.places[index];
      const y = laneY(step.run, step.branch) - BLOCK_HEIGHT / 2;
      const area = { x: PAD + at.x, y, width: at.width, height: BLOCK_HEIGHT };
      const key = laneKey(step.run, step.branch);
      if (!placed.has(key)) placed.set(key, []);
      placed.get(key).push({ position: step.position, box: area });
      blocks.push(...block(numberedStep, view.steps_total, area, onPick));
    });
    width = PAD + plan.width + PAD;
    chart.appendChild(axis(plan, PAD, width, height));
  }
  chart.setAttribute("width", String(Math.ceil(width)));
  chart.setAttribute("height", String(height));
  chart.append(...links(view.branches, placed, laneY), ...blocks);
  const { scroller, place } = scrolled(box, chart);
  box.replaceChildren(labels(texts, left, height), scroller);
  place();
}
