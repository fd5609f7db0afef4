// An identity: its entries, suspension, budgets, trust and ECI over time,
// its exposure-graph neighbourhood, live leases (revocable by an operator),
// signals and detections.

import {
  api, decisionLink, el, errorLine, fmtNum, fmtRefill, fmtTime, gauge, issuerLink, mayOperate, suspendControl, svg, table,
} from "./lib.js";
import { drawNeighbourhood } from "./graph.js";

/** Trust score and ECI of the identity's decisions over time, as lines. */
function drawHistory(records) {
  const points = records
    .filter((r) => r.body && r.body.decision)
    .map((r) => ({ t: r.time_ms, trust: r.body.decision.trust.score, eci: r.body.decision.eci.eci }))
    .reverse();
  if (points.length < 1) return el("p", { class: "status" }, "no decisions yet");
  const W = 800, H = 120;
  const lo = points[0].t, hi = Math.max(points[points.length - 1].t, lo + 1);
  const x = (t) => ((t - lo) / (hi - lo)) * (W - 10) + 5;
  const y = (v) => H - (Math.max(0, Math.min(100, v)) / 100) * H;
  const line = (key) => points.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" ");
  return svg("svg", { viewBox: `0 0 ${W} ${H + 20}`, class: "chart", role: "img", "aria-label": "trust score and ECI over time" },
    svg("path", { d: line("trust"), class: "line-trust" }),
    svg("path", { d: line("eci"), class: "line-eci" }),
    svg("text", { x: 0, y: H + 15, class: "axis" }, `trust (green) and ECI (red), 0–100, ${points.length} decisions from ${fmtTime(lo)}`));
}

function revokeButton(lease) {
  const button = el("button", { type: "button", class: "revoke", "data-lease": lease.id }, "Revoke");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await api("POST", `/admin/v1/leases/${encodeURIComponent(lease.id)}/revoke`);
      button.replaceWith(el("span", { class: "revoked" }, "revoked"));
    } catch (e) {
      button.disabled = false;
      button.after(errorLine(e));
    }
  });
  return button;
}

export async function identityPage(target, identity) {
  target.append(el("h1", {}, "Identity ", el("code", {}, identity)));
  const [entries, leases, signals, recent, detections, suspension, graph] = await Promise.all([
    api("GET", "/admin/v1/entries"),
    api("GET", "/admin/v1/leases?limit=200&identity=" + encodeURIComponent(identity)),
    api("GET", "/admin/v1/signals?subject=" + encodeURIComponent(identity)),
    api("GET", "/admin/v1/logs/recent?limit=200&identity=" + encodeURIComponent(identity)),
    api("GET", "/admin/v1/logs/recent?limit=50&outcome=detection&identity=" + encodeURIComponent(identity)),
    api("GET", "/admin/v1/suspension?subject=" + encodeURIComponent(identity)),
    api("GET", "/admin/v1/graph?identity=" + encodeURIComponent(identity)).catch((e) => {
      if (e.status === 401) throw e;
      return { error: e };
    }),
  ]);
  const mine = entries.filter((e) => e.spiffe_id === identity);
  target.append(el("h2", {}, "Entries"));
  target.append(table(["entry", "parent", "selectors", "grants"],
    mine.map((e) => [e.id, issuerLink(e.parent), e.selectors.join(" "), e.grants.join(", ")])));

  target.append(el("h2", {}, "Suspension"));
  target.append(suspendControl(identity, suspension, () => route()));

  target.append(el("h2", {}, "Budgets"));
  const grants = [...new Set(mine.flatMap((e) => e.grants))];
  const budgets = el("div", { id: "budgets" });
  for (const grant of grants) {
    try {
      const b = await api("GET", `/admin/v1/budget?identity=${encodeURIComponent(identity)}&grant=${encodeURIComponent(grant)}`);
      budgets.append(el("p", { "data-grant": grant }, `${grant}: `, gauge(b.available, b.capacity, `${b.available} of ${b.capacity} ${fmtRefill(b.per)}`)));
    } catch (e) {
      if (e.status === 401) throw e;
      budgets.append(el("p", { "data-grant": grant }, `${grant}: no budget (${e.code})`));
    }
  }
  target.append(budgets);

  target.append(el("h2", {}, "Trust and ECI over time"));
  target.append(drawHistory(recent.records));
  if (recent.more) target.append(el("p", { class: "status" }, "partial: the newest 200 records"));

  target.append(el("h2", {}, "Exposure"));
  if (graph.error) {
    target.append(el("p", { class: "status" }, `no exposure graph for it (${graph.error.code})`));
  } else {
    const n = graph.eci || {};
    const f = n.factors || {};
    target.append(el("p", { id: "eci-summary" },
      `ECI ${fmtNum(n.eci, 2)} (structural ${fmtNum(n.structural_eci, 2)} × hygiene ${fmtNum(n.hygiene_modifier, 3)}); factors: `,
      ["access", "critical", "sensitivity", "lateral", "privilege"].map((k) => `${k} ${fmtNum(f[k], 3)}`).join(", ")));
    target.append(drawNeighbourhood(graph));
  }

  target.append(el("h2", {}, "Live leases"));
  const live = leases.filter((l) => l.live);
  const rows = live.map((l) => {
    const cells = [l.id, l.grant, l.kind, fmtTime(l.issued_at_ms), fmtTime(l.expires_at_ms)];
    if (mayOperate()) cells.push(revokeButton(l));
    return cells;
  });
  target.append(table(["lease", "grant", "kind", "issued", "expires", mayOperate() ? "" : null].filter((h) => h !== null), rows));

  target.append(el("h2", {}, "Signals"));
  target.append(table(["kind", "value", "source", "observed"],
    signals.map((x) => [x.kind, x.value, x.source, fmtTime(x.observed_at_ms)])));

  target.append(el("h2", {}, "Detections"));
  target.append(table(["time", "score", "detectors", "response", "triggered by"], detections.records.map((r) => [
    fmtTime(r.time_ms), r.body.score, (r.body.detectors || []).map((d) => `${d.detector} ${d.score}`).join(", "),
    r.body.response, decisionLink(r.body.triggered_by)])));
}

/** Re-renders the current page (after a change it made). */
function route() {
  window.dispatchEvent(new HashChangeEvent("hashchange"));
}
