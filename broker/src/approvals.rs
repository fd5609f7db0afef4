//! Step-up approvals: a `step_up` decision stores a pending approval bound to
//! a hash of the exact request (identity, grant, TTL, purpose) and answers
//! 202 with its id; an approver (never the requester) approves or rejects
//! it; the workload retries with `approval_id`, and the approval is consumed
//! once (compare-and-set in the store) by the issuance it unlocks.
//! Approvals lapse after `[approvals] ttl`.

use axum::http::StatusCode;
use mintguard_api::CredentialRequest;
use serde_json::{Value, json};

use crate::http::ApiError;
use crate::pipeline::random_id;
use crate::state::Broker;
use crate::store::Approval;

/// The hash an approval is bound to: the request, and for a CI job the
/// digest of the held job's immutable claims (`binding`), so that another
/// job mapped to the same identity cannot redeem it.
pub fn request_hash(
    identity: &str,
    grant: &str,
    ttl: Option<u64>,
    purpose: Option<&str>,
    binding: Option<&str>,
) -> String {
    let canonical = match binding {
        None => serde_json::to_string(&(identity, grant, ttl, purpose)),
        Some(b) => serde_json::to_string(&(identity, grant, ttl, purpose, b)),
    }
    .unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    crate::ids::hex(digest.as_ref())
}

/// Stores a pending approval for a held request; its id.
pub async fn hold(
    broker: &Broker,
    identity: &str,
    request: &CredentialRequest,
    requested_by: &str,
    binding: Option<&str>,
    request_id: &str,
    now_ms: i64,
) -> Result<String, ApiError> {
    let ttl_ms = i64::try_from(broker.config().approvals.ttl.0.as_millis()).unwrap_or(i64::MAX / 2);
    let approval = Approval {
        id: random_id("apr"),
        request_hash: request_hash(
            identity,
            &request.grant,
            request.ttl_seconds,
            request.purpose.as_deref(),
            binding,
        ),
        identity: identity.to_owned(),
        grant: request.grant.clone(),
        ttl_seconds: request.ttl_seconds,
        purpose: request.purpose.clone(),
        requested_by: requested_by.to_owned(),
        request_id: request_id.to_owned(),
        created_at_ms: now_ms,
        expires_at_ms: now_ms.saturating_add(ttl_ms),
        state: "pending".into(),
        approvers: Vec::new(),
        approvals_needed: 1,
        approved_ttl_seconds: None,
        reason: None,
        version: 0,
        kind: "step_up".into(),
    };
    broker.store.create_approval(&approval).await?;
    Ok(approval.id)
}

fn refused(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::forbidden(code, message).with_reasons(vec![code.into()])
}

/// The approval a retried request names, if it is approved, unexpired and
/// bound to exactly this request, asked through the same node (or CI
/// issuer) as the request the approver saw: another node able to vouch for
/// the identity must ask, and be approved, for itself.
pub async fn redeemable(
    broker: &Broker,
    id: &str,
    identity: &str,
    caller: &str,
    binding: Option<&str>,
    request: &CredentialRequest,
    now_ms: i64,
) -> Result<Approval, ApiError> {
    if id.len() > 128 {
        return Err(ApiError::bad_request(
            "bad_approval_id",
            "approval id too long",
        ));
    }
    let approval = broker
        .store
        .approval(id)
        .await?
        .ok_or_else(|| refused("unknown_approval", "no such approval"))?;
    let hash = request_hash(
        identity,
        &request.grant,
        request.ttl_seconds,
        request.purpose.as_deref(),
        binding,
    );
    if approval.kind != "step_up"
        || approval.identity != identity
        || approval.request_hash != hash
        || approval.requested_by != caller
    {
        return Err(refused(
            "approval_mismatch",
            "the approval was given for a different request (identity, grant, TTL, purpose, the node or CI issuer asking and, for a CI job, the job itself must match)",
        ));
    }
    match approval.state_at(now_ms) {
        "approved" => Ok(approval),
        "pending" => Err(refused("approval_pending", "the approval is still pending")),
        "rejected" => Err(refused(
            "approval_rejected",
            format!(
                "the request was rejected: {}",
                approval.reason.as_deref().unwrap_or("")
            ),
        )),
        "used" => Err(refused("approval_used", "the approval was already used")),
        _ => Err(refused("approval_expired", "the approval expired")),
    }
}

/// Consumes an approval for the issuance it unlocks (exactly once).
pub async fn consume(broker: &Broker, approval: &Approval) -> Result<(), ApiError> {
    let used = Approval {
        state: "used".into(),
        ..approval.clone()
    };
    if broker.store.update_approval(&used).await? {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "approval_used",
            "the approval was used by a concurrent request",
        ))
    }
}

/// Gives a consumed approval back (`approved` again) after the issuance it
/// was consumed for did not happen; a failure leaves it used (fail closed).
pub async fn restore(broker: &Broker, consumed: &Approval) {
    let used = Approval {
        state: "used".into(),
        version: consumed.version + 1,
        ..consumed.clone()
    };
    let approved = Approval {
        state: "approved".into(),
        ..used.clone()
    };
    match broker.store.update_approval(&approved).await {
        Ok(true) => {
            tracing::info!(approval = %consumed.id, "approval given back: nothing was issued")
        }
        Ok(false) => {
            tracing::warn!(approval = %consumed.id, "approval changed since it was consumed; left as it is")
        }
        Err(e) => {
            tracing::warn!(approval = %consumed.id, %e, "approval could not be given back; it stays used")
        }
    }
}

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
    if a.state_at(now_ms) != "pending" {
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
                a.state = "approved".into();
            }
        }
        Verdict::Reject { reason } => {
            a.state = "rejected".into();
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
        state: "pending".into(),
        approvers: Vec::new(),
        approvals_needed: config.approvals.break_glass_approvers.max(1),
        approved_ttl_seconds: None,
        reason: None,
        version: 0,
        kind: "break_glass".into(),
    };
    broker.store.create_approval(&approval).await?;
    Ok(approval)
}
