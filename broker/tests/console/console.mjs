// The operator console in a real browser: headless Chromium (Debian's),
// driven by playwright-core. Run by broker/tests/e2e_console.rs, which
// starts the broker and speaks with this script over stdin/stdout:
//   this script prints `ready` once the timeline is live; the test then
//   issues a credential and writes one line of JSON to stdin:
//   {"request_id", "lease_id", "identity", "approval_id",
//    "explain": <mintguard explain>}.
// Later steps print `forged`, `revoked` and `approved` and wait for a line
// back, while the test checks what the broker then holds.
// Environment: MG_URL (the admin listener), MG_BUNDLE (the broker's CA
// bundle, PEM), MG_OPERATOR, MG_APPROVER, MG_VIEWER (tokens), MG_CERT and
// MG_KEY (a viewer's operator certificate), MG_IDLE_SECONDS,
// MINTGUARD_PLAYWRIGHT, MINTGUARD_CHROMIUM.
import { createRequire } from "node:module";
import { createHash, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import readline from "node:readline";
import tls from "node:tls";
import assert from "node:assert/strict";

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.MINTGUARD_PLAYWRIGHT);
const url = new URL(process.env.MG_URL);
const bundle = readFileSync(process.env.MG_BUNDLE, "utf8");
const step = (what) => console.error(`console test: ${what}`);
// With MG_SCREENSHOTS=DIR, each page is also saved there (docs/console/).
async function shot(page, name) {
  if (!process.env.MG_SCREENSHOTS) return;
  await page.screenshot({ path: `${process.env.MG_SCREENSHOTS}/${name}.png`, fullPage: true });
}

// The broker's certificate, verified against its CA (its name is a SPIFFE
// ID, not a host name): Chromium is told to trust exactly that key.
async function brokerSpki() {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: url.hostname,
      port: Number(url.port),
      ca: bundle,
      checkServerIdentity: () => undefined,
    }, () => {
      if (!socket.authorized) return reject(new Error(`broker certificate: ${socket.authorizationError}`));
      const cert = new X509Certificate(socket.getPeerCertificate().raw);
      const spki = cert.publicKey.export({ type: "spki", format: "der" });
      socket.end();
      resolve(createHash("sha256").update(spki).digest("base64"));
    });
    socket.on("error", reject);
  });
}

const input = readline.createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();
async function nextLine() {
  const { value, done } = await lines.next();
  if (done) throw new Error("the test closed stdin");
  return JSON.parse(value);
}

/** A raw HTTPS request to the broker (outside the browser). */
function raw(method, path, headers, { body, cert, key } = {}) {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: url.hostname, port: Number(url.port), method, path, headers,
      ca: bundle, checkServerIdentity: () => undefined, cert, key, agent: false,
    }, (res) => {
      let text = "";
      res.on("data", (c) => (text += c));
      res.on("end", () => resolve({ status: res.statusCode, body: text, headers: res.headers }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

const spki = await brokerSpki();
const browser = await chromium.launch({
  executablePath: process.env.MINTGUARD_CHROMIUM,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    `--ignore-certificate-errors-spki-list=${spki}`,
  ],
});
try {
  const base = url.origin;

  // ---- Sign in as an operator; the timeline is live. ----
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const page = await context.newPage();
  const csp = [];
  page.on("console", (m) => { if (/Content Security Policy/.test(m.text())) csp.push(m.text()); });
  const first = await page.goto(base + "/ui/");
  assert.equal(first.status(), 200);
  const headers = first.headers();
  assert.match(headers["content-security-policy"], /script-src 'self'/);
  assert.equal(headers["x-frame-options"], "DENY");
  await page.waitForSelector("#sign-in:not([hidden])");
  await shot(page, "sign-in");
  step("sign-in page shown");
  await page.fill("#token", "not-a-token");
  await page.click("#sign-in-form button");
  await page.waitForFunction(() => document.querySelector("#sign-in-error").textContent.includes("unknown operator token"));
  await page.fill("#token", process.env.MG_OPERATOR);
  await page.click("#sign-in-form button");
  await page.waitForSelector("#timeline-rows");
  await page.waitForFunction(() => document.querySelector("#timeline-status").textContent.includes("records shown"));
  const who = await page.textContent("#who");
  assert.match(who, /ops-oscar \(operator\)/);
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "__Host-mintguard_session");
  assert.ok(session, "a session cookie");
  assert.equal(session.httpOnly, true);
  assert.equal(session.secure, true);
  assert.equal(session.sameSite, "Strict");
  assert.ok(!page.url().includes(session.value), "no credential in the URL");
  step("signed in; timeline live");
  console.log("ready");

  // ---- A fresh issuance appears on the timeline by itself. ----
  const fresh = await nextLine();
  const row = `#timeline-rows tr[data-request="${fresh.request_id}"]`;
  await page.waitForSelector(row, { timeout: 15000 });
  const rowText = await page.textContent(row);
  assert.match(rowText, /payments-token/);
  // The shadow set (the running rules themselves) agrees with every decision.
  await page.waitForFunction(() => /live decisions/.test(document.querySelector("#shadow-status").textContent));
  assert.match(await page.textContent("#shadow-status"), /^Shadow rule set [0-9a-f]{12}: 0 of \d+ live decisions since this broker began watching it disagree\./);
  await shot(page, "timeline");
  step("the fresh issuance appeared; the shadow set's counts shown");

  // ---- Its decision shows what `mintguard explain --json` gives. ----
  await page.click(`${row} a[href^="#/decision/"]`);
  await page.waitForSelector("section.record[data-kind=decision]");
  const decision = fresh.explain.records.find((r) => r.kind === "decision");
  const d = decision.body.decision;
  const field = async (name) =>
    page.textContent(`section.record[data-kind=decision] dd[data-field="${name}"]`);
  assert.equal(await field("trust score"), String(d.trust.score));
  assert.equal(await field("min_trust"), String(d.min_trust));
  assert.equal(await field("ECI"), String(d.eci.eci));
  assert.equal(await field("grant exposure"), String(d.eci.grant_exposure));
  assert.equal(await field("issuer blast radius"), String(d.eci.issuer_blast_radius));
  assert.equal(await field("minted TTL (s)"), String(d.ttl_seconds));
  assert.equal(await field("rule set"), d.rule_set_hash);
  assert.equal(await field("hash"), decision.hash);
  assert.equal(await field("chain position"), `${decision.chain || "(unnamed)"}:${decision.seq}`);
  for (const s of d.trust.signals) {
    assert.ok((await page.textContent("section.record[data-kind=decision]")).includes(s.kind), s.kind);
  }
  for (const r of d.rules) {
    assert.ok((await page.textContent("section.record[data-kind=decision]")).includes(r.id), r.id);
  }
  // The ECI factor by factor, as the record holds it.
  const x = decision.body.input.eci.explained;
  const num = (v, digits) => String(Number(v.toFixed(digits)));
  assert.equal(await field("structural ECI"), num(x.structural, 3));
  assert.equal(await field("hygiene modifier"), num(x.hygiene_modifier, 3));
  assert.equal(await field("PPR"), num(x.ppr, 6));
  const factors = await page.$$eval("section.record[data-kind=decision] table.factors tbody tr",
    (rows) => rows.map((r) => [...r.children].map((c) => c.textContent)));
  assert.deepEqual(factors.map((f) => f[0]), ["access", "critical", "sensitivity", "lateral", "privilege"]);
  for (const [name, value] of factors) assert.equal(value, num(x.factors[name], 4), name);
  await page.click("#replay");
  await page.waitForFunction(() => /all identical/.test(document.querySelector("#replay-result").textContent));
  await shot(page, "decision");
  step("the decision page matches explain, and replays");

  // ---- A forged cross-site request is refused. ----
  // From another origin's page in the same browser: the SameSite=Strict
  // cookie is not sent, so nothing is authenticated.
  const evil = http.createServer((_, res) => {
    res.setHeader("Content-Type", "text/html");
    res.end(`<form id=f method=POST action="${base}/admin/v1/leases/${fresh.lease_id}/revoke"></form>
             <script>document.getElementById("f").submit()</script>`);
  });
  await new Promise((r) => evil.listen(0, "127.0.0.1", r));
  const evilPage = await context.newPage();
  await evilPage.goto(`http://127.0.0.1:${evil.address().port}/`);
  await evilPage.waitForURL(/\/revoke$/);
  const evilBody = await evilPage.textContent("body");
  assert.match(evilBody, /unauthenticated/);
  evil.close();
  // A read from another site's page (an image, a script) is refused too,
  // even where the browser would send its credentials.
  const crossRead = await raw("GET", "/admin/v1/logs?limit=1", {
    Cookie: `__Host-mintguard_session=${session.value}`, "Sec-Fetch-Site": "cross-site",
  });
  assert.equal(crossRead.status, 403);
  assert.match(crossRead.body, /cross_site_request/);
  const planted = await raw("GET", "/admin/v1/logs?limit=1", {
    Cookie: `__Host-mintguard_session=${session.value}; __Host-mintguard_session=planted`,
  });
  assert.equal(planted.status, 400);
  assert.match(planted.body, /several_sessions/);
  // With the cookie (stolen into another client) but no CSRF token, or
  // from another origin: refused before any handler runs.
  const cookie = `__Host-mintguard_session=${session.value}`;
  const noCsrf = await raw("POST", `/admin/v1/leases/${fresh.lease_id}/revoke`, { Cookie: cookie, Origin: base });
  assert.equal(noCsrf.status, 403);
  assert.match(noCsrf.body, /csrf_refused/);
  const csrf = await page.evaluate(async () => (await (await fetch("/ui/session")).json()).csrf);
  const crossSite = await raw("POST", `/admin/v1/leases/${fresh.lease_id}/revoke`, {
    Cookie: cookie, Origin: "https://evil.example", "X-Mintguard-CSRF": csrf,
  });
  assert.equal(crossSite.status, 403);
  assert.match(crossSite.body, /cross_site_request/);
  step("forged cross-site requests refused");
  console.log("forged");
  await nextLine();

  // ---- Revoke the lease from the identity page. ----
  await page.goto(base + "/ui/#/identity/" + encodeURIComponent(fresh.identity));
  const revoke = `button.revoke[data-lease="${fresh.lease_id}"]`;
  await page.waitForSelector(revoke);
  assert.match(await page.textContent("#budgets"), /payments-token: +\d+ of 100 per 1h/);
  // Its exposure-graph neighbourhood, drawn from the identity outwards.
  await page.waitForSelector(`svg.graph g[data-node="${fresh.identity}"]`);
  assert.ok((await page.$$("svg.graph g.node")).length >= 2, "the identity and what it reaches");
  assert.match(await page.textContent("#eci-summary"), /factors: access/);
  await shot(page, "identity");
  await page.click(revoke);
  await page.waitForSelector("span.revoked");
  step("revoked from the identity page");
  console.log("revoked");
  await nextLine();

  // ---- The log-integrity badge: unverified, then verified from its page. ----
  await page.waitForSelector("#integrity[data-level]");
  await page.click("#integrity");
  await page.waitForSelector("#verify");
  await page.click("#verify");
  await page.waitForFunction(() => /"records"/.test(document.querySelector("#verify-result").textContent));
  await page.waitForSelector("#integrity[data-level=ok]");
  assert.match(await page.textContent("#integrity"), /verified \d+ records/);
  await shot(page, "integrity");
  step("the log verified from its integrity page; the badge says so");

  // ---- The node's page: what it vouches for, its rate, its leases. ----
  await page.goto(base + "/ui/#/issuer/" + encodeURIComponent(fresh.node));
  await page.waitForSelector("table.vouches");
  assert.ok((await page.textContent("table.vouches")).includes(fresh.identity), "the node vouches for the identity");
  assert.match(await page.textContent("#rate-summary"), /no baseline yet|× its hourly mean/);
  assert.match(await page.textContent("figure.rate"), /last hour: [1-9]/);
  await page.goto(base + "/ui/#/anomalies");
  await page.waitForSelector("#detections-status");
  step("the node and anomalies pages render");

  // ---- Sign out ends the session. ----
  await page.goto(base + "/ui/#/timeline");
  await page.waitForSelector("#timeline-rows");
  await page.click("#sign-out");
  await page.waitForSelector("#sign-in:not([hidden])");
  const after = await raw("GET", "/admin/v1/logs?limit=1", { Cookie: cookie });
  assert.equal(after.status, 401);
  assert.deepEqual(csp, [], "no Content-Security-Policy violation");
  step("signed out");
  // ---- An approver approves a held request. ----
  const approverContext = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const approver = await approverContext.newPage();
  await approver.goto(base + "/ui/#/approvals");
  await approver.waitForSelector("#sign-in:not([hidden])");
  await approver.fill("#token", process.env.MG_APPROVER);
  await approver.click("#sign-in-form button");
  const approveButton = `button.approve[data-approval="${fresh.approval_id}"]`;
  await approver.waitForSelector(approveButton);
  await shot(approver, "approvals");
  await approver.click(approveButton);
  await approver.waitForSelector(".result.done");
  assert.equal(await approver.textContent(".result.done"), "approved");
  step("an approver approved the held request");
  console.log("approved");
  await nextLine();

  // ---- An operator suspends the node from its page, then resumes it. ----
  const opContext = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const op = await opContext.newPage();
  await op.goto(base + "/ui/#/issuer/" + encodeURIComponent(fresh.node));
  await op.waitForSelector("#sign-in:not([hidden])");
  await op.fill("#token", process.env.MG_OPERATOR);
  await op.click("#sign-in-form button");
  await op.waitForSelector("button.suspend");
  await shot(op, "node");
  await op.click("button.suspend");
  await op.waitForFunction(() => /a reason is required/.test(document.querySelector(".suspension").textContent));
  await op.fill("input.reason", "lost laptop, investigating");
  await op.click("button.suspend");
  await op.waitForSelector(".suspension [data-state=suspended]");
  assert.match(await op.textContent(".suspension"), /operator:ops-oscar: lost laptop, investigating/);
  step("suspended the node from its page");
  console.log("suspended");
  await nextLine();
  await op.click("button.resume");
  await op.waitForSelector(".suspension [data-state=active]");
  step("resumed it");
  console.log("resumed");
  await nextLine();

  // ---- A viewer sees the log, and is refused an operator's action. ----
  const viewerContext = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const viewer = await viewerContext.newPage();
  await viewer.goto(base + "/ui/#/decision/" + encodeURIComponent(fresh.request_id));
  await viewer.waitForSelector("#sign-in:not([hidden])");
  await viewer.fill("#token", process.env.MG_VIEWER);
  await viewer.click("#sign-in-form button");
  await viewer.waitForSelector("section.record[data-kind=decision]");
  const refused = await viewer.evaluate(async (lease) => {
    const s = await (await fetch("/ui/session")).json();
    const res = await fetch(`/admin/v1/leases/${lease}/revoke`, {
      method: "POST", headers: { "X-Mintguard-CSRF": s.csrf },
    });
    return { status: res.status, body: await res.text() };
  }, fresh.lease_id);
  assert.equal(refused.status, 403);
  assert.match(refused.body, /insufficient_role/);
  await viewer.goto(base + "/ui/#/approvals");
  await viewer.waitForSelector("text=Your role may see requests held for approval");
  assert.equal(await viewer.$(`button.approve`), null, "no approve button for a viewer");
  const notApprover = await viewer.evaluate(async (id) => {
    const s = await (await fetch("/ui/session")).json();
    const res = await fetch(`/admin/v1/approvals/${id}/approve`, {
      method: "POST", headers: { "X-Mintguard-CSRF": s.csrf, "Content-Type": "application/json" }, body: "{}",
    });
    return { status: res.status, body: await res.text() };
  }, fresh.approval_id);
  assert.equal(notApprover.status, 403);
  assert.match(notApprover.body, /insufficient_role/);
  await viewer.goto(base + "/ui/#/decision/" + encodeURIComponent(fresh.request_id));
  await viewer.waitForSelector("#replay");
  step("a viewer is refused an operator's and an approver's action");

  // ---- An expired session returns to sign-in. ----
  const idle = Number(process.env.MG_IDLE_SECONDS);
  await viewer.waitForTimeout((idle + 1.5) * 1000);
  await viewer.click("#replay");
  await viewer.waitForSelector("#sign-in:not([hidden])");
  assert.match(await viewer.textContent("#sign-in-error"), /session ended/);
  step("an idle session returned to sign-in");

  // ---- A session opened with an operator certificate holds only where
  // that certificate is presented. ----
  const cert = readFileSync(process.env.MG_CERT), key = readFileSync(process.env.MG_KEY);
  const certSignIn = await raw("POST", "/ui/session",
    { "Content-Type": "application/json", Origin: base }, { body: "{}", cert, key });
  assert.equal(certSignIn.status, 200, certSignIn.body);
  assert.equal(JSON.parse(certSignIn.body).name, "cert-carl");
  const certCookie = certSignIn.headers["set-cookie"][0].split(";")[0];
  assert.match(certCookie, /^__Host-mintguard_session=/);
  const withCert = await raw("GET", "/ui/session", { Cookie: certCookie }, { cert, key });
  assert.equal(withCert.status, 200, withCert.body);
  const withoutCert = await raw("GET", "/admin/v1/logs?limit=1", { Cookie: certCookie });
  assert.equal(withoutCert.status, 401);
  assert.match(withoutCert.body, /session_ended/);
  const textPlain = await raw("POST", "/ui/session",
    { "Content-Type": "text/plain", Origin: base }, { body: "{}", cert, key });
  assert.equal(textPlain.status, 415);
  step("a certificate's session holds only with the certificate");
  console.log("done");
} finally {
  await browser.close();
}
process.exit(0);
