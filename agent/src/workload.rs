//! The Workload API on a Unix socket (HTTP/1.1, JSON): every request is
//! attested from the kernel, then forwarded to the broker with the attested
//! selectors and the node's facts.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use mintguard_api::{
    CredentialRequest, EntryView, ErrorBody, IssueRequest, MAX_REQUEST_BYTES, NodeFacts,
};
use serde_json::json;
use tokio::net::UnixListener;
use tower::ServiceExt;

use crate::attest::{AttestError, Attestor, Peer};
use crate::broker::BrokerError;
use crate::node::NodeIdentity;
use crate::watch::Watches;

/// Largest request head (request line and headers) on the socket, in bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a request's body may take to arrive in all, once its headers
/// did: a client that announces a body and stalls or trickles it is answered
/// and its slot freed.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the whole request body, at most [`MAX_REQUEST_BYTES`] within
/// [`BODY_TIMEOUT`] in total (a deadline, not an idle timeout: a byte every
/// few seconds does not extend it), before any handler runs.
pub(crate) async fn body_deadline(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_REQUEST_BYTES)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, bytes.into()))
                .await
        }
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                AgentError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request_too_large",
                    format!("the body exceeds {MAX_REQUEST_BYTES} bytes"),
                )
            } else {
                AgentError::new(StatusCode::BAD_REQUEST, "bad_body", e.to_string())
            }
            .into_response()
        }
        Err(_) => AgentError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        )
        .into_response(),
    }
}

/// An error in the one shape every endpoint answers with.
#[derive(Debug)]
pub struct AgentError {
    status: StatusCode,
    body: ErrorBody,
    retry_after: Option<String>,
    /// The connection is closed after this answer (it can never succeed).
    close: bool,
}

impl AgentError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody::new(code, message, Vec::new()),
            retry_after: None,
            close: false,
        }
    }

    /// 400 for an input outside its limits.
    pub fn from_input(e: mintguard_api::InputError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.code, e.message)
    }

    /// What the caller is told.
    pub fn body_message(&self) -> &str {
        &self.body.error.message
    }

    fn with_reasons(mut self, reasons: Vec<String>) -> Self {
        self.body.error.reasons = reasons;
        self
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(self.body)).into_response();
        if let Some(v) = self
            .retry_after
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if self.close {
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}

impl From<AttestError> for AgentError {
    fn from(e: AttestError) -> Self {
        // A shared connection, or one whose process exec'd, never passes
        // again: it is closed after the answer (pooled clients reconnect).
        let (code, close) = match e {
            AttestError::ConnectionShared { .. } => ("connection_shared", true),
            AttestError::ExecutedSinceConnect(_) => ("executed_since_connect", true),
            _ => ("not_attested", false),
        };
        AgentError {
            close,
            ..AgentError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
        }
    }
}

impl From<BrokerError> for AgentError {
    fn from(e: BrokerError) -> Self {
        let mut err = AgentError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            e.to_string(),
        );
        err.retry_after = Some("1".into());
        err
    }
}

/// Who issued a lease through this agent (for `DELETE` and `bind_to_process`).
#[derive(Clone, Debug)]
struct LeaseOwner {
    uid: String,
    sha256: String,
}

/// The agent's shared state.
pub struct Agent {
    /// The node identity and broker client.
    pub node: Arc<NodeIdentity>,
    /// The attestor.
    pub attestor: Attestor,
    /// This node's entries, refreshed from the broker.
    pub entries: arc_swap::ArcSwap<Vec<EntryView>>,
    /// Node facts sent with every request.
    pub facts: NodeFacts,
    /// Process watches for `bind_to_process`.
    pub watches: Arc<Watches>,
    leases: Mutex<HashMap<String, LeaseOwner>>,
}

/// Most leases the agent remembers owners for.
const MAX_TRACKED_LEASES: usize = 100_000;

impl Agent {
    /// The agent's state.
    pub fn new(
        node: Arc<NodeIdentity>,
        attestor: Attestor,
        facts: NodeFacts,
        watches: Arc<Watches>,
    ) -> Arc<Self> {
        Arc::new(Self {
            node,
            attestor,
            entries: arc_swap::ArcSwap::from_pointee(Vec::new()),
            facts,
            watches,
            leases: Mutex::new(HashMap::new()),
        })
    }

    /// Fetches this node's entries from the broker.
    pub async fn refresh_entries(&self) -> Result<usize, String> {
        let reply = self
            .node
            .broker
            .send("GET", "/v1/node/entries", None)
            .await
            .map_err(|e| e.to_string())?;
        if reply.status != 200 {
            return Err(format!("entries: {}", reply.status));
        }
        let entries: Vec<EntryView> =
            serde_json::from_slice(&reply.body).map_err(|e| e.to_string())?;
        let n = entries.len();
        self.entries.store(Arc::new(entries));
        Ok(n)
    }

    /// Issues for an already attested workload (also the container
    /// credentials endpoint's path).
    pub async fn issue(
        &self,
        selectors: Vec<String>,
        request: CredentialRequest,
    ) -> Result<(StatusCode, Option<String>, Bytes), AgentError> {
        let body = serde_json::to_vec(&IssueRequest {
            selectors,
            request,
            node_facts: Some(self.facts.clone()),
        })
        .map_err(|e| AgentError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
        let reply = self
            .node
            .broker
            .send("POST", "/v1/issue", Some(body))
            .await?;
        let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
        Ok((status, reply.retry_after, reply.body))
    }
}

fn selector<'a>(selectors: &'a [String], prefix: &str) -> &'a str {
    selectors
        .iter()
        .find_map(|s| s.strip_prefix(prefix))
        .unwrap_or_default()
}

fn attest(agent: &Agent, peer: Option<&Peer>) -> Result<Vec<String>, AgentError> {
    let peer = peer.ok_or(AttestError::NoPid)?;
    Ok(agent.attestor.attest(peer)?)
}

/// A broker answer passed on as it came: status, JSON body, `Retry-After`.
pub(crate) fn passthrough(
    status: StatusCode,
    retry_after: Option<String>,
    body: Bytes,
) -> Response {
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    res
}

/// Parses a JSON body: wrong content types and malformed JSON are 400s.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, AgentError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim() == "application/json")
        });
    if !json {
        return Err(AgentError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_content_type",
            "Content-Type must be application/json",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| AgentError::new(StatusCode::BAD_REQUEST, "bad_json", e.to_string()))
}

async fn credentials(
    State(agent): State<Arc<Agent>>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AgentError> {
    let peer = peer.map(|p| p.0);
    let selectors = attest(&agent, peer.as_ref())?;
    let request: CredentialRequest = parse_json(&headers, &body)?;
    request.check().map_err(AgentError::from_input)?;
    let bind = request.bind_to_process == Some(true);
    let owner = LeaseOwner {
        uid: selector(&selectors, "unix:uid:").to_owned(),
        sha256: selector(&selectors, "unix:sha256:").to_owned(),
    };
    let (status, retry_after, body) = agent.issue(selectors, request).await?;
    if status == StatusCode::OK
        && let Ok(issued) = serde_json::from_slice::<IssuedLease>(&body)
    {
        if let Ok(mut leases) = agent.leases.lock() {
            if leases.len() >= MAX_TRACKED_LEASES {
                leases.clear();
            }
            leases.insert(issued.lease_id.clone(), owner);
        }
        if bind && let Some(peer) = peer {
            agent.watches.add(peer, issued.lease_id.clone());
        }
    }
    Ok(passthrough(status, retry_after, body))
}

/// The lease id of a credential the broker issued: all the agent keeps of
/// it (the credential itself passes through unparsed).
#[derive(serde::Deserialize)]
struct IssuedLease {
    lease_id: String,
}

async fn release(
    State(agent): State<Arc<Agent>>,
    peer: Option<axum::Extension<Peer>>,
    UrlPath(lease_id): UrlPath<String>,
) -> Result<Response, AgentError> {
    let selectors = attest(&agent, peer.as_ref().map(|p| &p.0))?;
    if lease_id.len() > 128
        || !lease_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(AgentError::new(
            StatusCode::BAD_REQUEST,
            "bad_lease_id",
            "malformed lease id",
        ));
    }
    let owner = agent
        .leases
        .lock()
        .ok()
        .and_then(|l| l.get(&lease_id).cloned())
        .ok_or_else(|| {
            AgentError::new(
                StatusCode::NOT_FOUND,
                "unknown_lease",
                "this agent issued no such lease (or restarted since)",
            )
        })?;
    if owner.uid != selector(&selectors, "unix:uid:")
        || owner.sha256 != selector(&selectors, "unix:sha256:")
    {
        return Err(AgentError::new(
            StatusCode::FORBIDDEN,
            "not_your_lease",
            "the lease was issued to another workload",
        ));
    }
    let reply = agent
        .node
        .broker
        .send("DELETE", &format!("/v1/leases/{lease_id}"), None)
        .await?;
    if reply.status == 204 {
        if let Ok(mut l) = agent.leases.lock() {
            l.remove(&lease_id);
        }
        agent.watches.forget(&lease_id);
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
    Ok(passthrough(status, reply.retry_after, reply.body))
}

async fn approval(
    State(agent): State<Arc<Agent>>,
    peer: Option<axum::Extension<Peer>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, AgentError> {
    attest(&agent, peer.as_ref().map(|p| &p.0))?;
    if id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(AgentError::new(
            StatusCode::BAD_REQUEST,
            "bad_approval_id",
            "malformed approval id",
        ));
    }
    let reply = agent
        .node
        .broker
        .send("GET", &format!("/v1/approvals/{id}"), None)
        .await?;
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
    Ok(passthrough(status, reply.retry_after, reply.body))
}

async fn identity(
    State(agent): State<Arc<Agent>>,
    peer: Option<axum::Extension<Peer>>,
) -> Result<Response, AgentError> {
    let selectors = attest(&agent, peer.as_ref().map(|p| &p.0))?;
    let entries = agent.entries.load();
    let matching: Vec<_> = entries
        .iter()
        .filter(|e| e.selectors.iter().all(|s| selectors.contains(s)))
        .map(|e| json!({"spiffe_id": e.spiffe_id, "grants": e.grants}))
        .collect();
    if matching.is_empty() {
        return Err(AgentError::new(
            StatusCode::UNAUTHORIZED,
            "not_attested",
            "no registration entry matches this workload",
        )
        .with_reasons(selectors));
    }
    Ok(axum::Json(json!({"selectors": selectors, "identities": matching})).into_response())
}

async fn health(State(agent): State<Arc<Agent>>) -> Response {
    let svid = agent.node.svid();
    axum::Json(json!({
        "status": "ok",
        "node": svid.spiffe_id().to_string(),
        "svid_expires_at": svid.not_after().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "entries": agent.entries.load().len(),
        "agent_version": agent.facts.agent_version,
    }))
    .into_response()
}

async fn not_found() -> AgentError {
    AgentError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// The Workload API router.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/credentials", post(credentials))
        .route("/v1/credentials/{lease_id}", delete(release))
        .route("/v1/approvals/{id}", get(approval))
        .route("/v1/identity", get(identity))
        .route("/v1/health", get(health))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .layer(axum::middleware::from_fn(body_deadline))
        .with_state(agent)
}

/// Why the socket cannot be served.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct SocketError {
    path: String,
    reason: String,
}

/// Binds the workload socket after checking the path is safe: the parent
/// directory is not world-writable, an existing file is a stale socket (no
/// agent answers on it), then sets its mode and group.
pub fn bind(path: &Path, mode: u32, group: Option<u32>) -> Result<UnixListener, SocketError> {
    let fail = |reason: String| SocketError {
        path: path.display().to_string(),
        reason,
    };
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::node::check_private_dir(parent, "the socket's parent directory")
        .map_err(|e| fail(e.to_string()))?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(fail(
                "exists and is not a socket; refusing to replace it".into(),
            ));
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(fail("another process is serving this socket".into()));
            }
            std::fs::remove_file(path)
                .map_err(|e| fail(format!("removing the stale socket: {e}")))?;
        }
        Err(_) => {}
    }
    // Created with no permissions for anyone else, then opened up to
    // `mode`: never connectable by others in between.
    let previous = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(previous);
    let listener = bound.map_err(|e| fail(e.to_string()))?;
    crate::stamped::pass_credentials(&listener).map_err(|e| fail(format!("SO_PASSCRED: {e}")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| fail(format!("chmod: {e}")))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| fail(format!("chown: {e}")))?;
    }
    Ok(listener)
}

/// One uid's share of the connections, given back when the connection ends.
struct UidSlot {
    counts: Arc<Mutex<HashMap<u32, usize>>>,
    uid: u32,
}

impl UidSlot {
    /// A slot for `uid` if it holds fewer than `max` connections.
    fn take(counts: &Arc<Mutex<HashMap<u32, usize>>>, uid: u32, max: usize) -> Option<Self> {
        let mut held = counts.lock().ok()?;
        let n = held.entry(uid).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: counts.clone(),
            uid,
        })
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        if let Ok(mut held) = self.counts.lock()
            && let Some(n) = held.get_mut(&self.uid)
        {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.uid);
            }
        }
    }
}

/// Serves the HTTP workload socket on `listener` ([`accept`]'s limits).
pub async fn serve(listener: UnixListener, router: Router, max_connections: usize, per_uid: usize) {
    accept(listener, max_connections, per_uid, move |stream, peer| {
        let router = router.clone();
        async move {
            let service =
                tower::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    if let Some(peer) = &peer {
                        req.extensions_mut().insert(peer.clone());
                    }
                    router.clone().oneshot(req.map(axum::body::Body::new))
                });
            serve_http1(stream, service, "workload").await;
        }
    })
    .await
}

/// Accepts workload connections on `listener`, at most `max_connections`
/// at once (further clients wait in the kernel's backlog) and `per_uid` of
/// one uid (further ones are closed at once), and hands each to `serve`
/// with the kernel's view of its peer (taken at accept) and a stream that
/// notes who wrote each byte.
pub async fn accept<F, Fut>(
    listener: UnixListener,
    max_connections: usize,
    per_uid: usize,
    serve: F,
) where
    F: Fn(crate::stamped::StampedStream, Option<Peer>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let by_uid = Arc::new(Mutex::new(HashMap::new()));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // The kernel's view of the peer, taken at connect; the start time
        // pins the pid to this process for the connection's life, and every
        // read notes who wrote the bytes.
        let writers = crate::attest::Writers::default();
        let cred = stream.peer_cred().ok();
        // The connecting process itself where the kernel can name it
        // (`SO_PEERPIDFD`, Linux 6.5+), so a pid reused before accept is
        // not mistaken for it.
        // A kernel without it says ENOPROTOOPT (the pid alone is then
        // checked); any other error means the peer is already gone.
        let pidfd = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerPidfd);
        let gone = matches!(&pidfd, Err(e) if *e != nix::errno::Errno::ENOPROTOOPT);
        let pidfd = pidfd.ok();
        let peer = cred
            .filter(|_| !gone)
            .and_then(|c| Peer::at_accept(c.pid()?, c.uid(), c.gid(), writers.clone(), pidfd).ok());
        // The kernel's uid even when /proc could not be read (the peer
        // exited); no credentials at all: one shared bucket (such a peer is
        // refused anyway).
        let uid = cred.map_or(u32::MAX, |c| c.uid());
        let Some(uid_slot) = UidSlot::take(&by_uid, uid, per_uid) else {
            tracing::debug!(uid, "connection closed: the uid holds its share");
            continue;
        };
        let connecting = peer.as_ref().map_or(0, |p| p.pid);
        let stream = crate::stamped::StampedStream::new(stream, connecting, writers);
        let served = serve(stream, peer);
        tokio::spawn(async move {
            let _permit = permit;
            let _uid_slot = uid_slot;
            served.await;
        });
    }
}

/// Serves one HTTP/1.1 connection with the agent's limits (head size, 10 s
/// for the headers — which also closes idle kept-alive connections). A
/// request framed both by `Content-Length` and `Transfer-Encoding` is
/// refused before the service sees it (RFC 9112 §6.3: readers could
/// disagree on where it ends; see `mintguard_certs::framing`).
pub(crate) async fn serve_http1<IO, S>(io: IO, service: S, what: &str)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let (io, verdicts) = mintguard_certs::framing::FramingGuard::new(io);
    let service = tower::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
        let sound = verdicts.next() == mintguard_certs::framing::Framing::Sound;
        let service = service.clone();
        async move {
            if !sound {
                return Ok(AgentError {
                    close: true,
                    ..AgentError::new(
                        StatusCode::BAD_REQUEST,
                        "ambiguous_framing",
                        "a request may not carry both Content-Length and Transfer-Encoding",
                    )
                }
                .into_response());
            }
            service.oneshot(req).await
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    if let Err(e) = builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .await
    {
        tracing::debug!(%e, "{what} connection ended with an error");
    }
}
