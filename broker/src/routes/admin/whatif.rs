//! `POST /admin/v1/whatif`: the logged decisions re-decided under proposed
//! rules (viewer role; it only reads). See [`crate::whatif`].

use std::sync::Arc;

use axum::extract::State;
use mintguard_policy::rules::{PolicySource, RuleSet};
use mintguard_policy::trust::TrustConfig;
use serde::Deserialize;
use serde_json::Value;

use super::{MAX_PAGE, Operator};
use crate::config::Role;
use crate::http::{ApiError, Json};
use crate::state::Broker;
use crate::store::{LogCursor, LogQuery, read_log};
use crate::whatif::WhatIf;

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
    /// Proposed `[trust]` weights and thresholds; the running ones if absent.
    #[serde(default)]
    trust: Option<TrustConfig>,
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
    for (code, what, value) in [
        ("bad_identity", "identity", &req.identity),
        ("bad_grant", "grant", &req.grant),
        ("bad_node", "node", &req.node),
    ] {
        if let Some(v) = value {
            mintguard_api::check_text(code, what, v, 2048).map_err(ApiError::from_input)?;
        }
    }
    let trust = match req.trust {
        Some(trust) => trust,
        None => broker.config().trust,
    };
    let sources = req
        .policies
        .into_iter()
        .map(|p| PolicySource {
            name: p.name,
            text: p.text,
        })
        .collect();
    let rules = RuleSet::new(sources, trust)
        .map_err(|e| ApiError::bad_request("bad_rules", format!("the proposed rules: {e}")))?;
    let mut whatif = WhatIf::new(&rules);
    let query = LogQuery {
        identity: req.identity,
        grant: req.grant,
        node: req.node,
        since_ms: req.since_ms,
        limit: MAX_PAGE,
        ..Default::default()
    };
    let mut after = LogCursor::default();
    loop {
        let page = read_log(&*broker.store, &query, &after).await?;
        for record in &page {
            after.advance(&record.chain, record.seq);
            whatif.observe(record);
        }
        if page.len() < MAX_PAGE {
            break;
        }
    }
    let report = whatif.finish();
    for (seq, why) in &report.findings {
        broker.metrics.undecodable(
            "whatif",
            *seq,
            &crate::log::decode::Undecodable(why.clone()),
        );
    }
    Ok(axum::Json(
        serde_json::to_value(&report).unwrap_or_default(),
    ))
}
