// A session's topology drawn by the vendored Mermaid (loaded only when a session is shown, so
// the list stays light), its active nodes highlighted. Mermaid is set to its strict security
// level without HTML labels: node names are text, and Mermaid sanitises what it draws.
"use strict";

let loading = null;

function mermaidLoaded() {
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = "/static/vendor/mermaid.min.js";
      script.onload = () => {
        window.mermaid.initialize({
          startOnLoad: false,
          securityLevel: "strict",
          htmlLabels: false,
          flowchart: { htmlLabels: false },
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
  marked = { nodeIds: graph.node_ids || {}, active };
  if (graph.mermaid !== drawn) {
    drawn = graph.mermaid;
    const mermaid = await mermaidLoaded();
    const source = document.createElement("pre");
    source.className = "mermaid";
    source.textContent = graph.mermaid;
    box.replaceChildren(source);
    await mermaid.run({ nodes: [source] });
  }
  highlight(box, marked.nodeIds, new Set(marked.active));
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
