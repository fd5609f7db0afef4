//! Prometheus metrics, served at `GET /metrics` on the admin listener
//! (viewer role): decisions by outcome and by reason, decision and
//! end-to-end latency, log write latency, budget depletions.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// allow, allow_reduced, step_up, deny, suspend, budget_exhausted.
    pub outcome: String,
}

/// `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A reason code.
    pub reason: String,
}

/// `reader` label: who could not read a record.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReaderLabel {
    /// anomaly, replay, explain, verify.
    pub reader: String,
}

/// `listener` and `reason` labels of a refusal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabel {
    /// public, agents, admin.
    pub listener: String,
    /// The reason code.
    pub reason: String,
}

/// `from` and `to` outcomes of a shadow disagreement.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabel {
    /// The enforced outcome.
    pub from: String,
    /// The shadow rule set's.
    pub to: String,
}

/// Decisions under the shadow rule set watched now, since this broker
/// began watching it (as the console shows them).
#[derive(Debug, Default)]
pub struct ShadowTally {
    /// The shadow rule set counted (a different one starts the counts afresh).
    pub rule_set: String,
    /// Live decisions also decided under a shadow rule set.
    pub decisions: u64,
    /// Those where it disagreed, by (enforced, shadow) outcome.
    pub disagreements: std::collections::BTreeMap<(String, String), u64>,
}

/// The broker's metrics.
pub struct Metrics {
    registry: Registry,
    /// Decisions by final outcome.
    pub decisions: Family<OutcomeLabel, Counter>,
    /// Reason codes given.
    pub reasons: Family<ReasonLabel, Counter>,
    /// Time in `decide()`.
    pub decision_seconds: Histogram,
    /// Time from request to answer in the issuance pipeline.
    pub issue_seconds: Histogram,
    /// Time to append a record durably (group commit included).
    pub log_write_seconds: Histogram,
    /// Requests refused because a budget could not pay.
    pub budget_exhausted: Counter,
    /// Anomaly detections by detector (one per detector in a detection).
    pub detections: Family<ReasonLabel, Counter>,
    /// Alerts dropped because the webhook queue was full.
    pub alerts_dropped: Counter,
    /// Decision records a reader could not decode (each one a finding).
    pub undecodable_records: Family<ReaderLabel, Counter>,
    /// 1 while anomaly analysis has not advanced within its interval × the
    /// tolerance (the `behaviour` signal is then stale), else 0.
    pub analysis_stale: Gauge,
    /// Refusals of unauthenticated callers and of the HTTP layer itself.
    pub unauthenticated_refusals: Family<RefusalLabel, Counter>,
    /// Revoked, unexpired X.509-SVIDs in the CRL last published to agents.
    pub crl_entries: Gauge,
    /// Live decisions also decided under the shadow rule set.
    pub shadow_decisions: Counter,
    /// Those whose shadow outcome differs from the enforced one.
    pub shadow_disagreements: Family<TransitionLabel, Counter>,
    /// The same counts, readable by the console.
    pub shadow_tally: std::sync::Mutex<ShadowTally>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mintguard");
        let decisions = Family::<OutcomeLabel, Counter>::default();
        let reasons = Family::<ReasonLabel, Counter>::default();
        let decision_seconds = Histogram::new(exponential_buckets(1e-6, 2.0, 20));
        let issue_seconds = Histogram::new(exponential_buckets(1e-4, 2.0, 18));
        let log_write_seconds = Histogram::new(exponential_buckets(1e-5, 2.0, 20));
        let budget_exhausted = Counter::default();
        let detections = Family::<ReasonLabel, Counter>::default();
        let alerts_dropped = Counter::default();
        let undecodable_records = Family::<ReaderLabel, Counter>::default();
        let analysis_stale = Gauge::default();
        let unauthenticated_refusals = Family::<RefusalLabel, Counter>::default();
        let crl_entries = Gauge::default();
        let shadow_decisions = Counter::default();
        let shadow_disagreements = Family::<TransitionLabel, Counter>::default();
        registry.register(
            "shadow_decisions",
            "Live decisions also decided under the shadow rule set (never enforced)",
            shadow_decisions.clone(),
        );
        registry.register(
            "shadow_disagreements",
            "Live decisions whose shadow outcome differs from the enforced one, by transition",
            shadow_disagreements.clone(),
        );
        registry.register(
            "crl_entries",
            "Revoked, unexpired X.509-SVIDs in the CRL last published to agents",
            crl_entries.clone(),
        );
        registry.register(
            "unauthenticated_refusals",
            "Refusals of callers who proved nothing (bad CI tokens), and of the HTTP layer (heads too large, connections over the cap)",
            unauthenticated_refusals.clone(),
        );
        registry.register(
            "undecodable_records",
            "Decision records a reader could not decode (findings: a record analysis never saw)",
            undecodable_records.clone(),
        );
        registry.register(
            "anomaly_analysis_stale",
            "1 while anomaly analysis lags or is down, so the behaviour signal is stale",
            analysis_stale.clone(),
        );
        registry.register(
            "anomaly_detections",
            "Anomaly detections by detector",
            detections.clone(),
        );
        registry.register(
            "alerts_dropped",
            "Alerts dropped because the webhook queue was full",
            alerts_dropped.clone(),
        );
        registry.register("decisions", "Decisions by final outcome", decisions.clone());
        registry.register(
            "decision_reasons",
            "Reason codes given in decisions",
            reasons.clone(),
        );
        registry.register(
            "decision_seconds",
            "Time spent in decide()",
            decision_seconds.clone(),
        );
        registry.register(
            "issue_seconds",
            "End-to-end issuance pipeline latency",
            issue_seconds.clone(),
        );
        registry.register(
            "log_write_seconds",
            "Durable log append latency",
            log_write_seconds.clone(),
        );
        registry.register(
            "budget_exhausted",
            "Requests refused because a budget could not pay",
            budget_exhausted.clone(),
        );
        Self {
            registry,
            decisions,
            reasons,
            detections,
            alerts_dropped,
            undecodable_records,
            analysis_stale,
            unauthenticated_refusals,
            crl_entries,
            shadow_decisions,
            shadow_disagreements,
            shadow_tally: std::sync::Mutex::default(),
            decision_seconds,
            issue_seconds,
            log_write_seconds,
            budget_exhausted,
        }
    }
}

impl Metrics {
    /// Counts a decision's final outcome and its reasons.
    pub fn decided(&self, outcome: &str, reasons: impl IntoIterator<Item = &'static str>) {
        self.decisions
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
        for reason in reasons {
            self.reasons
                .get_or_create(&ReasonLabel {
                    reason: reason.to_owned(),
                })
                .inc();
        }
    }

    /// Records a decision record `reader` could not decode: counted and
    /// logged, so it is a finding and never a silent skip.
    pub fn undecodable(&self, reader: &'static str, seq: i64, why: &dyn std::fmt::Display) {
        tracing::error!(reader, seq, %why, "a decision record cannot be decoded");
        self.undecodable_records
            .get_or_create(&ReaderLabel {
                reader: reader.to_owned(),
            })
            .inc();
    }

    /// Counts a live decision also decided under the shadow rule set
    /// `rule_set` (when decided: a record that then fails to be written is
    /// counted too), and whether its outcome (`shadow`) disagreed with the
    /// enforced one.
    pub fn shadow_decided(&self, rule_set: &str, enforced: &str, shadow: &str) {
        self.shadow_decisions.inc();
        let disagrees = enforced != shadow;
        if disagrees {
            self.shadow_disagreements
                .get_or_create(&TransitionLabel {
                    from: enforced.to_owned(),
                    to: shadow.to_owned(),
                })
                .inc();
        }
        if let Ok(mut tally) = self.shadow_tally.lock() {
            if tally.rule_set != rule_set {
                *tally = ShadowTally {
                    rule_set: rule_set.to_owned(),
                    ..ShadowTally::default()
                };
            }
            tally.decisions += 1;
            if disagrees {
                *tally
                    .disagreements
                    .entry((enforced.to_owned(), shadow.to_owned()))
                    .or_default() += 1;
            }
        }
    }

    /// Counts a refusal of an unauthenticated caller.
    pub fn unauthenticated_refusal(&self, listener: &str, reason: &str) {
        self.unauthenticated_refusals
            .get_or_create(&RefusalLabel {
                listener: listener.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
