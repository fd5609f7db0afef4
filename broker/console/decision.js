// A decision: everything `mintguard explain` shows, laid out — inputs,
// signals, trust against min_trust, ECI factor by factor, budgets, the
// Cedar policies that fired, the record's chain position — and replay.

import { api, el, errorLine, fmtNum, fmtTime, identityLink, issuerLink, kv, outcomeBadge, table } from "./lib.js";

/** The structural ECI's weights (examples/graphs/README.md). */
const FACTOR_WEIGHTS = [["access", 0.30], ["critical", 0.25], ["sensitivity", 0.20], ["lateral", 0.15], ["privilege", 0.10]];

function eciSection(d, input) {
  const eci = input.eci || {};
  const out = [el("h3", {}, "ECI")];
  out.push(kv([
    ["ECI", d.eci.eci],
    ["ECI raw (×100, uncapped)", d.eci.eci_raw],
    ["grant exposure", d.eci.grant_exposure],
    ["issuer blast radius", d.eci.issuer_blast_radius],
    ["identity effective (input)", eci.identity_effective],
  ]));
  const x = eci.explained;
  if (!x) {
    out.push(el("p", { class: "status" }, "No factor breakdown: the identity was outside the computed ECI (counted at 300), or the record predates it."));
    return out;
  }
  out.push(table(["factor", "value (0–1)", "weight", "points (100 × weight × value)"],
    FACTOR_WEIGHTS.map(([name, w]) => [name, fmtNum(x.factors[name], 4), w, fmtNum(100 * w * x.factors[name], 2)]),
    { class: "factors" }));
  out.push(kv([
    ["PPR", fmtNum(x.ppr, 6)],
    ["structural ECI", fmtNum(x.structural, 3)],
    ["hygiene modifier", fmtNum(x.hygiene_modifier, 3)],
    ["effective (structural × hygiene)", fmtNum(x.structural * x.hygiene_modifier, 3)],
  ]));
  return out;
}

export async function decisionPage(target, requestId) {
  const explained = await api("GET", "/admin/v1/explain/" + encodeURIComponent(requestId));
  target.append(el("h1", {}, "Decision ", el("code", {}, requestId)));
  for (const f of explained.findings || []) {
    target.append(el("p", { class: "error", role: "alert" }, `record ${f.seq}: ${f.finding}: ${f.message}`));
  }
  for (const entry of explained.records) {
    const body = entry.body || {};
    const section = el("section", { class: "record", "data-kind": entry.kind });
    section.append(el("h2", {}, `${entry.kind} `, outcomeBadge(entry.outcome)));
    section.append(kv([
      ["time", fmtTime(entry.time_ms)],
      ["chain position", `${entry.chain || "(unnamed)"}:${entry.seq}`],
      ["hash", entry.hash],
      ["previous hash", entry.prev_hash],
      ["identity", identityLink(entry.identity)],
      ["grant", entry.grant],
      ["node / issuer", issuerLink(entry.node)],
    ]));
    const d = body.decision;
    const input = body.input;
    if (d && input) {
      section.append(el("h3", {}, "Outcome"));
      section.append(kv([
        ["outcome", d.outcome],
        ["reasons", (d.reasons || []).join(", ")],
        ["requested TTL (s)", d.requested_ttl_seconds],
        ["minted TTL (s)", d.ttl_seconds],
        ["reduced", String(d.reduced)],
        ["rule set", d.rule_set_hash],
      ]));
      section.append(el("h3", {}, "Trust"));
      section.append(kv([
        ["trust score", d.trust.score],
        ["min_trust", d.min_trust],
        ["verdict", d.trust.score >= d.min_trust ? "meets min_trust" : "below min_trust"],
      ]));
      section.append(table(["signal", "observed", "value", "weight", "share", "age (s)", "source", "status"],
        (d.trust.signals || []).map((s) => [s.kind, s.observed, s.value, s.weight,
          typeof s.share === "number" ? s.share.toFixed(3) : s.share, s.age_seconds, s.source, s.status])));
      section.append(...eciSection(d, input));
      section.append(el("h3", {}, "Budgets"));
      section.append(table(["budget", "before (milli)", "cost", "after (milli)", "sufficient"],
        (d.budgets || []).map((b) => {
          const spent = (d.spend || []).find((s) => s.key === b.key);
          const after = spent ? b.available_milli - spent.cost * 1000 : b.available_milli;
          return [b.key, b.available_milli, b.cost, after, String(b.sufficient)];
        })));
      section.append(el("h3", {}, "Cedar policies that fired"));
      section.append(table(["@id", "outcome"], (d.rules || []).map((r) => [r.id, r.outcome])));
      if ((d.rule_errors || []).length) {
        section.append(el("p", { class: "error" }, "rule errors: " + d.rule_errors.join("; ")));
      }
    }
    section.append(el("details", {}, el("summary", {}, "The record as logged"), el("pre", {}, JSON.stringify(entry, null, 2))));
    target.append(section);
  }
  if ((explained.detections || []).length) {
    target.append(el("h2", {}, "Detections this decision read"));
    target.append(table(["time", "request", "detail"], explained.detections.map((x) => [
      fmtTime(x.time_ms), x.request_id, JSON.stringify(x.body && x.body.detection || x.body)])));
  }
  const result = el("pre", { id: "replay-result" });
  const replay = el("button", { id: "replay", type: "button" }, "Replay this decision");
  replay.addEventListener("click", async () => {
    result.textContent = "replaying…";
    try {
      const r = await api("POST", "/admin/v1/replay?request_id=" + encodeURIComponent(requestId));
      result.textContent = r.differences_total === 0
        ? `replay: ${r.replayed} decision(s) re-decided under their recorded inputs and rule sets; all identical`
        : `replay: ${r.differences_total} difference(s)\n` + JSON.stringify(r.differences, null, 2);
    } catch (e) {
      result.replaceChildren(errorLine(e));
    }
  });
  target.append(el("h2", {}, "Replay"), replay, result);
}
