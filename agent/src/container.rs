//! The container-credentials endpoint for AWS SDKs
//! (`AWS_CONTAINER_CREDENTIALS_FULL_URI` + `AWS_CONTAINER_AUTHORIZATION_TOKEN`),
//! on loopback TCP. TCP carries no peer credentials, so the authorization
//! token is what binds a caller to a workload: an attested workload asks for
//! one on the Unix socket (`POST /v1/container-credentials/token`), and the
//! token stays bound to that process — each use re-attests it from the
//! kernel, and the token dies with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mintguard_api::{CredentialRequest, CredentialResponse, ErrorBody};
use serde::Deserialize;
use serde_json::json;

use crate::attest::{Peer, stat};
use crate::workload::{Agent, AgentError, parse_json};

/// Most live container-credentials tokens.
pub const MAX_TOKENS: usize = 4096;

/// A token's binding: the process that asked for it and the grant.
#[derive(Clone, Debug)]
struct Binding {
    peer: Peer,
    grant: String,
    spiffe_id: Option<String>,
}

/// The live tokens, by token.
#[derive(Default)]
pub struct Tokens {
    bound: Mutex<HashMap<String, Binding>>,
}

impl Tokens {
    fn get(&self, token: &str) -> Option<Binding> {
        let mut bound = self.bound.lock().ok()?;
        let binding = bound.get(token)?.clone();
        if stat(binding.peer.pid).map_or(true, |s| s.start_time != binding.peer.start_time) {
            bound.remove(token);
            return None;
        }
        Some(binding)
    }

    fn insert(&self, token: String, binding: Binding) -> Result<(), AgentError> {
        let mut bound = self.bound.lock().map_err(|_| {
            AgentError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "lock poisoned",
            )
        })?;
        if bound.len() >= MAX_TOKENS {
            // Drop the tokens of processes that exited before refusing.
            bound.retain(|_, b| stat(b.peer.pid).is_ok_and(|s| s.start_time == b.peer.start_time));
        }
        if bound.len() >= MAX_TOKENS {
            return Err(AgentError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_tokens",
                format!("at most {MAX_TOKENS} live container-credentials tokens"),
            ));
        }
        bound.insert(token, binding);
        Ok(())
    }
}

/// `POST /v1/container-credentials/token` on the Unix socket.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The (aws_sts) grant the token fetches.
    pub grant: String,
    /// The SPIFFE ID, when several entries match.
    #[serde(default)]
    pub spiffe_id: Option<String>,
}

/// The state both sides share.
pub struct Container {
    /// The agent.
    pub agent: Arc<Agent>,
    /// Live tokens.
    pub tokens: Tokens,
    /// The endpoint's URL (`http://127.0.0.1:PORT/v1/container-credentials`).
    pub url: String,
}

fn random_token() -> Result<String, AgentError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| {
        AgentError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no randomness",
        )
    })?;
    Ok(format!("mgcc-{}", mintguard_certs::hex(&bytes)))
}

/// Issues a token to the attested workload `peer` (Unix-socket side).
pub async fn create_token(
    container: &Container,
    peer: Option<Peer>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, AgentError> {
    let peer = peer.ok_or(crate::attest::AttestError::NoPid)?;
    container.agent.attestor.attest(&peer)?;
    let req: TokenRequest = parse_json(headers, body)?;
    CredentialRequest {
        grant: req.grant.clone(),
        spiffe_id: req.spiffe_id.clone(),
        ..Default::default()
    }
    .check()
    .map_err(AgentError::from_input)?;
    let token = random_token()?;
    let pid = peer.pid;
    container.tokens.insert(
        token.clone(),
        Binding {
            // Without its pidfd: a token outlives its connection, and a
            // table of them must not hold a descriptor each.
            peer: peer.unpinned(),
            grant: req.grant.clone(),
            spiffe_id: req.spiffe_id,
        },
    )?;
    Ok(axum::Json(json!({
        "token": token,
        "full_uri": container.url,
        "grant": req.grant,
        "bound_to_pid": pid,
    }))
    .into_response())
}

/// The AWS container-credentials JSON for an issued credential, or why not.
pub fn container_json(
    grant: &str,
    issued: &CredentialResponse,
) -> Result<serde_json::Value, AgentError> {
    let c = &issued.credential;
    match c["type"].as_str() {
        Some("aws") => Ok(json!({
            "AccessKeyId": c["access_key_id"],
            "SecretAccessKey": c["secret_access_key"],
            "Token": c["session_token"],
            "Expiration": issued.expires_at,
        })),
        other => Err(AgentError::new(
            StatusCode::BAD_REQUEST,
            "grant_kind_unavailable",
            format!(
                "grant {grant:?} issues a {} credential; container credentials need an aws_sts grant",
                other.unwrap_or("unknown")
            ),
        )),
    }
}

async fn credentials(
    State(container): State<Arc<Container>>,
    headers: HeaderMap,
) -> Result<Response, AgentError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            AgentError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "an Authorization token is required",
            )
        })?;
    let binding = container.tokens.get(token).ok_or_else(|| {
        AgentError::new(
            StatusCode::UNAUTHORIZED,
            "unknown_token",
            "unknown token, or the process it was bound to exited",
        )
    })?;
    // Attested anew: the process the token is bound to, as it is now.
    let selectors = container.agent.attestor.attest(&binding.peer)?;
    let request = CredentialRequest {
        grant: binding.grant.clone(),
        purpose: Some("aws container credentials".into()),
        spiffe_id: binding.spiffe_id.clone(),
        ..Default::default()
    };
    let (status, retry_after, body) = container.agent.issue(selectors, request).await?;
    if status != StatusCode::OK {
        return Ok(crate::workload::passthrough(status, retry_after, body));
    }
    let issued: CredentialResponse = serde_json::from_slice(&body).map_err(|e| {
        AgentError::new(StatusCode::BAD_GATEWAY, "bad_broker_answer", e.to_string())
    })?;
    Ok(axum::Json(container_json(&binding.grant, &issued)?).into_response())
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(ErrorBody::new("not_found", "no such endpoint", Vec::new())),
    )
        .into_response()
}

/// The loopback router.
pub fn router(container: Arc<Container>) -> Router {
    Router::new()
        .route("/v1/container-credentials", get(credentials))
        .fallback(not_found)
        // A body nobody reads still has a size limit and a deadline.
        .layer(axum::middleware::from_fn(crate::workload::body_deadline))
        .with_state(container)
}

/// The Unix-socket route that hands out tokens.
pub fn token_route(container: Arc<Container>) -> Router {
    Router::new()
        .route(
            "/v1/container-credentials/token",
            post(
                |State(c): State<Arc<Container>>,
                 peer: Option<axum::Extension<Peer>>,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    create_token(&c, peer.map(|p| p.0), &headers, &body).await
                },
            ),
        )
        .layer(axum::extract::DefaultBodyLimit::max(
            mintguard_api::MAX_REQUEST_BYTES,
        ))
        .layer(axum::middleware::from_fn(crate::workload::body_deadline))
        .with_state(container)
}

/// Serves the loopback endpoint on `listener`.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let router = router.clone();
        tokio::spawn(async move {
            crate::workload::serve_http1(stream, router, "container-credentials").await;
        });
    }
}
