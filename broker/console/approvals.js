// Approvals: requests held for an approver (approve or reject, never one's
// own: the server refuses it).

import { api, el, fmtTime, mayApprove, table } from "./lib.js";

export async function approvalsPage(target) {
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

