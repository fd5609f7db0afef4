// Mintguard's operator console: a page over the admin API. It holds no
// credential of its own: the session cookie (HttpOnly) authenticates each
// call, and every state-changing call carries the session's CSRF token in
// `X-Mintguard-CSRF`. The server checks each call's role exactly as for the
// CLI; this page only hides what the role cannot do.
//
// This module signs in and out, routes `#/page/arg` to the page modules and
// keeps the log-integrity badge in the header current.

import { $, api, el, fmtTime, kv, showSignIn, state, table } from "./lib.js";
import { timeline } from "./timeline.js";
import { decisionPage } from "./decision.js";
import { identityPage } from "./identity.js";
import { issuerPage } from "./issuer.js";
import { anomaliesPage } from "./anomalies.js";
import { approvalsPage } from "./approvals.js";

const PAGES = {
  timeline,
  decision: decisionPage,
  identity: identityPage,
  issuer: issuerPage,
  anomalies: anomaliesPage,
  approvals: approvalsPage,
  integrity: integrityPage,
};

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
  const started = performance.now();
  (PAGES[page] || timeline)(target, arg, params)
    .then(() => {
      // How long the page took to render, for the timings the docs give.
      target.dataset.renderedMs = String(Math.round(performance.now() - started));
    })
    .catch((e) => {
      if (e.status !== 401) target.append(el("p", { class: "error", role: "alert" }, `${e.code}: ${e.message}`));
    });
  refreshBadge().catch(() => {});
}

// ---- Log integrity ------------------------------------------------------------

/** The badge's verdict on a status: ok, unverified or failed, with a line. */
function verdict(status) {
  const v = status.last_verify;
  if (!v) return { level: "unverified", text: "log: not verified since the broker started" };
  if (!v.ok) return { level: "failed", text: `log: VERIFY FAILED ${fmtTime(v.at_ms)}` };
  return { level: "ok", text: `log: verified ${v.report.records} records, ${fmtTime(v.at_ms)}` };
}

async function refreshBadge() {
  const status = await api("GET", "/admin/v1/logs/status", undefined, { poll: true });
  const { level, text } = verdict(status);
  const badge = $("integrity");
  badge.className = "integrity " + level;
  badge.dataset.level = level;
  const head = status.chains.map((c) => `${c.chain || "(unnamed)"}:${c.seq}`).join(", ");
  badge.textContent = text;
  badge.title = `chain heads ${head}; last checkpoint ${status.last_checkpoint ? status.last_checkpoint.seq + " at " + fmtTime(status.last_checkpoint.time_ms) : "none"}`;
}

async function integrityPage(target) {
  target.append(el("h1", {}, "Log integrity"));
  const status = await api("GET", "/admin/v1/logs/status");
  const { level, text } = verdict(status);
  target.append(el("p", { class: "integrity " + level, id: "integrity-verdict" }, text));
  target.append(el("h2", {}, "Chains"));
  target.append(table(["chain", "head seq", "head hash", "pruned through", "retired"],
    status.chains.map((c) => [c.chain || "(unnamed)", c.seq, el("code", {}, c.hash), c.pruned_through ?? "", c.retired_at_ms ? fmtTime(c.retired_at_ms) : ""])));
  target.append(el("h2", {}, "Last checkpoint"));
  const cp = status.last_checkpoint;
  target.append(cp
    ? kv([["chain", cp.chain || "(unnamed)"], ["seq", cp.seq], ["hash", cp.hash], ["signed", fmtTime(cp.time_ms)]])
    : el("p", { class: "status" }, "none yet"));
  target.append(el("h2", {}, "Verify"));
  const v = status.last_verify;
  if (v) {
    target.append(kv([["when", fmtTime(v.at_ms)], ["by", v.by], ["result", v.ok ? "ok" : v.message]]));
  }
  const result = el("pre", { id: "verify-result" });
  const run = el("button", { type: "button", id: "verify" }, "Verify the whole log now");
  run.addEventListener("click", async () => {
    run.disabled = true;
    result.textContent = "verifying every record, checkpoint and rule set…";
    try {
      const r = await api("GET", "/admin/v1/logs/verify");
      result.textContent = r.ok ? JSON.stringify(r.report, null, 2) : `FAILED: ${r.message}`;
      await refreshBadge();
    } catch (e) {
      if (e.status !== 401) result.textContent = `${e.code}: ${e.message}`;
    }
    run.disabled = false;
  });
  target.append(el("p", { class: "status" }, "Checks every record's hash chain and signature against the signed checkpoints, as `mintguard logs verify` does; on a large log it takes a while."), run, result);
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

boot().catch((e) => showSignIn(String(e)));
