//! Outbound HTTPS for the broker's own calls (CI issuers' discovery and
//! JWKS, Vault): one rustls client configuration (system roots plus an
//! optional PEM file) and one size-limited HTTP/1.1 exchange.

use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// A TLS client configuration trusting the system's roots and, if given,
/// the certificates in `ca_file`.
pub fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(file) = ca_file {
        let pem = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots
                .add(cert.map_err(|e| format!("{}: {e}", file.display()))?)
                .map_err(|e| format!("{}: {e}", file.display()))?;
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())
    .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// A client connection on `io` (its driver runs in the background).
pub async fn handshake<IO>(io: TokioIo<IO>) -> Result<Sender, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

/// A kept-alive HTTP/1.1 client connection.
pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A failed exchange, and whether its request can have reached the server.
#[derive(Debug)]
pub struct ExchangeError {
    /// What failed.
    pub error: String,
    /// The request, given back when it was never written (the connection
    /// was closed or not ready): sending it again cannot repeat it.
    pub unsent: Option<hyper::Request<Full<Bytes>>>,
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

/// One exchange on `sender`; the status and at most `limit` bytes of body
/// (a longer or broken body is an error: the server's answer is unknown).
pub async fn exchange(
    sender: &mut Sender,
    request: hyper::Request<Full<Bytes>>,
    limit: usize,
) -> Result<(u16, Bytes), ExchangeError> {
    if let Err(e) = sender.ready().await {
        return Err(ExchangeError {
            error: e.to_string(),
            unsent: Some(request),
        });
    }
    let res = sender
        .try_send_request(request)
        .await
        .map_err(|mut e| ExchangeError {
            error: e.error().to_string(),
            unsent: e.take_message(),
        })?;
    let status = res.status().as_u16();
    let body = http_body_util::Limited::new(res.into_body(), limit)
        .collect()
        .await
        .map_err(|e| ExchangeError {
            error: format!("reading the answer (HTTP {status}): {e}"),
            unsent: None,
        })?;
    Ok((status, body.to_bytes()))
}

/// One HTTP/1.1 exchange on a fresh connection `io`.
pub async fn send<IO>(
    io: TokioIo<IO>,
    request: hyper::Request<Full<Bytes>>,
    limit: usize,
) -> Result<(u16, Bytes), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut sender = handshake(io).await?;
    exchange(&mut sender, request, limit)
        .await
        .map_err(|e| e.to_string())
}
