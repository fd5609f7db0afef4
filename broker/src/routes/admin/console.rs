//! The operator console under `/ui/` on the admin listener: a page and its
//! script and style, embedded in the binary (no CDN; it works offline), and
//! its sign-in. The page calls the admin API itself with the session
//! cookie, so every action is checked against the operator's role by the
//! same handlers as the CLI's and logged under the operator's name.
//!
//! Served by the broker rather than by a proxy in front of it: the session
//! is then checked where the role is, and the console cannot drift from
//! the API it shows. What a browser may do is held tight:
//! - a strict Content-Security-Policy (scripts and styles from `/ui/` only,
//!   no inline script, no framing), `X-Frame-Options: DENY`, `nosniff`;
//! - the session id only in an HttpOnly, Secure, SameSite=Strict cookie,
//!   never in a URL; it ends when idle, at its age and at sign-out;
//! - a change (any method but GET and HEAD) from a browser — by cookie, or
//!   by the operator certificate a browser presents to every request —
//!   must come from the console's own origin and carry the session's CSRF
//!   token.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mintguard_certs::tls::SpiffePeer;
use serde_json::json;

use super::{Operator, admin_record};
use crate::config::Role;
use crate::console::{COOKIE, CSRF_HEADER, Session, Via, cookie_id, same_secret};
use crate::http::ApiError;
use crate::state::{Broker, token_hash};

const INDEX: &str = include_str!("../../../console/index.html");
const SCRIPT: &str = include_str!("../../../console/app.js");
const STYLE: &str = include_str!("../../../console/app.css");

/// The console's policy: its own scripts, styles and API, nothing else.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The console's routes (none when `[console] enabled = false`).
pub fn router(broker: &Broker) -> Router<Arc<Broker>> {
    if !broker.config().console.enabled {
        return Router::new();
    }
    Router::new()
        .route("/ui", get(|| async { redirect_to_ui() }))
        .route(
            "/ui/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route(
            "/ui/session",
            get(session_info).post(sign_in).delete(sign_out),
        )
}

fn redirect_to_ui() -> Response {
    (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, "/ui/")]).into_response()
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Every admin response: never framed, never sniffed, never cached; the
/// console's pages under their strict policy.
pub async fn security_headers(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Whether a request came from a browser (which names the page's origin
/// or the request's site; a CLI or SDK sends neither).
pub fn from_browser(parts: &Parts) -> bool {
    parts.headers.contains_key(header::ORIGIN) || parts.headers.contains_key("sec-fetch-site")
}

fn changes(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD)
}

/// A browser's request from another site than the console's own origin
/// (`https://` and the Host it was sent to) is refused.
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let refused = |why: &str| ApiError::forbidden("cross_site_request", why.to_owned());
    if let Some(site) = headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
    {
        return Err(refused("the request came from another site"));
    }
    match (headers.get(header::ORIGIN), headers.get(header::HOST)) {
        (None, _) => Ok(()),
        (Some(origin), Some(host))
            if origin.as_bytes()
                == format!("https://{}", host.to_str().unwrap_or("\u{0}")).as_bytes() =>
        {
            Ok(())
        }
        _ => Err(refused("the request's Origin is not the console's")),
    }
}

/// A change from a browser: from the console's origin, under a live
/// session of operator `name`, with that session's CSRF token.
pub fn guard_change(parts: &Parts, broker: &Broker, name: &str) -> Result<(), ApiError> {
    if !changes(&parts.method) {
        return Ok(());
    }
    same_origin(&parts.headers)?;
    let session = live_session(parts, broker).ok_or_else(|| {
        ApiError::forbidden(
            "csrf_refused",
            "a change from a browser needs the console's session and its CSRF token",
        )
    })?;
    let token = parts
        .headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if session.name != name || !same_secret(token, &session.csrf) {
        return Err(ApiError::forbidden(
            "csrf_refused",
            "the request does not carry this session's CSRF token",
        ));
    }
    Ok(())
}

fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(cookie_id)
}

fn live_session(parts: &Parts, broker: &Broker) -> Option<Session> {
    broker
        .console
        .touch(session_id(&parts.headers)?, broker.clock.now_ms())
}

/// The operator a session cookie stands for, checked as the credential it
/// was opened with: its token still an operator's, or (certificate) the
/// operator's role still there; a change guarded as [`guard_change`].
/// `None`: no session cookie.
pub fn session_operator(parts: &Parts, broker: &Broker) -> Result<Option<Operator>, ApiError> {
    if session_id(&parts.headers).is_none() {
        return Ok(None);
    }
    let ended = || {
        ApiError::unauthenticated(
            "session_ended",
            "the console session ended (signed out, idle, or too old): sign in again",
        )
    };
    let session = live_session(parts, broker).ok_or_else(ended)?;
    let operators = broker.operators.read().map_err(|_| ended())?;
    let role = match &session.via {
        Via::Token(hash) => operators
            .tokens
            .get(hash)
            .filter(|(name, _)| *name == session.name)
            .map(|(_, role)| *role),
        Via::Certificate => operators.roles.get(&session.name).copied(),
    };
    drop(operators);
    let role = role.ok_or_else(ended)?;
    guard_change(parts, broker, &session.name)?;
    Ok(Some(Operator {
        name: session.name,
        role,
    }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    /// An operator token; without one, the operator certificate the
    /// browser presented.
    token: Option<String>,
}

/// `POST /ui/session`: opens a session for the operator the token (or the
/// browser's certificate) names, recorded in the log.
async fn sign_in(
    State(broker): State<Arc<Broker>>,
    parts: Parts,
    body: Bytes,
) -> Result<Response, ApiError> {
    same_origin(&parts.headers)?;
    let request: SignIn = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_json", e.to_string()))?;
    let refused = || ApiError::unauthenticated("unauthenticated", "unknown operator token");
    let (name, role, via) = match request.token.as_deref().map(str::trim) {
        Some(token) if !token.is_empty() && token.len() <= 512 => {
            let hash = token_hash(token);
            let found = broker
                .operators
                .read()
                .ok()
                .and_then(|o| o.tokens.get(&hash).cloned());
            let (name, role) = found.ok_or_else(refused)?;
            (name, role, Via::Token(hash))
        }
        Some(_) => return Err(refused()),
        None => {
            let peer = parts.extensions.get::<SpiffePeer>().ok_or_else(|| {
                ApiError::unauthenticated(
                    "unauthenticated",
                    "give an operator token, or present an operator certificate",
                )
            })?;
            let name = peer
                .id()
                .path()
                .strip_prefix("/mintguard/operator/")
                .unwrap_or_default()
                .to_owned();
            let role = broker
                .operators
                .read()
                .ok()
                .and_then(|o| o.roles.get(&name).copied())
                .ok_or_else(|| {
                    ApiError::forbidden(
                        "unknown_operator",
                        format!("{} has no operator role", peer.id()),
                    )
                })?;
            (name, role, Via::Certificate)
        }
    };
    if role == Role::SignalSource {
        return Err(ApiError::forbidden(
            "insufficient_role",
            "a signal source posts signals; it has no console",
        ));
    }
    let via_name = match via {
        Via::Token(_) => "token",
        Via::Certificate => "certificate",
    };
    let (id, session) = broker
        .console
        .open(&name, via, broker.clock.now_ms())
        .ok_or_else(|| {
            ApiError::unavailable(
                "rng_failed",
                "no session could be opened",
                "the system's randomness failed",
            )
        })?;
    let op = Operator { name, role };
    if let Err(e) = admin_record(
        &broker,
        &op,
        "console_sign_in",
        None,
        json!({"via": via_name}),
    )
    .await
    {
        // No record, no session.
        broker.console.close(&id);
        return Err(e);
    }
    let res = axum::Json(info(&broker, &op, &session)).into_response();
    with_cookie(res, &id, "")
}

/// `res` setting the session cookie to `value` (with `extra` attributes).
fn with_cookie(mut res: Response, value: &str, extra: &str) -> Result<Response, ApiError> {
    let cookie = format!("{COOKIE}={value}; Path=/; HttpOnly; Secure; SameSite=Strict{extra}");
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?,
    );
    Ok(res)
}

fn info(broker: &Broker, op: &Operator, session: &Session) -> serde_json::Value {
    json!({
        "name": op.name,
        "role": op.role,
        "csrf": session.csrf,
        "idle_timeout_seconds": broker.console.idle_ms() / 1000,
    })
}

/// `GET /ui/session`: who the session is, and its CSRF token (readable only
/// by the console's own origin).
async fn session_info(
    State(broker): State<Arc<Broker>>,
    parts: Parts,
) -> Result<Response, ApiError> {
    let op = session_operator(&parts, &broker)?.ok_or_else(|| {
        ApiError::unauthenticated("unauthenticated", "not signed in to the console")
    })?;
    let session = live_session(&parts, &broker)
        .ok_or_else(|| ApiError::unauthenticated("session_ended", "the console session ended"))?;
    Ok(axum::Json(info(&broker, &op, &session)).into_response())
}

/// `DELETE /ui/session`: ends the session (a change: CSRF-checked).
async fn sign_out(State(broker): State<Arc<Broker>>, parts: Parts) -> Result<Response, ApiError> {
    session_operator(&parts, &broker)?.ok_or_else(|| {
        ApiError::unauthenticated("unauthenticated", "not signed in to the console")
    })?;
    if let Some(id) = session_id(&parts.headers) {
        broker.console.close(id);
    }
    with_cookie(StatusCode::NO_CONTENT.into_response(), "", "; Max-Age=0")
}
