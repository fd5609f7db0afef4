//! Agents listener (mTLS, node SVIDs only): issuance, entries, renewal,
//! lease revocation, approvals.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Extension, Router};
use mintguard_api::{EntryView, IssueRequest, NodeBundles, RenewRequest, SvidResponse};
use mintguard_certs::ca::{RevokedSerial, serial_for};

use crate::mint::x509_svid::SignedCrls;
use crate::state::Keys;
use mintguard_certs::tls::SpiffePeer;
use time::OffsetDateTime;

use crate::http::{ApiError, Json};
use crate::ids::random_id;
use crate::state::Broker;
use crate::store::NodeRenewal;

/// The agents router.
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/v1/issue", post(issue))
        .route("/v1/node/entries", get(entries))
        .route("/v1/node/renew", post(renew))
        .route("/v1/node/bundles", get(bundles))
        .route("/v1/leases/{id}", delete(revoke))
        .route("/v1/approvals/{id}", get(approval))
        .with_state(broker)
}

async fn issue(
    State(broker): State<Arc<Broker>>,
    Extension(peer): Extension<SpiffePeer>,
    Json(req): Json<IssueRequest>,
) -> Result<Response, ApiError> {
    let node = peer.id().to_string();
    if broker.store.suspension(&node).await?.is_some() {
        return Err(
            ApiError::forbidden("node_suspended", "this node is suspended")
                .with_reasons(vec!["issuer_suspended".into()]),
        );
    }
    Ok(crate::http::answer(
        crate::doors::node::issue(&broker, &peer, req).await?,
    ))
}

async fn entries(
    State(broker): State<Arc<Broker>>,
    Extension(peer): Extension<SpiffePeer>,
) -> Result<axum::Json<Vec<EntryView>>, ApiError> {
    let entries = broker.store.entries(Some(&peer.id().to_string())).await?;
    Ok(axum::Json(
        entries
            .into_iter()
            .map(crate::routes::admin::view)
            .collect(),
    ))
}

/// Most revoked, unexpired X.509-SVIDs the CRLs list. More is refused
/// (503 `crl_too_large`), never a CRL that silently leaves some out.
pub const MAX_CRL_ENTRIES: usize = 100_000;

async fn bundles(
    State(broker): State<Arc<Broker>>,
    Extension(peer): Extension<SpiffePeer>,
) -> Result<axum::Json<NodeBundles>, ApiError> {
    let node = peer.id().to_string();
    // Polled by every agent: counted against the node's rate like its
    // other requests. A suspended node is answered (it is listed among the
    // suspended, so its agent ends every stream it serves).
    crate::doors::node::limit_node(&broker, &node)?;
    let now_ms = broker.clock.now_ms();
    let now = crate::clock::datetime(now_ms);
    let leases = broker
        .store
        .leases(&crate::store::LeaseQuery::RevokedSvids {
            now_ms,
            limit: MAX_CRL_ENTRIES + 1,
        })
        .await?;
    let overflow = leases.len() > MAX_CRL_ENTRIES;
    if overflow {
        // Never a CRL that leaves some out: the last complete one is served
        // (valid for its hour), and everything else as always.
        tracing::error!(
            limit = MAX_CRL_ENTRIES,
            "more revoked, unexpired X.509-SVIDs than a CRL may list: the last complete CRL is served"
        );
    }
    let mut revoked: Vec<RevokedSerial> = leases
        .iter()
        .map(|l| RevokedSerial {
            serial: serial_for(&l.id),
            revoked_at: crate::clock::datetime(l.revoked_at_ms.unwrap_or(now_ms)),
        })
        .collect();
    revoked.sort_by_key(|r| r.serial);
    let unavailable = |e: mintguard_certs::CertsError| {
        ApiError::unavailable("ca_unavailable", "CA unavailable", e)
    };
    let last = broker.crl.lock().ok().and_then(|c| c.clone());
    let (bundle, crls) = {
        let ca = broker
            .ca
            .read()
            .map_err(|_| ApiError::unavailable("ca_unavailable", "CA unavailable", "poisoned"))?;
        let bundle = ca.bundle(now).map_err(unavailable)?;
        let crls = match last {
            Some(last) if overflow || last.still_fit(&ca, &revoked, now_ms) => last,
            _ if overflow => {
                return Err(ApiError::unavailable(
                    "crl_too_large",
                    "too many revoked SVIDs are live to list them all",
                    format!("over {MAX_CRL_ENTRIES}"),
                ));
            }
            _ => SignedCrls::sign(&ca, revoked, now_ms).map_err(unavailable)?,
        };
        (bundle, crls)
    };
    broker
        .metrics
        .crl_entries
        .set(i64::try_from(crls.revoked.len()).unwrap_or(i64::MAX));
    if let Ok(mut slot) = broker.crl.lock() {
        *slot = Some(crls.clone());
    }
    broker.refresh_keys(Keys::JwtSvid);
    let jwt_bundle = {
        let keys = broker.jwt_svid.read().map_err(|_| {
            ApiError::unavailable("keys_unavailable", "signing keys unavailable", "poisoned")
        })?;
        let mut jwks = serde_json::to_value(keys.jwks(now)).map_err(|e| {
            ApiError::unavailable("keys_unavailable", "signing keys unavailable", e)
        })?;
        if let Some(keys) = jwks.get_mut("keys").and_then(|k| k.as_array_mut()) {
            for key in keys.iter_mut() {
                if let Some(key) = key.as_object_mut() {
                    key.insert("use".into(), "jwt-svid".into());
                }
            }
        }
        jwks
    };
    let mut subjects: Vec<String> = broker
        .store
        .entries(Some(&node))
        .await?
        .into_iter()
        .map(|e| e.spiffe_id)
        .collect();
    subjects.push(node);
    let suspended_all = broker.store.suspended_subjects().await?;
    let mut suspended: Vec<String> = subjects
        .into_iter()
        .filter(|s| suspended_all.contains(s))
        .collect();
    suspended.sort();
    suspended.dedup();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(axum::Json(NodeBundles {
        trust_domain_id: broker.config().trust_domain.id_string(),
        x509_bundle_pem: bundle.to_pem(),
        jwt_bundle,
        crls_der_b64: crls.ders.iter().map(|d| b64.encode(d)).collect(),
        revoked_serials: crls
            .revoked
            .iter()
            .map(|s| mintguard_certs::hex(&s.serial))
            .collect(),
        suspended,
    }))
}

/// Records a renewal refused as stale, and the detection it is: two
/// lineages of one node (a stolen key renewing on its own) or an SVID of an
/// enrollment the node has since replaced.
async fn refuse_stale(
    broker: &Broker,
    node: &str,
    peer: &SpiffePeer,
    issued: &mintguard_certs::svid::SvidInfo,
    generation: i64,
) -> Result<(), ApiError> {
    let request_id = random_id("req");
    let evidence = serde_json::json!({
        "presented_serial": peer.serial(),
        "presented_svid_expires_at": peer.not_after().unix_timestamp(),
        "renewing_key_sha256": issued.key_sha256,
        "generation": generation,
    });
    let record = |outcome: &str, body: serde_json::Value| crate::log::LogEntry {
        time_ms: broker.clock.now_ms(),
        kind: crate::log::RecordKind::Admin,
        request_id: request_id.clone(),
        identity: None,
        grant: None,
        node: Some(node.to_owned()),
        outcome: Some(outcome.to_owned()),
        body,
    };
    broker.record(record(
            "node_svid_refused",
            serde_json::json!({"action": "node_svid_refused", "node": node, "reason": "stale_node_svid", "evidence": evidence}),
        ),
    )
    .await?;
    tracing::warn!(
        node,
        serial = peer.serial(),
        "a renewal from outside the node's SVID lineage was refused"
    );
    broker
        .record(record(
            "detection",
            serde_json::json!({
                "subject": {"kind": "issuer", "id": node},
                "score": 100,
                "detectors": [{"detector": "node_svid_fork", "score": 100}],
                "evidence": evidence,
                "response": "observe",
                "triggered_by": request_id,
            }),
        ))
        .await
}

async fn renew(
    State(broker): State<Arc<Broker>>,
    Extension(peer): Extension<SpiffePeer>,
    Json(req): Json<RenewRequest>,
) -> Result<axum::Json<SvidResponse>, ApiError> {
    // Renewals count against the node's request rate: each is a CA
    // signature and an fsync'd record.
    crate::doors::node::limit_node(&broker, &peer.id().to_string())?;
    if broker
        .store
        .suspension(&peer.id().to_string())
        .await?
        .is_some()
    {
        return Err(
            ApiError::forbidden("node_suspended", "this node is suspended")
                .with_reasons(vec!["issuer_suspended".into()]),
        );
    }
    let config = broker.config();
    let now = OffsetDateTime::now_utc();
    let (cert, info, bundle_pem) = {
        let ca = broker
            .ca
            .read()
            .map_err(|_| ApiError::unavailable("ca_unavailable", "CA unavailable", "poisoned"))?;
        let cert = ca
            .issue_svid_from_csr(&req.csr, peer.id(), config.ca.svid_ttl.0, now)
            .map_err(|e| ApiError::bad_request("bad_csr", e.to_string()))?;
        let info = mintguard_certs::svid::SvidInfo::parse(&cert)
            .map_err(|e| ApiError::unavailable("ca_failed", "CA failed", e))?;
        let bundle_pem = ca
            .bundle(now)
            .map_err(|e| ApiError::unavailable("ca_unavailable", "CA unavailable", e))?
            .to_pem();
        (cert, info, bundle_pem)
    };
    // Only the node's own lineage renews: its current SVID or the one last
    // issued to it. Anything else is an SVID of an earlier enrollment or a
    // second holder of the node's key — refused, and a detection.
    let node = peer.id().to_string();
    let now_ms = broker.clock.now_ms();
    let lineage = broker
        .store
        .node_renewed(&node, peer.serial(), &info.serial, now_ms)
        .await?;
    let generation = match lineage {
        NodeRenewal::Renewed { generation } => generation,
        NodeRenewal::Stale { generation } => {
            refuse_stale(&broker, &node, &peer, &info, generation).await?;
            return Err(ApiError::forbidden(
                "stale_node_svid",
                "this SVID is not the node's current one (the node re-enrolled, or another key renewed it): enroll again",
            ));
        }
    };
    // Every renewal is a record (no record, no SVID): which key renewed,
    // which SVID presented it, and the new SVID's serial.
    let entry = crate::log::LogEntry {
        time_ms: now_ms,
        kind: crate::log::RecordKind::Admin,
        request_id: random_id("req"),
        identity: None,
        grant: None,
        node: Some(node.clone()),
        outcome: Some("node_svid_renewed".into()),
        body: serde_json::json!({
            "action": "node_svid_renewed",
            "node": node,
            "serial": info.serial,
            "key_sha256": info.key_sha256,
            "svid_expires_at": info.not_after.unix_timestamp(),
            "presented_serial": peer.serial(),
            "presented_svid_expires_at": peer.not_after().unix_timestamp(),
            "generation": generation,
        }),
    };
    broker.record(entry).await?;
    Ok(axum::Json(SvidResponse {
        spiffe_id: node,
        svid_pem: crate::routes::public::pem(&cert),
        bundle_pem,
        expires_at: info
            .not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    }))
}

async fn revoke(
    State(broker): State<Arc<Broker>>,
    Extension(peer): Extension<SpiffePeer>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let lease = broker
        .store
        .lease(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_lease", "no such lease"))?;
    if lease.node.as_deref() != Some(&peer.id().to_string()) {
        return Err(ApiError::forbidden(
            "not_your_lease",
            "the lease was issued through another node",
        ));
    }
    broker
        .issuer(&broker.dynamic.load_full())
        .revoke_lease(&lease, &random_id("req"), "task_ended")
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A held request's approval, for the node that asked (404 for any other).
async fn approval(
    State(broker): State<Arc<Broker>>,
    Extension(peer): Extension<SpiffePeer>,
    Path(id): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let not_found = || ApiError::not_found("unknown_approval", "no such approval");
    if id.len() > 128 {
        return Err(not_found());
    }
    let approval = broker.store.approval(&id).await?.ok_or_else(not_found)?;
    if approval.requested_by != peer.id().to_string() {
        return Err(not_found());
    }
    Ok(axum::Json(crate::approvals::view(
        &approval,
        broker.clock.now_ms(),
    )))
}
