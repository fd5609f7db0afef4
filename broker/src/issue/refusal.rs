//! Why an issuance did not hand out a credential: one enum of reason codes,
//! each with a transport-neutral [`Class`]. The HTTP layer
//! (`crate::http`) maps a class to a status in one place; nothing here
//! knows a status code.

use mintguard_policy::{Decision, Outcome, Reason};

use crate::store::StoreError;

/// What kind of refusal it is, independent of the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The request is malformed or names something that does not exist.
    BadRequest,
    /// The caller proved no identity.
    Unauthenticated,
    /// Decided against (or refused by a rule): retrying will not help.
    Forbidden,
    /// Lost a race with a concurrent request.
    Conflict,
    /// Too many requests, or a budget spent: retry after the given seconds.
    TooMany {
        /// Seconds.
        retry_after: u64,
    },
    /// Something the broker depends on failed; nothing was issued.
    Unavailable,
    /// Held for a human (step-up): the answer names the approval.
    Held,
}

/// Why a retried step-up request cannot use the approval it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApprovalRefusal {
    /// The id is longer than any id the broker makes.
    BadId,
    /// No such approval.
    Unknown,
    /// Approved for a different request, identity, issuer or job.
    Mismatch,
    /// Not decided yet.
    Pending,
    /// Rejected, with the approver's reason.
    Rejected(String),
    /// Used by an earlier issuance.
    Used,
    /// Used by a concurrent request just now.
    Raced,
    /// Lapsed (`[approvals] ttl`).
    Expired,
}

/// A refused issuance. Each variant is one reason code ([`Refusal::code`]).
#[derive(Debug)]
pub enum Refusal {
    /// The identity asked more often than `[limits] per_identity_per_second`.
    RateLimited,
    /// The approval a step-up retry names cannot be used.
    Approval(ApprovalRefusal),
    /// A CI policy in audit mode: decided and logged, then refused.
    AuditMode {
        /// The logged request.
        request_id: String,
        /// What enforcement would have done.
        outcome: Outcome,
    },
    /// Held for approval (`step_up`): the workload retries with the id.
    StepUp {
        /// The logged request.
        request_id: String,
        /// The pending approval.
        approval_id: String,
        /// The decision, for the answer's summary.
        decision: Box<Decision>,
    },
    /// Decided `deny`.
    Denied {
        /// The logged request.
        request_id: String,
        /// The decision's reasons.
        reasons: Vec<Reason>,
    },
    /// Decided `suspend` (the identity or its issuer is suspended).
    Suspended {
        /// The logged request.
        request_id: String,
        /// The decision's reasons.
        reasons: Vec<Reason>,
    },
    /// Suspended between the decision and its write: nothing was spent or issued.
    SuspendedAtWrite {
        /// The logged request.
        request_id: String,
    },
    /// Break-glass does not override a suspension.
    BreakGlassOverSuspension,
    /// The grant's budget is spent (decided so, or lost at the write).
    BudgetExhausted {
        /// The logged request.
        request_id: String,
    },
    /// The decided TTL is below what the upstream can mint.
    TtlBelowUpstreamMinimum {
        /// The decided TTL, seconds.
        ttl_seconds: u64,
        /// The upstream's shortest, seconds.
        minimum: u64,
    },
    /// No minter is configured for the grant's kind (a new kind needs a restart).
    NoMinter {
        /// The grant.
        grant: String,
    },
    /// The decision's record could not be written; nothing was issued.
    LogUnavailable(String),
    /// Minted, but the outcome could not be logged: not returned, and
    /// revoked upstream where the upstream allows.
    OutcomeUnavailable(String),
    /// The upstream did not mint; the budget was refunded.
    MintFailed(String),
    /// The upstream did not answer; reconciliation settles it.
    MintOutcomeUnknown(String),
    /// The signing keys could not be read.
    SigningUnavailable(String),
    /// Signing failed.
    SigningFailed(String),
    /// The store failed (or refused a duplicate).
    Store(StoreError),
    /// What the request carries for the grant's kind (a CSR, audiences) is
    /// missing, malformed or outside the grant: nothing was decided.
    Material(crate::mint::MaterialError),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl Refusal {
    /// The stable `snake_case` reason code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::Approval(a) => match a {
                ApprovalRefusal::BadId => "bad_approval_id",
                ApprovalRefusal::Unknown => "unknown_approval",
                ApprovalRefusal::Mismatch => "approval_mismatch",
                ApprovalRefusal::Pending => "approval_pending",
                ApprovalRefusal::Rejected(_) => "approval_rejected",
                ApprovalRefusal::Used | ApprovalRefusal::Raced => "approval_used",
                ApprovalRefusal::Expired => "approval_expired",
            },
            Self::AuditMode { .. } => "audit_mode",
            Self::StepUp { .. } => "step_up_required",
            Self::Denied { .. } => "denied",
            Self::Suspended { .. } | Self::SuspendedAtWrite { .. } => "suspended",
            Self::BreakGlassOverSuspension => "suspended",
            Self::BudgetExhausted { .. } => "budget_exhausted",
            Self::TtlBelowUpstreamMinimum { .. } => "ttl_below_upstream_minimum",
            Self::NoMinter { .. } | Self::MintFailed(_) => "upstream_unavailable",
            Self::LogUnavailable(_) => "log_unavailable",
            Self::OutcomeUnavailable(_) => "outcome_unavailable",
            Self::MintOutcomeUnknown(_) => "upstream_outcome_unknown",
            Self::SigningUnavailable(_) => "signing_unavailable",
            Self::SigningFailed(_) => "signing_failed",
            Self::Store(StoreError::Conflict(_)) => "conflict",
            Self::Store(_) => "store_unavailable",
            Self::Material(e) => e.code,
        }
    }

    /// The kind of refusal.
    pub fn class(&self) -> Class {
        match self {
            Self::RateLimited => Class::TooMany { retry_after: 1 },
            Self::BudgetExhausted { .. } => Class::TooMany { retry_after: 60 },
            Self::Approval(ApprovalRefusal::BadId) => Class::BadRequest,
            Self::Approval(ApprovalRefusal::Raced) | Self::Store(StoreError::Conflict(_)) => {
                Class::Conflict
            }
            Self::Approval(_)
            | Self::AuditMode { .. }
            | Self::Denied { .. }
            | Self::Suspended { .. }
            | Self::SuspendedAtWrite { .. }
            | Self::BreakGlassOverSuspension
            | Self::TtlBelowUpstreamMinimum { .. } => Class::Forbidden,
            Self::StepUp { .. } => Class::Held,
            Self::Material(e) if e.forbidden => Class::Forbidden,
            Self::Material(_) => Class::BadRequest,
            Self::NoMinter { .. }
            | Self::LogUnavailable(_)
            | Self::OutcomeUnavailable(_)
            | Self::MintFailed(_)
            | Self::MintOutcomeUnknown(_)
            | Self::SigningUnavailable(_)
            | Self::SigningFailed(_)
            | Self::Store(_) => Class::Unavailable,
        }
    }

    /// What the caller is told (never an internal cause).
    pub fn message(&self) -> String {
        match self {
            Self::RateLimited => "too many requests for this identity".into(),
            Self::Approval(a) => match a {
                ApprovalRefusal::BadId => "approval id too long".into(),
                ApprovalRefusal::Unknown => "no such approval".into(),
                ApprovalRefusal::Mismatch => "the approval was given for a different request (identity, grant, TTL, purpose, the node or CI issuer asking and, for a CI job, the job itself must match)".into(),
                ApprovalRefusal::Pending => "the approval is still pending".into(),
                ApprovalRefusal::Rejected(reason) => format!("the request was rejected: {reason}"),
                ApprovalRefusal::Used => "the approval was already used".into(),
                ApprovalRefusal::Raced => "the approval was used by a concurrent request".into(),
                ApprovalRefusal::Expired => "the approval expired".into(),
            },
            Self::AuditMode { request_id, outcome } => format!(
                "the CI policy is in audit mode; the decision ({}) was logged as {request_id}",
                outcome.as_str()
            ),
            Self::StepUp { .. } => "held for approval".into(),
            Self::Denied { request_id, .. } => format!("denied (request {request_id})"),
            Self::Suspended { request_id, .. } => {
                format!("the identity is suspended (request {request_id})")
            }
            Self::SuspendedAtWrite { request_id } => {
                format!("suspended while the request was decided (request {request_id})")
            }
            Self::BreakGlassOverSuspension => {
                "the identity is suspended; break-glass does not override a suspension".into()
            }
            Self::BudgetExhausted { request_id } => {
                format!("budget exhausted (request {request_id})")
            }
            Self::TtlBelowUpstreamMinimum {
                ttl_seconds,
                minimum,
            } => format!(
                "the decided TTL ({ttl_seconds} s) is below STS's {minimum} s; the grant may set ttl_floor = \"upstream\""
            ),
            Self::NoMinter { .. } => {
                "no upstream is configured for this grant (a new kind needs a restart)".into()
            }
            Self::LogUnavailable(_) => "the issuance log cannot be written; nothing was issued".into(),
            Self::OutcomeUnavailable(_) => "the credential was minted but its outcome could not be logged; it was not returned, and was revoked upstream where the upstream allows".into(),
            Self::MintFailed(_) => "the upstream did not mint the credential; nothing was issued and the budget was refunded".into(),
            Self::MintOutcomeUnknown(_) => "the upstream did not answer; nothing was issued, and if it minted the credential, reconciliation revokes it or lists it for an operator (the budget is not refunded)".into(),
            Self::SigningUnavailable(_) => "signing keys unavailable".into(),
            Self::SigningFailed(_) => "the credential could not be signed".into(),
            Self::Store(StoreError::Conflict(_)) => "already exists".into(),
            Self::Store(_) => "the store is unavailable; nothing was issued".into(),
            Self::Material(e) => e.message.clone(),
        }
    }

    /// The reason codes the answer lists.
    pub fn reasons(&self) -> Vec<String> {
        let codes = |r: &[Reason]| r.iter().map(|r| r.code().to_owned()).collect();
        match self {
            Self::Approval(ApprovalRefusal::BadId | ApprovalRefusal::Raced) => Vec::new(),
            Self::Approval(_) => vec![self.code().to_owned()],
            Self::Denied { reasons, .. } | Self::Suspended { reasons, .. } => codes(reasons),
            Self::StepUp { decision, .. } => codes(&decision.reasons),
            Self::SuspendedAtWrite { .. } => vec!["suspended_at_write".into()],
            Self::BudgetExhausted { .. } => vec!["budget_exhausted".into()],
            _ => Vec::new(),
        }
    }

    /// The internal cause of an [`Class::Unavailable`] refusal, for the
    /// broker's own log (never sent).
    pub fn cause(&self) -> Option<String> {
        match self {
            Self::NoMinter { grant } => Some(format!("no minter for grant {grant}")),
            Self::LogUnavailable(c)
            | Self::OutcomeUnavailable(c)
            | Self::MintFailed(c)
            | Self::MintOutcomeUnknown(c)
            | Self::SigningUnavailable(c)
            | Self::SigningFailed(c) => Some(c.clone()),
            Self::Store(e) => Some(e.to_string()),
            _ => None,
        }
    }

    /// Whether nothing was issued for a reason that should not cost the
    /// request its consumed approval (the budget race lost, the log, the
    /// upstream or the keys unavailable): the approval is given back.
    pub fn gives_approval_back(&self) -> bool {
        matches!(
            self,
            Self::BudgetExhausted { .. }
                | Self::LogUnavailable(_)
                | Self::NoMinter { .. }
                | Self::MintFailed(_)
                | Self::SigningUnavailable(_)
        )
    }
}
