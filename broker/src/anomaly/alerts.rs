//! The alert webhook: JSON POSTs whose body is signed with HMAC-SHA256,
//! retried with doubling backoff, from a bounded queue that counts what it
//! drops instead of blocking the analysis.
//!
//! Headers: `X-Mintguard-Signature: sha256=<hex of HMAC(secret, body)>`,
//! `X-Mintguard-Alert-Id` (stable across retries, for de-duplication).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::config::WebhookConfig;

/// The sending side of the webhook.
#[derive(Clone)]
pub struct AlertSink {
    queue: mpsc::Sender<(String, Vec<u8>)>,
    dropped: Arc<AtomicU64>,
}

/// The hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, body);
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

struct Target {
    url: hyper::Uri,
    host: String,
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
    secret: Vec<u8>,
    max_attempts: u32,
}

impl AlertSink {
    /// Starts the sender for `config` (the secret file is read now).
    pub fn start(config: &WebhookConfig) -> Result<Self, String> {
        let secret = std::fs::read(&config.secret_file)
            .map_err(|e| format!("{}: {e}", config.secret_file.display()))?;
        let secret = String::from_utf8_lossy(&secret).trim().as_bytes().to_vec();
        if secret.len() < 16 {
            return Err(format!(
                "{}: the webhook secret needs at least 16 bytes",
                config.secret_file.display()
            ));
        }
        let url: hyper::Uri = config
            .url
            .parse()
            .map_err(|e| format!("webhook url: {e}"))?;
        let host = url.host().ok_or("webhook url: no host")?.to_owned();
        let https = url.scheme_str() == Some("https");
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            Some(tokio_rustls::TlsConnector::from(Arc::new(
                crate::outbound::tls_config(config.ca_file.as_deref())?,
            )))
        } else {
            None
        };
        let target = Target {
            url,
            host,
            port,
            tls,
            secret,
            max_attempts: config.max_attempts.max(1),
        };
        let (queue, rx) = mpsc::channel(config.queue.max(1));
        tokio::spawn(deliver(target, rx));
        Ok(Self {
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Queues `alert` (never waits); false when the queue is full and the
    /// alert was dropped (counted in [`Self::dropped`]).
    pub fn send(&self, id: &str, alert: &serde_json::Value) -> bool {
        let body = alert.to_string().into_bytes();
        if self.queue.try_send((id.to_owned(), body)).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(dropped = n, "the alert queue is full; an alert was dropped");
            return false;
        }
        true
    }

    /// Alerts dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn deliver(target: Target, mut rx: mpsc::Receiver<(String, Vec<u8>)>) {
    while let Some((id, body)) = rx.recv().await {
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=target.max_attempts {
            match post(&target, &id, &body).await {
                Ok(status) if (200..300).contains(&status) => break,
                result => {
                    tracing::warn!(alert = %id, attempt, ?result, "the alert webhook failed");
                    if attempt == target.max_attempts {
                        tracing::error!(alert = %id, "the alert was not delivered; it stays in the log");
                        break;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

async fn post(target: &Target, id: &str, body: &[u8]) -> Result<u16, String> {
    let request = hyper::Request::post(target.url.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, target.host.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            "x-mintguard-signature",
            format!("sha256={}", signature(&target.secret, body)),
        )
        .header("x-mintguard-alert-id", id)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| e.to_string())?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let exchange = async {
        match &target.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                    .map_err(|e| e.to_string())?;
                let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
                crate::outbound::send(TokioIo::new(stream), request, 64 * 1024).await
            }
            None => crate::outbound::send(TokioIo::new(tcp), request, 64 * 1024).await,
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
        .map(|(status, _)| status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
