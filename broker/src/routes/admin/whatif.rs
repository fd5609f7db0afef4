//! `POST /admin/v1/whatif`: the logged decisions re-decided under proposed
//! rules (viewer role; it only reads). See [`crate::whatif`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use mintguard_policy::rules::{PolicySource, RuleSet};
use mintguard_policy::trust::TrustConfig;
use serde::Deserialize;
use serde_json::Value;

use super::{MAX_PAGE, Operator};
use crate::config::Role;
use crate::http::{ApiError, Json};
use crate::state::Broker;
use crate::store::LogQuery;
use crate::whatif::{ProposedEci, WhatIf};
use mintguard_policy::eci::graph::ExposureGraph;

/// Most policy files a proposal holds.
pub const MAX_POLICY_FILES: usize = 512;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyFile {
    name: String,
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WhatIfRequest {
    /// The proposed Cedar sources (all of them: they replace the running set).
    policies: Vec<PolicyFile>,
    /// Proposed `[trust]` keys, over the running ones (a key left out keeps
    /// its running value).
    #[serde(default)]
    trust: Option<Value>,
    /// A proposed exposure graph (the format of `examples/graphs/`): the
    /// decisions' ECI inputs are recomputed under it.
    #[serde(default)]
    graph: Option<Value>,
    /// Only decisions from this time.
    #[serde(default)]
    since_ms: Option<i64>,
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    grant: Option<String>,
    #[serde(default)]
    node: Option<String>,
}

/// `value` with `over`'s keys laid on it, objects key by key.
fn overlay(value: &mut Value, over: Value) {
    match (value, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, v) in over {
                overlay(base.entry(key).or_insert(Value::Null), v);
            }
        }
        (slot, over) => *slot = over,
    }
}

/// The proposed trust configuration: the running one with the proposal's
/// keys over it, validated with the rules.
fn proposed_trust(running: TrustConfig, proposal: Option<Value>) -> Result<TrustConfig, ApiError> {
    let Some(proposal) = proposal else {
        return Ok(running);
    };
    let mut merged = serde_json::to_value(&running).unwrap_or_default();
    overlay(&mut merged, proposal);
    serde_json::from_value(merged)
        .map_err(|e| ApiError::bad_request("bad_trust", format!("the proposed [trust]: {e}")))
}

/// Re-decides the log (or the part the filters select) under the proposal.
/// One whole-log job (what-if, replay) runs at a time, off the async
/// workers, and at most `MAX_DECISIONS` decisions are re-decided.
pub(super) async fn whatif(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Json(req): Json<WhatIfRequest>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    if req.policies.len() > MAX_POLICY_FILES {
        return Err(ApiError::bad_request(
            "too_many_policies",
            format!("at most {MAX_POLICY_FILES} policy files"),
        ));
    }
    for p in &req.policies {
        mintguard_api::check_text("bad_policy_name", "policy name", &p.name, 256)
            .map_err(ApiError::from_input)?;
    }
    let query = Scope {
        since_ms: req.since_ms,
        identity: req.identity,
        grant: req.grant,
        node: req.node,
    }
    .query()?;
    let trust = proposed_trust(broker.config().trust, req.trust)?;
    let _job = log_job(&broker)?;
    let sources = req
        .policies
        .into_iter()
        .map(|p| PolicySource {
            name: p.name,
            text: p.text,
        })
        .collect();
    let rules = tokio::task::spawn_blocking(move || RuleSet::new(sources, trust))
        .await
        .map_err(|e| {
            ApiError::unavailable("whatif_failed", "building the proposed rules failed", e)
        })?
        .map_err(|e| ApiError::bad_request("bad_rules", format!("the proposed rules: {e}")))?;
    let (eci, changes) = match req.graph {
        Some(graph) => {
            let (eci, changes) = proposed_eci(&broker, graph).await?;
            (Some(Arc::new(eci)), Some(changes))
        }
        None => (None, None),
    };
    let whatif = WhatIf::new(Arc::new(rules), eci);
    let mut report = scan(&broker, &query, whatif).await?;
    if let Some((changes, total)) = changes {
        report.eci_changes = changes;
        report.eci_changed = total;
    }
    Ok(axum::Json(serde_json::to_value(report).unwrap_or_default()))
}

/// [`crate::whatif::scan`] over the broker's store, each undecodable
/// record counted and logged; the caller holds `log_job`.
pub(super) async fn scan(
    broker: &Broker,
    query: &LogQuery,
    whatif: WhatIf,
) -> Result<crate::whatif::WhatIfReport, ApiError> {
    Ok(
        crate::whatif::scan(&*broker.store, query, whatif, |seq, why| {
            broker.metrics.undecodable("whatif", seq, why);
        })
        .await?,
    )
}

/// One whole-log job at a time: the lock, or 409.
pub(super) fn log_job(broker: &Broker) -> Result<tokio::sync::MutexGuard<'_, ()>, ApiError> {
    broker.log_job.try_lock().map_err(|_| {
        ApiError::new(
            StatusCode::CONFLICT,
            "log_job_running",
            "a what-if or replay over the log is running; ask again when it ends",
        )
    })
}

/// The decisions a whole-log report covers.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Scope {
    /// Only decisions from this time.
    #[serde(default)]
    pub since_ms: Option<i64>,
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub grant: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
}

impl Scope {
    /// The log query it makes, its filters checked.
    pub fn query(self) -> Result<LogQuery, ApiError> {
        for (code, what, value) in [
            ("bad_identity", "identity", &self.identity),
            ("bad_grant", "grant", &self.grant),
            ("bad_node", "node", &self.node),
        ] {
            if let Some(v) = value {
                mintguard_api::check_text(code, what, v, 2048).map_err(ApiError::from_input)?;
            }
        }
        Ok(LogQuery {
            identity: self.identity,
            grant: self.grant,
            node: self.node,
            since_ms: self.since_ms,
            limit: MAX_PAGE,
            ..Default::default()
        })
    }
}

/// The ECI inputs a proposed graph gives, and the identities it moves
/// from the running ECI.
async fn proposed_eci(
    broker: &Broker,
    graph: Value,
) -> Result<(ProposedEci, (Vec<crate::whatif::EciChange>, u64)), ApiError> {
    let bytes = serde_json::to_vec(&graph).unwrap_or_default();
    let graph = ExposureGraph::from_json(&bytes)
        .map_err(|e| ApiError::bad_request("bad_graph", format!("the proposed graph: {e}")))?;
    let dynamic = broker.dynamic.load_full();
    crate::whatif::proposed_eci(
        &dynamic.config,
        &dynamic.ci,
        &dynamic.eci,
        &graph,
        &*broker.store,
    )
    .await
    .map_err(|e| ApiError::bad_request("bad_graph", format!("the proposed graph: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proposed_trust_key_lies_over_the_running_ones() {
        let running = TrustConfig {
            critical_below: 20,
            ..TrustConfig::default()
        };
        let proposed = proposed_trust(
            running.clone(),
            Some(serde_json::json!({"min_trust_base": 90.0})),
        )
        .unwrap();
        assert_eq!(proposed.min_trust_base, 90.0);
        assert_eq!(
            proposed.critical_below, 20,
            "a key left out keeps its running value"
        );
        assert_eq!(proposed.weights, running.weights);
        assert_eq!(proposed_trust(running.clone(), None).unwrap(), running);
        let bad = proposed_trust(running, Some(serde_json::json!({"no_such_key": 1})));
        assert_eq!(bad.unwrap_err().code, "bad_trust");
    }
}
