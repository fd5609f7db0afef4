//! Public listener (server-authenticated TLS): node enrollment, JWKS, OIDC
//! discovery, RFC 7662 introspection, health.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use mintguard_api::{EnrollRequest, SvidResponse};
use mintguard_certs::id;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::http::{ApiError, Json};
use crate::log::{LogEntry, RecordKind};
use crate::pipeline::random_id;
use crate::state::{Broker, now_ms, token_hash};

/// The public router.
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/v1/node/enroll", post(enroll))
        .route("/v1/introspect", post(introspect))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(broker)
}

async fn enroll(
    State(broker): State<Arc<Broker>>,
    Json(req): Json<EnrollRequest>,
) -> Result<axum::Json<SvidResponse>, ApiError> {
    if req.join_token.len() > 256 || req.csr.len() > 16 * 1024 {
        return Err(ApiError::bad_request(
            "too_large",
            "join token or CSR too large",
        ));
    }
    // Refuse a bad CSR before the single-use token is consumed.
    mintguard_certs::ca::validate_csr(&req.csr)
        .map_err(|e| ApiError::bad_request("bad_csr", e.to_string()))?;
    let config = broker.config();
    let now = now_ms();
    let node = broker
        .store
        .consume_join_token(&token_hash(&req.join_token), now)
        .await?
        .ok_or_else(|| {
            ApiError::unauthenticated(
                "invalid_join_token",
                "the join token is unknown, used or expired",
            )
        })?;
    let node_id = id::node_id(&config.trust_domain, &node)
        .map_err(|e| ApiError::bad_request("bad_node", e.to_string()))?;
    let (cert, bundle) = {
        let ca = broker
            .ca
            .read()
            .map_err(|_| ApiError::unavailable("ca_unavailable", "CA unavailable", "poisoned"))?;
        let t = OffsetDateTime::now_utc();
        let cert = ca
            .issue_svid_from_csr(&req.csr, &node_id, config.ca.svid_ttl.0, t)
            .map_err(|e| ApiError::bad_request("bad_csr", e.to_string()))?;
        (
            cert,
            ca.bundle(t)
                .map_err(|e| ApiError::unavailable("ca_unavailable", "CA unavailable", e))?,
        )
    };
    let info = mintguard_certs::svid::SvidInfo::parse(&cert)
        .map_err(|e| ApiError::unavailable("ca_failed", "CA failed", e))?;
    let entry = LogEntry {
        time_ms: now,
        kind: RecordKind::Admin,
        request_id: random_id("req"),
        identity: None,
        grant: None,
        node: Some(node_id.to_string()),
        outcome: Some("node_enrolled".into()),
        body: json!({"action": "node_enrolled", "node": node_id.to_string(), "svid_expires_at": info.not_after.unix_timestamp()}),
    };
    crate::pipeline::record(&broker, entry).await?;
    Ok(axum::Json(SvidResponse {
        spiffe_id: node_id.to_string(),
        svid_pem: pem(&cert),
        bundle_pem: bundle.to_pem(),
        expires_at: info
            .not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    }))
}

/// PEM of one DER certificate.
pub fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

async fn jwks(State(broker): State<Arc<Broker>>) -> Response {
    match broker.jwt.read() {
        Ok(keys) => axum::Json(keys.jwks(OffsetDateTime::now_utc())).into_response(),
        Err(_) => ApiError::unavailable("keys_unavailable", "signing keys unavailable", "poisoned")
            .into_response(),
    }
}

async fn discovery(State(broker): State<Arc<Broker>>) -> axum::Json<serde_json::Value> {
    let config = broker.config();
    let iss = &config.issuer_url;
    axum::Json(json!({
        "issuer": iss,
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "introspection_endpoint": format!("{iss}/v1/introspect"),
        "token_endpoint": format!("{iss}/v1/token"),
        "id_token_signing_alg_values_supported": [config.jwt.algorithm.as_str()],
        "subject_types_supported": ["public"],
        "response_types_supported": ["id_token"],
    }))
}

async fn readyz(State(broker): State<Arc<Broker>>) -> Response {
    match broker.store.head().await {
        Ok(_) => "ready".into_response(),
        Err(e) => ApiError::unavailable("store_unavailable", "the store is unavailable", e)
            .into_response(),
    }
}

#[derive(Deserialize)]
struct IntrospectForm {
    token: String,
    #[serde(default)]
    #[allow(dead_code)] // accepted per RFC 7662, not needed: only JWTs exist
    token_type_hint: Option<String>,
}

/// RFC 7662: `{"active": false}` for anything not a live, unrevoked token of ours.
async fn introspect(
    State(broker): State<Arc<Broker>>,
    headers: HeaderMap,
    form: Result<Form<IntrospectForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let client = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(token_hash)
        .and_then(|h| {
            broker
                .introspection
                .read()
                .ok()
                .and_then(|m| m.get(&h).cloned())
        });
    if client.is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let Ok(Form(form)) = form else {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_request", "error_description": "expected a form with token"})))
            .into_response();
    };
    let inactive = || axum::Json(json!({"active": false})).into_response();
    let now = OffsetDateTime::now_utc();
    let claims = {
        let Ok(keys) = broker.jwt.read() else {
            return inactive();
        };
        keys.jwks(now)
            .keys
            .iter()
            .find_map(|k| k.verify(&form.token).ok())
    };
    let Some(claims) = claims else {
        return inactive();
    };
    let (Some(jti), Some(exp)) = (claims["jti"].as_str(), claims["exp"].as_i64()) else {
        return inactive();
    };
    if exp <= now.unix_timestamp() {
        return inactive();
    }
    match broker.store.lease(jti).await {
        Ok(Some(lease)) if lease.revoked_at_ms.is_none() => {
            let mut out = claims.clone();
            if let Some(o) = out.as_object_mut() {
                o.insert("active".into(), true.into());
                o.insert("token_type".into(), "Bearer".into());
            }
            axum::Json(out).into_response()
        }
        Ok(_) => inactive(),
        Err(e) => ApiError::unavailable("store_unavailable", "the store is unavailable", e)
            .into_response(),
    }
}
