//! HTTP plumbing shared by the three listeners: the one place errors become
//! statuses, JSON bodies with limits, and the TLS accept loops that hand each
//! request the peer's verified SPIFFE ID.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use mintguard_api::ErrorBody;
use mintguard_certs::framing::{Framing, FramingGuard};
use mintguard_certs::tls::{SpiffeAcceptor, SpiffePeer};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use crate::issue::{Class, Issued, Refusal, RevokeError};

/// An API error: status, stable code, message, reasons. Internals are logged,
/// never sent.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable `snake_case` code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Reason codes.
    pub reasons: Vec<String>,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with no reasons.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            reasons: Vec::new(),
            retry_after: None,
        }
    }

    /// 400.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401.
    pub fn unauthenticated(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// 403.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// 404.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 503, with the internal cause logged (never sent).
    pub fn unavailable(
        code: &'static str,
        message: impl Into<String>,
        cause: impl std::fmt::Display,
    ) -> Self {
        tracing::error!(code, %cause, "service unavailable");
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// 400 for an input outside its limits.
    pub fn from_input(e: mintguard_api::InputError) -> Self {
        Self::bad_request(e.code, e.message)
    }

    /// With reason codes.
    pub fn with_reasons(mut self, reasons: Vec<String>) -> Self {
        self.reasons = reasons;
        self
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Conflict(_) => {
                Self::new(StatusCode::CONFLICT, "conflict", "already exists")
            }
            other => Self::unavailable(
                "store_unavailable",
                "the store is unavailable; nothing was issued",
                other,
            ),
        }
    }
}

/// The 503 for a log that cannot be written (nothing is issued then).
pub fn log_unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(
        "log_unavailable",
        "the issuance log cannot be written; nothing was issued",
        e,
    )
}

/// The status of a refusal class: the one place an issuance refusal
/// becomes an HTTP status.
pub fn status_of(class: Class) -> StatusCode {
    match class {
        Class::BadRequest => StatusCode::BAD_REQUEST,
        Class::Unauthenticated => StatusCode::UNAUTHORIZED,
        Class::Forbidden => StatusCode::FORBIDDEN,
        Class::Conflict => StatusCode::CONFLICT,
        Class::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
        Class::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Class::Held => StatusCode::ACCEPTED,
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let class = r.class();
        let status = status_of(class);
        if let Some(cause) = r.cause() {
            tracing::error!(code = r.code(), %cause, "service unavailable");
        }
        Self {
            status,
            code: r.code(),
            message: r.message(),
            reasons: r.reasons(),
            retry_after: match class {
                Class::TooMany { retry_after } => Some(retry_after),
                Class::Unavailable => Some(1),
                _ => None,
            },
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            // Held: 202 with the approval to retry with.
            Refusal::StepUp {
                ref request_id,
                ref approval_id,
                ref decision,
            } => (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({
                    "approval_id": approval_id,
                    "error": {"code": self.code(), "message": self.message(), "reasons": self.reasons()},
                    "decision": crate::issue::record::decision_summary(request_id, decision),
                })),
            )
                .into_response(),
            other => ApiError::from(other).into_response(),
        }
    }
}

impl From<RevokeError> for ApiError {
    fn from(e: RevokeError) -> Self {
        match e {
            RevokeError::Store(e) => e.into(),
            // The first failure's status and code, with the count.
            RevokeError::Partial {
                failed,
                subject,
                first,
            } => {
                let message = format!(
                    "{failed} lease(s) of {subject} could not be revoked; the first: {}",
                    first.message()
                );
                Self {
                    message,
                    ..Self::from(*first)
                }
            }
            other => Self::unavailable(other.code(), other.message(), &other),
        }
    }
}

/// The answer to an issuance: the credential (200), or its refusal.
pub fn answer(result: Result<Issued, Refusal>) -> Response {
    match result {
        Ok(issued) => {
            let response = mintguard_api::CredentialResponse {
                lease_id: issued.lease_id.clone(),
                expires_at: crate::clock::rfc3339(issued.expires_at_ms),
                decision: issued.summary(),
                credential: issued.credential,
            };
            (StatusCode::OK, axum::Json(response)).into_response()
        }
        Err(refusal) => refusal.into_response(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(ErrorBody::new(self.code, self.message, self.reasons)),
        )
            .into_response();
        if let Some(seconds) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

/// Whether reading a body failed on its [`BodyTimeout`].
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if err.is::<BodyTimeout>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A JSON body: `application/json` only, within the body limit, unknown
/// fields refused by the types; every failure is a 400 with a reason code.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !json_type {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                if is_body_timeout(&e) {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "body_timeout",
                        BodyTimeout.to_string(),
                    )
                } else if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        e.body_text(),
                    )
                } else {
                    ApiError::bad_request("bad_body", e.body_text())
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(Json)
            .map_err(|e| ApiError::bad_request("bad_json", format!("invalid request body: {e}")))
    }
}

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a listener guards beyond each request: how many connections it
/// serves at once, and whom it tells of the refusals the HTTP layer makes
/// on its own — a connection over the cap (`connection_limit`), a request
/// head too large for hyper (its 431, `header_too_large`) — which no
/// handler ever sees.
#[derive(Clone)]
pub struct ListenerGuard {
    name: &'static str,
    slots: Arc<tokio::sync::Semaphore>,
    /// Slots held per client address: one address (an attacker opening
    /// idle connections before any handshake) cannot take them all.
    per_address: usize,
    by_address: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    on_refusal: Arc<dyn Fn(&'static str, &'static str, SocketAddr) + Send + Sync>,
}

/// A connection's slot: given back (to the listener and to its address)
/// when the connection ends.
pub struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    address: std::net::IpAddr,
    by_address: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut held) = self.by_address.lock()
            && let Some(n) = held.get_mut(&self.address)
        {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.address);
            }
        }
    }
}

impl ListenerGuard {
    /// A guard for listener `name` serving at most `max_connections` at
    /// once; `on_refusal(listener, reason, client)` hears of each refusal.
    pub fn new(
        name: &'static str,
        max_connections: usize,
        per_address: usize,
        on_refusal: impl Fn(&'static str, &'static str, SocketAddr) + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            slots: Arc::new(tokio::sync::Semaphore::new(max_connections)),
            per_address,
            by_address: Arc::default(),
            on_refusal: Arc::new(on_refusal),
        }
    }

    /// A slot for a connection from `addr`, or `None` (refused, counted)
    /// when all are taken or its address holds its share.
    fn admit(&self, addr: SocketAddr) -> Option<Slot> {
        let address = addr.ip().to_canonical();
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.refused("connection_limit", addr);
            return None;
        };
        {
            let mut held = self.by_address.lock().ok()?;
            let n = held.entry(address).or_insert(0);
            if *n >= self.per_address {
                drop(held);
                self.refused("address_connection_limit", addr);
                return None;
            }
            *n += 1;
        }
        Some(Slot {
            _permit: permit,
            address,
            by_address: self.by_address.clone(),
        })
    }

    fn refused(&self, reason: &'static str, addr: SocketAddr) {
        (self.on_refusal)(self.name, reason, addr);
    }
}

/// Serves `router` on `listener` with TLS from `acceptor`; each request gets
/// the peer's verified SPIFFE ID as an extension. Handshake failures are
/// logged and the connection dropped.
pub async fn serve_mtls(
    listener: TcpListener,
    acceptor: Arc<arc_swap::ArcSwap<SpiffeAcceptor>>,
    router: Router,
    guard: ListenerGuard,
) {
    serve_spiffe(listener, acceptor, router, guard, false).await;
}

/// Like [`serve_mtls`] for an acceptor built with `SpiffeAcceptor::optional`:
/// a client without a certificate is served with no peer extension.
pub async fn serve_optional_mtls(
    listener: TcpListener,
    acceptor: Arc<arc_swap::ArcSwap<SpiffeAcceptor>>,
    router: Router,
    guard: ListenerGuard,
) {
    serve_spiffe(listener, acceptor, router, guard, true).await;
}

async fn serve_spiffe(
    listener: TcpListener,
    acceptor: Arc<arc_swap::ArcSwap<SpiffeAcceptor>>,
    router: Router,
    guard: ListenerGuard,
    optional: bool,
) {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%e, "accept failed");
                continue;
            }
        };
        let Some(slot) = guard.admit(addr) else {
            continue;
        };
        let acceptor = acceptor.load_full();
        let (router, guard) = (router.clone(), guard.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let handshake = async {
                if optional {
                    acceptor.accept_optional(tcp).await
                } else {
                    acceptor
                        .accept(tcp)
                        .await
                        .map(|(tls, peer)| (tls, Some(peer)))
                }
            };
            let (tls, peer) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::info!(%addr, %e, "mTLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%addr, "mTLS handshake timed out");
                    return;
                }
            };
            serve_connection(tls, addr, peer, router, &guard).await;
        });
    }
}

/// Serves `router` on `listener` with server-authenticated TLS.
pub async fn serve_tls(
    listener: TcpListener,
    config: Arc<arc_swap::ArcSwap<rustls::ServerConfig>>,
    router: Router,
    guard: ListenerGuard,
) {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%e, "accept failed");
                continue;
            }
        };
        let Some(slot) = guard.admit(addr) else {
            continue;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config.load_full());
        let (router, guard) = (router.clone(), guard.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => serve_connection(tls, addr, None, router, &guard).await,
                Ok(Err(e)) => tracing::info!(%addr, %e, "TLS handshake failed"),
                Err(_) => tracing::info!(%addr, "TLS handshake timed out"),
            }
        });
    }
}

/// How long a client may take to send a request's whole body (a deadline
/// from the headers on, not an idle timeout: a byte every few seconds does
/// not extend it).
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A request whose length is framed twice (`Content-Length` and
/// `Transfer-Encoding`, seen by the connection's [`FramingGuard`]) is
/// refused, as RFC 9112 §6.3 allows: two readers of it (a proxy and the
/// broker) could disagree on where it ends (request smuggling). Answered
/// `400 ambiguous_framing` and the connection closed.
fn refuse_framing(framing: Framing) -> Option<Response> {
    if framing == Framing::Sound {
        return None;
    }
    let mut response = ApiError::bad_request(
        "ambiguous_framing",
        "a request may not carry both Content-Length and Transfer-Encoding",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Some(response)
}

/// The body did not arrive within [`BODY_TIMEOUT`].
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs())]
pub struct BodyTimeout;

/// A request body that fails with [`BodyTimeout`] once its deadline passes.
pub struct DeadlineBody<B> {
    inner: B,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<B> DeadlineBody<B> {
    /// `inner`, to be read within `limit` from now.
    pub fn new(inner: B, limit: std::time::Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl<B> hyper::body::Body for DeadlineBody<B>
where
    B: hyper::body::Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::future::Future;
        if let std::task::Poll::Ready(frame) = std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            return std::task::Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Some(Err(Box::new(BodyTimeout)))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

pub use crate::ids::excerpt;

/// The client's address, available to handlers as an extension.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

async fn serve_connection<IO>(
    io: IO,
    addr: SocketAddr,
    peer: Option<SpiffePeer>,
    router: Router,
    guard: &ListenerGuard,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (io, verdicts) = FramingGuard::new(io);
    let io = TokioIo::new(io);
    let service = tower::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        let router = router.clone();
        let framing = refuse_framing(verdicts.next());
        if let Some(peer) = &peer {
            req.extensions_mut().insert(peer.clone());
        }
        req.extensions_mut().insert(ClientAddr(addr));
        let req = req.map(|body| axum::body::Body::new(DeadlineBody::new(body, BODY_TIMEOUT)));
        async move {
            if let Some(refusal) = framing {
                return Ok(refusal);
            }
            router.oneshot(req).await
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // A client that trickles its headers is cut off (slowloris).
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    if let Err(e) = builder
        .serve_connection(io, TowerToHyperService::new(service))
        .await
    {
        if e.is_parse_too_large() {
            guard.refused("header_too_large", addr);
        }
        tracing::debug!(%addr, %e, "connection ended with an error");
    }
}
