//! The issuance's log records, typed: a decision (or intent) body is the
//! decision input, the decision and the request, plus what the issuance
//! adds ([`Extras`]) and the front door's facts (selectors, CI context);
//! outcome and revocation records are about one lease.

use mintguard_api::CredentialRequest;
use mintguard_policy::{Decision, DecisionInput, Outcome, Reason};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::refusal::Refusal;
use crate::log::{LogEntry, RecordKind};
use crate::mint::{LeaseKind, Revocation};
use crate::store::Lease;

/// The lease a decision or intent record commits.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseBody {
    /// The lease id.
    pub id: String,
    /// When it expires, milliseconds.
    pub expires_at_ms: i64,
    /// How it ends early.
    pub revocation: Revocation,
    /// What it is a lease on.
    pub kind: LeaseKind,
    /// The TTL the upstream mints (after its floor and ceiling).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_ttl_seconds: Option<u64>,
}

impl LeaseBody {
    /// `lease` as its record names it.
    pub fn of(lease: &Lease, effective_ttl_seconds: Option<u64>) -> Self {
        Self {
            id: lease.id.clone(),
            expires_at_ms: lease.expires_at_ms,
            revocation: lease.revocation,
            kind: lease.kind,
            effective_ttl_seconds,
        }
    }
}

/// What a break-glass issuance was issued as (after the override).
#[derive(Clone, Debug, Serialize)]
pub struct IssuedAs {
    /// The overriding outcome.
    pub outcome: Outcome,
    /// Its reasons (with `break_glass`).
    pub reasons: Vec<Reason>,
    /// The TTL issued.
    pub ttl_seconds: u64,
}

/// What an issuance adds to its decision record.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Extras {
    /// The confirmed break-glass request (approval, opener, approvers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<Value>,
    /// What break-glass issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_as: Option<IssuedAs>,
    /// A CI policy in audit mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<bool>,
    /// The final outcome when it differs from the decision's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_outcome: Option<&'static str>,
    /// The approval held (step-up) or consumed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// Who approved the consumed approval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Vec<String>>,
    /// The lease committed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseBody>,
    /// The shadow rule set's verdict, never enforced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<mintguard_policy::Verdict>,
    /// What was signed, in public facts (an X.509-SVID's serial, SPIFFE
    /// ID, not-after and key digest; a JWT-SVID's audiences).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<Value>,
}

/// A decision record's body.
#[derive(Serialize)]
pub struct DecisionBody<'a> {
    /// Everything the decision was made from.
    pub input: &'a DecisionInput,
    /// The decision as `decide()` made it (before a break-glass override).
    pub decision: &'a Decision,
    /// The request.
    pub request: &'a CredentialRequest,
    /// The front door's facts (selectors and entry, or the CI context).
    #[serde(flatten)]
    pub context: &'a Map<String, Value>,
    /// What the issuance adds (after the context: on a shared key, its
    /// value is the one recorded).
    #[serde(flatten)]
    pub extras: &'a Extras,
}

impl DecisionBody<'_> {
    /// As a JSON tree, for the paths that add to it later.
    pub fn to_value(&self) -> Result<Value, Refusal> {
        serde_json::to_value(self).map_err(|e| Refusal::LogUnavailable(e.to_string()))
    }

    /// Its canonical JSON, written directly (no tree).
    pub fn to_canonical(&self) -> Result<String, Refusal> {
        crate::log::jcs::to_canonical(self).map_err(|e| Refusal::LogUnavailable(e.to_string()))
    }
}

/// A record about `lease` (its request, identity, grant and node) at `time_ms`.
pub fn lease_record(
    lease: &Lease,
    kind: RecordKind,
    outcome: &str,
    body: Value,
    time_ms: i64,
) -> LogEntry {
    LogEntry {
        time_ms,
        kind,
        request_id: lease.request_id.clone(),
        identity: Some(lease.identity.clone()),
        grant: Some(lease.grant.clone()),
        node: lease.node.clone(),
        outcome: Some(outcome.to_owned()),
        body,
    }
}

/// What the workload sees of a decision.
pub fn decision_summary(request_id: &str, d: &Decision) -> Value {
    json!({
        "request_id": request_id,
        "outcome": d.outcome,
        "reasons": d.reasons,
        "trust_score": d.trust.score,
        "min_trust": d.min_trust,
        "eci": d.eci.eci,
        "ttl_seconds": d.ttl_seconds,
        "reduced": d.reduced,
        "rule_set_hash": d.rule_set_hash,
    })
}
