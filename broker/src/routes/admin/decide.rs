//! `POST /admin/v1/decide`: one request decided by the live pipeline —
//! the store's state, signals, ECI, budgets, rules — without minting,
//! spending or leasing anything. The simulation is logged under the
//! operator who ran it (`simulated_decision`), and answers with the same
//! input and decision a record holds (what `explain` shows).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use mintguard_api::CredentialRequest;
use mintguard_policy::decide;
use mintguard_policy::decision::{IssuerKind, PrincipalKind};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Operator, check_ttl, write_admin};
use crate::config::Role;
use crate::http::{ApiError, Json};
use crate::ids::random_id;
use crate::issue::{Gathered, Observed, Subject};
use crate::state::{Broker, SIMULATIONS_PER_MINUTE};

/// How far from now a simulation may be set (`at_ms`), ms.
pub const MAX_SHIFT_MS: i64 = 366 * 86_400_000;

/// Observations the simulation assumes in place of a node's.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Assumed {
    /// The node's posture, 0–100 (default 100: a fresh node SVID).
    posture: Option<u8>,
    /// The workload's attestation, 0–100 (default: what its entry's
    /// selectors prove, as the node door counts them).
    attestation: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DecideRequest {
    identity: String,
    grant: String,
    /// The node vouching (default: the parent of the identity's first entry).
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
    #[serde(default)]
    purpose: Option<String>,
    #[serde(default)]
    signals: Assumed,
    /// When it is decided (default now; within a year of now).
    #[serde(default)]
    at_ms: Option<i64>,
}

pub(super) async fn decide_one(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Json(req): Json<DecideRequest>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    mintguard_certs::id::parse_spiffe_id(&req.identity)
        .map_err(|e| ApiError::bad_request("bad_spiffe_id", e.to_string()))?;
    check_ttl(req.ttl_seconds)?;
    if let Some(p) = &req.purpose {
        mintguard_api::check_text("bad_purpose", "purpose", p, 256)
            .map_err(ApiError::from_input)?;
    }
    for (what, value) in [
        ("posture", req.signals.posture),
        ("attestation", req.signals.attestation),
    ] {
        if value.is_some_and(|v| v > 100) {
            return Err(ApiError::bad_request(
                "bad_signal_value",
                format!("{what} must be 0–100"),
            ));
        }
    }
    let wall = broker.clock.now_ms();
    let now = req.at_ms.unwrap_or(wall);
    if now.abs_diff(wall) > MAX_SHIFT_MS.unsigned_abs() {
        return Err(ApiError::bad_request(
            "bad_time",
            "at_ms must lie within a year of now",
        ));
    }
    let dynamic = broker.dynamic.load_full();
    let Some(grant) = dynamic.config.grants.get(&req.grant) else {
        return Err(ApiError::bad_request(
            "unknown_grant",
            format!("no grant named {:?}", req.grant),
        ));
    };
    // A node by name (`node-1`) or SPIFFE ID, as `entry create` takes it.
    let node = match req.node.as_deref() {
        None => None,
        Some(n) if n.starts_with("spiffe://") => Some(n.to_owned()),
        Some(n) => Some(
            mintguard_certs::id::node_id(&dynamic.config.trust_domain, n)
                .map_err(|e| ApiError::bad_request("bad_node", e.to_string()))?
                .to_string(),
        ),
    };
    // Each simulation reads the store and is a durable record: an operator
    // runs at most `SIMULATIONS_PER_MINUTE` a minute.
    if broker.simulation_limiter.check_key(&op.name).is_err() {
        return Err(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("at most {SIMULATIONS_PER_MINUTE} simulations a minute per operator"),
        ));
    }
    let entries = broker.store.entries(node.as_deref()).await?;
    let mut named = entries.iter().filter(|e| e.spiffe_id == req.identity);
    let Some(entry) = named.next() else {
        return Err(ApiError::not_found(
            "no_entry",
            "no registration entry names this identity (under that node)",
        ));
    };
    // The node door decides with the entry of the node that asks: with
    // several, which node is simulated must be said.
    if named.next().is_some() {
        return Err(ApiError::bad_request(
            "ambiguous_entry",
            if node.is_some() {
                "several entries under that node name this identity: which one an attestation matches depends on the workload's selectors"
            } else {
                "several entries name this identity: give the node (--node)"
            },
        ));
    }
    // As the node door: an entry that does not say who runs the workload
    // is not honoured.
    if !crate::store::Entry::pins_who(&entry.selectors) {
        return Err(ApiError::forbidden("weak_entry", crate::store::WEAK_ENTRY)
            .with_reasons(vec![entry.id.clone()]));
    }
    let attestation = if entry
        .selectors
        .iter()
        .any(|s| s.starts_with("unix:sha256:"))
    {
        100
    } else {
        60
    };
    let subject = Subject {
        identity: entry.spiffe_id.clone(),
        principal: PrincipalKind::Workload,
        issuer_kind: IssuerKind::Node,
        issuer: entry.parent.clone(),
        may_vouch: entry.grants.contains(&grant.name),
        observed: Observed {
            posture: (req.signals.posture.unwrap_or(100), "simulation:assumed"),
            attestation: (
                req.signals.attestation.unwrap_or(attestation),
                "simulation:assumed",
            ),
            network: None,
        },
        blast_radius: dynamic
            .blast_radius
            .get(&entry.parent)
            .map_or(100.0, |r| r.max),
        ci_claims: BTreeMap::new(),
        context: serde_json::Map::new(),
        audit: false,
        break_glass: None,
        approval_binding: None,
    };
    let request = CredentialRequest {
        grant: grant.name.clone(),
        ttl_seconds: req.ttl_seconds,
        purpose: req.purpose,
        spiffe_id: Some(entry.spiffe_id.clone()),
        ..CredentialRequest::default()
    };
    let Gathered { input, .. } = broker
        .issuer(&dynamic)
        .gather(grant, &request, &subject, now)
        .await?;
    let decision = decide(&input, &dynamic.rules);
    // The shadow set's verdict too, as a live decision would record it
    // (not counted: nothing was asked for).
    let shadow = dynamic
        .shadow
        .as_ref()
        .map(|s| mintguard_policy::Verdict::of(&decide(&input, &s.rules)));
    let request_id = random_id("sim");
    write_admin(
        &broker,
        &request_id,
        Some(entry.spiffe_id.clone()),
        "simulated_decision",
        &op,
        "decide",
        json!({"grant": grant.name, "node": entry.parent, "at_ms": now,
               "outcome": decision.outcome, "reasons": decision.reasons,
               "rule_set": decision.rule_set_hash}),
    )
    .await?;
    Ok(axum::Json(json!({
        "simulation": true,
        "request_id": request_id,
        "identity": entry.spiffe_id,
        "grant": grant.name,
        "node": entry.parent,
        "body": {"input": input, "decision": decision, "shadow": shadow},
    })))
}
