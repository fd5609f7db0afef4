// Mintguard's operator console: a page over the admin API. It holds no
// credential of its own: the session cookie (HttpOnly) authenticates each
// call, and every state-changing call carries the session's CSRF token in
// `X-Mintguard-CSRF`. The server checks each call's role exactly as for the
// CLI; this page only hides what the role cannot do.
"use strict";

const state = { session: null, timer: null };

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text: never HTML). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children.flat()) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "http_" + status;
    this.reasons = error.reasons || [];
  }
}

/**
 * Calls the admin API with the session; a lost session returns to sign-in.
 * A background poll says so: it does not keep an unattended page signed in.
 */
async function api(method, path, body, { poll = false } = {}) {
  const headers = { Accept: "application/json" };
  if (poll) headers["X-Mintguard-Poll"] = "1";
  if (method !== "GET" && state.session) headers["X-Mintguard-CSRF"] = state.session.csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch (_) {
    parsed = null;
  }
  if (res.status === 401) {
    state.session = null;
    showSignIn("Your session ended (signed out, or idle too long). Sign in again.");
    throw new ApiError(401, parsed);
  }
  if (!res.ok) throw new ApiError(res.status, parsed);
  return parsed;
}

function fmtTime(ms) {
  if (typeof ms !== "number") return "";
  return new Date(ms).toISOString().replace("T", " ").replace("Z", " UTC");
}

/** A budget's refill as the config writes it: `per 1h`, or `never refilled`. */
function fmtRefill(per) {
  const secs = per && per.every && per.every.seconds;
  if (typeof secs !== "number") return per === "never" ? "never refilled" : JSON.stringify(per);
  if (secs % 3600 === 0) return `per ${secs / 3600}h`;
  if (secs % 60 === 0) return `per ${secs / 60}m`;
  return `per ${secs}s`;
}

function outcomeBadge(outcome) {
  const o = outcome || "—";
  return el("span", { class: "badge o-" + o.replace(/[^a-z_]/g, "") }, o);
}

function reasonsOf(record) {
  const body = record.body || {};
  const decision = body.decision || {};
  return decision.reasons || body.reasons || (body.error && [body.error]) || [];
}

function showSignIn(message) {
  clearInterval(state.timer);
  $("nav").hidden = true;
  $("page").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message || "";
  $("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  const res = await fetch("/ui/session", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(token ? { token } : {}),
  });
  $("token").value = "";
  if (!res.ok) {
    let message = `sign-in refused (HTTP ${res.status})`;
    try {
      message = (await res.json()).error.message;
    } catch (_) {}
    $("sign-in-error").textContent = message;
    return;
  }
  state.session = await res.json();
  started();
}

async function signOut() {
  try {
    await api("DELETE", "/ui/session");
  } catch (_) {}
  state.session = null;
  showSignIn("Signed out.");
}

function started() {
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("page").hidden = false;
  $("who").textContent = `${state.session.name} (${state.session.role})`;
  route();
}

function parseHash() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query] = hash.split("?");
  const parts = path.split("/").map(decodeURIComponent);
  return { page: parts[0] || "timeline", arg: parts.slice(1).join("/"), params: new URLSearchParams(query || "") };
}

function route() {
  if (!state.session) return;
  clearInterval(state.timer);
  const { page, arg, params } = parseHash();
  const target = $("page");
  target.replaceChildren();
  const render = { timeline: timeline, decision: decisionPage, identity: identityPage, approvals: approvalsPage }[page] || timeline;
  render(target, arg, params).catch((e) => {
    if (e.status !== 401) target.append(el("p", { class: "error", role: "alert" }, `${e.code}: ${e.message}`));
  });
}

// ---- Timeline -------------------------------------------------------------

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

async function timeline(target, _arg, params) {
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
  const chart = el("div", { id: "chart" });
  const rows = el("tbody", { id: "timeline-rows" });
  const more = el("button", { id: "older", type: "button" }, "Older records");
  target.append(
    el("h1", {}, "Timeline"),
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

  const row = (r) =>
    el("tr", { "data-request": r.request_id, "data-seq": `${r.chain || ""}:${r.seq}` },
      el("td", { class: "time" }, fmtTime(r.time_ms)),
      el("td", {}, outcomeBadge(r.outcome)),
      el("td", {}, r.kind),
      el("td", { class: "id" }, r.identity ? el("a", { href: "#/identity/" + encodeURIComponent(r.identity) }, r.identity) : ""),
      el("td", {}, r.grant || ""),
      el("td", { class: "id" }, r.node || ""),
      el("td", {}, reasonsOf(r).join(", ")),
      el("td", {}, r.request_id ? el("a", { href: "#/decision/" + encodeURIComponent(r.request_id) }, r.request_id) : ""));

  const redraw = () => {
    drawChart(chart, shown);
    status.textContent = `${shown.length} records shown, newest first` +
      (partial ? " — partial: older records exist beyond this page (load more, or narrow the filters)" : " — the whole matching log") +
      ". Live: new records appear every 2 s.";
  };

  const load = async () => {
    const q = new URLSearchParams(query);
    q.set("limit", String(PAGE));
    if (before) q.set("before", before);
    const page = await api("GET", "/admin/v1/logs/recent?" + q);
    if (after === null) after = page.after;
    before = page.before;
    partial = page.more;
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
  state.timer = setInterval(() => poll().catch(() => {}), 2000);
}

const OUTCOMES = ["allow", "allow_reduced", "issued", "step_up", "deny", "suspend", "failed", "detection", "admin"];

/** Counts per outcome over time of the records shown, as stacked bars. */
function drawChart(target, records) {
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

// ---- Decision -------------------------------------------------------------

function table(headers, rows) {
  if (!rows.length) return el("p", { class: "status" }, "none");
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c ?? ""))))));
}

function kv(pairs) {
  return el("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-field": k }, v ?? "")]));
}

async function decisionPage(target, requestId) {
  const explained = await api("GET", "/admin/v1/explain/" + encodeURIComponent(requestId));
  target.append(el("h1", {}, "Decision ", el("code", {}, requestId)));
  for (const f of explained.findings || []) {
    target.append(el("p", { class: "error", role: "alert" }, `record ${f.seq}: ${f.finding}: ${f.message}`));
  }
  for (const record of explained.records) {
    const entry = record;
    const body = entry.body || {};
    const section = el("section", { class: "record", "data-kind": entry.kind });
    section.append(el("h2", {}, `${entry.kind} `, outcomeBadge(entry.outcome)));
    section.append(kv([
      ["time", fmtTime(entry.time_ms)],
      ["chain position", `${entry.chain || "(unnamed)"}:${entry.seq}`],
      ["hash", entry.hash],
      ["previous hash", entry.prev_hash],
      ["identity", entry.identity],
      ["grant", entry.grant],
      ["node / issuer", entry.node],
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
      section.append(el("h3", {}, "ECI"));
      section.append(kv([
        ["ECI", d.eci.eci],
        ["ECI raw (×100, uncapped)", d.eci.eci_raw],
        ["grant exposure", d.eci.grant_exposure],
        ["issuer blast radius", d.eci.issuer_blast_radius],
        ["identity effective (input)", input.eci && input.eci.identity_effective],
      ]));
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
      if (e.status !== 401) result.textContent = `${e.code}: ${e.message}`;
    }
  });
  target.append(el("h2", {}, "Replay"), replay, result);
}

// ---- Identity ---------------------------------------------------------------

const ROLE_RANK = { viewer: 0, approver: 0, operator: 1, admin: 2 };
const mayOperate = () => state.session && ROLE_RANK[state.session.role] >= 1;
const mayApprove = () => state.session && ["approver", "admin"].includes(state.session.role);

/** A gauge: `value` of `max` as a bar, with the numbers. */
function gauge(value, max, label) {
  const W = 240, H = 14;
  const share = max > 0 ? Math.max(0, Math.min(1, value / max)) : 0;
  return el("span", { class: "gauge" },
    svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": label },
      svg("rect", { x: 0, y: 0, width: W, height: H, class: "gauge-back" }),
      svg("rect", { x: 0, y: 0, width: W * share, height: H, class: share < 0.2 ? "gauge-low" : "gauge-fill" })),
    ` ${label}`);
}

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

async function identityPage(target, identity) {
  target.append(el("h1", {}, "Identity ", el("code", {}, identity)));
  const [entries, leases, signals, recent, detections] = await Promise.all([
    api("GET", "/admin/v1/entries"),
    api("GET", "/admin/v1/leases?limit=200&identity=" + encodeURIComponent(identity)),
    api("GET", "/admin/v1/signals?subject=" + encodeURIComponent(identity)),
    api("GET", "/admin/v1/logs/recent?limit=200&identity=" + encodeURIComponent(identity)),
    api("GET", "/admin/v1/logs/recent?limit=50&outcome=detection&identity=" + encodeURIComponent(identity)),
  ]);
  const mine = entries.filter((e) => e.spiffe_id === identity);
  target.append(el("h2", {}, "Entries"));
  target.append(table(["entry", "parent", "selectors", "grants"],
    mine.map((e) => [e.id, e.parent, e.selectors.join(" "), e.grants.join(", ")])));

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

  target.append(el("h2", {}, "Live leases"));
  const live = leases.filter((l) => l.live);
  const rows = live.map((l) => {
    const cells = [l.id, l.grant, l.kind, fmtTime(l.issued_at_ms), fmtTime(l.expires_at_ms)];
    if (mayOperate()) {
      const button = el("button", { type: "button", class: "revoke", "data-lease": l.id }, "Revoke");
      button.addEventListener("click", async () => {
        button.disabled = true;
        try {
          await api("POST", `/admin/v1/leases/${encodeURIComponent(l.id)}/revoke`);
          button.replaceWith(el("span", { class: "revoked" }, "revoked"));
        } catch (e) {
          button.disabled = false;
          if (e.status !== 401) button.after(el("span", { class: "error" }, ` ${e.code}: ${e.message}`));
        }
      });
      cells.push(button);
    }
    return cells;
  });
  target.append(table(["lease", "grant", "kind", "issued", "expires", mayOperate() ? "" : null].filter((h) => h !== null), rows));

  target.append(el("h2", {}, "Signals"));
  target.append(table(["kind", "value", "source", "observed"],
    signals.map((x) => [x.kind, x.value, x.source, fmtTime((x.observed_at || 0) * 1000)])));

  target.append(el("h2", {}, "Detections"));
  target.append(table(["time", "request", "detail"], detections.records.map((r) => [
    fmtTime(r.time_ms), r.request_id, JSON.stringify(r.body.detection || r.body)])));
}

// ---- Approvals --------------------------------------------------------------

async function approvalsPage(target) {
  target.append(el("h1", {}, "Approvals"));
  const pending = await api("GET", "/admin/v1/approvals");
  if (!mayApprove()) target.append(el("p", { class: "status" }, "Your role may see requests held for approval, not decide them."));
  const rows = pending.map((a) => {
    const cells = [a.approval_id, a.identity, a.grant, a.purpose || "", a.requested_by, fmtTime(a.created_at_ms), a.state];
    if (mayApprove()) {
      const approve = el("button", { type: "button", class: "approve", "data-approval": a.approval_id }, "Approve");
      const reason = el("input", { placeholder: "reason to reject", "aria-label": "reason" });
      const reject = el("button", { type: "button", class: "reject" }, "Reject");
      const result = el("span", { class: "result" });
      const act = (verdict, body) => async () => {
        try {
          await api("POST", `/admin/v1/approvals/${encodeURIComponent(a.approval_id)}/${verdict}`, body);
          result.textContent = verdict === "approve" ? "approved" : "rejected";
          result.className = "result done";
        } catch (e) {
          if (e.status !== 401) {
            result.textContent = `${e.code}: ${e.message}`;
            result.className = "result error";
          }
        }
      };
      approve.addEventListener("click", act("approve", {}));
      reject.addEventListener("click", () => act("reject", { reason: reason.value || "rejected in the console" })());
      cells.push(el("span", {}, approve, " ", reason, " ", reject, " ", result));
    }
    return cells;
  });
  target.append(table(["approval", "identity", "grant", "purpose", "requested by", "since", "state", ""], rows));
}

async function boot() {
  $("sign-in-form").addEventListener("submit", (e) => signIn(e).catch((err) => {
    $("sign-in-error").textContent = String(err);
  }));
  $("sign-out").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", route);
  const res = await fetch("/ui/session", { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (res.ok) {
    state.session = await res.json();
    started();
  } else {
    showSignIn("");
  }
}

document.addEventListener("DOMContentLoaded", () => boot().catch((e) => showSignIn(String(e))));
