//! `[anomaly]`'s tuning: the analyzer's thresholds and the graduated
//! responses' (their logic is `crate::anomaly`'s).

use serde::{Deserialize, Serialize};

/// Tuning of the analyzer (`[anomaly]` in the broker's config and in
/// scenario files). Every threshold is a score 0–100 or a count.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyzerConfig {
    /// Decisions before an identity or issuer has a baseline. Default 30.
    pub cold_start_events: u64,
    /// Age before an identity or issuer has a baseline, hours. Default 72.
    pub cold_start_hours: f64,
    /// A rate no identity in cold start may exceed, per minute. Default 120.
    pub cold_start_rate_per_minute: f64,
    /// The short horizon rates are measured over, minutes. Default 5.
    pub short_minutes: f64,
    /// The long horizon of the baseline rate, hours. Default 24.
    pub baseline_hours: f64,
    /// A combined score at or above this is a detection. Default 40.
    pub detect_at: u8,
    /// A rate spike needs at least this many decisions in the short
    /// horizon. Default 8.
    pub min_burst: f64,
    /// Denials in the short horizon that make a burst. Default 5.
    pub denial_burst: f64,
    /// Grants first used within this many days count towards privilege
    /// accumulation. Default 7.
    pub accumulation_days: f64,
    /// An hour with less than this share of the identity's activity is off
    /// its profile. Default 0.01.
    pub off_hours_share: f64,
    /// Distinct identities an issuer mints for in the short horizon, beyond
    /// its own usual, that make a fan-out. Default 10.
    pub fanout_min_identities: f64,
}

impl Default for AnalyzerConfig {
    fn default() -> Self {
        Self {
            cold_start_events: 30,
            cold_start_hours: 72.0,
            cold_start_rate_per_minute: 120.0,
            short_minutes: 5.0,
            baseline_hours: 24.0,
            detect_at: 40,
            min_burst: 8.0,
            denial_burst: 5.0,
            accumulation_days: 7.0,
            off_hours_share: 0.01,
            fanout_min_identities: 10.0,
        }
    }
}

/// Score thresholds of the graduated responses (`[anomaly.responses]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ResponseConfig {
    /// How long a detection's `behaviour` signal stays fresh. Default 1800.
    pub signal_ttl_seconds: u64,
    /// Privilege reduction from this score. Default 60.
    pub reduce_at: u8,
    /// An alert from this score. Default 60.
    pub alert_at: u8,
    /// Every grant steps up from this score. Default 75.
    pub step_up_at: u8,
    /// Suspension from this score (when `suspend` is on). Default 90.
    pub suspend_at: u8,
    /// An issuer is anomalous (its requests denied) from this score. Default 80.
    pub issuer_deny_at: u8,
    /// Whether detections may suspend (off: they alert instead). Default on.
    pub suspend: bool,
}

impl Default for ResponseConfig {
    fn default() -> Self {
        Self {
            signal_ttl_seconds: 1800,
            reduce_at: 60,
            alert_at: 60,
            step_up_at: 75,
            suspend_at: 90,
            issuer_deny_at: 80,
            suspend: true,
        }
    }
}
