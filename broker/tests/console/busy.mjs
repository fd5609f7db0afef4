// The console on a busy log (written by `mintguard-broker seed-log`): each
// page renders with the records it should show, says when it shows partial
// data, and how long it took. Run by broker/tests/e2e_console.rs; prints
// `timing PAGE WALL_MS RENDER_MS` per page and `done`.
// Environment: MG_URL, MG_BUNDLE, MG_TOKEN (an admin), MG_TD (the trust
// domain), MINTGUARD_PLAYWRIGHT, MINTGUARD_CHROMIUM; MG_SCREENSHOTS=DIR
// saves each page as busy-*.png.
import { createRequire } from "node:module";
import { createHash, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import tls from "node:tls";
import assert from "node:assert/strict";

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.MINTGUARD_PLAYWRIGHT);
const url = new URL(process.env.MG_URL);
const bundle = readFileSync(process.env.MG_BUNDLE, "utf8");
const td = process.env.MG_TD;
const step = (what) => console.error(`busy console test: ${what}`);

async function brokerSpki() {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: url.hostname, port: Number(url.port), ca: bundle, checkServerIdentity: () => undefined }, () => {
      if (!socket.authorized) return reject(new Error(`broker certificate: ${socket.authorizationError}`));
      const cert = new X509Certificate(socket.getPeerCertificate().raw);
      socket.end();
      resolve(createHash("sha256").update(cert.publicKey.export({ type: "spki", format: "der" })).digest("base64"));
    });
    socket.on("error", reject);
  });
}

const browser = await chromium.launch({
  executablePath: process.env.MINTGUARD_CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", `--ignore-certificate-errors-spki-list=${await brokerSpki()}`],
});
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url.origin + "/ui/");
  await page.waitForSelector("#sign-in:not([hidden])");
  await page.fill("#token", process.env.MG_TOKEN);
  await page.click("#sign-in-form button");
  await page.waitForSelector("#timeline-rows");

  /** Opens `hash`, waits until its page says it rendered; prints the timing. */
  async function visit(name, hash, ready) {
    await page.evaluate(() => { delete document.querySelector("#page").dataset.renderedMs; });
    const started = Date.now();
    await page.evaluate((h) => { location.hash = h; }, hash);
    await page.waitForFunction(() => document.querySelector("#page").dataset.renderedMs !== undefined, null, { timeout: 120000 });
    const wall = Date.now() - started;
    const rendered = await page.evaluate(() => Number(document.querySelector("#page").dataset.renderedMs));
    if (ready) await page.waitForSelector(ready);
    const alert = await page.$("#page p.error[role=alert]");
    assert.equal(alert && await alert.textContent(), null, `${name}: the page reported an error`);
    console.log(`timing ${name} ${wall} ${rendered}`);
    if (process.env.MG_SCREENSHOTS) {
      await page.screenshot({ path: `${process.env.MG_SCREENSHOTS}/busy-${name}.png`, fullPage: !name.startsWith("timeline") });
    }
  }

  /** Verifies the whole log from the integrity page; prints its timing. */
  async function verify() {
    const started = Date.now();
    await page.click("#verify");
    await page.waitForFunction(() => /"records"|FAILED/.test(document.querySelector("#verify-result").textContent), null, { timeout: 600000 });
    assert.doesNotMatch(await page.textContent("#verify-result"), /FAILED/);
    console.log(`timing verify ${Date.now() - started} 0`);
    await page.waitForSelector("#integrity[data-level=ok]");
    if (process.env.MG_SCREENSHOTS) await page.screenshot({ path: `${process.env.MG_SCREENSHOTS}/busy-integrity.png`, fullPage: true });
  }

  await visit("timeline", "#/timeline", "#timeline-rows tr");
  assert.match(await page.textContent("#timeline-status"), /200 records shown.*partial: older records exist/);
  await visit("timeline-refusals", "#/timeline?outcome=deny", "#timeline-rows tr");
  assert.ok((await page.$$eval("#timeline-rows tr", (rows) => rows.every((r) => r.textContent.includes("deny")))));
  await visit("timeline-node", `#/timeline?node=${encodeURIComponent(`spiffe://${td}/mintguard/node/seed-3`)}`, "#timeline-rows tr");
  step("timeline: newest, refusals (indexed), one node (a bounded scan)");

  const detection = await page.evaluate(async () => {
    const r = await fetch("/admin/v1/logs/recent?outcome=detection&limit=200", { headers: { Accept: "application/json" } });
    return (await r.json()).records;
  });
  assert.ok(detection.length > 0, "the busy log holds detections");
  const burst = detection.find((d) => d.body.subject.kind === "identity");
  assert.ok(burst, "a detection about an identity");
  await visit("anomalies", "#/anomalies", "#detections tr");
  assert.ok((await page.$$("#detections tr")).length >= Math.min(detection.length, 100));
  await visit("identity", `#/identity/${encodeURIComponent(burst.body.subject.id)}`, "svg.graph");
  assert.match(await page.textContent("#page"), /Detections/);
  assert.ok(await page.$("svg.graph g.node.on-path"), "a path to a crown jewel is drawn");
  await visit("decision", `#/decision/${encodeURIComponent(burst.body.triggered_by)}`, "table.factors");
  await visit("node", `#/issuer/${encodeURIComponent(`spiffe://${td}/mintguard/node/seed-0`)}`, "table.vouches");
  assert.match(await page.textContent("figure.rate"), /last hour: \d+/);
  await visit("node-batch", `#/issuer/${encodeURIComponent(`spiffe://${td}/mintguard/node/seed-batch`)}`, "table.vouches");
  await visit("integrity", "#/integrity", "#verify");
  // Verifying the whole log is timed on request (MG_BUSY_VERIFY=1): the
  // button itself is tested in console.mjs, and a debug build takes minutes
  // over a large log.
  if (process.env.MG_BUSY_VERIFY) await verify();
  assert.deepEqual(errors, [], "no script error");
  step("every page rendered on the busy log");
  console.log("done");
} finally {
  await browser.close();
}
process.exit(0);

