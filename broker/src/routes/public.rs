//! Public listener (server-authenticated TLS): node enrollment, CI runners
//! (`/v1/ci/credentials`, RFC 8693 `/v1/token`), JWKS, OIDC discovery,
//! RFC 7662 introspection, health.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use mintguard_api::{CredentialRequest, EnrollRequest, SvidResponse};
use mintguard_certs::id;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::http::{ApiError, ClientAddr, Json};
use crate::ids::random_id;
use crate::log::{LogEntry, RecordKind};
use crate::state::{Broker, token_hash};

/// The public router.
pub fn router(broker: Arc<Broker>) -> Router {
    // The CI front door: each address is rate-limited before its body is
    // read or its token verified.
    let ci = Router::new()
        .route("/v1/ci/credentials", post(ci_credentials))
        .route("/v1/ci/approvals/{id}", get(ci_approval))
        .route("/v1/token", post(token_exchange))
        .route_layer(axum::middleware::from_fn_with_state(
            broker.clone(),
            ci_rate_limit,
        ));
    Router::new()
        .route("/v1/node/enroll", post(enroll))
        .route("/v1/introspect", post(introspect))
        .merge(ci)
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/healthz", get(healthz))
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
    let now = broker.clock.now_ms();
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
    // A new lineage: SVIDs of the node's earlier enrollments renew no more.
    let generation = broker
        .store
        .node_enrolled(&node_id.to_string(), &info.serial, now)
        .await?;
    let entry = LogEntry {
        time_ms: now,
        kind: RecordKind::Admin,
        request_id: random_id("req"),
        identity: None,
        grant: None,
        node: Some(node_id.to_string()),
        outcome: Some("node_enrolled".into()),
        body: json!({"action": "node_enrolled", "node": node_id.to_string(), "serial": info.serial, "key_sha256": info.key_sha256, "svid_expires_at": info.not_after.unix_timestamp(), "generation": generation}),
    };
    broker.record(entry).await?;
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
    mintguard_certs::svid::cert_pem(der)
}

async fn jwks(State(broker): State<Arc<Broker>>) -> Response {
    broker.refresh_jwt_keys();
    match broker.jwt.read() {
        Ok(keys) => axum::Json(keys.jwks(OffsetDateTime::now_utc())).into_response(),
        Err(_) => ApiError::unavailable("keys_unavailable", "signing keys unavailable", "poisoned")
            .into_response(),
    }
}

async fn discovery(State(broker): State<Arc<Broker>>) -> axum::Json<Value> {
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

/// The per-address CI rate limit, before the request's body is read (RFC
/// 8693's endpoint answers it as an OAuth error).
async fn ci_rate_limit(
    State(broker): State<Arc<Broker>>,
    Extension(ClientAddr(addr)): Extension<ClientAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match crate::doors::ci::check_rate(&broker, addr.ip()) {
        Ok(()) => next.run(req).await,
        Err(e) if req.uri().path() == "/v1/token" => {
            let mut response = oauth_error(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                e.message,
            );
            response.headers_mut().insert(
                header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            response
        }
        Err(e) => e.into_response(),
    }
}

/// Liveness only: the public listener says nothing of the broker's inner
/// state (whether anomaly analysis keeps up is `GET /admin/v1/health`).
async fn healthz() -> axum::Json<Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
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
    let Some(client) = client else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    };
    let Ok(Form(form)) = form else {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_request", "error_description": "expected a form with token"})))
            .into_response();
    };
    let inactive = || axum::Json(json!({"active": false})).into_response();
    let now = OffsetDateTime::now_utc();
    broker.refresh_jwt_keys();
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
    // Only tokens meant for this client: another relying party's are
    // inactive to it (it learns nothing of them).
    let audience = claims["aud"].as_str().unwrap_or_default();
    if !client.audiences.iter().any(|a| a == audience) {
        return inactive();
    }
    if exp <= now.unix_timestamp() {
        return inactive();
    }
    match broker.store.lease(jti).await {
        // Only the broker's own JWT credentials: a web-identity token
        // minted for STS federation is signed by the same keys but is not
        // a credential for relying parties.
        Ok(Some(lease))
            if lease.revoked_at_ms.is_none() && lease.kind == crate::lease::LeaseKind::Jwt =>
        {
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

/// The bearer token of an `Authorization` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// `POST /v1/ci/credentials`: a CI job's OIDC token as bearer, the workload
/// API's request body and answer.
async fn ci_credentials(
    State(broker): State<Arc<Broker>>,
    Extension(ClientAddr(addr)): Extension<ClientAddr>,
    headers: HeaderMap,
    Json(request): Json<CredentialRequest>,
) -> Result<Response, ApiError> {
    let token = bearer(&headers).ok_or_else(|| {
        ApiError::unauthenticated("unauthenticated", "an OIDC token is required as the bearer")
    })?;
    Ok(crate::http::answer(
        crate::doors::ci::issue(&broker, addr.ip(), token, request, None).await?,
    ))
}

/// `GET /v1/ci/approvals/{id}`: the step-up approval a CI job's request
/// was held for, with an OIDC token of the same job's identity as bearer.
async fn ci_approval(
    State(broker): State<Arc<Broker>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let token = bearer(&headers).ok_or_else(|| {
        ApiError::unauthenticated("unauthenticated", "an OIDC token is required as the bearer")
    })?;
    crate::doors::ci::approval(&broker, token, &id)
        .await
        .map(axum::Json)
}

/// Largest token-exchange form read.
const MAX_TOKEN_FORM_BYTES: usize = 2 * 1024 * 1024;

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

fn oauth_error(status: StatusCode, error: &str, description: impl Into<String>) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({"error": error, "error_description": description.into()})),
    )
        .into_response()
}

/// `POST /v1/token`: RFC 8693 token exchange of a CI job's OIDC token (the
/// `subject_token`) for the grant named by `resource` or `audience`;
/// failures answer OAuth error JSON (RFC 6749 §5.2).
async fn token_exchange(
    State(broker): State<Arc<Broker>>,
    Extension(ClientAddr(addr)): Extension<ClientAddr>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // Read up to MAX_TOKEN_FORM_BYTES here (not the listener's body limit), so
    // an oversized subject_token is refused by the verifier — and logged.
    let Ok(body) = axum::body::to_bytes(body, MAX_TOKEN_FORM_BYTES).await else {
        return oauth_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            format!("the form exceeds {MAX_TOKEN_FORM_BYTES} bytes"),
        );
    };
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim() == "application/x-www-form-urlencoded");
    if !form_type {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "expected application/x-www-form-urlencoded",
        );
    }
    let mut fields = std::collections::HashMap::new();
    for (k, v) in url::form_urlencoded::parse(&body) {
        if fields
            .insert(k.clone().into_owned(), v.into_owned())
            .is_some()
        {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("{k} given twice"),
            );
        }
    }
    let field = |k: &str| fields.get(k).map(String::as_str);
    if field("grant_type") != Some(TOKEN_EXCHANGE) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("grant_type must be {TOKEN_EXCHANGE}"),
        );
    }
    if field("subject_token_type") != Some(JWT_TYPE) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("subject_token_type must be {JWT_TYPE}"),
        );
    }
    if field("requested_token_type").is_some_and(|t| t != JWT_TYPE) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("requested_token_type can only be {JWT_TYPE}"),
        );
    }
    let Some(token) = field("subject_token").filter(|t| !t.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "subject_token is required",
        );
    };
    let Some(grant) = field("resource")
        .or(field("audience"))
        .filter(|g| !g.is_empty())
    else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "name the grant with resource or audience",
        );
    };
    let request = CredentialRequest {
        grant: grant.to_owned(),
        purpose: field("purpose").map(str::to_owned),
        ..Default::default()
    };
    let (status, detail, code) = match crate::doors::ci::issue(
        &broker,
        addr.ip(),
        token,
        request,
        Some(crate::lease::LeaseKind::Jwt),
    )
    .await
    {
        Ok(Ok(issued)) => {
            let expires_in = (issued.expires_at_ms - broker.clock.now_ms())
                .div_euclid(1000)
                .max(0);
            return (
                StatusCode::OK,
                [(header::CACHE_CONTROL, "no-store")],
                axum::Json(json!({
                    "access_token": issued.credential["token"],
                    "issued_token_type": JWT_TYPE,
                    "token_type": "Bearer",
                    "expires_in": expires_in,
                    "lease_id": issued.lease_id,
                })),
            )
                .into_response();
        }
        Ok(Err(refusal)) => {
            let e = ApiError::from(refusal);
            (e.status, format!("{}: {}", e.code, e.message), e.code)
        }
        Err(e) => (e.status, format!("{}: {}", e.code, e.message), e.code),
    };
    match status {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            oauth_error(status, "temporarily_unavailable", detail)
        }
        _ if code == "unknown_grant" || code == "unsupported_grant_kind" => {
            oauth_error(StatusCode::BAD_REQUEST, "invalid_target", detail)
        }
        StatusCode::BAD_REQUEST => oauth_error(StatusCode::BAD_REQUEST, "invalid_request", detail),
        _ => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", detail),
    }
}
