//! The reason-code registry: every reason a decision can give, one enum,
//! serialized in `snake_case`. Codes are stable: new codes may be added, none
//! is renamed or reused.

use serde::{Deserialize, Serialize};

/// A machine-readable reason behind a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    // === issuer context ===
    /// The vouching node is not the registration entry's parent, or no CI
    /// trust policy lets this issuer vouch for the identity.
    IssuerMayNotVouch,
    /// The vouching node or CI issuer is suspended.
    IssuerSuspended,
    /// The vouching node or CI issuer behaves anomalously.
    IssuerAnomalous,

    // === identity state ===
    /// The identity is suspended (by an operator or a detection).
    IdentitySuspended,
    /// Positive evidence of compromise accompanies this request.
    CompromiseEvidence,

    // === trust ===
    /// The trust score is below `critical_below`.
    TrustBelowCritical,
    /// The trust score is below `high_below`.
    TrustBelowHigh,
    /// The trust score is below the ECI-dependent minimum.
    TrustBelowMinimum,
    /// No signal took part in the trust score (all disabled or dropped).
    NoTrustSignals,
    /// At least one configured signal was missing or past its TTL and took the
    /// unknown value.
    SignalStale,

    // === rules ===
    /// No Cedar `permit` matched (default deny).
    NoPermit,
    /// A Cedar `forbid` without `@outcome` matched.
    RuleForbid,
    /// A Cedar `forbid` with `@outcome("step_up")` matched.
    RuleStepUp,
    /// A Cedar `forbid` with `@outcome("allow_reduced")` matched.
    RuleAllowReduced,
    /// A Cedar `forbid` with `@outcome("suspend")` matched.
    RuleSuspend,
    /// A `suspend` was asked for without positive evidence and became `deny`.
    SuspendDowngradedNoEvidence,
    /// Cedar could not evaluate a policy (e.g. a missing attribute); fails closed.
    RuleError,

    // === budget ===
    /// A budget cannot pay this issuance's cost.
    BudgetExhausted,

    // === TTL and approval ===
    /// The requested TTL was cut to the grant's (or reduced variant's) maximum.
    TtlCapped,
    /// A step-up was approved for this exact request.
    StepUpApproved,
    /// Anomaly analysis asks for a step-up for this identity.
    AnomalyStepUp,
    /// Anomaly analysis asks for privilege reduction for this identity.
    AnomalyReduced,
    /// A break-glass request, confirmed by a second person, overrode the
    /// decision (the record keeps what was decided).
    BreakGlass,
}

impl Reason {
    /// Every reason code, in declaration order (for docs and tests).
    pub const ALL: &'static [Reason] = &[
        Reason::IssuerMayNotVouch,
        Reason::IssuerSuspended,
        Reason::IssuerAnomalous,
        Reason::IdentitySuspended,
        Reason::CompromiseEvidence,
        Reason::TrustBelowCritical,
        Reason::TrustBelowHigh,
        Reason::TrustBelowMinimum,
        Reason::NoTrustSignals,
        Reason::SignalStale,
        Reason::NoPermit,
        Reason::RuleForbid,
        Reason::RuleStepUp,
        Reason::RuleAllowReduced,
        Reason::RuleSuspend,
        Reason::SuspendDowngradedNoEvidence,
        Reason::RuleError,
        Reason::BudgetExhausted,
        Reason::TtlCapped,
        Reason::StepUpApproved,
        Reason::AnomalyStepUp,
        Reason::AnomalyReduced,
        Reason::BreakGlass,
    ];

    /// The code as it appears on the wire.
    pub fn code(self) -> &'static str {
        match self {
            Reason::IssuerMayNotVouch => "issuer_may_not_vouch",
            Reason::IssuerSuspended => "issuer_suspended",
            Reason::IssuerAnomalous => "issuer_anomalous",
            Reason::IdentitySuspended => "identity_suspended",
            Reason::CompromiseEvidence => "compromise_evidence",
            Reason::TrustBelowCritical => "trust_below_critical",
            Reason::TrustBelowHigh => "trust_below_high",
            Reason::TrustBelowMinimum => "trust_below_minimum",
            Reason::NoTrustSignals => "no_trust_signals",
            Reason::SignalStale => "signal_stale",
            Reason::NoPermit => "no_permit",
            Reason::RuleForbid => "rule_forbid",
            Reason::RuleStepUp => "rule_step_up",
            Reason::RuleAllowReduced => "rule_allow_reduced",
            Reason::RuleSuspend => "rule_suspend",
            Reason::SuspendDowngradedNoEvidence => "suspend_downgraded_no_evidence",
            Reason::RuleError => "rule_error",
            Reason::BudgetExhausted => "budget_exhausted",
            Reason::TtlCapped => "ttl_capped",
            Reason::StepUpApproved => "step_up_approved",
            Reason::AnomalyStepUp => "anomaly_step_up",
            Reason::AnomalyReduced => "anomaly_reduced",
            Reason::BreakGlass => "break_glass",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_serde_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for reason in Reason::ALL {
            let json = serde_json::to_string(reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.code()));
            assert!(seen.insert(reason.code()), "duplicate code {reason}");
        }
    }
}
