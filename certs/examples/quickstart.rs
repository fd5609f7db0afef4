//! Mintguard's identity foundation end to end, on embedded defaults: a CA for
//! `example.org`, the broker's SVID, a node enrolled from a CSR under the ID
//! its join token names, a real mTLS handshake between them over loopback, and
//! a workload JWT signed with the broker's key and checked against its JWKS.
//!
//! Run: `bash examples/quickstart.sh` (or `cargo run -p mintguard-certs --example quickstart`).

use std::time::Duration;

use anyhow::Context as _;
use mintguard_certs::ca::{CaSettings, CertificateAuthority};
use mintguard_certs::id::{self, IdMatcher};
use mintguard_certs::jwt::{Expiring, JwtKeySet, JwtSettings};
use mintguard_certs::svid::{self, X509Svid};
use mintguard_certs::tls::{SpiffeAcceptor, SpiffeConnector};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: &'a str,
    iat: i64,
    exp: i64,
}

impl Expiring for Claims<'_> {
    fn expires_at(&self) -> i64 {
        self.exp
    }
}

#[allow(clippy::print_stdout)] // a demo prints what it does
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    let data = tempfile::tempdir()?;
    let td = id::parse_trust_domain("example.org")?;

    let ca = CertificateAuthority::create(
        &data.path().join("ca"),
        td.clone(),
        CaSettings::default(),
        now,
    )?;
    println!(
        "CA          {} (id {}), key 0600 in {}",
        td.id_string(),
        ca.active().id(),
        data.path().join("ca").display()
    );

    let broker = ca.issue_svid(&id::broker_id(&td), Duration::from_secs(3600), now)?;
    println!(
        "broker SVID {} until {}",
        broker.spiffe_id(),
        broker.not_after()
    );

    // Enrollment: the agent sends only a CSR; the join token names the node.
    let node_key = svid::generate_key()?;
    let csr = svid::csr_pem(&node_key)?;
    let node_id = id::node_id(&td, "node-1")?;
    let cert = ca.issue_svid_from_csr(&csr, &node_id, Duration::from_secs(600), now)?;
    let node = X509Svid::new(vec![cert], node_key)?;
    println!(
        "node SVID   {} until {}",
        node.spiffe_id(),
        node.not_after()
    );

    // mTLS over loopback: the broker accepts only node SVIDs, the agent pins the broker.
    let bundle = ca.bundle(now)?;
    let acceptor = SpiffeAcceptor::new(&broker, &bundle, IdMatcher::nodes(&td))?;
    let connector =
        SpiffeConnector::new(Some(&node), &bundle, IdMatcher::exact(id::broker_id(&td)))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let (mut tls, peer) = acceptor.accept(tcp).await?;
        tls.write_all(b"hello node").await?;
        tls.shutdown().await?;
        anyhow::Ok(peer)
    });
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut tls, broker_peer) = connector.connect("mintguard-broker", tcp).await?;
    let mut greeting = String::new();
    tls.read_to_string(&mut greeting).await?;
    let node_peer = server.await.context("server task")??;
    println!(
        "mTLS        {addr}: broker verified {node_peer}, agent verified {broker_peer}, said {greeting:?}"
    );

    // A workload credential: a short-lived JWT, and the JWKS relying parties fetch.
    let keys = JwtKeySet::create(&data.path().join("jwt"), JwtSettings::default())?;
    let claims = Claims {
        iss: "https://mintguard.example.org",
        sub: "spiffe://example.org/ns/payments/sa/api",
        aud: "payments-db",
        jti: "lease-0001",
        iat: now.unix_timestamp(),
        exp: now.unix_timestamp() + 300,
    };
    let token = keys.sign(&claims, now)?;
    println!("JWT (ES256) {token}");
    println!("JWKS        {}", serde_json::to_string(&keys.jwks(now))?);
    Ok(())
}
