//! Log records the store tests append: decisions every reader decodes.

use mintguard_broker::log::{LogEntry, RecordKind};
use mintguard_broker::store::Append;

/// A decision record of `identity` at `time_ms`, logged as `outcome`.
pub fn entry(request: &str, identity: &str, outcome: &str, time_ms: i64) -> LogEntry {
    LogEntry {
        time_ms,
        kind: RecordKind::Decision,
        request_id: request.into(),
        identity: Some(identity.into()),
        grant: Some("payments-db".into()),
        node: Some("spiffe://example.org/mintguard/node/n1".into()),
        outcome: Some(outcome.into()),
        body: decision_body(time_ms),
    }
}

/// A decision body every reader decodes (`logs verify` checks that): a real
/// input and its decision, marked `allow`, and the request.
pub fn decision_body(time_ms: i64) -> serde_json::Value {
    static DECIDED: std::sync::OnceLock<(serde_json::Value, serde_json::Value)> =
        std::sync::OnceLock::new();
    let (input, decision) = DECIDED.get_or_init(|| {
        let input: mintguard_policy::DecisionInput = serde_json::from_value(serde_json::json!({
            "identity": "spiffe://example.org/ns/pay/sa/api",
            "principal": "workload",
            "issuer": {"kind": "node", "id": "spiffe://example.org/mintguard/node/n1", "may_vouch": true},
            "grant": {"name": "payments-db", "kind": "vault", "max_ttl_seconds": 900},
            "now_ms": 1_795_514_400_000i64,
            "signals": {"signals": {}, "unconstrained": []},
            "eci": {"identity_effective": 40.0, "grant_exposure": 60.0, "issuer_blast_radius": 75.0},
        }))
        .unwrap();
        let rules = mintguard_policy::rules::RuleSet::new(
            Vec::new(),
            mintguard_policy::trust::TrustConfig::default(),
        )
        .unwrap();
        let mut decision = mintguard_policy::decide(&input, &rules);
        decision.outcome = mintguard_policy::Outcome::Allow;
        (
            serde_json::to_value(input).unwrap(),
            serde_json::to_value(decision).unwrap(),
        )
    });
    serde_json::json!({"input": input, "decision": decision, "request": {"grant": "payments-db"}, "n": time_ms})
}

/// `e` on its own: nothing spent, no lease, no check at write time.
pub fn plain(e: LogEntry) -> Append {
    Append {
        canonical_body: None,
        entry: e,
        spend: vec![],
        lease: None,
        rule_set: None,
        refuse_if_suspended: Vec::new(),
        refuse_if_lease_closed: None,
    }
}
