// What every page of the console shares: building elements (text is never
// parsed as HTML), calling the admin API with the session, formatting, and
// the role checks that only hide what the server would refuse anyway.

export const state = { session: null, timer: null };

export const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text: never HTML). */
export function el(tag, attrs, ...children) {
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
/** An SVG element, likewise. */
export function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children.flat()) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "http_" + status;
    this.reasons = error.reasons || [];
  }
}

/** Shows the sign-in form (a lost session, a sign-out). */
export function showSignIn(message) {
  clearInterval(state.timer);
  $("nav").hidden = true;
  $("page").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message || "";
  $("token").focus();
}

/**
 * Calls the admin API with the session; a lost session returns to sign-in.
 * A background poll says so: it does not keep an unattended page signed in.
 */
export async function api(method, path, body, { poll = false } = {}) {
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

/** An API error on the page (a lost session has already left it). */
export function errorLine(e) {
  return e.status === 401 ? "" : el("span", { class: "error", role: "alert" }, ` ${e.code}: ${e.message}`);
}

export function fmtTime(ms) {
  if (typeof ms !== "number") return "";
  return new Date(ms).toISOString().replace("T", " ").replace("Z", " UTC");
}

/** A number as the API gave it, to at most `digits` decimals. */
export function fmtNum(x, digits = 3) {
  return typeof x === "number" ? String(Number(x.toFixed(digits))) : x ?? "";
}

/** A budget's refill as the config writes it: `per 1h`, or `never refilled`. */
export function fmtRefill(per) {
  const secs = per && per.every && per.every.seconds;
  if (typeof secs !== "number") return per === "never" ? "never refilled" : JSON.stringify(per);
  if (secs % 3600 === 0) return `per ${secs / 3600}h`;
  if (secs % 60 === 0) return `per ${secs / 60}m`;
  return `per ${secs}s`;
}

export function outcomeBadge(outcome) {
  const o = outcome || "—";
  return el("span", { class: "badge o-" + o.replace(/[^a-z_]/g, "") }, o);
}

export function reasonsOf(record) {
  const body = record.body || {};
  const decision = body.decision || {};
  return decision.reasons || body.reasons || (body.error && [body.error]) || [];
}

export function table(headers, rows, attrs) {
  if (!rows.length) return el("p", { class: "status" }, "none");
  return el("table", attrs || {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c ?? ""))))));
}

export function kv(pairs) {
  return el("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-field": k }, v ?? "")]));
}

/** A gauge: `value` of `max` as a bar, with the numbers. */
export function gauge(value, max, label) {
  const W = 240, H = 14;
  const share = max > 0 ? Math.max(0, Math.min(1, value / max)) : 0;
  return el("span", { class: "gauge" },
    svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": label },
      svg("rect", { x: 0, y: 0, width: W, height: H, class: "gauge-back" }),
      svg("rect", { x: 0, y: 0, width: W * share, height: H, class: share < 0.2 ? "gauge-low" : "gauge-fill" })),
    ` ${label}`);
}

/** Links to the pages of an identity, and of a node or CI issuer. */
export const identityLink = (id) => id ? el("a", { href: "#/identity/" + encodeURIComponent(id) }, id) : "";
export const issuerLink = (id) => id ? el("a", { href: "#/issuer/" + encodeURIComponent(id) }, id) : "";
export const decisionLink = (id) => id ? el("a", { href: "#/decision/" + encodeURIComponent(id) }, id) : "";

const ROLE_RANK = { viewer: 0, approver: 0, operator: 1, admin: 2 };
export const mayOperate = () => state.session && ROLE_RANK[state.session.role] >= 1;
export const mayApprove = () => state.session && ["approver", "admin"].includes(state.session.role);
export const mayReview = () => state.session && ["operator", "approver", "admin"].includes(state.session.role);

/**
 * Suspend / resume of an identity or issuer (operator role): the suspension
 * as it stands, and the button that changes it, with a required reason.
 */
export function suspendControl(subject, suspension, onChange) {
  const box = el("div", { class: "suspension", "data-subject": subject });
  box.append(suspension
    ? el("p", { class: "error", "data-state": "suspended" },
      `Suspended ${fmtTime(suspension.at_ms)} by ${suspension.by}: ${suspension.reason}`)
    : el("p", { class: "status", "data-state": "active" }, "Not suspended."));
  if (!mayOperate()) return box;
  const result = el("span", { class: "result" });
  if (suspension) {
    const resume = el("button", { type: "button", class: "resume" }, "Resume");
    resume.addEventListener("click", async () => {
      resume.disabled = true;
      try {
        await api("POST", "/admin/v1/resume", { subject });
        onChange();
      } catch (e) {
        resume.disabled = false;
        result.replaceChildren(errorLine(e));
      }
    });
    box.append(resume, result);
  } else {
    const reason = el("input", { placeholder: "reason (recorded)", "aria-label": "reason to suspend", class: "reason" });
    const suspend = el("button", { type: "button", class: "suspend danger" }, "Suspend and revoke its leases");
    suspend.addEventListener("click", async () => {
      if (!reason.value.trim()) {
        result.replaceChildren(el("span", { class: "error" }, " a reason is required"));
        return;
      }
      suspend.disabled = true;
      try {
        await api("POST", "/admin/v1/suspend", { subject, reason: reason.value.trim() });
        onChange();
      } catch (e) {
        suspend.disabled = false;
        result.replaceChildren(errorLine(e));
      }
    });
    box.append(reason, " ", suspend, result);
  }
  return box;
}
