//! The quickstart's node and workload, until the agent binary lands: it
//! enrolls with the join token in `MINTGUARD_JOIN_TOKEN` (as the agent will),
//! derives its own selectors the way the agent attests a workload (uid, gid,
//! SHA-256 of its executable), asks the broker's agents listener for a JWT
//! over mTLS, and verifies the JWT against the JWKS the broker serves.
//!
//! Usage: `quickstart_node DATA_DIR` (the broker's data dir: listen.json, bundle.pem).

#![allow(clippy::print_stdout)] // a demo prints what it does

use std::os::unix::fs::MetadataExt;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mintguard_certs::bundle::TrustBundle;
use mintguard_certs::id::{self, IdMatcher};
use mintguard_certs::svid::{self, X509Svid};
use mintguard_certs::tls::SpiffeConnector;
use serde_json::{Value, json};

async fn call(
    addr: &str,
    bundle: &TrustBundle,
    node: Option<&X509Svid>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let connector = SpiffeConnector::new(
        node,
        bundle,
        IdMatcher::exact(id::broker_id(bundle.trust_domain())),
    )?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let (tls, _broker) = connector.connect("mintguard-broker", tcp).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "mintguard-broker");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let res = sender
        .send_request(req.body(Full::new(Bytes::from(payload)))?)
        .await?;
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await?.to_bytes();
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let data = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: quickstart_node DATA_DIR")?,
    );
    let token = std::env::var("MINTGUARD_JOIN_TOKEN").context("MINTGUARD_JOIN_TOKEN is not set")?;
    let listen: Value = serde_json::from_str(&std::fs::read_to_string(data.join("listen.json"))?)?;
    let td = id::parse_trust_domain(listen["trust_domain"].as_str().context("trust_domain")?)?;
    let bundle = TrustBundle::from_pem(td, &std::fs::read_to_string(data.join("bundle.pem"))?)?;
    let public = listen["public"].as_str().context("public")?;
    let agents = listen["agents"].as_str().context("agents")?;

    // Enroll: a fresh node key and CSR; the join token names the node.
    let key = svid::generate_key()?;
    let enroll = json!({"join_token": token, "csr": svid::csr_pem(&key)?});
    let (status, svid) = call(
        public,
        &bundle,
        None,
        "POST",
        "/v1/node/enroll",
        Some(enroll),
    )
    .await?;
    if status != 200 {
        bail!("enrollment refused: {status} {svid}");
    }
    let node = X509Svid::from_pem(
        svid["svid_pem"].as_str().context("svid_pem")?,
        &key.to_pem(),
    )?;
    println!(
        "node        enrolled as {} until {}",
        node.spiffe_id(),
        svid["expires_at"].as_str().unwrap_or("")
    );
    let (_, entries) = call(
        agents,
        &bundle,
        Some(&node),
        "GET",
        "/v1/node/entries",
        None,
    )
    .await?;
    println!(
        "entries     {} for this node",
        entries.as_array().map_or(0, Vec::len)
    );

    // Attest ourselves as the agent will attest a workload.
    let me = std::fs::metadata("/proc/self")?;
    let exe = std::fs::read("/proc/self/exe")?;
    let sha = mintguard_broker::log::hex(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &exe).as_ref(),
    );
    let selectors = vec![
        format!("unix:uid:{}", me.uid()),
        format!("unix:gid:{}", me.gid()),
        format!("unix:sha256:{sha}"),
    ];
    println!("workload    selectors {selectors:?}");
    let request = json!({"selectors": selectors, "request": {"grant": "payments-token", "ttl_seconds": 600, "purpose": "quickstart"}});
    let (status, answer) = call(
        agents,
        &bundle,
        Some(&node),
        "POST",
        "/v1/issue",
        Some(request),
    )
    .await?;
    println!("decision    {status} {}", answer["decision"]);
    if status != 200 {
        bail!("no credential: {status} {answer}");
    }
    let token = answer["credential"]["token"].as_str().context("token")?;
    println!(
        "credential  lease {} expires {}",
        answer["lease_id"].as_str().unwrap_or(""),
        answer["expires_at"].as_str().unwrap_or("")
    );

    // A relying party verifies it with nothing but the broker's JWKS.
    let (_, jwks) = call(public, &bundle, None, "GET", "/.well-known/jwks.json", None).await?;
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks)?;
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
