//! What an identity or issuer exposes, for the console: an identity's
//! exposure-graph neighbourhood with its ECI factor by factor, and an
//! issuer's identities, blast radius and issuance rate against its baseline.

use std::sync::Arc;

use axum::extract::{Query, State};
use mintguard_policy::eci::neighbourhood::neighbourhood;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Operator, check_subject};
use crate::config::Role;
use crate::http::ApiError;
use crate::state::Broker;
use crate::store::{LeaseOwner, LeaseQuery};

/// Most edges out from the identity a neighbourhood follows.
pub const MAX_DEPTH: usize = 8;
/// Most nodes a neighbourhood holds.
pub const MAX_NODES: usize = 200;
/// Issuances counted per window of an issuer's rate (the count says when it
/// reached this: the page then shows a lower bound).
pub const MAX_COUNTED: usize = 200_000;
/// The baseline window before the last hour, in hours.
const BASELINE_HOURS: i64 = 24;
const HOUR_MS: i64 = 3_600_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GraphParams {
    identity: String,
    depth: Option<usize>,
}

/// `GET /admin/v1/graph?identity=ID[&depth=N]`: the identity's ECI and the
/// part of the effective exposure graph it reaches, nodes on a path to a
/// crown jewel marked.
pub(super) async fn graph(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Query(p): Query<GraphParams>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    check_subject(&broker, &p.identity)?;
    let depth = p.depth.unwrap_or(4);
    if depth == 0 || depth > MAX_DEPTH {
        return Err(ApiError::bad_request(
            "bad_depth",
            format!("depth must be 1..={MAX_DEPTH}"),
        ));
    }
    let dynamic = broker.dynamic.load_full();
    let Some(hood) = neighbourhood(&dynamic.graph, &dynamic.eci, &p.identity, depth, MAX_NODES)
    else {
        return Err(ApiError::not_found(
            "unknown_identity",
            "the identity is in neither the exposure graph nor a registration entry",
        ));
    };
    Ok(axum::Json(json!({
        "identity": p.identity,
        "eci": dynamic.eci.get(&p.identity),
        "depth": depth,
        "max_nodes": MAX_NODES,
        "neighbourhood": hood,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IssuerParams {
    id: String,
}

/// `GET /admin/v1/issuer?id=ID`: a node (SPIFFE ID) or CI issuer (URL) —
/// the identities it may vouch for with their ECI, its blast radius, its
/// live leases, its suspension, and its issuances in the last hour against
/// the hourly mean of the 24 hours before (from the lease table, by index).
pub(super) async fn issuer(
    State(broker): State<Arc<Broker>>,
    op: Operator,
    Query(p): Query<IssuerParams>,
) -> Result<axum::Json<Value>, ApiError> {
    op.require(Role::Viewer)?;
    check_subject(&broker, &p.id)?;
    let dynamic = broker.dynamic.load_full();
    let ci = dynamic.config.ci.issuers.iter().any(|i| i.url == p.id);
    let (identities, policies, blast_radius) = if ci {
        let policies: Vec<Value> = dynamic
            .ci
            .policies
            .iter()
            .filter(|c| c.policy.issuer == p.id)
            .map(|c| {
                json!({"policy": c.policy.name, "identity": c.policy.identity,
                       "grants": c.policy.grants})
            })
            .collect();
        let radius = crate::doors::ci::blast_radius(&dynamic, &p.id);
        (Vec::new(), policies, json!({"max": radius}))
    } else {
        let entries = broker.store.entries(Some(&p.id)).await?;
        let identities: Vec<Value> = entries
            .iter()
            .map(|e| {
                let eci = dynamic.eci.get(&e.spiffe_id);
                json!({"spiffe_id": e.spiffe_id, "entry": e.id, "grants": e.grants,
                       "eci": eci.and_then(|n| n.eci)})
            })
            .collect();
        let radius = dynamic.blast_radius.get(&p.id).copied().unwrap_or_default();
        (identities, Vec::new(), json!(radius))
    };
    let now = broker.clock.now_ms();
    let through = |since_ms, until_ms| LeaseQuery::IssuedThrough {
        node: p.id.clone(),
        since_ms,
        until_ms,
        limit: MAX_COUNTED,
    };
    let last_hour = broker
        .store
        .count_leases(&through(now - HOUR_MS, now))
        .await?;
    let before = broker
        .store
        .count_leases(&through(
            now - (BASELINE_HOURS + 1) * HOUR_MS,
            now - HOUR_MS,
        ))
        .await?;
    let live = broker
        .store
        .count_leases(&LeaseQuery::Live {
            owner: LeaseOwner::Node(p.id.clone()),
            now_ms: now,
            after_id: None,
            limit: MAX_COUNTED,
        })
        .await?;
    let capped = |n: u64| n >= MAX_COUNTED as u64;
    let suspension = broker.store.suspension(&p.id).await?;
    Ok(axum::Json(json!({
        "id": p.id,
        "kind": if ci { "ci_issuer" } else { "node" },
        "suspension": suspension,
        "identities": identities,
        "ci_policies": policies,
        "blast_radius": blast_radius,
        "live_leases": live,
        "live_leases_capped": capped(live),
        "rate": {
            "last_hour": last_hour,
            "baseline_hours": BASELINE_HOURS,
            "baseline_per_hour": before as f64 / BASELINE_HOURS as f64,
            "capped": capped(last_hour) || capped(before),
            "at_ms": now,
        },
    })))
}
