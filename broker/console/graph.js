// An identity's exposure-graph neighbourhood as SVG: columns by distance
// from the identity, the paths to crown jewels (what makes its ECI) drawn
// strong, the rest faint.

import { el, fmtNum, svg } from "./lib.js";

const COLUMN = 210, ROW = 30, PAD = 14;

function shortName(id) {
  return id.length > 30 ? "…" + id.slice(-29) : id;
}

export function drawNeighbourhood(graph) {
  const hood = graph.neighbourhood;
  const columns = [];
  for (const [i, n] of hood.nodes.entries()) {
    (columns[n.depth] = columns[n.depth] || []).push(i);
  }
  // Nodes on a path first in each column, so the paths read straight.
  for (const column of columns) {
    column.sort((a, b) => Number(hood.nodes[b].on_path) - Number(hood.nodes[a].on_path));
  }
  const at = new Map();
  columns.forEach((column, depth) => column.forEach((i, row) => {
    at.set(i, { x: PAD + depth * COLUMN, y: PAD + row * ROW });
  }));
  const W = PAD * 2 + Math.max(1, columns.length) * COLUMN;
  const H = PAD * 2 + Math.max(...columns.map((c) => c.length)) * ROW;
  const drawing = svg("svg", {
    viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "graph", role: "img",
    "aria-label": `exposure graph neighbourhood of ${graph.identity}`,
  });
  for (const e of hood.edges) {
    const a = at.get(e.from), b = at.get(e.to);
    const strong = hood.nodes[e.from].on_path && hood.nodes[e.to].on_path;
    const x1 = a.x + COLUMN - 40, y1 = a.y + 9, x2 = b.x, y2 = b.y + 9;
    const mid = (x1 + x2) / 2;
    drawing.append(svg("path", {
      d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`,
      class: "edge" + (strong ? " on-path" : ""),
    }, svg("title", {}, `${hood.nodes[e.from].id} —${e.kind}${e.access ? " (" + e.access + ")" : ""}→ ${hood.nodes[e.to].id}, weight ${fmtNum(e.weight)}`)));
  }
  hood.nodes.forEach((n, i) => {
    const p = at.get(i);
    const cls = ["node", "kind-" + n.kind, n.on_path ? "on-path" : "", n.crown_jewel ? "crown-jewel" : ""].join(" ");
    const detail = [n.id, n.kind, n.crown_jewel ? "crown jewel" : "", n.sensitivity.length ? "sensitivity: " + n.sensitivity.join(", ") : "",
      typeof n.eci === "number" ? "ECI " + fmtNum(n.eci, 1) : ""].filter(Boolean).join(" · ");
    drawing.append(svg("g", { class: cls, "data-node": n.id },
      svg("rect", { x: p.x, y: p.y, width: COLUMN - 40, height: 18, rx: 4 }),
      svg("text", { x: p.x + 5, y: p.y + 13 }, (n.crown_jewel ? "★ " : "") + shortName(n.id)),
      svg("title", {}, detail)));
  });
  const onPath = hood.nodes.filter((n) => n.on_path).length;
  return el("figure", { class: "graph" },
    el("div", { class: "graph-scroll" }, drawing),
    el("figcaption", { class: "status" },
      `${hood.nodes.length} nodes within ${graph.depth} edges, ${onPath} on a path to a crown jewel (strong); ★ crown jewel.`,
      hood.truncated ? ` Partial: the neighbourhood is bounded at ${graph.depth} edges and ${graph.max_nodes} nodes.` : ""));
}
