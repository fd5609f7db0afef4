//! Step-up approvals: a `step_up` decision stores a pending approval bound to
//! a hash of the exact request (identity, grant, TTL, purpose) and answers
//! 202 with its id; an approver (never the requester) approves or rejects
//! it; the workload retries with `approval_id`, and the approval is consumed
//! once (compare-and-set in the store) by the issuance it unlocks.
//! Approvals lapse after `[approvals] ttl`.
//!
//! This is the operators' side (view, verdicts, break-glass); holding,
//! redeeming, consuming and giving back an approval are the issuance core's
//! (`crate::issue::approval`).

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::http::ApiError;
use crate::ids::random_id;
use crate::issue::approval::request_hash;
use crate::state::Broker;
use crate::store::{Approval, ApprovalKind, ApprovalState};

/// How an approval looks to a workload or operator.
pub fn view(a: &Approval, now_ms: i64) -> Value {
    json!({
        "approval_id": a.id,
        "state": a.state_at(now_ms),
        "identity": a.identity,
        "grant": a.grant,
        "ttl_seconds": a.ttl_seconds,
        "purpose": a.purpose,
        "requested_by": a.requested_by,
        "request_id": a.request_id,
        "created_at_ms": a.created_at_ms,
        "expires_at_ms": a.expires_at_ms,
        "approvers": a.approvers,
        "approvals_needed": a.approvals_needed,
        "approved_ttl_seconds": a.approved_ttl_seconds,
        "reason": a.reason,
        "kind": a.kind,
    })
}

/// An approver's verdict.
pub enum Verdict {
    /// Approve, optionally capping the credential's TTL.
    Approve {
        /// The cap, seconds.
        ttl_seconds: Option<u64>,
    },
    /// Reject, with a reason.
    Reject {
        /// Why.
        reason: String,
    },
}

impl Verdict {
    /// The admin action it is logged as.
    pub fn action(&self) -> &'static str {
        match self {
            Verdict::Approve { .. } => "approved",
            Verdict::Reject { .. } => "rejected",
        }
    }
}

/// An approver's verdict on a pending approval. The requester cannot decide
/// its own, nor anyone approve twice.
pub async fn decide(
    broker: &Broker,
    id: &str,
    approver: &str,
    verdict: Verdict,
    now_ms: i64,
) -> Result<Approval, ApiError> {
    let mut a = broker
        .store
        .approval(id)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_approval", "no such approval"))?;
    if a.state_at(now_ms) != ApprovalState::Pending {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "approval_not_pending",
            format!("the approval is {}", a.state_at(now_ms)),
        ));
    }
    if a.requested_by == approver || a.approvers.iter().any(|x| x == approver) {
        return Err(ApiError::forbidden(
            "own_request",
            "an approver cannot approve their own request, nor approve twice",
        ));
    }
    a.approvers.push(approver.to_owned());
    match verdict {
        Verdict::Approve { ttl_seconds } => {
            if let Some(ttl) = ttl_seconds {
                a.approved_ttl_seconds = Some(a.approved_ttl_seconds.map_or(ttl, |t| t.min(ttl)));
            }
            if a.approvers.len() >= usize::try_from(a.approvals_needed).unwrap_or(1) {
                a.state = ApprovalState::Approved;
            }
        }
        Verdict::Reject { reason } => {
            a.state = ApprovalState::Rejected;
            a.reason = Some(reason);
        }
    }
    if !broker.store.update_approval(&a).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "approval_changed",
            "the approval changed meanwhile; read it again",
        ));
    }
    a.version += 1;
    Ok(a)
}

/// Opens a break-glass request by `opener` (`operator:<name>`): it needs
/// `[approvals] break_glass_approvers` other approvers before the opener can
/// issue it.
pub async fn open_break_glass(
    broker: &Broker,
    opener: &str,
    identity: &str,
    grant: &str,
    ttl_seconds: Option<u64>,
    justification: &str,
    now_ms: i64,
) -> Result<Approval, ApiError> {
    let config = broker.config();
    let ttl_ms = i64::try_from(config.approvals.ttl.0.as_millis()).unwrap_or(i64::MAX / 2);
    let approval = Approval {
        id: random_id("bg"),
        request_hash: request_hash(identity, grant, ttl_seconds, Some(justification), None),
        identity: identity.to_owned(),
        grant: grant.to_owned(),
        ttl_seconds,
        purpose: Some(justification.to_owned()),
        requested_by: opener.to_owned(),
        request_id: random_id("req"),
        created_at_ms: now_ms,
        expires_at_ms: now_ms.saturating_add(ttl_ms),
        state: ApprovalState::Pending,
        approvers: Vec::new(),
        approvals_needed: config.approvals.break_glass_approvers.max(1),
        approved_ttl_seconds: None,
        reason: None,
        version: 0,
        kind: ApprovalKind::BreakGlass,
    };
    broker.store.create_approval(&approval).await?;
    Ok(approval)
}
