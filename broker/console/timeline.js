// The timeline: the log newest first, filtered, live (a poll every 2 s),
// with counts per outcome over time.

import { api, decisionLink, el, fmtTime, identityLink, issuerLink, outcomeBadge, reasonsOf, state, svg } from "./lib.js";

const FILTERS = ["identity", "node", "grant", "outcome", "since", "until"];
const PAGE = 200;

function filterQuery(params) {
  const q = new URLSearchParams();
  for (const key of ["identity", "node", "grant", "outcome"]) {
    if (params.get(key)) q.set(key, params.get(key));
  }
  for (const [key, to] of [["since", "since_ms"], ["until", "until_ms"]]) {
    const value = params.get(key);
    if (value) {
      const ms = Date.parse(value.includes("T") || value.includes(" ") ? value : value + "T00:00:00Z");
      if (!Number.isNaN(ms)) q.set(to, String(ms));
    }
  }
  return q;
}

export async function timeline(target, _arg, params) {
  const form = el("form", { id: "filters", class: "filters" });
  for (const key of FILTERS) {
    form.append(
      el("label", {}, key, " ", el("input", {
        name: key, value: params.get(key) || "",
        placeholder: key === "since" || key === "until" ? "2026-12-07T10:00Z" : "",
      })),
    );
  }
  form.append(el("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const key of FILTERS) {
      const v = form.elements[key].value.trim();
      if (v) q.set(key, v);
    }
    location.hash = "#/timeline" + (q.toString() ? "?" + q : "");
  });
  const status = el("p", { id: "timeline-status", class: "status" });
  const shadowLine = el("p", { id: "shadow-status", class: "status", hidden: true });
  const chart = el("div", { id: "chart" });
  const rows = el("tbody", { id: "timeline-rows" });
  const more = el("button", { id: "older", type: "button" }, "Older records");
  target.append(
    el("h1", {}, "Timeline"),
    shadowLine,
    form,
    chart,
    status,
    el("table", { class: "records" },
      el("thead", {}, el("tr", {}, ["Time", "Outcome", "Kind", "Identity", "Grant", "Node / issuer", "Reasons", "Request"].map((h) => el("th", {}, h)))),
      rows),
    more,
  );

  const query = filterQuery(params);
  const shown = [];
  let before = null;
  let after = null;
  let partial = false;
  let scanLimited = false;
  let window = 0;

  const row = (r) =>
    el("tr", { "data-request": r.request_id, "data-seq": `${r.chain || ""}:${r.seq}` },
      el("td", { class: "time" }, fmtTime(r.time_ms)),
      el("td", {}, outcomeBadge(r.outcome)),
      el("td", {}, r.kind),
      el("td", { class: "id" }, identityLink(r.identity)),
      el("td", {}, r.grant || ""),
      el("td", { class: "id" }, issuerLink(r.node)),
      el("td", {}, reasonsOf(r).join(", ")),
      el("td", {}, decisionLink(r.request_id)));

  const redraw = () => {
    drawChart(chart, shown);
    let what = " — the whole matching log";
    if (scanLimited) {
      what = ` — partial: no index serves this filter, so each page searches at most ${window.toLocaleString()} records per chain; older matches may exist (load older records, or add an identity or outcome filter)`;
    } else if (partial) {
      what = " — partial: older records exist beyond this page (load older records, or narrow the filters)";
    }
    status.textContent = `${shown.length} records shown, newest first${what}. Live: new records appear every 2 s.`;
    status.dataset.partial = String(partial);
  };

  const load = async () => {
    const q = new URLSearchParams(query);
    q.set("limit", String(PAGE));
    if (before) q.set("before", before);
    const page = await api("GET", "/admin/v1/logs/recent?" + q);
    if (after === null) after = page.after;
    before = page.before;
    partial = page.more;
    scanLimited = page.scan_limited;
    window = page.scan_window;
    more.hidden = !page.more;
    for (const r of page.records) {
      shown.push(r);
      rows.append(row(r));
    }
    redraw();
  };

  const poll = async () => {
    if (!after) return;
    const q = new URLSearchParams(query);
    q.set("limit", "1000");
    q.set("after", after);
    const page = await api("GET", "/admin/v1/logs/recent?" + q, undefined, { poll: true });
    after = page.after;
    for (const r of page.records.slice().reverse()) {
      shown.unshift(r);
      rows.prepend(row(r));
    }
    if (page.records.length) redraw();
  };

  more.addEventListener("click", () => load().catch(() => {}));
  await load();
  await drawShadow(shadowLine).catch(() => {});
  state.timer = setInterval(() => {
    poll().catch(() => {});
    drawShadow(shadowLine).catch(() => {});
  }, 2000);
}

/** The shadow rule set's disagreements since this broker began watching it, if one is watched. */
async function drawShadow(target) {
  const s = await api("GET", "/admin/v1/shadow", undefined, { poll: true });
  target.hidden = !s.configured;
  if (!s.configured) return;
  const { decisions, disagreements } = s.since_start;
  const total = disagreements.reduce((n, d) => n + d.count, 0);
  const each = disagreements.map((d) => `${d.from} → ${d.to} ${d.count.toLocaleString()}`).join(", ");
  target.textContent =
    `Shadow rule set ${s.rule_set_hash.slice(0, 12)}: ${total.toLocaleString()} of ${decisions.toLocaleString()} live decisions since this broker began watching it disagree` +
    (each ? ` (${each})` : "") + ". It is never enforced; mintguard shadow report lists them.";
  target.dataset.disagreements = String(total);
}

const OUTCOMES = ["allow", "allow_reduced", "issued", "step_up", "deny", "suspend", "failed", "detection", "admin"];

/** Counts per outcome over time of the records shown, as stacked bars. */
export function drawChart(target, records) {
  target.replaceChildren();
  if (!records.length) return;
  const times = records.map((r) => r.time_ms);
  const lo = Math.min(...times);
  const hi = Math.max(...times) + 1;
  const buckets = 40;
  const width = (hi - lo) / buckets;
  const counts = Array.from({ length: buckets }, () => ({}));
  for (const r of records) {
    const i = Math.min(buckets - 1, Math.floor((r.time_ms - lo) / width));
    const key = OUTCOMES.includes(r.outcome) ? r.outcome : "other";
    counts[i][key] = (counts[i][key] || 0) + 1;
  }
  const max = Math.max(...counts.map((c) => Object.values(c).reduce((a, b) => a + b, 0)));
  const W = 800, H = 120, bw = W / buckets;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H + 20}`, class: "chart", role: "img", "aria-label": "records per outcome over time" });
  counts.forEach((c, i) => {
    let y = H;
    for (const key of [...OUTCOMES, "other"]) {
      const n = c[key] || 0;
      if (!n) continue;
      const h = (n / max) * H;
      y -= h;
      chart.append(svg("rect", { x: i * bw + 1, y, width: bw - 2, height: h, class: "o-" + key },
        svg("title", {}, `${key}: ${n}`)));
    }
  });
  chart.append(svg("text", { x: 0, y: H + 15, class: "axis" }, fmtTime(lo)));
  chart.append(svg("text", { x: W, y: H + 15, class: "axis", "text-anchor": "end" }, fmtTime(hi)));
  target.append(chart);
}
