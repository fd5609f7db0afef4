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
#[derive(Clone, Debug)]
pub struct AlertSink {
    queue: mpsc::Sender<(String, Vec<u8>)>,
    dropped: Arc<AtomicU64>,
}

/// The hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, body);
    crate::ids::hex(tag.as_ref())
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A receiver answering `statuses` in turn (then 200); the bodies it got.
    async fn receiver(statuses: Vec<u16>) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = got.clone();
        tokio::spawn(async move {
            let mut statuses = statuses.into_iter();
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 65536];
                let mut n = 0;
                // Headers and a small body arrive in one or two reads.
                while n == 0 || !String::from_utf8_lossy(&buf[..n]).contains("}") {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
                keep.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let status = statuses.next().unwrap_or(200);
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                    )
                    .await;
            }
        });
        (url, got)
    }

    fn config(url: String, dir: &std::path::Path, queue: usize) -> WebhookConfig {
        let secret = dir.join("secret");
        std::fs::write(&secret, "0123456789abcdef0123").unwrap();
        WebhookConfig {
            url,
            secret_file: secret,
            queue,
            max_attempts: 3,
            ca_file: None,
        }
    }

    #[tokio::test]
    async fn a_failed_delivery_is_retried_with_the_same_id_and_signature() {
        let dir = tempfile::tempdir().unwrap();
        let (url, got) = receiver(vec![500]).await;
        let sink = AlertSink::start(&config(url, dir.path(), 10)).unwrap();
        assert!(sink.send("alert-1", &serde_json::json!({"score": 95})));
        for _ in 0..50 {
            if got.lock().unwrap().len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 2, "one failure, one retry");
        let expected = signature(b"0123456789abcdef0123", br#"{"score":95}"#);
        for request in got.iter() {
            let lower = request.to_ascii_lowercase();
            assert!(lower.contains("x-mintguard-alert-id: alert-1"), "{request}");
            assert!(lower.contains(&format!("x-mintguard-signature: sha256={expected}")));
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        // Nobody listens: every delivery fails slowly, the queue fills.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        drop(listener);
        let sink = AlertSink::start(&config(url, dir.path(), 2)).unwrap();
        let sent = (0..20)
            .filter(|i| sink.send(&format!("a{i}"), &serde_json::json!({"i": i})))
            .count();
        assert!(sent <= 3, "{sent}");
        assert_eq!(sink.dropped(), 20 - sent as u64);
    }

    #[test]
    fn a_short_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config("http://127.0.0.1:1/".into(), dir.path(), 1);
        std::fs::write(&c.secret_file, "short").unwrap();
        c.queue = 1;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = rt.enter();
        assert!(AlertSink::start(&c).unwrap_err().contains("16 bytes"));
    }

    #[test]
    fn signatures_are_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
