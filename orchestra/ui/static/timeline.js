// A session's branch timeline, drawn as SVG: one lane per branch, its steps as blocks in the
// order they were taken, a line from a branch's step to the first step of each branch it
// forked (a fan-out) and from a finished branch's last step back to its parent's next one
// (convergence). Abandoned history (before a restore) is greyed. Text is set as text only.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLUMN = 26;
const LANE = 30;
const LABEL = 220;
const BLOCK = { width: 20, height: 18 };

function svg(tag, attributes) {
  const made = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    made.setAttribute(name, String(value));
  }
  return made;
}

function laneKey(run, branch) {
  return run + "/" + branch;
}

function centre(column, lane) {
  return { x: LABEL + column * COLUMN + BLOCK.width / 2, y: lane * LANE + LANE / 2 };
}

function link(from, to, className) {
  return svg("path", {
    d: `M${from.x},${from.y} C${from.x + COLUMN / 2},${from.y} ${to.x - COLUMN / 2},${to.y} ${to.x},${to.y}`,
    class: className,
  });
}

function laneLabel(branch, lane) {
  const text = svg("text", { x: 4, y: lane * LANE + LANE / 2 + 4, class: "lane-label" });
  text.textContent = `${branch.run} ${branch.id} ${branch.agent || ""} (${branch.state})`;
  return text;
}

function block(step, column, lane, onPick) {
  const { x, y } = centre(column, lane);
  const classes = ["step", step.action || "in-progress"];
  if (step.abandoned) classes.push("abandoned");
  if (step.error) classes.push("error");
  const rect = svg("rect", {
    x: x - BLOCK.width / 2,
    y: y - BLOCK.height / 2,
    width: BLOCK.width,
    height: BLOCK.height,
    rx: 3,
    class: classes.join(" "),
    "data-position": step.position,
    tabindex: 0,
  });
  const title = svg("title");
  title.textContent =
    `#${step.position} ${step.agent || ""}: ${step.action || "running"}` +
    (step.error ? ` (error: ${step.error})` : "") +
    ` ${step.tokens} tokens`;
  rect.appendChild(title);
  rect.addEventListener("click", () => onPick(step.position));
  rect.addEventListener("keydown", (event) => event.key === "Enter" && onPick(step.position));
  return rect;
}

// The lines of fan-outs and convergence, from where each branch's steps sit.
function links(branches, placed, lanes) {
  const drawn = [];
  for (const branch of branches) {
    const own = placed.get(laneKey(branch.run, branch.id)) || [];
    const parent = branch.parent ? placed.get(laneKey(branch.run, branch.parent)) || [] : null;
    if (!parent || own.length === 0) continue;
    const parentLane = lanes.get(laneKey(branch.run, branch.parent));
    const childLane = lanes.get(laneKey(branch.run, branch.id));
    const first = own[0];
    const before = parent.filter((column) => column < first).pop();
    const forkColumn = before === undefined ? first - 1 : before;
    drawn.push(link(centre(forkColumn, parentLane), centre(first, childLane), "fan-out"));
    const last = own[own.length - 1];
    const after = parent.find((column) => column > last);
    if (branch.state === "done" && after !== undefined) {
      drawn.push(link(centre(last, childLane), centre(after, parentLane), "converge"));
    }
  }
  return drawn;
}

// Draws ``view``'s branches and steps into ``box``; a click on a step calls onPick(position).
export function drawTimeline(box, view, onPick) {
  const lanes = new Map(view.branches.map((b, index) => [laneKey(b.run, b.id), index]));
  const steps = [...view.steps].sort((a, b) => a.position - b.position);
  const placed = new Map();
  const blocks = [];
  steps.forEach((step, column) => {
    const key = laneKey(step.run, step.branch);
    if (!lanes.has(key)) lanes.set(key, lanes.size);
    if (!placed.has(key)) placed.set(key, []);
    placed.get(key).push(column);
    blocks.push(block(step, column, lanes.get(key), onPick));
  });
  const width = LABEL + Math.max(steps.length, 1) * COLUMN + COLUMN;
  const chart = svg("svg", {
    width,
    height: Math.max(lanes.size, 1) * LANE,
    class: "timeline",
    role: "img",
    "aria-label": "branch timeline",
  });
  view.branches.forEach((branch, lane) => chart.appendChild(laneLabel(branch, lane)));
  chart.append(...links(view.branches, placed, lanes), ...blocks);
  box.replaceChildren(chart);
}
