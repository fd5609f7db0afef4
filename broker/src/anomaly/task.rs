//! The analysis loop, off the request path: it rebuilds the baselines from
//! the log at start (from the shared store, so replicas see all traffic),
//! then reads the decisions appended since, every `interval`, and acts on
//! detections — a log record (outcome `detection`), the `behaviour` signal,
//! an alert, a suspension — as [`super::respond`] describes. Decisions only
//! ever read the signals it wrote. With several replicas on PostgreSQL, all
//! keep baselines and one (an advisory-lock holder) acts.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use super::alerts::AlertSink;
use super::analyzer::{Analyzer, Detection, Event, Subject};
use crate::config::{AnomalyConfig, AnomalyMode};
use crate::log::decode::Undecodable;
use crate::log::{LogEntry, RecordKind};
use crate::state::Broker;
use crate::store::{DecisionRow, SuspensionRecord};

/// Records read per store query.
const PAGE: usize = 2_000;
/// A subject's detection is recorded again only after this long, unless its
/// score rose by `RISE` (a sustained spike does not flood the log).
const REPEAT_MS: i64 = 5 * 60_000;
const RISE: u8 = 10;

/// The analysis state.
pub struct Analysis {
    analyzer: Analyzer,
    config: AnomalyConfig,
    watermark: crate::store::LogCursor,
    last: HashMap<Subject, (i64, u8, (u8, u8))>,
    pending: VecDeque<(Detection, String)>,
    alerts: Option<AlertSink>,
    /// Whether this replica acts on detections (see `Leadership`).
    pub acting: bool,
}

/// The few fields of a decision body the analyzer reads; everything else in
/// the body is skipped without being built. Each is required as the
/// record's writer always writes it (`CredentialRequest`, `Decision`), so a
/// body missing one is undecodable, never read as zeros.
#[derive(Deserialize)]
struct EventBody {
    request: Option<RequestPart>,
    decision: Option<DecisionPart>,
    #[serde(default)]
    ci: CiPart,
}

#[derive(Deserialize)]
struct RequestPart {
    #[serde(rename = "grant")]
    _grant: String,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

#[derive(Deserialize)]
struct DecisionPart {
    ttl_seconds: u64,
    reasons: Vec<String>,
    eci: EciPart,
}

#[derive(Deserialize)]
struct EciPart {
    grant_exposure: f64,
}

#[derive(Default, Deserialize)]
struct CiPart {
    #[serde(default)]
    refused: Option<String>,
}

/// The analyzer's view of a decision row; `None` if it names no identity or
/// grant, or is a refusal before any decision (a CI token refused at the
/// door). A body it cannot read is an error: the caller counts it as a
/// finding (a decision analysis never saw).
pub fn event_of(row: &DecisionRow) -> Result<Option<Event>, Undecodable> {
    let text = row.body.as_deref().map_err(|e| Undecodable(e.clone()))?;
    let body: EventBody = serde_json::from_str(text).map_err(|e| Undecodable(e.to_string()))?;
    let (Some(identity), Some(grant)) = (row.identity.clone(), row.grant.clone()) else {
        return Ok(None);
    };
    let (request, decision) = match (body.request, body.decision) {
        (Some(request), Some(decision)) => (request, decision),
        (None, None) if body.ci.refused.is_some() => return Ok(None),
        _ => {
            return Err(Undecodable(
                "a decision record without its request or decision".into(),
            ));
        }
    };
    let outcome = row.outcome.as_deref().unwrap_or_default();
    // A refusal about the issuer (suspended or anomalous node) says nothing
    // about the identity.
    let for_issuer = decision
        .reasons
        .iter()
        .any(|r| r == "issuer_suspended" || r == "issuer_anomalous");
    Ok(Some(Event {
        time_ms: row.time_ms,
        identity,
        issuer: row.node.clone().unwrap_or_default(),
        grant,
        denied: matches!(outcome, "deny" | "suspend") && !for_issuer,
        ttl_seconds: request.ttl_seconds.unwrap_or(decision.ttl_seconds),
        exposure: decision.eci.grant_exposure,
    }))
}

/// The event of `row`, or `None` after counting and logging a row that
/// cannot be read.
fn read_event(broker: &Broker, row: &DecisionRow) -> Option<Event> {
    match event_of(row) {
        Ok(event) => event,
        Err(why) => {
            broker.metrics.undecodable("anomaly", row.seq, &why);
            None
        }
    }
}

impl Analysis {
    /// A fresh analysis for `config`, alerting through `alerts`.
    pub fn new(config: AnomalyConfig, alerts: Option<AlertSink>) -> Self {
        Self {
            analyzer: Analyzer::new(config.detectors.clone()),
            config,
            watermark: crate::store::LogCursor::default(),
            last: HashMap::new(),
            pending: VecDeque::new(),
            alerts,
            acting: true,
        }
    }

    /// Replays the last `history` of the log into the baselines, without
    /// acting on what it would have detected (that was acted on then).
    pub async fn rebuild(&mut self, broker: &Broker) -> crate::store::Result<usize> {
        let since =
            broker.clock.now_ms() - i64::try_from(self.config.history.0.as_millis()).unwrap_or(0);
        let mut seen = 0;
        loop {
            let page =
                crate::store::decisions_after(&*broker.store, &self.watermark, Some(since), PAGE)
                    .await?;
            for record in &page {
                self.watermark.advance(&record.chain, record.seq);
                if let Some(event) = read_event(broker, record) {
                    self.analyzer.observe(&event);
                    seen += 1;
                }
            }
            if page.len() < PAGE {
                break;
            }
        }
        // A chain with nothing in the window: start after whatever it holds.
        for chain in broker.store.chains().await? {
            if self.watermark.after(&chain.chain) == 0 {
                self.watermark.advance(&chain.chain, chain.seq);
            }
        }
        Ok(seen)
    }

    /// Analyzes the decisions appended since the last step and acts on the
    /// detections; how many decisions it read.
    pub async fn step(&mut self, broker: &Broker) -> Result<usize, String> {
        let mut read = 0;
        loop {
            let page = crate::store::decisions_after(&*broker.store, &self.watermark, None, PAGE)
                .await
                .map_err(|e| e.to_string())?;
            for record in &page {
                if let Some(event) = read_event(broker, record) {
                    read += 1;
                    let detections = self.analyzer.observe(&event);
                    if self.acting {
                        for detection in detections {
                            self.pending
                                .push_back((detection, record.request_id.clone()));
                        }
                    }
                }
                self.watermark.advance(&record.chain, record.seq);
            }
            // A failed action stays pending and is retried at the next step.
            while let Some((detection, request_id)) = self.pending.front().cloned() {
                self.act(broker, &detection, &request_id).await?;
                self.pending.pop_front();
            }
            if page.len() < PAGE {
                return Ok(read);
            }
        }
    }

    async fn act(
        &mut self,
        broker: &Broker,
        detection: &Detection,
        request_id: &str,
    ) -> Result<(), String> {
        let now = detection.time_ms;
        let response = self.config.responses.respond(detection);
        let level = (u8::from(response.alert), rank(response.level));
        // A repeat is recorded after REPEAT_MS, or when the score rose by
        // RISE, or when it calls for a stronger response (never throttled).
        if let Some((at, score, last_level)) = self.last.get(&detection.subject)
            && now - at < REPEAT_MS
            && detection.score < score.saturating_add(RISE)
            && level <= *last_level
        {
            return Ok(());
        }
        self.last
            .insert(detection.subject.clone(), (now, detection.score, level));
        let enforce = self.config.mode == AnomalyMode::Enforce;
        for (detector, _) in &detection.detectors {
            broker
                .metrics
                .detections
                .get_or_create(&crate::metrics::ReasonLabel {
                    reason: detector.code().to_owned(),
                })
                .inc();
        }
        let detectors: Vec<Value> = detection
            .detectors
            .iter()
            .map(|(d, s)| json!({"detector": d.code(), "score": s}))
            .collect();
        let (identity, node) = match &detection.subject {
            Subject::Identity(id) => (Some(id.clone()), None),
            Subject::Issuer(issuer) => (None, Some(issuer.clone())),
        };
        let body = json!({
            "subject": detection.subject,
            "score": detection.score,
            "detectors": detectors,
            "evidence": detection.evidence,
            "response": if enforce { response.level } else { "observe" },
            "signal": {"value": response.signal.value, "source": response.signal.source,
                       "ttl_seconds": response.signal.ttl_seconds},
            "alert": response.alert,
            "triggered_by": request_id,
        });
        broker
            .record(LogEntry {
                time_ms: broker.clock.now_ms(),
                kind: RecordKind::Admin,
                request_id: crate::ids::random_id("det"),
                identity,
                grant: None,
                node,
                outcome: Some("detection".into()),
                body: body.clone(),
            })
            .await
            .map_err(|e| e.message.clone())?;
        if enforce {
            broker
                .store
                .put_signal(&response.signal)
                .await
                .map_err(|e| e.to_string())?;
            if response.suspend {
                self.suspend(broker, detection).await?;
            }
        }
        if response.alert
            && let Some(alerts) = &self.alerts
            && !alerts.send(
                request_id,
                &json!({"type": "mintguard.anomaly", "detection": body}),
            )
        {
            broker.metrics.alerts_dropped.inc();
        }
        Ok(())
    }

    async fn suspend(&self, broker: &Broker, detection: &Detection) -> Result<(), String> {
        let subject = detection.subject.id();
        if broker
            .store
            .suspension(subject)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            return Ok(());
        }
        broker
            .store
            .suspend(&SuspensionRecord {
                subject: subject.to_owned(),
                reason: format!(
                    "detection score {} ({})",
                    detection.score,
                    detection.codes()
                ),
                by: format!("anomaly:{}", detection.codes()),
                at_ms: broker.clock.now_ms(),
            })
            .await
            .map_err(|e| e.to_string())?;
        tracing::warn!(%subject, score = detection.score, "suspended by anomaly analysis");
        // An identity's leases, or everything issued through a node.
        broker
            .issuer(&broker.dynamic.load_full())
            .revoke_all(subject, &crate::ids::random_id("det"), "suspension")
            .await
            .map_err(|e| e.message())?;
        Ok(())
    }
}

/// The strength of a response level.
fn rank(level: &str) -> u8 {
    match level {
        "reduce" => 1,
        "step_up" | "deny" => 2,
        "suspend" => 3,
        _ => 0,
    }
}

/// Runs the analysis until the broker stops.
pub async fn run(broker: Arc<Broker>, alerts: Option<AlertSink>) {
    let config = broker.config().anomaly.clone();
    let interval = config.interval.0;
    // Every replica keeps baselines over the whole (shared) log, but only
    // the leader records detections, writes signals, suspends and alerts.
    let mut leadership = broker.store.leader();
    let mut analysis = Analysis::new(config, alerts);
    loop {
        match analysis.rebuild(&broker).await {
            Ok(n) => {
                let (identities, issuers) = analysis.analyzer.tracked();
                tracing::info!(
                    decisions = n,
                    identities,
                    issuers,
                    "anomaly baselines rebuilt from the log"
                );
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "anomaly baselines: the log is unreadable; retrying");
                tokio::time::sleep(interval.max(std::time::Duration::from_secs(1))).await;
            }
        }
    }
    broker.analysis.beat(broker.clock.now_ms());
    loop {
        tokio::time::sleep(interval).await;
        analysis.acting = leadership.leads().await;
        crate::fault::fault_wait("anomaly_step").await;
        match analysis.step(&broker).await {
            Ok(_) => broker.analysis.beat(broker.clock.now_ms()),
            Err(e) => tracing::warn!(error = %e, "anomaly analysis step failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(outcome: &str, body: Value) -> DecisionRow {
        DecisionRow {
            chain: String::new(),
            seq: 7,
            time_ms: 1_000,
            request_id: "req-1".into(),
            identity: Some("spiffe://example.org/a".into()),
            grant: Some("db".into()),
            node: Some("spiffe://example.org/mintguard/node/n1".into()),
            outcome: Some(outcome.into()),
            body: Ok(crate::log::canonical_body(&body)),
        }
    }

    #[test]
    fn events_read_only_the_fields_they_need_from_the_stored_body() {
        let body = json!({
            "input": {"identity": "spiffe://example.org/a", "signals": [{"kind": "posture", "value": 90}]},
            "request": {"grant": "db", "ttl_seconds": 120},
            "decision": {"outcome": "deny", "ttl_seconds": 60, "reasons": ["trust_below_minimum"],
                         "eci": {"eci": 40, "grant_exposure": 42.5}},
            "lease": {"id": "lease-1"},
        });
        let event = event_of(&row("deny", body.clone())).unwrap().unwrap();
        assert_eq!(event.time_ms, 1_000);
        assert_eq!(event.identity, "spiffe://example.org/a");
        assert_eq!(event.issuer, "spiffe://example.org/mintguard/node/n1");
        assert_eq!(event.grant, "db");
        assert!(event.denied);
        assert_eq!(event.ttl_seconds, 120, "the requested TTL comes first");
        assert!((event.exposure - 42.5).abs() < f64::EPSILON);

        // Refused for the issuer: not counted against the identity.
        let mut issuer = body.clone();
        issuer["decision"]["reasons"] = json!(["issuer_suspended"]);
        assert!(!event_of(&row("deny", issuer)).unwrap().unwrap().denied);

        // No requested TTL: the decided one.
        let mut sparse = body.clone();
        sparse["request"] = json!({"grant": "db"});
        let event = event_of(&row("allow", sparse)).unwrap().unwrap();
        assert_eq!(event.ttl_seconds, 60);
        assert!(!event.denied);

        // A body that is not JSON, a TTL that is no integer, or a part the
        // writer always writes missing: an error (a finding), never a
        // silent skip or a zero. A row without an identity, or refused at
        // the door: no event.
        let mut bad = row("allow", json!({}));
        bad.body = Ok("{".into());
        assert!(event_of(&bad).is_err());
        bad.body = Err("record 7: a record body does not decompress".into());
        assert!(event_of(&bad).is_err());
        let mut float_ttl = body.clone();
        float_ttl["request"]["ttl_seconds"] = json!(1.8446744073709552e19);
        assert!(event_of(&row("allow", float_ttl)).is_err());
        for missing in [
            json!({}),
            json!({"decision": body["decision"]}),
            json!({"request": body["request"], "decision": {"ttl_seconds": 60}}),
        ] {
            assert!(
                event_of(&row("allow", missing.clone())).is_err(),
                "{missing}"
            );
        }
        let door = json!({"ci": {"refused": "bad_token"}});
        assert!(event_of(&row("deny", door)).unwrap().is_none());
        // u64::MAX as the canonical form now writes it reads back.
        let mut max_ttl = body.clone();
        max_ttl["request"]["ttl_seconds"] = json!(u64::MAX);
        assert_eq!(
            event_of(&row("allow", max_ttl))
                .unwrap()
                .unwrap()
                .ttl_seconds,
            u64::MAX
        );
        let mut anonymous = row("allow", json!({}));
        anonymous.identity = None;
        assert!(event_of(&anonymous).unwrap().is_none());
    }
}
