//! The issuance side of step-up approvals: a `step_up` decision holds a
//! pending approval bound to the exact request; a retry redeems it only if
//! approved, unexpired and bound to the same request, identity, issuer (and
//! CI job); the issuance it unlocks consumes it once (compare-and-set), and
//! gives it back if nothing was issued.

use mintguard_api::CredentialRequest;

use super::refusal::{ApprovalRefusal, Refusal};
use crate::ids::random_id;
use crate::store::{Approval, ApprovalKind, ApprovalState, Store};

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

/// What an approval is bound to beyond the grant, TTL and purpose: the
/// front door's `binding` and a JWT-SVID's audiences (an approval for one
/// audience never redeems a token for another). Unchanged for a request
/// without audiences, so earlier approvals keep their hashes.
fn bound_to(binding: Option<&str>, request: &CredentialRequest) -> Option<String> {
    match (&request.audience, binding) {
        (None, binding) => binding.map(str::to_owned),
        (Some(audience), binding) => {
            let mut audience = audience.clone();
            audience.sort();
            audience.dedup();
            Some(serde_json::to_string(&(binding, "audience", audience)).unwrap_or_default())
        }
    }
}

/// Stores a pending approval for a held request, open from `open.start`
/// until `open.end` (milliseconds); its id.
pub async fn hold(
    store: &dyn Store,
    identity: &str,
    request: &CredentialRequest,
    requested_by: &str,
    binding: Option<&str>,
    request_id: &str,
    open: std::ops::Range<i64>,
) -> Result<String, Refusal> {
    let approval = Approval {
        id: random_id("apr"),
        request_hash: request_hash(
            identity,
            &request.grant,
            request.ttl_seconds,
            request.purpose.as_deref(),
            bound_to(binding, request).as_deref(),
        ),
        identity: identity.to_owned(),
        grant: request.grant.clone(),
        ttl_seconds: request.ttl_seconds,
        purpose: request.purpose.clone(),
        requested_by: requested_by.to_owned(),
        request_id: request_id.to_owned(),
        created_at_ms: open.start,
        expires_at_ms: open.end,
        state: ApprovalState::Pending,
        approvers: Vec::new(),
        approvals_needed: 1,
        approved_ttl_seconds: None,
        reason: None,
        version: 0,
        kind: ApprovalKind::StepUp,
    };
    store.create_approval(&approval).await?;
    Ok(approval.id)
}

/// The approval a retried request names, if it is approved, unexpired and
/// bound to exactly this request, asked through the same node (or CI
/// issuer) as the request the approver saw: another node able to vouch for
/// the identity must ask, and be approved, for itself.
pub async fn redeemable(
    store: &dyn Store,
    id: &str,
    identity: &str,
    caller: &str,
    binding: Option<&str>,
    request: &CredentialRequest,
    now_ms: i64,
) -> Result<Approval, Refusal> {
    if id.len() > 128 {
        return Err(Refusal::Approval(ApprovalRefusal::BadId));
    }
    let approval = store
        .approval(id)
        .await?
        .ok_or(Refusal::Approval(ApprovalRefusal::Unknown))?;
    let hash = request_hash(
        identity,
        &request.grant,
        request.ttl_seconds,
        request.purpose.as_deref(),
        bound_to(binding, request).as_deref(),
    );
    if approval.kind != ApprovalKind::StepUp
        || approval.identity != identity
        || approval.request_hash != hash
        || approval.requested_by != caller
    {
        return Err(Refusal::Approval(ApprovalRefusal::Mismatch));
    }
    let refused = match approval.state_at(now_ms) {
        ApprovalState::Approved => return Ok(approval),
        ApprovalState::Pending => ApprovalRefusal::Pending,
        ApprovalState::Rejected => {
            ApprovalRefusal::Rejected(approval.reason.clone().unwrap_or_default())
        }
        ApprovalState::Used | ApprovalState::Reviewed => ApprovalRefusal::Used,
        ApprovalState::Expired => ApprovalRefusal::Expired,
    };
    Err(Refusal::Approval(refused))
}

/// Consumes an approval for the issuance it unlocks (exactly once).
pub async fn consume(store: &dyn Store, approval: &Approval) -> Result<(), Refusal> {
    let used = Approval {
        state: ApprovalState::Used,
        ..approval.clone()
    };
    if store.update_approval(&used).await? {
        Ok(())
    } else {
        Err(Refusal::Approval(ApprovalRefusal::Raced))
    }
}

/// Gives a consumed approval back (`approved` again) after the issuance it
/// was consumed for did not happen; a failure leaves it used (fail closed).
pub async fn restore(store: &dyn Store, consumed: &Approval) {
    let used = Approval {
        state: ApprovalState::Used,
        version: consumed.version + 1,
        ..consumed.clone()
    };
    let approved = Approval {
        state: ApprovalState::Approved,
        ..used.clone()
    };
    match store.update_approval(&approved).await {
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
