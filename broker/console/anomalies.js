// Anomalies: the analysis's detections with their evidence and the
// response each drew; and the post-incident reviews of break-glass
// issuances, closed with notes by an operator or approver (never the one
// who opened the break-glass: the server refuses it).

import { api, decisionLink, el, errorLine, fmtTime, identityLink, issuerLink, mayReview, outcomeBadge, table } from "./lib.js";

function subjectLink(subject) {
  if (!subject) return "";
  if (subject.kind === "identity") return identityLink(subject.id);
  if (subject.kind === "issuer") return issuerLink(subject.id);
  return JSON.stringify(subject);
}

export async function anomaliesPage(target) {
  target.append(el("h1", {}, "Anomalies"));
  const rows = el("tbody", { id: "detections" });
  const status = el("p", { class: "status", id: "detections-status" });
  const more = el("button", { type: "button", id: "older-detections" }, "Older detections");
  target.append(el("h2", {}, "Detections"), status,
    el("table", { class: "detections" },
      el("thead", {}, el("tr", {}, ["time", "subject", "score", "detectors", "response", "evidence", "triggered by"].map((h) => el("th", {}, h)))),
      rows),
    more);
  let before = null;
  let shown = 0;
  const load = async () => {
    const q = new URLSearchParams({ outcome: "detection", limit: "100" });
    if (before) q.set("before", before);
    const page = await api("GET", "/admin/v1/logs/recent?" + q);
    before = page.before;
    more.hidden = !page.more;
    for (const r of page.records) {
      const b = r.body || {};
      rows.append(el("tr", { "data-request": r.request_id },
        el("td", { class: "time" }, fmtTime(r.time_ms)),
        el("td", { class: "id" }, subjectLink(b.subject)),
        el("td", {}, b.score),
        el("td", {}, (b.detectors || []).map((d) => `${d.detector} ${d.score}`).join(", ")),
        el("td", {}, outcomeBadge(b.response)),
        el("td", {}, el("details", {}, el("summary", {}, Object.keys(b.evidence || {}).join(", ")), el("pre", {}, JSON.stringify(b.evidence, null, 2)))),
        el("td", {}, decisionLink(b.triggered_by))));
      shown += 1;
    }
    status.textContent = `${shown} detections, newest first` + (page.more ? " — partial: older ones exist (load more)" : " — all of them");
  };
  more.addEventListener("click", () => load().catch(() => {}));
  await load();

  target.append(el("h2", {}, "Break-glass reviews"));
  const reviews = await api("GET", "/admin/v1/reviews?all=true");
  target.append(table(["review", "identity", "grant", "issued", "issued by", "approvers", "justification", "state", ""],
    reviews.map((r) => [r.review, identityLink(r.identity), r.grant, fmtTime(r.issued_at_ms), r.issued_by,
      (r.approvers || []).join(", "), r.justification, r.state,
      r.state === "open" && mayReview() ? closeControl(r) : (r.closure ? `closed: ${r.closure.notes || ""}` : "")]),
    { class: "reviews" }));
}

function closeControl(review) {
  const notes = el("input", { placeholder: "what was found (recorded)", "aria-label": "review notes" });
  const close = el("button", { type: "button", class: "close-review" }, "Close review");
  const result = el("span", { class: "result" });
  close.addEventListener("click", async () => {
    close.disabled = true;
    try {
      await api("POST", `/admin/v1/reviews/${encodeURIComponent(review.review)}/close`, { notes: notes.value });
      result.textContent = "closed";
      result.className = "result done";
    } catch (e) {
      close.disabled = false;
      result.replaceChildren(errorLine(e));
    }
  });
  return el("span", {}, notes, " ", close, " ", result);
}
