//! Mintguard's pipeline on embedded defaults, in one process: a CA for
//! `example.org`, the broker's SVID, a node enrolled from a CSR under the ID
//! its join token names, a real mTLS handshake between them over loopback,
//! the workload's ECI from `examples/graphs/payments.json`, a decision under
//! `examples/policies/*.cedar`, and — when the decision allows — a workload
//! JWT signed with the broker's key, with its JWKS.
//!
//! Run: `bash examples/quickstart.sh`.

#![allow(clippy::print_stdout)] // a demo prints what it does

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use mintguard_certs::ca::{CaSettings, CertificateAuthority};
use mintguard_certs::id::{self, IdMatcher};
use mintguard_certs::jwt::{Expiring, JwtKeySet, JwtSettings};
use mintguard_certs::svid::{self, X509Svid};
use mintguard_certs::tls::{SpiffeAcceptor, SpiffeConnector};
use mintguard_policy::budget::{BudgetPolicy, BudgetSnapshot, Refill};
use mintguard_policy::decision::{
    BudgetView, EciInput, GrantInput, IssuerContext, IssuerKind, PrincipalKind,
};
use mintguard_policy::eci::graph::{ExposureGraph, GrantNode, RegisteredIdentity, effective_graph};
use mintguard_policy::eci::pagerank::PprParams;
use mintguard_policy::eci::{blast_radius, compute_eci};
use mintguard_policy::rules::{PolicySource, RuleSet};
use mintguard_policy::trust::{Signal, SignalKind, TrustConfig, TrustInput};
use mintguard_policy::{DecisionInput, decide};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WORKLOAD: &str = "spiffe://example.org/ns/pay/sa/api";
const GRANT: &str = "payments-token";

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

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let now = OffsetDateTime::now_utc();
    let data = tempfile::tempdir()?;
    let td = id::parse_trust_domain("example.org")?;

    // === identities ===
    let ca = CertificateAuthority::create(
        &data.path().join("ca"),
        td.clone(),
        CaSettings::default(),
        now,
    )?;
    println!("CA          {} (id {})", td.id_string(), ca.active().id());
    let broker = ca.issue_svid(&id::broker_id(&td), Duration::from_secs(3600), now)?;
    println!(
        "broker SVID {} until {}",
        broker.spiffe_id(),
        broker.not_after()
    );
    // Enrollment: the agent sends only a CSR; the join token names the node.
    let node_key = svid::generate_key()?;
    let node_id = id::node_id(&td, "node-1")?;
    let cert = ca.issue_svid_from_csr(
        &svid::csr_pem(&node_key)?,
        &node_id,
        Duration::from_secs(600),
        now,
    )?;
    let node = X509Svid::new(vec![cert], node_key)?;
    println!(
        "node SVID   {} until {}",
        node.spiffe_id(),
        node.not_after()
    );

    // === mTLS: the broker accepts only node SVIDs, the agent pins the broker ===
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
    let (mut tls, broker_peer) = connector
        .connect(
            "mintguard-broker",
            tokio::net::TcpStream::connect(addr).await?,
        )
        .await?;
    let mut greeting = String::new();
    tls.read_to_string(&mut greeting).await?;
    let node_peer = server.await.context("server task")??;
    println!("mTLS        {addr}: broker verified {node_peer}, agent verified {broker_peer}");

    // === ECI, off the request path ===
    let graph_path = root.join("examples/graphs/payments.json");
    let graph = ExposureGraph::from_json(&std::fs::read(&graph_path)?)
        .with_context(|| graph_path.display().to_string())?;
    let grants = [GrantNode {
        name: GRANT.into(),
        eci_targets: vec!["role:payments-ro".into()],
    }];
    let registered = [RegisteredIdentity {
        id: WORKLOAD.into(),
        grants: vec![GRANT.into()],
    }];
    let report = compute_eci(
        &effective_graph(&graph, &grants, &registered)?,
        &PprParams::default(),
        now.unix_timestamp(),
    );
    let workload_eci = report
        .get(WORKLOAD)
        .and_then(|n| n.eci_raw)
        .unwrap_or(300.0);
    let exposure = report.grant_exposure(GRANT).unwrap_or(100.0);
    let radius = blast_radius(&report, [WORKLOAD]);
    println!(
        "ECI         {WORKLOAD}: {workload_eci:.1}; grant {GRANT} exposure {exposure:.1}; node-1 blast radius {:.1}",
        radius.max
    );

    // === the decision ===
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(root.join("examples/policies"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "cedar") {
            sources.push(PolicySource {
                name: path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                text: std::fs::read_to_string(&path)?,
            });
        }
    }
    let rules = RuleSet::new(sources, TrustConfig::default())?;
    let observed = |value: u8, source: &str| Signal {
        value,
        observed_at: now.unix_timestamp(),
        ttl_seconds: 900,
        source: source.into(),
    };
    let budget = BudgetPolicy {
        amount: 20,
        per: Refill::Every { seconds: 3600 },
        base: 1,
        per_5min: 0,
        eci_factor: 2.0,
    };
    let now_ms = i64::try_from(now.unix_timestamp_nanos() / 1_000_000)?;
    let input = DecisionInput {
        identity: WORKLOAD.into(),
        principal: PrincipalKind::Workload,
        issuer: IssuerContext {
            kind: IssuerKind::Node,
            id: node_id.to_string(),
            may_vouch: true,
            suspended: false,
            anomalous: false,
        },
        grant: GrantInput {
            name: GRANT.into(),
            kind: "jwt".into(),
            max_ttl_seconds: 900,
            reduced_max_ttl_seconds: Some(300),
        },
        requested_ttl_seconds: Some(600),
        purpose: Some("nightly settlement".into()),
        now_ms,
        signals: TrustInput {
            signals: [
                (SignalKind::Posture, observed(95, "broker")),
                (SignalKind::Attestation, observed(100, "agent:unix:sha256")),
                (SignalKind::Behaviour, observed(70, "anomaly:cold-start")),
            ]
            .into(),
            // No allowed locations, hours or networks are configured for this grant.
            unconstrained: [SignalKind::Location, SignalKind::Time, SignalKind::Network].into(),
        },
        eci: EciInput {
            identity_effective: workload_eci,
            grant_exposure: exposure,
            issuer_blast_radius: radius.max,
        },
        budgets: vec![BudgetView {
            key: format!("identity:{WORKLOAD}/grant:{GRANT}"),
            snapshot: BudgetSnapshot::full(&budget, now_ms),
            policy: budget,
        }],
        evidence: vec![],
        suspension: None,
        approved: false,
        ci_claims: Default::default(),
    };
    let decision = decide(&input, &rules);
    println!(
        "decision    {} for {WORKLOAD} → {GRANT}: trust {} (min {:.1}), eci {}, ttl {}s, reasons {:?}, rules {:?}, spend {:?}, rule set {}",
        decision.outcome,
        decision.trust.score,
        decision.min_trust,
        decision.eci.eci,
        decision.ttl_seconds,
        decision
            .reasons
            .iter()
            .map(|r| r.code())
            .collect::<Vec<_>>(),
        decision
            .rules
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        decision.spend.iter().map(|s| s.cost).collect::<Vec<_>>(),
        &decision.rule_set_hash[..12],
    );

    // === the credential, only when the decision mints ===
    if decision.outcome.mints() {
        let keys = JwtKeySet::create(&data.path().join("jwt"), JwtSettings::default())?;
        let ttl = i64::try_from(decision.ttl_seconds)?;
        let claims = Claims {
            iss: "https://mintguard.example.org",
            sub: WORKLOAD,
            aud: GRANT,
            jti: "lease-0001",
            iat: now.unix_timestamp(),
            exp: now.unix_timestamp() + ttl,
        };
        println!("JWT (ES256) {}", keys.sign(&claims, now)?);
        println!("JWKS        {}", serde_json::to_string(&keys.jwks(now))?);
    } else {
        println!("no credential: the decision does not mint");
    }
    Ok(())
}
