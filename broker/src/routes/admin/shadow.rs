//! The shadow rule set as operators see it: `GET /admin/v1/shadow` (what is
//! watched, and its disagreements since this broker began watching it) and `POST
//! /admin/v1/shadow/report` (the logged decisions tallied against the
//! shadow verdicts they hold, as `whatif` tallies a proposal). Viewer role;
//! both only read.

use std::sync::Arc;

use axum::extract::State;
use serde_json::{Value, json};

use super::Operator;
use super::whatif::{Scope, log_job, scan};
use crate::config::Role;
use crate::http::{ApiError, Json};
use crate::state::Broker;
use crate::whatif::WhatIf;

/// The shadow rule set watched, and its disagreements since start.
pub(super) async fn shadow_status(
    State(broker): State<Arc<Broker>>,
    op: Operator,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    let dynamic = broker.dynamic.load();
    let hash = dynamic.shadow.as_ref().map(|s| s.hash());
    // The counts of the set watched now (none yet after a change).
    let (decisions, disagreements) = match broker.metrics.shadow_tally.lock() {
        Ok(t) if Some(t.rule_set.as_str()) == hash => (
            t.decisions,
            t.disagreements
                .iter()
                .map(|((from, to), count)| json!({"from": from, "to": to, "count": count}))
                .collect::<Vec<_>>(),
        ),
        _ => (0, Vec::new()),
    };
    Ok(axum::Json(json!({
        "configured": hash.is_some(),
        "rule_set_hash": hash,
        "enforced_rule_set_hash": dynamic.rules.hash(),
        "since_start": {"decisions": decisions, "disagreements": disagreements},
    })))
}

/// The logged decisions (those the filters select) against the shadow
/// verdicts they recorded.
pub(super) async fn shadow_report(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Json(scope): Json<Scope>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    let query = scope.query()?;
    let _job = log_job(&broker)?;
    let report = scan(&broker, &query, WhatIf::shadow()).await?;
    Ok(axum::Json(serde_json::to_value(report).unwrap_or_default()))
}
