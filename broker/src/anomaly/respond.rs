//! Graduated responses: what a detection does, and what the next decision
//! reads back from it.
//!
//! A detection with combined score `s` about an identity becomes a
//! `behaviour` signal of value `100 − s` from source `anomaly:<detectors>`
//! (fresh for `signal_ttl_seconds`), so the next `decide()` sees a lower
//! trust score — grants whose `min_trust` is above it (high exposure first)
//! step up. On top, by score:
//!
//! | score ≥        | response                                              |
//! |----------------|-------------------------------------------------------|
//! | `reduce_at`    | the reduced variant (shorter TTL) for every grant     |
//! | `alert_at`     | an alert (webhook and the log)                        |
//! | `step_up_at`   | every grant held for approval                         |
//! | `suspend_at`   | suspension of the identity (its leases revoked)       |
//!
//! About an issuer (node or CI issuer), the signal lowers the trust of every
//! identity it vouches for; at `issuer_deny_at` it is anomalous (every
//! request through it denied) and at `suspend_at` suspended. Detections are
//! positive evidence: they, external compromise signals and operators are
//! the only things that suspend.

use mintguard_policy::decision::AnomalyInput;

use super::analyzer::{Detection, Subject};
pub use crate::config::anomaly::ResponseConfig;
use crate::store::SignalRecord;

/// The source prefix of anomaly signals.
pub const SOURCE: &str = "anomaly:";

/// What to do about one detection.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    /// The `behaviour` signal to record.
    pub signal: SignalRecord,
    /// Send an alert.
    pub alert: bool,
    /// Suspend the subject.
    pub suspend: bool,
    /// The response level, for the record: `signal`, `reduce`, `step_up`,
    /// `suspend` (issuers: `signal`, `deny`, `suspend`).
    pub level: &'static str,
}

impl ResponseConfig {
    /// The response to `detection`.
    pub fn respond(&self, detection: &Detection) -> Response {
        let s = detection.score;
        let suspend = self.suspend && s >= self.suspend_at;
        let level = match (&detection.subject, s) {
            _ if suspend => "suspend",
            (Subject::Issuer(_), s) if s >= self.issuer_deny_at => "deny",
            (Subject::Identity(_), s) if s >= self.step_up_at => "step_up",
            (Subject::Identity(_), s) if s >= self.reduce_at => "reduce",
            _ => "signal",
        };
        Response {
            signal: SignalRecord {
                subject: detection.subject.id().to_owned(),
                kind: "behaviour".into(),
                source: format!("{SOURCE}{}", detection.codes()),
                value: 100 - s.min(100),
                observed_at_ms: detection.time_ms,
                ttl_seconds: self.signal_ttl_seconds,
            },
            alert: s >= self.alert_at,
            suspend,
            level,
        }
    }

    /// What the next decision for `identity` reads from the fresh anomaly
    /// signal about it (the lowest, if several).
    pub fn anomaly_input(
        &self,
        identity: &str,
        signals: &[SignalRecord],
        now_ms: i64,
    ) -> AnomalyInput {
        let Some(signal) = freshest_low(identity, signals, now_ms) else {
            return AnomalyInput::default();
        };
        let score = 100 - signal.value.min(100);
        AnomalyInput {
            score,
            detectors: signal.source[SOURCE.len()..]
                .split('+')
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect(),
            reduce: score >= self.reduce_at,
            step_up: score >= self.step_up_at,
        }
    }

    /// Whether the fresh anomaly signal about `issuer` makes it anomalous.
    pub fn issuer_anomalous(&self, issuer: &str, signals: &[SignalRecord], now_ms: i64) -> bool {
        freshest_low(issuer, signals, now_ms)
            .is_some_and(|s| 100 - s.value.min(100) >= self.issuer_deny_at)
    }
}

/// The lowest fresh anomaly signal about `subject`.
fn freshest_low<'a>(
    subject: &str,
    signals: &'a [SignalRecord],
    now_ms: i64,
) -> Option<&'a SignalRecord> {
    signals
        .iter()
        .filter(|s| {
            s.subject == subject
                && s.kind == "behaviour"
                && s.source.starts_with(SOURCE)
                && s.observed_at_ms + i64::try_from(s.ttl_seconds).unwrap_or(0) * 1000 >= now_ms
        })
        .min_by_key(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::analyzer::Detector;

    fn detection(subject: Subject, score: u8) -> Detection {
        Detection {
            time_ms: 1_000,
            subject,
            score,
            detectors: vec![(Detector::RateSpike, score)],
            evidence: serde_json::Value::Null,
        }
    }

    #[test]
    fn responses_are_graduated_and_read_back_by_the_next_decision() {
        let c = ResponseConfig::default();
        let id = || Subject::Identity("spiffe://x/w".into());
        assert_eq!(c.respond(&detection(id(), 45)).level, "signal");
        assert_eq!(c.respond(&detection(id(), 65)).level, "reduce");
        assert_eq!(c.respond(&detection(id(), 80)).level, "step_up");
        let r = c.respond(&detection(id(), 95));
        assert!(r.suspend && r.alert);
        assert_eq!(r.signal.value, 5);
        assert_eq!(r.signal.source, "anomaly:rate_spike");

        let signals = [c.respond(&detection(id(), 80)).signal];
        let input = c.anomaly_input("spiffe://x/w", &signals, 2_000);
        assert_eq!(input.score, 80);
        assert!(input.step_up && input.reduce);
        assert_eq!(input.detectors, ["rate_spike"]);
        // Expired: nothing.
        assert_eq!(
            c.anomaly_input("spiffe://x/w", &signals, 1_000 + 1_801_000),
            AnomalyInput::default()
        );

        let issuer = [c
            .respond(&detection(Subject::Issuer("n".into()), 85))
            .signal];
        assert!(c.issuer_anomalous("n", &issuer, 2_000));
        let off = ResponseConfig {
            suspend: false,
            ..ResponseConfig::default()
        };
        assert!(!off.respond(&detection(id(), 99)).suspend);
    }
}
