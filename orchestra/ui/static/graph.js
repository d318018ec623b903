// A session's topology drawn by the vendored Mermaid (loaded only when a session is shown, so
// the list stays light), its active nodes highlighted. Mermaid is set to its strict security
// level without HTML labels: node names are text, and Mermaid sanitises what it draws; its
// configuration is fixed here, whatever directive the diagram text might carry.
"use strict";

let loading = null;

// Config keys a ``%%{init: ...}%%`` directive in the diagram text may not change: Mermaid's own
// list, every key set here, and the look a directive could restyle the page with. The server
// writes ``%`` in labels as an entity, so no directive should reach Mermaid; this holds if one did.
const SECURE = [
  "secure", "securityLevel", "startOnLoad", "maxTextSize", "suppressErrorRendering", "maxEdges",
  "theme", "themeVariables", "themeCSS", "darkMode", "fontFamily", "htmlLabels", "flowchart",
];

function mermaidLoaded() {
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = "/static/vendor/mermaid.min.js";
      script.onload = () => {
        window.mermaid.initialize({
          startOnLoad: false,
          securityLevel: "strict",
          theme: "default",
          htmlLabels: false,
          flowchart: { htmlLabels: false },
          secure: SECURE,
        });
        resolve(window.mermaid);
      };
      script.onerror = () => reject(new Error("the graph library could not be loaded"));
      document.head.appendChild(script);
    });
  }
  return loading;
}

let drawn = null; // the source of the diagram now in the page (or being drawn)
let marked = { nodeIds: {}, active: [] }; // the latest nodes to mark: a draw in flight uses them

// Draws ``graph.mermaid`` into ``box`` unless that very diagram is there already, then marks
// the nodes of the agents in ``active`` (the latest asked for, when updates came meanwhile).
export async function drawGraph(box, graph, active) {
  if (!graph) {
    // a session with no run yet has no topology to draw
    drawn = null;
    const none = document.createElement("p");
    none.className = "muted";
    none.textContent = "no run yet: no topology to draw";
    box.replaceChildren(none);
    return;
  }
  marked = { nodeIds: graph.node_ids || {}, active };
  if (graph.mermaid !== drawn) {
    drawn = graph.mermaid;
    const mermaid = await mermaidLoaded();
    const source = document.createElement("pre");
    source.className = "mermaid";
    source.textContent = graph.mermaid;
    box.replaceChildren(source);
    await mermaid.run({ nodes: [source] });
    showEntities(box);
  }
  highlight(box, marked.nodeIds, new Set(marked.active));
}

const ENTITY = /&(?:#(\d+)|(quot|amp|lt|gt));/g;
const NAMED = { quot: '"', amp: "&", lt: "<", gt: ">" };

// The server writes the characters Mermaid would read as syntax (quotes, ``%``, braces, ...)
// as Mermaid entities; without HTML labels Mermaid leaves them in the SVG's text as ``&#37;``,
// so they are turned back into the characters here, as text (one pass: ``&amp;#37;`` shows
// as ``&#37;``).
function showEntities(box) {
  for (const label of box.querySelectorAll("svg text")) {
    const walker = document.createTreeWalker(label, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      node.data = node.data.replace(ENTITY, (found, code, name) => {
        if (name) return NAMED[name];
        const point = Number(code);
        return point <= 0x10ffff ? String.fromCodePoint(point) : found;
      });
    }
  }
}

// Mermaid names a flowchart node's group "flowchart-<id>-<n>"; the ids are the safe ones
// the server made (n0, n1, ...), mapped from agent names by ``node_ids``.
function highlight(box, nodeIds, active) {
  const wanted = new Set([...active].map((name) => nodeIds[name]).filter(Boolean));
  for (const node of box.querySelectorAll("g.node")) {
    const found = /^(?:.*-)?flowchart-(.+)-\d+$/.exec(node.id);
    node.classList.toggle("active", found !== null && wanted.has(found[1]));
  }
}

export function forgetGraph() {
  drawn = null;
}
