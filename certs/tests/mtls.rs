//! Real mTLS handshakes over loopback TCP between SVIDs from the Mintguard CA.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

use std::time::Duration;

use mintguard_certs::ca::{CaSettings, CertificateAuthority};
use mintguard_certs::id::{self, IdMatcher, SpiffeId, TrustDomain};
use mintguard_certs::svid::{self, SvidInfo, X509Svid};
use mintguard_certs::tls::{SpiffeAcceptor, SpiffeConnector, SpiffePeer};
use mintguard_certs::{CertsError, bundle::TrustBundle};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TEN_MIN: Duration = Duration::from_secs(600);

fn td(name: &str) -> TrustDomain {
    id::parse_trust_domain(name).unwrap()
}

fn ca(name: &str) -> CertificateAuthority {
    CertificateAuthority::in_memory(td(name), CaSettings::default(), OffsetDateTime::now_utc())
        .unwrap()
}

/// Enrolls a node the way the broker will: the agent makes a key and CSR, the
/// CA signs it for the ID the join token names.
fn enroll(ca: &CertificateAuthority, id: &SpiffeId, now: OffsetDateTime) -> X509Svid {
    let key = svid::generate_key().unwrap();
    let csr = svid::csr_pem(&key).unwrap();
    let cert = ca.issue_svid_from_csr(&csr, id, TEN_MIN, now).unwrap();
    X509Svid::new(vec![cert], key).unwrap()
}

struct Outcome {
    server: Result<SpiffePeer, CertsError>,
    client: Result<SpiffePeer, CertsError>,
}

/// One handshake over real TCP; each side also exchanges a message so a
/// refusal that only one side notices during the handshake reaches the other.
async fn handshake(acceptor: SpiffeAcceptor, connector: SpiffeConnector) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut tls, peer) = acceptor.accept(tcp).await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(CertsError::Handshake)?;
        tls.write_all(b"pong")
            .await
            .map_err(CertsError::Handshake)?;
        tls.shutdown().await.map_err(CertsError::Handshake)?;
        Ok(peer)
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client = async {
        let (mut tls, peer) = connector.connect("broker.mintguard.internal", tcp).await?;
        tls.write_all(b"ping")
            .await
            .map_err(CertsError::Handshake)?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(CertsError::Handshake)?;
        Ok(peer)
    }
    .await;
    Outcome {
        server: server.await.unwrap(),
        client,
    }
}

struct Domain {
    td: TrustDomain,
    ca: CertificateAuthority,
    broker: X509Svid,
}

impl Domain {
    fn new() -> Self {
        let ca = ca("example.org");
        let td = ca.trust_domain().clone();
        let broker = ca
            .issue_svid(&id::broker_id(&td), TEN_MIN, OffsetDateTime::now_utc())
            .unwrap();
        Self { td, ca, broker }
    }

    fn bundle(&self) -> TrustBundle {
        self.ca.bundle(OffsetDateTime::now_utc()).unwrap()
    }

    /// The broker's agents listener: node SVIDs only.
    fn acceptor(&self) -> SpiffeAcceptor {
        SpiffeAcceptor::new(&self.broker, &self.bundle(), IdMatcher::nodes(&self.td)).unwrap()
    }

    /// An agent: presents its node SVID and pins the broker's exact ID.
    fn connector(&self, node: &X509Svid) -> SpiffeConnector {
        SpiffeConnector::new(
            Some(node),
            &self.bundle(),
            IdMatcher::exact(id::broker_id(&self.td)),
        )
        .unwrap()
    }

    fn node(&self, name: &str) -> X509Svid {
        enroll(
            &self.ca,
            &id::node_id(&self.td, name).unwrap(),
            OffsetDateTime::now_utc(),
        )
    }
}

fn refused(result: &Result<SpiffePeer, CertsError>, needle: &str) {
    match result {
        Ok(peer) => panic!("expected refusal ({needle}), peer {peer} was accepted"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(needle),
                "refusal should mention {needle:?}: {msg}"
            );
        }
    }
}

#[tokio::test]
async fn node_and_broker_authenticate_each_other() {
    let d = Domain::new();
    let node = d.node("node-1");
    let out = handshake(d.acceptor(), d.connector(&node)).await;
    assert_eq!(
        out.server.unwrap().id().to_string(),
        "spiffe://example.org/mintguard/node/node-1"
    );
    assert_eq!(
        out.client.unwrap().id().to_string(),
        "spiffe://example.org/mintguard/broker"
    );
}

#[tokio::test]
async fn peer_from_another_trust_domain_is_refused() {
    let d = Domain::new();
    let other = ca("other.org");
    let foreign = enroll(
        &other,
        &id::node_id(other.trust_domain(), "node-1").unwrap(),
        OffsetDateTime::now_utc(),
    );

    // Its chain does not verify against our bundle.
    let connector = SpiffeConnector::new(
        Some(&foreign),
        &d.bundle(),
        IdMatcher::exact(id::broker_id(&d.td)),
    )
    .unwrap();
    let out = handshake(d.acceptor(), connector).await;
    refused(&out.server, "UnknownIssuer");

    // Even when a misconfigured bundle trusts the other CA, the ID's trust
    // domain is not authorized.
    let mut roots = d.bundle().roots().to_vec();
    roots.extend(
        other
            .bundle(OffsetDateTime::now_utc())
            .unwrap()
            .roots()
            .iter()
            .cloned(),
    );
    let mixed = TrustBundle::new(d.td.clone(), roots).unwrap();
    let acceptor = SpiffeAcceptor::new(&d.broker, &mixed, IdMatcher::nodes(&d.td)).unwrap();
    let connector = SpiffeConnector::new(
        Some(&foreign),
        &mixed,
        IdMatcher::exact(id::broker_id(&d.td)),
    )
    .unwrap();
    let out = handshake(acceptor, connector).await;
    refused(
        &out.server,
        "spiffe://other.org/mintguard/node/node-1 is not authorized",
    );
}

#[tokio::test]
async fn unauthorized_spiffe_id_is_refused() {
    let d = Domain::new();
    // A workload SVID from our own CA is not a node.
    let workload = enroll(
        &d.ca,
        &id::parse_spiffe_id("spiffe://example.org/ns/pay/sa/api").unwrap(),
        OffsetDateTime::now_utc(),
    );
    let out = handshake(d.acceptor(), d.connector(&workload)).await;
    refused(
        &out.server,
        "spiffe://example.org/ns/pay/sa/api is not authorized",
    );

    // An agent pinning the broker refuses a server that is only a node.
    let node = d.node("node-1");
    let impostor = d.node("impostor");
    let acceptor = SpiffeAcceptor::new(&impostor, &d.bundle(), IdMatcher::nodes(&d.td)).unwrap();
    let out = handshake(acceptor, d.connector(&node)).await;
    refused(
        &out.client,
        "spiffe://example.org/mintguard/node/impostor is not authorized",
    );
}

#[tokio::test]
async fn expired_node_svid_is_refused() {
    let d = Domain::new();
    let two_hours_ago = OffsetDateTime::now_utc() - time::Duration::hours(2);
    let expired = enroll(&d.ca, &id::node_id(&d.td, "node-1").unwrap(), two_hours_ago);
    assert!(expired.not_after() < OffsetDateTime::now_utc());
    let out = handshake(d.acceptor(), d.connector(&expired)).await;
    refused(&out.server, "certificate expired");
}

#[tokio::test]
async fn csr_asking_for_another_id_yields_the_callers_id() {
    let d = Domain::new();
    // A hostile CSR asks to be the broker, with a DNS name for good measure.
    let key = svid::generate_key().unwrap();
    let key_pair = rcgen::KeyPair::try_from(key.der()).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["broker.example.org".to_owned()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://example.org/mintguard/broker".try_into().unwrap(),
    ));
    let csr = params.serialize_request(&key_pair).unwrap().pem().unwrap();

    let node_id = id::node_id(&d.td, "node-1").unwrap();
    let cert =
        d.ca.issue_svid_from_csr(&csr, &node_id, TEN_MIN, OffsetDateTime::now_utc())
            .unwrap();
    let info = SvidInfo::parse(&cert).unwrap();
    assert_eq!(info.spiffe_id, node_id);
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
    let sans = parsed.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        sans.value.general_names.len(),
        1,
        "only the caller's URI SAN is kept"
    );

    let node = X509Svid::new(vec![cert], key).unwrap();
    let out = handshake(d.acceptor(), d.connector(&node)).await;
    assert_eq!(out.server.unwrap().id(), &node_id);

    // Used as a server, it is still only a node: an agent pinning the broker refuses it.
    let acceptor = SpiffeAcceptor::new(&node, &d.bundle(), IdMatcher::nodes(&d.td)).unwrap();
    let other = d.node("node-2");
    let out = handshake(acceptor, d.connector(&other)).await;
    refused(&out.client, "is not authorized");
}

#[tokio::test]
async fn csr_with_bad_signature_or_foreign_id_is_refused() {
    let d = Domain::new();
    let key = svid::generate_key().unwrap();
    let csr = svid::csr_pem(&key).unwrap();
    // Flip a byte inside the signature (the end of the DER).
    let der =
        rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes()).unwrap();
    let mut bytes = der.as_ref().to_vec();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x01;
    let tampered = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes)
    );
    let node_id = id::node_id(&d.td, "node-1").unwrap();
    let now = OffsetDateTime::now_utc();
    assert!(matches!(
        d.ca.issue_svid_from_csr(&tampered, &node_id, TEN_MIN, now),
        Err(CertsError::InvalidCsr(_))
    ));
    let foreign = id::parse_spiffe_id("spiffe://other.org/mintguard/node/node-1").unwrap();
    assert!(matches!(
        d.ca.issue_svid_from_csr(&csr, &foreign, TEN_MIN, now),
        Err(CertsError::ForeignTrustDomain { .. })
    ));
    assert!(matches!(
        d.ca.issue_svid_from_csr(&csr, &node_id, Duration::from_secs(7200), now),
        Err(CertsError::InvalidTtl(_))
    ));
    assert!(matches!(
        d.ca.issue_svid_from_csr("not a csr", &node_id, TEN_MIN, now),
        Err(CertsError::InvalidCsr(_))
    ));
}

use rustls::pki_types::pem::PemObject as _;

#[tokio::test]
async fn old_and_new_svids_are_accepted_within_the_rotation_overlap() {
    let mut d = Domain::new();
    let now = OffsetDateTime::now_utc();
    let old_node = d.node("old");
    let old_ca = d.ca.active().id().to_owned();

    d.ca.rotate(now).unwrap();
    assert_ne!(d.ca.active().id(), old_ca);
    assert_eq!(
        d.bundle().roots().len(),
        2,
        "old and new CA during the overlap"
    );
    // The broker renews its SVID from the new CA; a new node enrolls.
    d.broker =
        d.ca.issue_svid(&id::broker_id(&d.td), TEN_MIN, now)
            .unwrap();
    let new_node = d.node("new");

    for node in [&old_node, &new_node] {
        let out = handshake(d.acceptor(), d.connector(node)).await;
        assert_eq!(out.server.unwrap().id(), node.spiffe_id());
        assert!(out.client.is_ok());
    }

    // Once the overlap window (max_svid_ttl) has passed, the old CA leaves the bundle.
    let after = now + time::Duration::seconds(3601);
    let bundle = d.ca.bundle(after).unwrap();
    assert_eq!(bundle.roots().len(), 1);
    let acceptor = SpiffeAcceptor::new(&d.broker, &bundle, IdMatcher::nodes(&d.td)).unwrap();
    let connector = SpiffeConnector::new(
        Some(&old_node),
        &bundle,
        IdMatcher::exact(id::broker_id(&d.td)),
    )
    .unwrap();
    let out = handshake(acceptor, connector).await;
    refused(&out.server, "UnknownIssuer");
}

#[test]
fn persisted_ca_reloads_and_refuses_an_exposed_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca");
    let now = OffsetDateTime::now_utc();
    let mut ca =
        CertificateAuthority::create(&path, td("example.org"), CaSettings::default(), now).unwrap();
    ca.rotate(now).unwrap();
    let reloaded =
        CertificateAuthority::load(&path, td("example.org"), CaSettings::default()).unwrap();
    assert_eq!(reloaded.active().id(), ca.active().id());
    assert_eq!(reloaded.bundle(now).unwrap(), ca.bundle(now).unwrap());
    let key = path.join(format!("{}.key", ca.active().id()));
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    match CertificateAuthority::load(&path, td("example.org"), CaSettings::default()) {
        Err(CertsError::InsecureKeyFile { mode, .. }) => assert_eq!(mode, 0o640),
        other => panic!("expected InsecureKeyFile, got {other:?}"),
    }
}

#[test]
fn svid_pem_round_trip() {
    let d = Domain::new();
    let node = d.node("node-1");
    let again = X509Svid::from_pem(&node.chain_pem(), &node.key().to_pem()).unwrap();
    assert_eq!(again.spiffe_id(), node.spiffe_id());
    assert_eq!(format!("{:?}", node.key()), "PrivateKey([redacted])");
    let bundle = TrustBundle::from_pem(d.td.clone(), &d.bundle().to_pem()).unwrap();
    assert_eq!(bundle, d.bundle());
}

#[tokio::test]
async fn a_prepared_ca_is_published_before_it_signs() {
    let d = Domain::new();
    let mut ca = d.ca;
    let start = OffsetDateTime::now_utc();
    let ttl = time::Duration::days(7);
    assert!(!ca.rotation_due(start));
    let half = start + ttl / 2 + time::Duration::minutes(1);
    assert!(ca.preparation_due(half) && !ca.activation_due(half));
    let old = ca.active().id().to_owned();
    assert!(ca.advance(half).unwrap());
    assert_eq!(
        ca.active().id(),
        old,
        "preparing does not change the signer"
    );
    assert_eq!(
        ca.bundle(half).unwrap().roots().len(),
        2,
        "the prepared CA is published"
    );
    // An agent that renews now gets a bundle trusting both.
    let renewed_bundle = ca.bundle(half).unwrap();
    assert!(!ca.advance(half).unwrap(), "nothing more is due yet");

    let three_quarters = start + ttl * 3 / 4 + time::Duration::minutes(1);
    assert!(ca.activation_due(three_quarters));
    let prepared = ca.prepared().unwrap().id().to_owned();
    assert!(ca.advance(three_quarters).unwrap());
    assert_eq!(ca.active().id(), prepared);
    assert!(ca.prepared().is_none());
    assert_eq!(
        ca.bundle(three_quarters).unwrap().roots().len(),
        2,
        "the old CA stays through the overlap"
    );

    // The broker's next SVID comes from the new CA; the agent's bundle from
    // its last renewal already trusts it.
    let now = OffsetDateTime::now_utc();
    let broker = ca.issue_svid(&id::broker_id(&d.td), TEN_MIN, now).unwrap();
    let node = enroll(&ca, &id::node_id(&d.td, "node-1").unwrap(), now);
    let acceptor =
        SpiffeAcceptor::new(&broker, &ca.bundle(now).unwrap(), IdMatcher::nodes(&d.td)).unwrap();
    let connector = SpiffeConnector::new(
        Some(&node),
        &renewed_bundle,
        IdMatcher::exact(id::broker_id(&d.td)),
    )
    .unwrap();
    let out = handshake(acceptor, connector).await;
    assert!(out.client.is_ok() && out.server.is_ok());
}

/// The admin listener: a client certificate is optional, but one that is
/// presented must be an operator's, never a node's.
#[tokio::test]
async fn optional_client_auth_accepts_operators_or_no_certificate_only() {
    let d = Domain::new();
    let acceptor =
        SpiffeAcceptor::optional(&d.broker, &d.bundle(), IdMatcher::operators(&d.td)).unwrap();
    let operator = enroll(
        &d.ca,
        &id::operator_id(&d.td, "alice").unwrap(),
        OffsetDateTime::now_utc(),
    );
    let anonymous =
        SpiffeConnector::new(None, &d.bundle(), IdMatcher::exact(id::broker_id(&d.td))).unwrap();

    for (client, expected) in [
        (
            d.connector(&operator),
            Some("spiffe://example.org/mintguard/operator/alice"),
        ),
        (anonymous, None),
        (d.connector(&d.node("node-1")), Some("refused")),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = acceptor.clone();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (mut tls, peer) = acceptor.accept_optional(tcp).await?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf)
                .await
                .map_err(CertsError::Handshake)?;
            Ok::<_, CertsError>(peer.map(|p| p.id().to_string()))
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        if let Ok((mut tls, _)) = client.connect("broker", tcp).await {
            let _ = tls.write_all(b"ping").await;
            let _ = tls.flush().await;
        }
        let got = server.await.unwrap();
        match expected {
            Some("refused") => {
                let e = got.expect_err("a node SVID must not pass as an operator");
                assert!(e.to_string().contains("mintguard/node/node-1"), "{e}");
            }
            want => assert_eq!(got.unwrap().as_deref(), want),
        }
    }
}
