//! `decide()`: one pure function from an explicit input to an outcome with
//! its reasons and every number used.
//!
//! It combines, strongest outcome winning:
//!
//! 1. the identity's suspension (operator or detection) → `suspend`;
//! 2. the issuer context: may this node / CI issuer vouch for the identity,
//!    is it suspended or anomalous → `deny`;
//! 3. the trust score and its mapping ([`TrustConfig::outcome`]) → `deny` /
//!    `step_up`; no signal at all → `deny`;
//! 4. the Cedar rules ([`RuleSet::evaluate`]) — a rule's `suspend` stands only
//!    with positive evidence (a detection, an external compromise signal, an
//!    operator) and is otherwise downgraded to `deny`;
//! 5. an approval of this exact request lifts `step_up` (nothing else);
//! 6. TTL capping: the grant's `max_ttl`, and for `allow_reduced` the reduced
//!    variant's (or half the TTL when the grant has none);
//! 7. budgets: the cost of this issuance against each budget's available
//!    balance → `deny` (`budget_exhausted`) when one cannot pay.
//!
//! `decide()` never spends: it returns the costs to spend ([`Decision::spend`]),
//! and the broker spends them atomically with the log record.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::budget::{BudgetPolicy, BudgetSnapshot, MILLI};
use crate::outcome::Outcome;
use crate::reason::Reason;
use crate::rules::{MatchedRule, RuleSet};
use crate::trust::{SignalKind, TrustInput, TrustReport, trust_score};

mod cedar;

pub use cedar::CI_CLAIMS;
use cedar::cedar_request;

/// Who is asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A workload attested by a node agent.
    Workload,
    /// A CI job with an OIDC token.
    CiJob,
}

/// What vouches for the principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssuerKind {
    /// An enrolled node (its SVID).
    Node,
    /// A CI OIDC issuer.
    CiIssuer,
}

/// A graduated response anomaly analysis asks for: the combined score of the
/// identity's fresh detections and which detectors made it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyInput {
    /// The combined detection score, 0–100 (0: nothing detected).
    pub score: u8,
    /// The detectors' reason codes.
    #[serde(default)]
    pub detectors: Vec<String>,
    /// Issue the reduced variant (shorter TTL).
    #[serde(default)]
    pub reduce: bool,
    /// Hold every grant for approval.
    #[serde(default)]
    pub step_up: bool,
}

/// The issuer context the broker established.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerContext {
    /// Node or CI issuer.
    pub kind: IssuerKind,
    /// The node's SPIFFE ID or the CI issuer URL.
    pub id: String,
    /// Whether it may vouch for this identity (the entry's parent; a matching CI trust policy).
    pub may_vouch: bool,
    /// Whether it is suspended.
    #[serde(default)]
    pub suspended: bool,
    /// Whether its own behaviour is anomalous.
    #[serde(default)]
    pub anomalous: bool,
}

/// The grant asked for, as configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantInput {
    /// Its name.
    pub name: String,
    /// `jwt`, `vault`, `aws_sts` or `static_secret`.
    pub kind: String,
    /// The longest TTL it issues, seconds.
    pub max_ttl_seconds: u64,
    /// The reduced variant's longest TTL, seconds, when it has one.
    #[serde(default)]
    pub reduced_max_ttl_seconds: Option<u64>,
}

/// The ECI values the decision uses (computed off the request path).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EciInput {
    /// The identity's effective ECI, uncapped (0–300).
    pub identity_effective: f64,
    /// The grant's exposure: the structural ECI of its grant node (0–100).
    pub grant_exposure: f64,
    /// The issuer's blast radius: the highest effective ECI (capped) it may vouch for.
    pub issuer_blast_radius: f64,
    /// How the identity's ECI was made, for the operator; the decision reads
    /// only `identity_effective`. `None` for an identity the ECI was not
    /// computed for (counted at 300) and in records written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explained: Option<EciExplained>,
}

/// An identity's ECI, factor by factor (see `examples/graphs/README.md`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EciExplained {
    /// Its personalized PageRank.
    pub ppr: f64,
    /// The five factors, each 0–1.
    pub factors: crate::eci::Factors,
    /// `100 × Σ weight × factor`.
    pub structural: f64,
    /// The hygiene modifier (1–3).
    pub hygiene_modifier: f64,
}

impl EciExplained {
    /// The explanation of `node`, when it is an identity or grant with factors.
    pub fn of(node: &crate::eci::NodeEci) -> Option<Self> {
        Some(Self {
            ppr: node.ppr,
            factors: node.factors?,
            structural: node.structural_eci?,
            hygiene_modifier: node.hygiene_modifier?,
        })
    }
}

/// One budget that applies, with the balance the decision saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetView {
    /// Which bucket, e.g. `identity:spiffe://…/grant:payments-db`.
    pub key: String,
    /// Its configuration.
    pub policy: BudgetPolicy,
    /// Its stored balance.
    pub snapshot: BudgetSnapshot,
}

/// Positive evidence of compromise: the only thing that lets a `suspend` stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceKind {
    /// An anomaly detection on the issuance log.
    Detection,
    /// An external compromise signal (EDR, SIEM) through the signals API.
    CompromiseSignal,
    /// An operator.
    Operator,
}

/// One piece of positive evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Its kind.
    pub kind: EvidenceKind,
    /// What it is (a detection id, a signal source, an operator name).
    pub detail: String,
}

/// An identity's standing suspension.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suspension {
    /// What suspended it.
    pub evidence: Evidence,
}

/// Everything `decide()` looks at. Serialized into every log record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionInput {
    /// The principal's SPIFFE ID.
    pub identity: String,
    /// Workload or CI job.
    pub principal: PrincipalKind,
    /// Who vouches for it.
    pub issuer: IssuerContext,
    /// The grant.
    pub grant: GrantInput,
    /// The TTL asked for (the grant's maximum when absent).
    #[serde(default)]
    pub requested_ttl_seconds: Option<u64>,
    /// The purpose given.
    #[serde(default)]
    pub purpose: Option<String>,
    /// Now, milliseconds since the Unix epoch.
    pub now_ms: i64,
    /// The trust signals.
    pub signals: TrustInput,
    /// ECI values.
    pub eci: EciInput,
    /// The budgets that apply, with their balances.
    #[serde(default)]
    pub budgets: Vec<BudgetView>,
    /// Positive evidence of compromise accompanying this request.
    #[serde(default)]
    pub evidence: Vec<Evidence>,
    /// The identity's standing suspension, if any.
    #[serde(default)]
    pub suspension: Option<Suspension>,
    /// Whether an approver approved this exact request (a step-up redeemed).
    #[serde(default)]
    pub approved: bool,
    /// What anomaly analysis asks of this decision (from the identity's
    /// fresh detections).
    #[serde(default)]
    pub anomaly: AnomalyInput,
    /// CI token claims (CI jobs).
    #[serde(default)]
    pub ci_claims: BTreeMap<String, String>,
}

/// The ECI numbers as the decision and Cedar saw them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EciNumbers {
    /// round(min(100, effective)).
    pub eci: i64,
    /// round(100 × effective), uncapped.
    pub eci_raw: i64,
    /// round(grant exposure).
    pub grant_exposure: i64,
    /// round(issuer blast radius).
    pub issuer_blast_radius: i64,
}

/// One budget's check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetCheck {
    /// Which bucket.
    pub key: String,
    /// Available before this issuance, millitokens.
    pub available_milli: i64,
    /// This issuance's cost, tokens.
    pub cost: u64,
    /// Whether it can pay.
    pub sufficient: bool,
}

/// A cost for the broker to spend atomically with the log record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spend {
    /// Which bucket.
    pub key: String,
    /// Tokens.
    pub cost: u64,
}

/// A decision with its reasons and every number used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The outcome.
    pub outcome: Outcome,
    /// Why, sorted.
    pub reasons: Vec<Reason>,
    /// The trust score and each signal's part in it.
    pub trust: TrustReport,
    /// The minimum trust this request needed.
    pub min_trust: f64,
    /// ECI numbers.
    pub eci: EciNumbers,
    /// The TTL asked for, seconds.
    pub requested_ttl_seconds: u64,
    /// The TTL to mint, seconds (after caps and reduction).
    pub ttl_seconds: u64,
    /// Whether to mint the grant's reduced variant.
    pub reduced: bool,
    /// Each budget's check.
    pub budgets: Vec<BudgetCheck>,
    /// What to spend (only when the outcome mints).
    pub spend: Vec<Spend>,
    /// The Cedar rules that matched.
    pub rules: Vec<MatchedRule>,
    /// Cedar evaluation errors, if any.
    pub rule_errors: Vec<String>,
    /// The hash of the rule set that decided.
    pub rule_set_hash: String,
}

/// What a rule set decided, in brief: what a decision record keeps of a
/// shadow rule set's decision, and what a what-if compares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    /// The rule set that decided.
    pub rule_set_hash: String,
    /// The outcome.
    pub outcome: Outcome,
    /// Why, sorted.
    pub reasons: Vec<Reason>,
    /// The TTL it would mint, seconds.
    pub ttl_seconds: u64,
    /// Whether it would mint the reduced variant.
    pub reduced: bool,
    /// The `@id`s of the Cedar rules that matched.
    pub rules: Vec<String>,
}

impl Verdict {
    /// `decision` in brief.
    pub fn of(decision: &Decision) -> Self {
        Self {
            rule_set_hash: decision.rule_set_hash.clone(),
            outcome: decision.outcome,
            reasons: decision.reasons.clone(),
            ttl_seconds: decision.ttl_seconds,
            reduced: decision.reduced,
            rules: decision.rules.iter().map(|r| r.id.clone()).collect(),
        }
    }
}

/// Budget balance Cedar sees when no budget applies.
pub const UNLIMITED_BUDGET: i64 = 1_000_000_000;

fn round_half_up(x: f64) -> i64 {
    if x.is_finite() {
        (x + 0.5).floor() as i64
    } else {
        0
    }
}

/// Decides one request. Pure: the same input and rule set give the same decision.
pub fn decide(input: &DecisionInput, rules: &RuleSet) -> Decision {
    let config = rules.trust();
    let now_s = input.now_ms.div_euclid(1000);
    // (outcome, reason) contributions; the strongest outcome wins.
    let mut contributions: Vec<(Outcome, Reason)> = Vec::new();

    // 1. Standing suspension.
    if input.suspension.is_some() {
        contributions.push((Outcome::Suspend, Reason::IdentitySuspended));
    }

    // 2. Issuer context.
    if !input.issuer.may_vouch {
        contributions.push((Outcome::Deny, Reason::IssuerMayNotVouch));
    }
    if input.issuer.suspended {
        contributions.push((Outcome::Deny, Reason::IssuerSuspended));
    }
    if input.issuer.anomalous {
        contributions.push((Outcome::Deny, Reason::IssuerAnomalous));
    }

    // 3. Trust.
    let trust = trust_score(config, &input.signals, now_s);
    let effective = if input.eci.identity_effective.is_finite() {
        input.eci.identity_effective.max(0.0)
    } else {
        300.0
    };
    let capped = effective.min(100.0);
    let exposure = if input.eci.grant_exposure.is_finite() {
        input.eci.grant_exposure.max(0.0)
    } else {
        100.0
    };
    let eci = EciNumbers {
        eci: round_half_up(capped),
        eci_raw: round_half_up(100.0 * effective),
        grant_exposure: round_half_up(exposure),
        issuer_blast_radius: round_half_up(input.eci.issuer_blast_radius.max(0.0)),
    };
    let min_trust = config.min_trust(capped, exposure);
    if trust.no_signals() {
        contributions.push((Outcome::Deny, Reason::NoTrustSignals));
    } else {
        if trust.any_stale() {
            contributions.push((Outcome::Allow, Reason::SignalStale));
        }
        if let (outcome, Some(reason)) = config.outcome(trust.score, min_trust) {
            contributions.push((outcome, reason));
        }
    }

    // Graduated responses of anomaly analysis (its `behaviour` signal
    // already lowered the trust score above).
    if input.anomaly.step_up {
        contributions.push((Outcome::StepUp, Reason::AnomalyStepUp));
    }
    if input.anomaly.reduce {
        contributions.push((Outcome::AllowReduced, Reason::AnomalyReduced));
    }

    // TTL, capped by the grant.
    let cap = input.grant.max_ttl_seconds.max(1);
    let requested = input.requested_ttl_seconds.unwrap_or(cap).max(1);
    let mut ttl = requested.min(cap);
    if requested > cap {
        contributions.push((Outcome::Allow, Reason::TtlCapped));
    }

    // Budgets as they stand (Cedar sees the tightest).
    let budget_available = input
        .budgets
        .iter()
        .map(|b| b.snapshot.available(&b.policy, input.now_ms) / MILLI)
        .min()
        .unwrap_or(UNLIMITED_BUDGET);

    // 4. Rules.
    let (rules_matched, rule_errors) =
        match cedar_request(rules, input, &trust, &eci, requested, ttl, budget_available) {
            Ok((request, entities)) => {
                let verdict = rules.evaluate(&input.grant.name, &request, &entities);
                for reason in &verdict.reasons {
                    let outcome = match reason {
                        Reason::RuleStepUp => Outcome::StepUp,
                        Reason::RuleAllowReduced => Outcome::AllowReduced,
                        Reason::RuleSuspend
                            if input.evidence.is_empty() && input.suspension.is_none() =>
                        {
                            contributions
                                .push((Outcome::Deny, Reason::SuspendDowngradedNoEvidence));
                            Outcome::Deny
                        }
                        Reason::RuleSuspend => {
                            contributions.push((Outcome::Suspend, Reason::CompromiseEvidence));
                            Outcome::Suspend
                        }
                        _ => Outcome::Deny,
                    };
                    contributions.push((outcome, *reason));
                }
                (verdict.matched, verdict.errors)
            }
            Err(e) => {
                contributions.push((Outcome::Deny, Reason::RuleError));
                (Vec::new(), vec![e])
            }
        };

    // 5. An approval lifts step-ups, nothing else.
    if input.approved && contributions.iter().any(|(o, _)| *o == Outcome::StepUp) {
        for (outcome, _) in contributions.iter_mut() {
            if *outcome == Outcome::StepUp {
                *outcome = Outcome::Allow;
            }
        }
        contributions.push((Outcome::Allow, Reason::StepUpApproved));
    }
    let mut outcome = contributions
        .iter()
        .map(|(o, _)| *o)
        .max()
        .unwrap_or(Outcome::Allow);

    // 6. Privilege reduction.
    let reduced = outcome == Outcome::AllowReduced;
    if reduced {
        ttl = match input.grant.reduced_max_ttl_seconds {
            Some(max) => ttl.min(max.max(1)),
            None => (ttl / 2).max(1),
        };
    }

    // 7. Budgets: what this issuance costs, and whether each bucket can pay.
    let mut budgets = Vec::with_capacity(input.budgets.len());
    for view in &input.budgets {
        let cost = view.policy.cost(ttl, capped);
        let available = view.snapshot.available(&view.policy, input.now_ms);
        let sufficient = i64::try_from(cost)
            .ok()
            .and_then(|c| c.checked_mul(MILLI))
            .is_some_and(|c| available >= c);
        budgets.push(BudgetCheck {
            key: view.key.clone(),
            available_milli: available,
            cost,
            sufficient,
        });
    }
    if outcome.mints() && budgets.iter().any(|b| !b.sufficient) {
        contributions.push((Outcome::Deny, Reason::BudgetExhausted));
        outcome = outcome.stronger(Outcome::Deny);
    }
    let spend = if outcome.mints() {
        budgets
            .iter()
            .map(|b| Spend {
                key: b.key.clone(),
                cost: b.cost,
            })
            .collect()
    } else {
        Vec::new()
    };

    let mut reasons: Vec<Reason> = contributions.into_iter().map(|(_, r)| r).collect();
    reasons.sort();
    reasons.dedup();
    Decision {
        outcome,
        reasons,
        trust,
        min_trust,
        eci,
        requested_ttl_seconds: requested,
        ttl_seconds: ttl,
        reduced,
        budgets,
        spend,
        rules: rules_matched,
        rule_errors,
        rule_set_hash: rules.hash().to_owned(),
    }
}

/// Every signal kind, for callers building inputs.
pub fn signal_kinds() -> [SignalKind; 6] {
    SignalKind::ALL
}

/// A full bucket for `policy` at `now_ms` (convenience for callers and tests).
pub fn full_budget(policy: &BudgetPolicy, now_ms: i64) -> BudgetSnapshot {
    BudgetSnapshot::full(policy, now_ms)
}
