//! The agent's client of the broker: kept-alive mTLS connections (the node
//! SVID, the broker's exact SPIFFE ID pinned), bounded retries with jitter
//! for connections that fail before a request is sent.

use std::sync::Mutex;
use std::time::Duration;

use arc_swap::ArcSwap;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use mintguard_certs::tls::SpiffeConnector;

/// Largest broker answer the agent reads, in bytes.
pub const MAX_REPLY_BYTES: usize = 1024 * 1024;

/// The broker's answer.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, if any.
    pub retry_after: Option<String>,
    /// The body.
    pub body: Bytes,
}

/// Why the broker could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No connection after the retries.
    #[error("the broker at {addr} is unreachable: {reason}")]
    Unreachable {
        /// host:port.
        addr: String,
        /// The last failure.
        reason: String,
    },
    /// The request was sent and the exchange failed (not retried: the broker
    /// may have acted on it).
    #[error("the exchange with the broker failed: {0}")]
    Exchange(String),
    /// No answer within the request timeout.
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
}

/// Timeouts and retries.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// The whole exchange.
    pub request_timeout: Duration,
    /// Retries after a failed connection.
    pub retries: u32,
    /// Idle connections kept.
    pub max_idle: usize,
}

/// A pool of mTLS connections to one broker listener.
pub struct BrokerClient {
    addr: String,
    connector: ArcSwap<SpiffeConnector>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    limits: Limits,
}

impl BrokerClient {
    /// A client for `addr` (host:port).
    pub fn new(addr: String, connector: SpiffeConnector, limits: Limits) -> Self {
        Self {
            addr,
            connector: ArcSwap::from_pointee(connector),
            idle: Mutex::new(Vec::new()),
            limits,
        }
    }

    /// Uses `connector` for new connections (a renewed SVID or bundle) and
    /// drops the idle ones made with the old.
    pub fn set_connector(&self, connector: SpiffeConnector) {
        self.connector.store(std::sync::Arc::new(connector));
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let connector = self.connector.load_full();
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(&self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let (tls, _broker) = connector
                .connect("mintguard-broker", tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%e, "broker connection closed");
                }
            });
            Ok(sender)
        };
        tokio::time::timeout(self.limits.connect_timeout, connect)
            .await
            .map_err(|_| format!("no connection within {:?}", self.limits.connect_timeout))?
    }

    /// An idle connection ready for a request, or a new one.
    async fn checkout(&self) -> Result<(SendRequest<Full<Bytes>>, bool), String> {
        loop {
            let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            match pooled {
                Some(mut sender) => {
                    if sender.is_closed() {
                        continue;
                    }
                    if sender.ready().await.is_ok() {
                        return Ok((sender, true));
                    }
                }
                None => return Ok((self.connect().await?, false)),
            }
        }
    }

    fn checkin(&self, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.limits.max_idle
        {
            idle.push(sender);
        }
    }

    /// Sends one request. A connection that fails before the request is
    /// sent is retried (bounded, with jittered backoff); once sent, a
    /// failure is reported, never replayed.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, BrokerError> {
        tokio::time::timeout(
            self.limits.request_timeout,
            self.send_inner(method, path, body),
        )
        .await
        .map_err(|_| BrokerError::Timeout(self.limits.request_timeout))?
    }

    async fn send_inner(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, BrokerError> {
        let mut attempt = 0;
        loop {
            let (mut sender, reused) = match self.checkout().await {
                Ok(s) => s,
                Err(reason) if attempt < self.limits.retries => {
                    tracing::debug!(%reason, attempt, "broker connection failed; retrying");
                    backoff(attempt).await;
                    attempt += 1;
                    continue;
                }
                Err(reason) => {
                    return Err(BrokerError::Unreachable {
                        addr: self.addr.clone(),
                        reason,
                    });
                }
            };
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, "mintguard-broker");
            if body.is_some() {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            let req = req
                .body(Full::new(Bytes::from(body.clone().unwrap_or_default())))
                .map_err(|e| BrokerError::Exchange(e.to_string()))?;
            match sender.send_request(req).await {
                Ok(res) => {
                    let status = res.status().as_u16();
                    let retry_after = res
                        .headers()
                        .get(hyper::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let limited = http_body_util::Limited::new(res.into_body(), MAX_REPLY_BYTES);
                    let body = limited
                        .collect()
                        .await
                        .map_err(|e| BrokerError::Exchange(e.to_string()))?
                        .to_bytes();
                    self.checkin(sender);
                    return Ok(Reply {
                        status,
                        retry_after,
                        body,
                    });
                }
                // A kept-alive connection the broker closed before taking
                // the request: nothing was processed, so try again.
                Err(e) if reused && e.is_canceled() && attempt < self.limits.retries => {
                    attempt += 1;
                }
                Err(e) => return Err(BrokerError::Exchange(e.to_string())),
            }
        }
    }
}

/// 50 ms × 2^attempt, jittered to 50–150 %.
async fn backoff(attempt: u32) {
    let mut byte = [0u8; 1];
    let jitter = if aws_lc_rs::rand::fill(&mut byte).is_ok() {
        50 + u64::from(byte[0]) * 100 / 255
    } else {
        100
    };
    let base = 50u64 << attempt.min(6);
    tokio::time::sleep(Duration::from_millis(base * jitter / 100)).await;
}
