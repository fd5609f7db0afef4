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

use super::{Operator, admin_record, certificate_name, certificate_operator};
use crate::config::Role;
use crate::console::{COOKIE, CSRF_HEADER, OpenError, Session, Via, cookie_ids, same_secret};
use crate::http::ApiError;
use crate::state::{Broker, token_hash};

const INDEX: &str = include_str!("../../../console/index.html");
const JS: &str = "text/javascript; charset=utf-8";

/// The console's files under `/ui/`, embedded: name, type, body. The page's
/// script is ES modules, one per page (`broker/console/`).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../../console/app.css"),
    ),
    ("app.js", JS, include_str!("../../../console/app.js")),
    ("lib.js", JS, include_str!("../../../console/lib.js")),
    (
        "timeline.js",
        JS,
        include_str!("../../../console/timeline.js"),
    ),
    (
        "decision.js",
        JS,
        include_str!("../../../console/decision.js"),
    ),
    (
        "identity.js",
        JS,
        include_str!("../../../console/identity.js"),
    ),
    ("graph.js", JS, include_str!("../../../console/graph.js")),
    ("issuer.js", JS, include_str!("../../../console/issuer.js")),
    (
        "anomalies.js",
        JS,
        include_str!("../../../console/anomalies.js"),
    ),
    (
        "approvals.js",
        JS,
        include_str!("../../../console/approvals.js"),
    ),
];

/// The console's policy: its own scripts, styles and API, nothing else.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The header the page's background poll carries: it does not restart the
/// session's idle time (an unattended tab still signs out).
const POLL_HEADER: &str = "x-mintguard-poll";

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
        .route("/ui/{file}", get(ui_file))
        .route(
            "/ui/session",
            get(session_info).post(sign_in).delete(sign_out),
        )
}

fn redirect_to_ui() -> Response {
    (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, "/ui/")]).into_response()
}

/// One of [`ASSETS`], or 404.
async fn ui_file(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => asset(body, content_type),
        None => ApiError::not_found("no_such_file", "the console has no such file").into_response(),
    }
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
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
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
/// (`https://` and the Host it was sent to) is refused, whatever its
/// method: a page elsewhere must not even read (or make the broker scan the
/// log) with an operator's certificate or cookie. An address typed in or
/// bookmarked (`Sec-Fetch-Site: none`) may only read.
pub fn same_origin(parts: &Parts) -> Result<(), ApiError> {
    let headers = &parts.headers;
    let refused = |why: &str| ApiError::forbidden("cross_site_request", why.to_owned());
    if let Some(site) = headers.get("sec-fetch-site") {
        let typed = site.as_bytes() == b"none" && !changes(&parts.method);
        if site.as_bytes() != b"same-origin" && !typed {
            return Err(refused("the request came from another site"));
        }
    }
    match (headers.get(header::ORIGIN), headers.get(header::HOST)) {
        (None, _) => Ok(()),
        (Some(origin), Some(host))
            if host
                .to_str()
                .is_ok_and(|h| origin.as_bytes() == format!("https://{h}").as_bytes()) =>
        {
            Ok(())
        }
        _ => Err(refused("the request's Origin is not the console's")),
    }
}

/// A change from a browser: from the console's origin, under a live
/// session of operator `name`, with that session's CSRF token.
pub fn guard_change(parts: &Parts, broker: &Broker, name: &str) -> Result<(), ApiError> {
    same_origin(parts)?;
    if !changes(&parts.method) {
        return Ok(());
    }
    let session = live_session(parts, broker)?.ok_or_else(|| {
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

/// The session cookie's value, if the request carries one; more than one
/// (one may have been planted beside the real one) is refused.
fn session_id(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let ids = cookie_ids(
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    match ids.as_slice() {
        [] => Ok(None),
        [id] if !id.is_empty() && id.len() <= 128 => Ok(Some(id)),
        [_] => Err(ApiError::unauthenticated(
            "session_ended",
            "a malformed console session cookie",
        )),
        _ => Err(ApiError::bad_request(
            "several_sessions",
            "the request carries more than one console session cookie",
        )),
    }
}

fn live_session(parts: &Parts, broker: &Broker) -> Result<Option<Session>, ApiError> {
    let Some(id) = session_id(&parts.headers)? else {
        return Ok(None);
    };
    let active = !parts.headers.contains_key(POLL_HEADER);
    Ok(broker.console.touch(id, broker.clock.now_ms(), active))
}

/// The operator a session cookie stands for, checked as the credential it
/// was opened with: its token still an operator's, or (certificate) the
/// operator's role still there; a change guarded as [`guard_change`].
/// `None`: no session cookie.
pub fn session_operator(parts: &Parts, broker: &Broker) -> Result<Option<Operator>, ApiError> {
    if session_id(&parts.headers)?.is_none() {
        return Ok(None);
    }
    let ended = || {
        ApiError::unauthenticated(
            "session_ended",
            "the console session ended (signed out, idle, or too old): sign in again",
        )
    };
    let session = live_session(parts, broker)?.ok_or_else(ended)?;
    let operators = broker.operators.read().map_err(|_| ended())?;
    let role = match &session.via {
        Via::Token(hash) => operators
            .tokens
            .get(hash)
            .filter(|(name, _)| *name == session.name)
            .map(|(_, role)| *role),
        // Opened with a certificate: valid only where that operator's
        // certificate is presented, never by the cookie alone.
        Via::Certificate => parts
            .extensions
            .get::<SpiffePeer>()
            .filter(|peer| certificate_name(peer) == session.name)
            .and_then(|_| operators.roles.get(&session.name).copied()),
    };
    drop(operators);
    let role = role
        .filter(|r| *r != Role::SignalSource)
        .ok_or_else(ended)?;
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
    same_origin(&parts)?;
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_json",
            "sign in with a JSON body (Content-Type: application/json)",
        ));
    }
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
            // A browser presenting one operator's certificate is that
            // operator on every request: it does not sign in as another.
            if let Some(peer) = parts.extensions.get::<SpiffePeer>()
                && certificate_name(peer) != name
            {
                return Err(ApiError::forbidden(
                    "certificate_mismatch",
                    "the browser presents another operator's certificate",
                ));
            }
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
            let Operator { name, role } = certificate_operator(peer, &broker)?;
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
    // A sign-in ends the session the browser held before.
    if let Ok(Some(old)) = session_id(&parts.headers) {
        broker.console.close(old);
    }
    let (id, session) = broker
        .console
        .open(&name, via, broker.clock.now_ms())
        .map_err(|e| match e {
            OpenError::TooOften => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "sign_in_rate",
                format!(
                    "at most {} sign-ins a minute per operator",
                    crate::console::SIGN_INS_PER_MINUTE
                ),
            ),
            OpenError::Full => ApiError::unavailable(
                "sessions_full",
                "the console holds as many sessions as it may: try again later",
                "session table full",
            ),
            OpenError::Rng => ApiError::unavailable(
                "rng_failed",
                "no session could be opened",
                "the system's randomness failed",
            ),
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
    let session = live_session(&parts, &broker)?
        .ok_or_else(|| ApiError::unauthenticated("session_ended", "the console session ended"))?;
    Ok(axum::Json(info(&broker, &op, &session)).into_response())
}

/// `DELETE /ui/session`: ends the session (a change: CSRF-checked).
async fn sign_out(State(broker): State<Arc<Broker>>, parts: Parts) -> Result<Response, ApiError> {
    session_operator(&parts, &broker)?.ok_or_else(|| {
        ApiError::unauthenticated("unauthenticated", "not signed in to the console")
    })?;
    if let Some(id) = session_id(&parts.headers)? {
        broker.console.close(id);
    }
    with_cookie(StatusCode::NO_CONTENT.into_response(), "", "; Max-Age=0")
}
