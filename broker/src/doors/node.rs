//! The node front door (`POST /v1/issue` on the agents listener): the
//! node is its SVID (mTLS); the workload is the registration entry among
//! the node's whose selectors the agent attested. It establishes the
//! [`Subject`] and hands the request to the issuance core.

use std::collections::BTreeMap;

use mintguard_api::{CredentialRequest, IssueRequest};
use mintguard_certs::tls::SpiffePeer;
use mintguard_policy::decision::{IssuerKind, PrincipalKind};
use serde_json::json;

use axum::http::StatusCode;

use crate::http::ApiError;
use crate::issue::inputs::{lower_posture_by_facts, node_posture};
use crate::issue::{Issued, Observed, Refusal, Subject};
use crate::state::Broker;
use crate::store::Entry;

/// Counts a request against `node`'s rate (`[limits] per_node_per_second`):
/// credential requests and node SVID renewals alike.
pub fn limit_node(broker: &Broker, node: &str) -> Result<(), ApiError> {
    if broker.node_limiter.check_key(&node.to_owned()).is_err() {
        return Err(ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests from this node",
            )
        });
    }
    Ok(())
}

/// Checks the request's shape and limits (a 400 changes nothing).
fn validate(req: &IssueRequest) -> Result<(), ApiError> {
    mintguard_api::check_selectors(&req.selectors).map_err(ApiError::from_input)?;
    if let Some(f) = &req.node_facts {
        f.check().map_err(ApiError::from_input)?;
    }
    validate_request(&req.request)
}

/// Checks a credential request's shape and limits (a 400 changes nothing).
pub fn validate_request(r: &CredentialRequest) -> Result<(), ApiError> {
    r.check().map_err(ApiError::from_input)?;
    if let Some(id) = &r.spiffe_id {
        mintguard_certs::id::parse_spiffe_id(id)
            .map_err(|e| ApiError::bad_request("bad_spiffe_id", e.to_string()))?;
    }
    Ok(())
}

/// The entry this workload gets: all its selectors among the presented ones.
fn select_entry<'a>(
    entries: &'a [Entry],
    selectors: &[String],
    wanted: Option<&str>,
) -> Result<&'a Entry, ApiError> {
    let entry = matching_entry(entries, selectors, wanted)?;
    // An entry stored before weak entries were refused is not honoured.
    if !Entry::pins_who(&entry.selectors) {
        return Err(ApiError::forbidden("weak_entry", crate::store::WEAK_ENTRY)
            .with_reasons(vec![entry.id.clone()]));
    }
    Ok(entry)
}

fn matching_entry<'a>(
    entries: &'a [Entry],
    selectors: &[String],
    wanted: Option<&str>,
) -> Result<&'a Entry, ApiError> {
    let matching: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.selectors.iter().all(|s| selectors.contains(s)))
        .filter(|e| wanted.is_none_or(|w| e.spiffe_id == w))
        .collect();
    match matching.as_slice() {
        [one] => Ok(one),
        [] => Err(ApiError::unauthenticated(
            "not_attested",
            "no registration entry matches this workload",
        )
        .with_reasons(selectors.to_vec())),
        many => {
            let mut ids: Vec<String> = many.iter().map(|e| e.spiffe_id.clone()).collect();
            ids.sort();
            ids.dedup();
            if ids.len() == 1 {
                Ok(many[0])
            } else {
                Err(ApiError::bad_request(
                    "ambiguous_identity",
                    "several identities match; name one with spiffe_id",
                )
                .with_reasons(ids))
            }
        }
    }
}

/// Handles `POST /v1/issue` from the node `peer`.
pub async fn issue(
    broker: &Broker,
    peer: &SpiffePeer,
    req: IssueRequest,
) -> Result<Result<Issued, Refusal>, ApiError> {
    let started = std::time::Instant::now();
    // The one reading of the clock for this issuance.
    let now = broker.clock.now_ms();
    let posture = node_posture(
        peer.not_before(),
        peer.not_after(),
        crate::clock::datetime(now),
    );
    let result = issue_inner(broker, &peer.id().to_string(), posture, req, now).await;
    broker
        .metrics
        .issue_seconds
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn issue_inner(
    broker: &Broker,
    node: &str,
    posture: (u8, &str),
    req: IssueRequest,
    now: i64,
) -> Result<Result<Issued, Refusal>, ApiError> {
    validate(&req)?;
    limit_node(broker, node)?;
    issue_from(broker, node, posture, req, now).await
}

/// Decides and mints a validated `req` as vouched for by `node` with the
/// posture its SVID gave, at `now`: the node door after its checks of the
/// request's form and rate (the seed tool drives it directly).
pub(crate) async fn issue_from(
    broker: &Broker,
    node: &str,
    posture: (u8, &str),
    req: IssueRequest,
    now: i64,
) -> Result<Result<Issued, Refusal>, ApiError> {
    let dynamic = broker.dynamic.load_full();
    let IssueRequest {
        selectors,
        request,
        node_facts,
    } = req;
    let posture = lower_posture_by_facts(&dynamic.config.signals, posture, node_facts.as_ref());
    let Some(grant) = dynamic.config.grants.get(&request.grant) else {
        return Err(ApiError::bad_request(
            "unknown_grant",
            format!("no grant named {:?}", request.grant),
        ));
    };
    let entries = broker.store.entries(Some(node)).await?;
    let entry = select_entry(&entries, &selectors, request.spiffe_id.as_deref())?.clone();

    let attestation = if selectors.iter().any(|s| s.starts_with("unix:sha256:")) {
        (100, "agent:selectors")
    } else {
        (60, "agent:selectors")
    };
    let subject = Subject {
        identity: entry.spiffe_id.clone(),
        principal: PrincipalKind::Workload,
        issuer_kind: IssuerKind::Node,
        issuer: node.to_owned(),
        // The entry was found among this node's: it is the parent, and the
        // attested selectors match. A grant outside the entry may not be vouched for.
        may_vouch: entry.grants.contains(&grant.name),
        observed: Observed {
            posture,
            attestation,
            network: None,
        },
        blast_radius: dynamic.blast_radius.get(node).map_or(100.0, |r| r.max),
        ci_claims: BTreeMap::new(),
        context: [
            ("selectors".to_owned(), json!(selectors)),
            ("node_facts".to_owned(), json!(node_facts)),
            ("entry_id".to_owned(), json!(entry.id)),
        ]
        .into_iter()
        .collect(),
        audit: false,
        break_glass: None,
        approval_binding: None,
    };
    Ok(broker
        .issuer(&dynamic)
        .issue(grant, request, subject, now)
        .await)
}

/// Parses a request for tests and tools.
pub fn request(grant: &str) -> CredentialRequest {
    CredentialRequest {
        grant: grant.into(),
        ..Default::default()
    }
}
