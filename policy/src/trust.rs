//! The trust score: six weighted signals, each `{value 0–100, observed_at, ttl}`,
//! combined into an integer 0–100, and the one place that maps a score to an
//! outcome.
//!
//! - A signal with weight 0 is disabled; a signal whose constraint is not
//!   configured (no allowed locations, hours or CIDRs) drops out; the remaining
//!   weights are renormalized.
//! - A configured signal that is missing, past its TTL, or observed in the
//!   future (beyond [`MAX_FUTURE_SKEW_SECONDS`]) counts as unknown and takes
//!   `unknown_value` (default 0): no fresh signals, no trust.
//! - The score is `Σ wᵢvᵢ / Σ wᵢ` rounded half-up, computed in integers so it
//!   is exact and monotone in every signal.
//! - The mapping never yields `suspend`: missing or stale data can deny, never
//!   suspend.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::PolicyError;
use crate::outcome::Outcome;
use crate::reason::Reason;

/// How far in the future a signal's `observed_at` may lie (clock skew between
/// replicas) before it is treated as unknown.
pub const MAX_FUTURE_SKEW_SECONDS: i64 = 5;

/// The six trust signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// Node or runner posture (enrollment age, SVID freshness, agent version, EDR/MDM).
    Posture,
    /// How the identity was proven (sha256 match, protected CI ref).
    Attestation,
    /// Anomaly analysis of the issuance log.
    Behaviour,
    /// Node labels or CI runner environment against allowed locations.
    Location,
    /// Request time against allowed hours.
    Time,
    /// The request path against allowed networks.
    Network,
}

impl SignalKind {
    /// All six, in table order.
    pub const ALL: [SignalKind; 6] = [
        SignalKind::Posture,
        SignalKind::Attestation,
        SignalKind::Behaviour,
        SignalKind::Location,
        SignalKind::Time,
        SignalKind::Network,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::Posture => "posture",
            SignalKind::Attestation => "attestation",
            SignalKind::Behaviour => "behaviour",
            SignalKind::Location => "location",
            SignalKind::Time => "time",
            SignalKind::Network => "network",
        }
    }
}

impl std::str::FromStr for SignalKind {
    type Err = UnknownSignalKind;

    fn from_str(s: &str) -> Result<Self, UnknownSignalKind> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or(UnknownSignalKind)
    }
}

/// A name that is not one of the six scored signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownSignalKind;

/// The kind a signal source posts to report a compromise of an identity or
/// a node: never scored; while fresh it is positive evidence that denies.
pub const COMPROMISE_SIGNAL: &str = "compromise";

/// The kinds a signal source may post: the six scored signals, then
/// [`COMPROMISE_SIGNAL`].
pub fn postable_signal_kinds() -> impl Iterator<Item = &'static str> {
    SignalKind::ALL
        .into_iter()
        .map(SignalKind::as_str)
        .chain([COMPROMISE_SIGNAL])
}

/// One observation of a signal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signal {
    /// 0 (no trust) to 100 (full trust).
    pub value: u8,
    /// When it was observed, seconds since the Unix epoch.
    pub observed_at: i64,
    /// How long it stays fresh, in seconds.
    pub ttl_seconds: u64,
    /// Who reported it (`broker`, `agent`, `edr:crowdstrike`, `anomaly`, …).
    pub source: String,
}

/// The signals a decision sees.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustInput {
    /// The latest observation of each signal (absent = missing).
    #[serde(default)]
    pub signals: BTreeMap<SignalKind, Signal>,
    /// Signals with no configured constraint for this identity and grant
    /// (no allowed locations, hours or CIDRs): they drop out of the score.
    #[serde(default)]
    pub unconstrained: BTreeSet<SignalKind>,
}

/// Signal weights (relative; renormalized over the signals taking part).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    /// Default 25.
    pub posture: u32,
    /// Default 20.
    pub attestation: u32,
    /// Default 20.
    pub behaviour: u32,
    /// Default 15.
    pub location: u32,
    /// Default 10.
    pub time: u32,
    /// Default 10.
    pub network: u32,
}

impl Default for Weights {
    fn default() -> Self {
        // The JIT-TRUST literature's defaults.
        Self {
            posture: 25,
            attestation: 20,
            behaviour: 20,
            location: 15,
            time: 10,
            network: 10,
        }
    }
}

impl Weights {
    /// The weight of one signal.
    pub fn get(&self, kind: SignalKind) -> u32 {
        match kind {
            SignalKind::Posture => self.posture,
            SignalKind::Attestation => self.attestation,
            SignalKind::Behaviour => self.behaviour,
            SignalKind::Location => self.location,
            SignalKind::Time => self.time,
            SignalKind::Network => self.network,
        }
    }
}

/// The `[trust]` configuration: weights, unknown value and thresholds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustConfig {
    /// Signal weights.
    pub weights: Weights,
    /// The value a missing or stale configured signal takes. Default 0.
    pub unknown_value: u8,
    /// Below this score: `deny`. Default 30.
    pub critical_below: u8,
    /// Below this score: `step_up`. Default 50.
    pub high_below: u8,
    /// `min_trust = min_trust_base + min_trust_per_eci × max(identity ECI,
    /// grant exposure)`; below it: `step_up`. Default 40.
    pub min_trust_base: f64,
    /// Default 0.4.
    pub min_trust_per_eci: f64,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            weights: Weights::default(),
            unknown_value: 0,
            critical_below: 30,
            high_below: 50,
            min_trust_base: 40.0,
            min_trust_per_eci: 0.4,
        }
    }
}

impl TrustConfig {
    /// Checks the configuration; the broker refuses to start on an error.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let bad = |key: &str, reason: String| PolicyError::Config {
            key: format!("trust.{key}"),
            reason,
        };
        let total: u64 = SignalKind::ALL
            .iter()
            .map(|k| u64::from(self.weights.get(*k)))
            .sum();
        if total == 0 {
            return Err(bad(
                "weights",
                "all weights are 0: at least one signal must count".into(),
            ));
        }
        if self.weights.get(SignalKind::ALL[0]) > 1_000_000 || total > 1_000_000 {
            return Err(bad("weights", "weights must sum to at most 1000000".into()));
        }
        if self.unknown_value > 100 {
            return Err(bad("unknown_value", "must be 0–100".into()));
        }
        if self.critical_below > 100 || self.high_below > 100 {
            return Err(bad("critical_below", "thresholds must be 0–100".into()));
        }
        if self.critical_below > self.high_below {
            return Err(bad(
                "critical_below",
                format!(
                    "critical_below ({}) exceeds high_below ({})",
                    self.critical_below, self.high_below
                ),
            ));
        }
        for (key, v) in [
            ("min_trust_base", self.min_trust_base),
            ("min_trust_per_eci", self.min_trust_per_eci),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(bad(key, format!("must be a finite number ≥ 0, got {v}")));
            }
        }
        Ok(())
    }

    /// `min_trust` for an identity ECI (effective, capped) and a grant exposure.
    pub fn min_trust(&self, identity_eci: f64, grant_exposure: f64) -> f64 {
        self.min_trust_base + self.min_trust_per_eci * identity_eci.max(grant_exposure)
    }

    /// The one mapping from a score to an outcome: below `critical_below` →
    /// `deny`, below `high_below` → `step_up`, below `min_trust` → `step_up`,
    /// else `allow`. Never `suspend`.
    pub fn outcome(&self, score: u8, min_trust: f64) -> (Outcome, Option<Reason>) {
        if score < self.critical_below {
            (Outcome::Deny, Some(Reason::TrustBelowCritical))
        } else if score < self.high_below {
            (Outcome::StepUp, Some(Reason::TrustBelowHigh))
        } else if f64::from(score) < min_trust {
            (Outcome::StepUp, Some(Reason::TrustBelowMinimum))
        } else {
            (Outcome::Allow, None)
        }
    }
}

/// What happened to one signal in the score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalStatus {
    /// Observed and within its TTL.
    Fresh,
    /// Observed, but past its TTL: took the unknown value.
    Expired,
    /// Observed in the future beyond the allowed skew: took the unknown value.
    FromFuture,
    /// Not observed: took the unknown value.
    Missing,
    /// Weight 0: disabled.
    Disabled,
    /// No constraint configured: dropped out.
    Dropped,
}

/// One signal's part in the score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalReport {
    /// Which signal.
    pub kind: SignalKind,
    /// Its configured weight.
    pub weight: u32,
    /// Its share of the score after renormalization (0–1; 0 when out).
    pub share: f64,
    /// The observed value, if any.
    pub observed: Option<u8>,
    /// The value that counted (observed if fresh, else the unknown value).
    pub value: Option<u8>,
    /// Seconds since observation, if observed.
    pub age_seconds: Option<i64>,
    /// Who reported it.
    pub source: Option<String>,
    /// Fresh, expired, missing, disabled or dropped.
    pub status: SignalStatus,
}

/// A trust score with its explanation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrustReport {
    /// 0–100.
    pub score: u8,
    /// Every signal, in table order.
    pub signals: Vec<SignalReport>,
}

impl TrustReport {
    /// Whether any configured signal took the unknown value.
    pub fn any_stale(&self) -> bool {
        self.signals.iter().any(|s| {
            matches!(
                s.status,
                SignalStatus::Expired | SignalStatus::Missing | SignalStatus::FromFuture
            )
        })
    }

    /// Whether no signal took part at all.
    pub fn no_signals(&self) -> bool {
        self.signals.iter().all(|s| s.value.is_none())
    }
}

/// Computes the trust score at `now` (seconds since the Unix epoch).
pub fn trust_score(config: &TrustConfig, input: &TrustInput, now: i64) -> TrustReport {
    let mut reports = Vec::with_capacity(SignalKind::ALL.len());
    let mut weighted: u64 = 0;
    let mut total: u64 = 0;
    for kind in SignalKind::ALL {
        let weight = config.weights.get(kind);
        let observed = input.signals.get(&kind);
        let age = observed.map(|s| now.saturating_sub(s.observed_at));
        let mut report = SignalReport {
            kind,
            weight,
            share: 0.0,
            observed: observed.map(|s| s.value.min(100)),
            value: None,
            age_seconds: age,
            source: observed.map(|s| s.source.clone()),
            status: SignalStatus::Missing,
        };
        if weight == 0 {
            report.status = SignalStatus::Disabled;
        } else if input.unconstrained.contains(&kind) {
            report.status = SignalStatus::Dropped;
        } else {
            let (status, value) = match (observed, age) {
                (Some(_), Some(age)) if age < -MAX_FUTURE_SKEW_SECONDS => {
                    (SignalStatus::FromFuture, config.unknown_value)
                }
                (Some(s), Some(age)) if age.max(0).unsigned_abs() > s.ttl_seconds => {
                    (SignalStatus::Expired, config.unknown_value)
                }
                (Some(s), Some(_)) => (SignalStatus::Fresh, s.value.min(100)),
                _ => (SignalStatus::Missing, config.unknown_value),
            };
            report.status = status;
            report.value = Some(value);
            weighted += u64::from(weight) * u64::from(value);
            total += u64::from(weight);
        }
        reports.push(report);
    }
    let score = if total == 0 {
        0
    } else {
        // Half-up rounding of weighted / total, exactly: floor((2w + t) / 2t).
        u8::try_from((2 * weighted + total) / (2 * total)).unwrap_or(100)
    };
    if total > 0 {
        for report in &mut reports {
            if report.value.is_some() {
                report.share = f64::from(report.weight) / total as f64;
            }
        }
    }
    TrustReport {
        score,
        signals: reports,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_signal_kind_parses_from_its_wire_name_and_compromise_is_postable_only() {
        for kind in SignalKind::ALL {
            assert_eq!(kind.as_str().parse::<SignalKind>(), Ok(kind));
        }
        assert_eq!(
            COMPROMISE_SIGNAL.parse::<SignalKind>(),
            Err(UnknownSignalKind)
        );
        assert_eq!(
            postable_signal_kinds().collect::<Vec<_>>(),
            [
                "posture",
                "attestation",
                "behaviour",
                "location",
                "time",
                "network",
                "compromise"
            ]
        );
    }

    fn signal(value: u8, observed_at: i64, ttl: u64) -> Signal {
        Signal {
            value,
            observed_at,
            ttl_seconds: ttl,
            source: "test".into(),
        }
    }

    fn all_fresh(value: u8) -> TrustInput {
        TrustInput {
            signals: SignalKind::ALL
                .iter()
                .map(|k| (*k, signal(value, 1000, 900)))
                .collect(),
            unconstrained: BTreeSet::new(),
        }
    }

    #[test]
    fn weighted_average_rounds_half_up() {
        let config = TrustConfig::default();
        assert_eq!(trust_score(&config, &all_fresh(80), 1000).score, 80);
        // posture 25×100 + the rest 0: 2500/100 = 25.
        let mut input = all_fresh(0);
        input
            .signals
            .insert(SignalKind::Posture, signal(100, 1000, 900));
        assert_eq!(trust_score(&config, &input, 1000).score, 25);
        // 1 of weight 2 over total 4 → 0.5 → rounds up to 1.
        let config = TrustConfig {
            weights: Weights {
                posture: 2,
                attestation: 2,
                behaviour: 0,
                location: 0,
                time: 0,
                network: 0,
            },
            ..TrustConfig::default()
        };
        let mut input = all_fresh(0);
        input
            .signals
            .insert(SignalKind::Posture, signal(1, 1000, 900));
        assert_eq!(trust_score(&config, &input, 1000).score, 1);
    }

    #[test]
    fn dropped_and_disabled_signals_renormalize() {
        let config = TrustConfig {
            weights: Weights {
                network: 0,
                ..Weights::default()
            },
            ..TrustConfig::default()
        };
        let mut input = all_fresh(100);
        input
            .signals
            .insert(SignalKind::Location, signal(0, 1000, 900));
        input
            .signals
            .insert(SignalKind::Network, signal(0, 1000, 900));
        // Location counts: 15 of 90 weight at 0 → 75 × 100 / 90 = 83.3 → 83.
        assert_eq!(trust_score(&config, &input, 1000).score, 83);
        // Location unconstrained: drops out; network disabled → 100.
        input.unconstrained.insert(SignalKind::Location);
        let report = trust_score(&config, &input, 1000);
        assert_eq!(report.score, 100);
        assert_eq!(report.signals[3].status, SignalStatus::Dropped);
        assert_eq!(report.signals[5].status, SignalStatus::Disabled);
        let shares: f64 = report.signals.iter().map(|s| s.share).sum();
        assert!((shares - 1.0).abs() < 1e-12);
    }

    #[test]
    fn stale_missing_and_future_signals_take_the_unknown_value() {
        let config = TrustConfig::default();
        let mut input = all_fresh(100);
        input
            .signals
            .insert(SignalKind::Posture, signal(100, 1000 - 901, 900));
        input.signals.remove(&SignalKind::Attestation);
        input
            .signals
            .insert(SignalKind::Behaviour, signal(100, 1000 + 60, 900));
        let report = trust_score(&config, &input, 1000);
        assert_eq!(report.signals[0].status, SignalStatus::Expired);
        assert_eq!(report.signals[1].status, SignalStatus::Missing);
        assert_eq!(report.signals[2].status, SignalStatus::FromFuture);
        assert_eq!(report.score, 35); // 35 of 100 weight fresh at 100
        assert!(report.any_stale());
        // Exactly at the TTL is still fresh; a small future skew is tolerated.
        input
            .signals
            .insert(SignalKind::Posture, signal(100, 1000 - 900, 900));
        input
            .signals
            .insert(SignalKind::Behaviour, signal(100, 1003, 900));
        let report = trust_score(&config, &input, 1000);
        assert_eq!(report.signals[0].status, SignalStatus::Fresh);
        assert_eq!(report.signals[2].status, SignalStatus::Fresh);
    }

    #[test]
    fn no_signals_scores_zero() {
        let config = TrustConfig::default();
        let input = TrustInput {
            signals: BTreeMap::new(),
            unconstrained: SignalKind::ALL.into_iter().collect(),
        };
        let report = trust_score(&config, &input, 0);
        assert_eq!(report.score, 0);
        assert!(report.no_signals());
    }

    #[test]
    fn outcome_mapping() {
        let config = TrustConfig::default();
        let min = config.min_trust(50.0, 20.0); // 40 + 0.4 × 50 = 60
        assert_eq!(min, 60.0);
        assert_eq!(
            config.outcome(29, min),
            (Outcome::Deny, Some(Reason::TrustBelowCritical))
        );
        assert_eq!(
            config.outcome(30, min),
            (Outcome::StepUp, Some(Reason::TrustBelowHigh))
        );
        assert_eq!(
            config.outcome(59, min),
            (Outcome::StepUp, Some(Reason::TrustBelowMinimum))
        );
        assert_eq!(config.outcome(60, min), (Outcome::Allow, None));
    }

    #[test]
    fn config_validation() {
        let zero = TrustConfig {
            weights: Weights {
                posture: 0,
                attestation: 0,
                behaviour: 0,
                location: 0,
                time: 0,
                network: 0,
            },
            ..TrustConfig::default()
        };
        assert!(zero.validate().is_err());
        assert!(TrustConfig::default().validate().is_ok());
        let inverted = TrustConfig {
            critical_below: 60,
            ..TrustConfig::default()
        };
        assert!(inverted.validate().is_err());
    }

    fn arb_input() -> impl Strategy<Value = TrustInput> {
        (
            proptest::collection::btree_map(
                proptest::sample::select(SignalKind::ALL.to_vec()),
                (0u8..=100, -2000i64..2000, 0u64..3000).prop_map(|(v, t, ttl)| signal(v, t, ttl)),
                0..=6,
            ),
            proptest::collection::btree_set(
                proptest::sample::select(SignalKind::ALL.to_vec()),
                0..=6,
            ),
        )
            .prop_map(|(signals, unconstrained)| TrustInput {
                signals,
                unconstrained,
            })
    }

    fn arb_weights() -> impl Strategy<Value = Weights> {
        (0u32..50, 0u32..50, 0u32..50, 0u32..50, 0u32..50, 1u32..50).prop_map(
            |(posture, attestation, behaviour, location, time, network)| Weights {
                posture,
                attestation,
                behaviour,
                location,
                time,
                network,
            },
        )
    }

    proptest! {
        #[test]
        fn score_is_in_range(weights in arb_weights(), input in arb_input(), now in -3000i64..3000) {
            let config = TrustConfig { weights, ..TrustConfig::default() };
            let report = trust_score(&config, &input, now);
            prop_assert!(report.score <= 100);
        }

        #[test]
        fn score_is_monotone_in_each_signal(
            weights in arb_weights(),
            input in arb_input(),
            kind in proptest::sample::select(SignalKind::ALL.to_vec()),
            bump in 0u8..=100,
            now in -3000i64..3000,
        ) {
            let config = TrustConfig { weights, ..TrustConfig::default() };
            let before = trust_score(&config, &input, now).score;
            let mut higher = input.clone();
            match higher.signals.get_mut(&kind) {
                // Same freshness, higher value.
                Some(s) => s.value = s.value.saturating_add(bump).min(100),
                // A fresh observation at least the unknown value replaces "missing".
                None => {
                    higher.signals.insert(kind, signal(bump.max(config.unknown_value), now, 100));
                }
            }
            prop_assert!(trust_score(&config, &higher, now).score >= before);
        }
    }
}
