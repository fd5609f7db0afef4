//! The quickstart's workload: it asks the node agent on its Unix socket for a
//! JWT (the agent attests it from the kernel: uid, gid, the SHA-256 of this
//! executable) and verifies the JWT against the JWKS the broker serves, as a
//! relying party would.
//!
//! Usage: `workload SOCKET BROKER_DATA_DIR` (listen.json and bundle.pem name
//! the broker's public listener and trust bundle).

#![allow(clippy::print_stdout)] // a demo prints what it does

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mintguard_api::CredentialRequest;
use mintguard_certs::bundle::TrustBundle;
use mintguard_certs::id::{self, IdMatcher};
use mintguard_certs::tls::SpiffeConnector;
use serde_json::Value;

/// `GET path` on the broker's public listener (server-authenticated TLS,
/// the broker's SPIFFE ID pinned).
async fn public_get(addr: &str, bundle: &TrustBundle, path: &str) -> anyhow::Result<Value> {
    let connector = SpiffeConnector::new(
        None,
        bundle,
        IdMatcher::exact(id::broker_id(bundle.trust_domain())),
    )?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (tls, _) = connector.connect("mintguard-broker", tcp).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "mintguard-broker")
        .body(Full::new(Bytes::new()))?;
    let res = sender.send_request(req).await?;
    let bytes = res.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&bytes)?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: workload SOCKET BROKER_DATA_DIR";
    let socket = std::path::PathBuf::from(args.next().context(usage)?);
    let data = std::path::PathBuf::from(args.next().context(usage)?);

    let request = CredentialRequest {
        grant: "payments-token".into(),
        ttl_seconds: Some(600),
        purpose: Some("quickstart".into()),
        ..Default::default()
    };
    let issued = match mintguard_agent::client::request_credential(&socket, &request).await {
        Ok(i) => i,
        Err(e) => bail!("no credential: {e}"),
    };
    println!("decision    {}", issued.decision);
    println!(
        "credential  lease {} expires {}",
        issued.lease_id, issued.expires_at
    );
    let token = issued.credential["token"].as_str().context("token")?;

    // A relying party verifies it with nothing but the broker's JWKS.
    let listen: Value = serde_json::from_str(&std::fs::read_to_string(data.join("listen.json"))?)?;
    let td = id::parse_trust_domain(listen["trust_domain"].as_str().context("trust_domain")?)?;
    let bundle = TrustBundle::from_pem(td, &std::fs::read_to_string(data.join("bundle.pem"))?)?;
    let public = listen["public"].as_str().context("public")?;
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_value(public_get(public, &bundle, "/.well-known/jwks.json").await?)?;
    let header = jsonwebtoken::decode_header(token)?;
    let jwk = jwks
        .find(header.kid.as_deref().unwrap_or_default())
        .context("kid not in JWKS")?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&["payments"]);
    let claims = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk)?,
        &validation,
    )?
    .claims;
    println!(
        "verified    {:?} JWT for {} (aud {}, jti {}) against the broker's JWKS",
        header.alg, claims["sub"], claims["aud"], claims["jti"]
    );
    Ok(())
}
