// A node or CI issuer: the identities it may vouch for, its blast radius,
// its issuances in the last hour against its baseline, its live leases and
// recent records, and suspend / resume.

import { api, decisionLink, el, fmtNum, fmtTime, identityLink, kv, outcomeBadge, reasonsOf, suspendControl, svg, table } from "./lib.js";

/** The last hour's issuances beside the baseline's hourly mean, as two bars. */
function drawRate(rate) {
  const W = 420, H = 16, max = Math.max(rate.last_hour, rate.baseline_per_hour, 1);
  const bar = (y, value, cls) => svg("rect", { x: 150, y, width: (W - 160) * (value / max), height: H, class: cls });
  const ratio = rate.baseline_per_hour > 0 ? rate.last_hour / rate.baseline_per_hour : null;
  return el("figure", { class: "rate" },
    svg("svg", { viewBox: `0 0 ${W} 44`, width: W, height: 44, role: "img", "aria-label": "issuances in the last hour against the baseline" },
      svg("text", { x: 0, y: 12, class: "axis" }, `last hour: ${rate.last_hour}`),
      bar(0, rate.last_hour, ratio !== null && ratio > 3 ? "gauge-low" : "gauge-fill"),
      svg("text", { x: 0, y: 36, class: "axis" }, `baseline: ${fmtNum(rate.baseline_per_hour, 1)}/h`),
      bar(24, rate.baseline_per_hour, "gauge-back")),
    el("figcaption", { class: "status", id: "rate-summary" },
      ratio === null
        ? "No issuances in the 24 hours before the last hour: no baseline yet."
        : `${fmtNum(ratio, 2)}× its hourly mean over the ${rate.baseline_hours} hours before.`,
      rate.capped ? " (a count reached its bound: at least these many.)" : ""));
}

export async function issuerPage(target, id) {
  const [issuer, recent] = await Promise.all([
    api("GET", "/admin/v1/issuer?id=" + encodeURIComponent(id)),
    api("GET", "/admin/v1/logs/recent?limit=50&node=" + encodeURIComponent(id)),
  ]);
  target.append(el("h1", {}, issuer.kind === "node" ? "Node " : "CI issuer ", el("code", {}, id)));
  target.append(suspendControl(id, issuer.suspension, () => window.dispatchEvent(new HashChangeEvent("hashchange"))));

  target.append(el("h2", {}, "Blast radius"));
  const r = issuer.blast_radius || {};
  target.append(kv(issuer.kind === "node"
    ? [["highest ECI it may vouch for", fmtNum(r.max, 2)], ["sum of their ECI", fmtNum(r.sum, 2)],
      ["identities", r.identities], ["outside the computed ECI (counted at 100)", r.unknown]]
    : [["highest exposure of its policies' grants", fmtNum(r.max, 2)]]));

  target.append(el("h2", {}, "Issuance rate"));
  target.append(drawRate(issuer.rate));
  target.append(kv([["live leases", `${issuer.live_leases}${issuer.live_leases_capped ? "+" : ""}`]]));

  if (issuer.kind === "node") {
    target.append(el("h2", {}, `Identities it may vouch for (${issuer.identities.length})`));
    const sorted = issuer.identities.slice().sort((a, b) => (b.eci ?? 101) - (a.eci ?? 101));
    target.append(table(["identity", "ECI", "grants", "entry"],
      sorted.map((i) => [identityLink(i.spiffe_id), i.eci === null ? "unknown (100)" : fmtNum(i.eci, 2), i.grants.join(", "), i.entry]),
      { class: "vouches" }));
  } else {
    target.append(el("h2", {}, "CI policies"));
    target.append(table(["policy", "identity", "grants"],
      issuer.ci_policies.map((p) => [p.policy, p.identity, p.grants.join(", ")])));
  }

  target.append(el("h2", {}, "Recent records"));
  target.append(table(["time", "outcome", "identity", "grant", "reasons", "request"],
    recent.records.map((x) => [fmtTime(x.time_ms), outcomeBadge(x.outcome), identityLink(x.identity), x.grant || "",
      reasonsOf(x).join(", "), decisionLink(x.request_id)])));
  if (recent.scan_limited) {
    target.append(el("p", { class: "status" }, `partial: searched the newest ${recent.scan_window.toLocaleString()} records per chain`));
  } else if (recent.more) {
    target.append(el("p", { class: "status" }, "partial: the newest 50; the timeline filtered by this issuer has the rest"));
  }
  target.append(el("p", {}, el("a", { href: "#/timeline?node=" + encodeURIComponent(id) }, "Its records on the timeline")));
}
