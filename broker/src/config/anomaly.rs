//! `[anomaly]`: whether and how often the log is analysed, the analyzer's
//! thresholds, the graduated responses and the alert webhook (their logic
//! is `crate::anomaly`'s).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Dur, Invalid};

/// `[anomaly]`: analysis of the issuance log off the request path, and what
/// its detections do.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Run the analysis. Default on.
    pub enabled: bool,
    /// `enforce` (default): detections become signals, responses and
    /// suspensions; `observe`: detections are logged and alerted only.
    pub mode: AnomalyMode,
    /// How often the log is read for new decisions. Default 1 s.
    pub interval: Dur,
    /// How much of the log rebuilds the baselines at start. Default 28 days.
    pub history: Dur,
    /// Analysis that has not advanced for `interval` × this many is lagging
    /// or down: the `behaviour` signal is then stale (unknown to the trust
    /// score), `mintguard_anomaly_analysis_stale` is 1 and `/healthz` says
    /// so. Default 30 (2..=10000).
    pub stale_after_intervals: u32,
    /// Baselines and detectors.
    pub detectors: AnalyzerConfig,
    /// Graduated responses.
    pub responses: ResponseConfig,
    /// An alert webhook.
    pub webhook: Option<WebhookConfig>,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: AnomalyMode::Enforce,
            interval: Dur(Duration::from_secs(1)),
            history: Dur(Duration::from_secs(28 * 86_400)),
            stale_after_intervals: 30,
            detectors: AnalyzerConfig::default(),
            responses: ResponseConfig::default(),
            webhook: None,
        }
    }
}

/// Whether detections act or only inform.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyMode {
    /// Signals, responses, suspensions.
    #[default]
    Enforce,
    /// Logged and alerted only.
    Observe,
}

/// `[anomaly.webhook]`: alerts as JSON POSTs, the body signed with
/// HMAC-SHA256 (`X-Mintguard-Signature: sha256=<hex>`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST (https, or http on loopback).
    pub url: String,
    /// A file holding the HMAC secret (0600).
    pub secret_file: PathBuf,
    /// Alerts waiting to be sent; beyond it new ones are dropped and
    /// counted. Default 1000.
    #[serde(default = "default_webhook_queue")]
    pub queue: usize,
    /// Attempts per alert (backoff 0.5 s doubling). Default 6.
    #[serde(default = "default_webhook_attempts")]
    pub max_attempts: u32,
    /// A CA file for the receiver's certificate (default: system roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_webhook_queue() -> usize {
    1000
}

fn default_webhook_attempts() -> u32 {
    6
}

impl AnomalyConfig {
    /// Scores 0–100, a staleness of 2..=10000 intervals, an interval of at
    /// least 10 ms, a webhook over https (plain http only on loopback).
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(2..=10_000).contains(&self.stale_after_intervals) {
            return Err(Invalid::new(
                "anomaly.stale_after_intervals",
                "must be 2..=10000",
            ));
        }
        let r = &self.responses;
        for (name, v) in [
            ("reduce_at", r.reduce_at),
            ("alert_at", r.alert_at),
            ("step_up_at", r.step_up_at),
            ("suspend_at", r.suspend_at),
            ("issuer_deny_at", r.issuer_deny_at),
        ] {
            if v > 100 {
                return Err(Invalid::new(
                    format!("anomaly.responses.{name}"),
                    "must be 0–100",
                ));
            }
        }
        if self.detectors.detect_at > 100 {
            return Err(Invalid::new("anomaly.detectors.detect_at", "must be 0–100"));
        }
        if self.interval.0 < Duration::from_millis(10) {
            return Err(Invalid::new("anomaly.interval", "must be at least 10ms"));
        }
        if let Some(w) = &self.webhook {
            let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                .iter()
                .any(|p| w.url.starts_with(p));
            if !(w.url.starts_with("https://") || loopback) {
                return Err(Invalid::new(
                    "anomaly.webhook.url",
                    "https, or plain http only on loopback",
                ));
            }
        }
        Ok(())
    }
}

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
