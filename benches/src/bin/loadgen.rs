//! End-to-end load generator: a real broker (SQLite, WAL, `synchronous=FULL`,
//! group commit) with its real listeners, and N concurrent agent connections
//! (kept-alive mTLS with a node SVID) requesting JWTs through `POST /v1/issue`.
//! Every issuance runs the whole pipeline: entry match, decide() with Cedar,
//! the durable log record + lease, ES256 signing.
//!
//! ```text
//! cargo run --release -p mintguard-benches --bin loadgen -- [--clients 32] [--requests 20000]
//! tests/peers.sh cargo run --release -p mintguard-benches --bin loadgen -- --vault
//! cargo run --release -p mintguard-benches --bin loadgen -- --compare-analysis 5
//! ```
//!
//! `--compare-analysis R` runs R interleaved rounds with anomaly analysis off
//! and on (observe mode) and compares the median throughputs;
//! `--compare-shadow R` the same without and with a shadow rule set
//! (`[policies] shadow`: the enforced permit and an after-hours forbid).
//! `--store postgres://… [--replicas N]` runs N brokers (in this process,
//! sharing the CA and JWT keys) on one PostgreSQL, clients spread over them;
//! `--compare-stores postgres://…/postgres` runs one SQLite broker, then one,
//! two and three PostgreSQL brokers in one run, on fresh databases.
//!
//! `--jwt-algorithm EdDSA` signs with Ed25519 instead of the default ES256.
//!
//! With `--vault`, the grant is a Vault child token from the OpenBao at
//! `VAULT_ADDR`, and the same load then goes to that OpenBao's
//! `auth/token/create` directly, for the ratio.

#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)] // a report tool; setup failures stop it

use std::sync::Arc;

/// The broker binary's allocator, so the in-process broker is measured as it runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mintguard_benches::load::{arg, arg_str, connect, flag, measure, post};
use mintguard_broker::clock::now_ms;
use mintguard_broker::config::Config;
use mintguard_broker::log::canonical_body;
use mintguard_broker::state::{Broker, token_hash};
use mintguard_broker::store::{Entry, LogQuery, StoreError};
use mintguard_certs::bundle::TrustBundle;
use mintguard_certs::id::{self, IdMatcher};
use mintguard_certs::svid::{self, X509Svid};
use mintguard_certs::tls::SpiffeConnector;

const CONFIG: &str = r#"
trust_domain = "example.org"
data_dir = "data"
issuer_url = "https://mintguard.example.org"
[listen]
public = "127.0.0.1:0"
agents = "127.0.0.1:0"
admin = "127.0.0.1:0"
[policies]
cedar = "policies"
[limits]
per_node_per_second = 1000000
per_identity_per_second = 1000000
[[grants]]
name = "payments-token"
kind = "jwt"
max_ttl = "15m"
jwt = { audience = "payments" }
"#;

/// With `--vault`: the OpenBao from `VAULT_ADDR`/`VAULT_TOKEN` and a child-token grant.
fn vault_config(addr: &str) -> String {
    format!(
        r#"
[vault]
address = "{addr}"
token_file = "vault.token"
[[grants]]
name = "vault-token"
kind = "vault"
max_ttl = "15m"
vault = {{ token = {{ policies = ["default"], num_uses = 1 }} }}
"#
    )
}

const POLICY: &str = r#"permit (principal == Mintguard::Workload::"spiffe://example.org/ns/pay/sa/api",
    action == Mintguard::Action::"mint", resource);"#;

/// Where the brokers of a run keep their state, and how many there are.
#[derive(Clone)]
struct Stores {
    /// `None`: SQLite in the data dir; else a PostgreSQL URL.
    url: Option<String>,
    /// Broker replicas (in this process, sharing the CA and JWT keys).
    replicas: usize,
}

/// A fresh database on the PostgreSQL server of `base` (a URL).
async fn fresh_database(base: &str, name: &str) -> String {
    let (client, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(conn);
    for sql in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        client
            .batch_execute(&sql)
            .await
            .expect("create the bench database");
    }
    let (prefix, _) = base.rsplit_once('/').expect("a database in the URL");
    format!("{prefix}/{name}")
}

fn main() {
    let clients = arg("--clients", 32);
    let requests = arg("--requests", 20_000);
    let rounds = arg("--compare-analysis", 0);
    let shadow_rounds = arg("--compare-shadow", 0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Some(base) = arg_str("--compare-stores") {
        // One SQLite broker, then one, two and three PostgreSQL brokers:
        // same machine, same run, fresh databases.
        let mut lines = Vec::new();
        for (label, url, replicas) in [
            ("1 broker, SQLite", None, 1),
            ("1 broker, PostgreSQL", Some("mg_bench_one"), 1),
            ("2 brokers, one PostgreSQL", Some("mg_bench_two"), 2),
            ("3 brokers, one PostgreSQL", Some("mg_bench_three"), 3),
        ] {
            let url = url.map(|db| runtime.block_on(fresh_database(&base, db)));
            let stores = Stores { url, replicas };
            let (rate, line) =
                runtime.block_on(run(clients, requests, Analysis::Off, false, stores));
            lines.push(format!("{label}: {rate:.0}/s — {line}"));
        }
        for line in lines {
            println!("{line}");
        }
        return;
    }
    let stores = Stores {
        url: arg_str("--store"),
        replicas: arg("--replicas", 1),
    };
    if shadow_rounds > 0 {
        // Interleaved, each on a fresh broker with analysis off: without a
        // shadow set, then with one, the order alternating by round.
        let (mut without, mut with) = (Vec::new(), Vec::new());
        for round in 0..shadow_rounds {
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for shadow in order {
                let (rate, _) = runtime.block_on(run(
                    clients,
                    requests,
                    Analysis::Off,
                    shadow,
                    stores.clone(),
                ));
                if shadow {
                    with.push(rate)
                } else {
                    without.push(rate)
                }
            }
        }
        let (without, with) = (median(&mut without), median(&mut with));
        println!(
            "median of {shadow_rounds} interleaved runs: no shadow set {without:.0}/s, with a shadow set {with:.0}/s ({:+.1} %)",
            100.0 * (with - without) / without
        );
        return;
    }
    if rounds == 0 {
        runtime.block_on(run(clients, requests, Analysis::Default, false, stores));
        return;
    }
    // Interleaved runs, each on a fresh broker: analysis off, then on (in
    // observe mode, so detections do not change the outcomes being timed),
    // the order alternating by round; medians compared.
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Analysis::Off, Analysis::Observe]
        } else {
            [Analysis::Observe, Analysis::Off]
        };
        for mode in order {
            let (rate, _) = runtime.block_on(run(clients, requests, mode, false, stores.clone()));
            match mode {
                Analysis::Off => off.push(rate),
                _ => on.push(rate),
            }
        }
    }
    let (off, on) = (median(&mut off), median(&mut on));
    println!(
        "median of {rounds} interleaved runs: analysis off {off:.0}/s, on {on:.0}/s ({:+.1} %)",
        100.0 * (on - off) / off
    );
}

/// The median of `v` (sorted in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The shadow rule set of `--compare-shadow`: the enforced permit, and a
/// forbid the enforced set lacks.
const SHADOW_POLICY: &str = r#"permit (principal == Mintguard::Workload::"spiffe://example.org/ns/pay/sa/api",
    action == Mintguard::Action::"mint", resource);
@id("no-payments-at-night")
forbid (principal, action, resource == Mintguard::Grant::"payments-token")
when { context.hour < 5 };"#;

/// Anomaly analysis during a run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Analysis {
    /// As configured by default (on, enforcing).
    Default,
    /// `[anomaly] enabled = false`.
    Off,
    /// On, `mode = "observe"`.
    Observe,
}

async fn run(
    clients: usize,
    requests: usize,
    analysis: Analysis,
    shadow: bool,
    stores: Stores,
) -> (f64, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/api.cedar"), POLICY).unwrap();
    if shadow {
        std::fs::create_dir_all(dir.path().join("shadow")).unwrap();
        std::fs::write(dir.path().join("shadow/api.cedar"), SHADOW_POLICY).unwrap();
    }
    let vault = flag("--vault").then(|| {
        (
            std::env::var("VAULT_ADDR").expect("--vault needs VAULT_ADDR (tests/peers.sh)"),
            std::env::var("VAULT_TOKEN").expect("--vault needs VAULT_TOKEN (tests/peers.sh)"),
        )
    });
    let mut config = match &stores.url {
        Some(url) => format!("store = \"{url}\"\n{CONFIG}"),
        None => CONFIG.to_owned(),
    };
    if shadow {
        config = config.replace(
            "cedar = \"policies\"",
            "cedar = \"policies\"\nshadow = \"shadow\"",
        );
    }
    assert!(
        stores.replicas == 1 || stores.url.is_some(),
        "--replicas needs --store postgres://…"
    );
    // Replicas share one CA and one JWT key directory.
    config.push_str(&format!(
        "[ca]\ndir = \"{0}/shared/ca\"\n[jwt]\ndir = \"{0}/shared/jwt\"\nalgorithm = \"{1}\"\n",
        dir.path().display(),
        arg_str("--jwt-algorithm").unwrap_or_else(|| "ES256".into())
    ));
    match analysis {
        Analysis::Default => {}
        Analysis::Off => config.push_str("[anomaly]\nenabled = false\n"),
        Analysis::Observe => config.push_str("[anomaly]\nmode = \"observe\"\n"),
    }
    if let Some((addr, token)) = &vault {
        config.push_str(&vault_config(addr));
        std::fs::write(dir.path().join("vault.token"), token).unwrap();
    }
    let grant = if vault.is_some() {
        "vault-token"
    } else {
        "payments-token"
    };
    std::fs::write(dir.path().join("broker.toml"), &config).unwrap();
    let first = Config::load(&dir.path().join("broker.toml")).unwrap();
    let broker = Broker::start(first).await.unwrap();
    let bound = mintguard_broker::routes::serve(broker.clone())
        .await
        .unwrap();
    let mut agents_addrs = vec![bound.agents.to_string()];
    let mut replicas = Vec::new();
    for r in 1..stores.replicas {
        // Each replica: its own data dir, the shared keys, the same
        // log-signing key file.
        let root = dir.path().join(format!("replica-{r}"));
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::copy(
            dir.path().join("data/log-signing.key"),
            root.join("data/log-signing.key"),
        )
        .unwrap();
        std::fs::write(
            root.join("broker.toml"),
            config
                .replace(
                    "cedar = \"policies\"",
                    &format!("cedar = \"{}/policies\"", dir.path().display()),
                )
                .replace(
                    "shadow = \"shadow\"",
                    &format!("shadow = \"{}/shadow\"", dir.path().display()),
                ),
        )
        .unwrap();
        let replica = Broker::start(Config::load(&root.join("broker.toml")).unwrap())
            .await
            .unwrap();
        let bound = mintguard_broker::routes::serve(replica.clone())
            .await
            .unwrap();
        agents_addrs.push(bound.agents.to_string());
        replicas.push(replica);
    }
    let td = id::parse_trust_domain("example.org").unwrap();
    let bundle = TrustBundle::from_pem(
        td.clone(),
        &std::fs::read_to_string(dir.path().join("data/bundle.pem")).unwrap(),
    )
    .unwrap();

    // Enroll a node over the public listener, register the workload (a
    // token of its own: `--store` may name a database used before).
    let join_token = format!("jt-loadgen-{}", now_ms());
    broker
        .store
        .create_join_token(&token_hash(&join_token), "load-1", now_ms() + 60_000)
        .await
        .unwrap();
    let key = svid::generate_key().unwrap();
    let anon = SpiffeConnector::new(None, &bundle, IdMatcher::exact(id::broker_id(&td))).unwrap();
    let mut s = connect(&bound.public.to_string(), &anon).await;
    let body = serde_json::json!({"join_token": join_token, "csr": svid::csr_pem(&key).unwrap()})
        .to_string();
    let (status, answer) = post(&mut s, "/v1/node/enroll", &body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    let node = X509Svid::from_pem(answer["svid_pem"].as_str().unwrap(), &key.to_pem()).unwrap();
    // Already there when `--store` names a database a run used before.
    let entry = broker
        .store
        .create_entry(&Entry {
            id: "entry-load".into(),
            spiffe_id: "spiffe://example.org/ns/pay/sa/api".into(),
            parent: node.spiffe_id().to_string(),
            selectors: vec!["unix:uid:1000".into(), "unix:sha256:0a1b".into()],
            grants: vec!["payments-token".into(), "vault-token".into()],
            created_at_ms: now_ms(),
        })
        .await;
    assert!(
        matches!(entry, Ok(()) | Err(StoreError::Conflict(_))),
        "{entry:?}"
    );

    let connector = Arc::new(
        SpiffeConnector::new(Some(&node), &bundle, IdMatcher::exact(id::broker_id(&td))).unwrap(),
    );
    let issue = format!(
        r#"{{"selectors":["unix:uid:1000","unix:gid:1000","unix:sha256:0a1b"],"request":{{"grant":"{grant}","ttl_seconds":300}}}}"#
    );
    let agents = Arc::new(agents_addrs);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    // Warm-up, then the measured run.
    let issue = Arc::new(issue);
    let mut via_broker = 0.0;
    let mut last_line = String::new();
    for (label, n) in [("warm-up", requests / 10), ("measured", requests)] {
        let (agents, connector, issue) = (agents.clone(), connector.clone(), issue.clone());
        let next = next.clone();
        let (rate, line) = measure(clients, n, move || {
            let (connector, issue) = (connector.clone(), issue.clone());
            // Clients are spread over the replicas round-robin.
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let addr = agents[i % agents.len()].clone();
            async move {
                // One client's connection, used by that client alone.
                let sender = Arc::new(tokio::sync::Mutex::new(connect(&addr, &connector).await));
                move || {
                    let (issue, sender) = (issue.clone(), sender.clone());
                    async move { post(&mut *sender.lock().await, "/v1/issue", &issue).await.0 }
                }
            }
        })
        .await;
        if label == "measured" {
            last_line = line.clone();
            let note = match analysis {
                Analysis::Default => "",
                Analysis::Off => " (analysis off)",
                Analysis::Observe => " (analysis on, observe)",
            };
            let algorithm = arg_str("--jwt-algorithm").unwrap_or_else(|| "ES256".into());
            println!("{clients} clients, {grant} ({algorithm}) through the broker{note}: {line}");
            via_broker = rate;
        }
    }
    if let Some((addr, token)) = &vault {
        // The same OpenBao called directly: POST auth/token/create.
        let host = addr.trim_start_matches("http://").to_owned();
        let body = Arc::new(r#"{"policies":["default"],"ttl":"300s","num_uses":1}"#.to_owned());
        let token = Arc::new(token.clone());
        for (label, n) in [("warm-up", requests / 10), ("measured", requests)] {
            let (host, body, token) = (host.clone(), body.clone(), token.clone());
            let (rate, line) = measure(clients, n, move || {
                let (host, body, token) = (host.clone(), body.clone(), token.clone());
                async move {
                    let tcp = tokio::net::TcpStream::connect(host.as_str()).await.unwrap();
                    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                        .await
                        .unwrap();
                    tokio::spawn(conn);
                    let sender = Arc::new(tokio::sync::Mutex::new(sender));
                    move || {
                        let (body, token, host) = (body.clone(), token.clone(), host.clone());
                        let sender = sender.clone();
                        async move {
                            let mut sender = sender.lock().await;
                            sender.ready().await.unwrap();
                            let req = hyper::Request::post("/v1/auth/token/create")
                                .header("host", host.as_str())
                                .header("x-vault-token", token.as_str())
                                .body(Full::new(Bytes::from(body.as_str().to_owned())))
                                .unwrap();
                            let res = sender.send_request(req).await.unwrap();
                            let status = res.status().as_u16();
                            let _ = res.into_body().collect().await.unwrap();
                            status
                        }
                    }
                }
            })
            .await;
            if label == "measured" {
                println!("{clients} clients, auth/token/create directly on OpenBao: {line}");
                println!(
                    "Mintguard / direct throughput: {:.2}",
                    via_broker / rate.max(1.0)
                );
            }
        }
    }
    let (seq, _) = broker.store.head().await.unwrap();
    let recent = LogQuery {
        chain: broker.store.chain().to_owned(),
        after_seq: Some((seq - 1000).max(0)),
        limit: 1000,
        ..LogQuery::default()
    };
    let decisions: Vec<usize> = broker
        .store
        .log(&recent)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.entry.kind.has_decision())
        .map(|r| canonical_body(&r.entry.body).len())
        .collect();
    println!(
        "decision record body: {} bytes (JCS, mean of the last {} decision records)",
        decisions.iter().sum::<usize>() / decisions.len().max(1),
        decisions.len()
    );
    match &stores.url {
        None => {
            let db = dir.path().join("data/broker.db");
            let size = |f: &std::path::Path| std::fs::metadata(f).map_or(0, |m| m.len());
            // The WAL is a fixed-size ring between checkpoints, not part of
            // what a record costs: it is folded back into the database first.
            let wal = size(&db.with_extension("db-wal"));
            rusqlite::Connection::open(&db)
                .unwrap()
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
            println!(
                "store: SQLite WAL, synchronous=FULL (fsync per commit), group commit of up to {} records per transaction; {seq} records written, {} bytes per record in the database after a checkpoint (bodies, leases and indexes included; the WAL had grown to {} KiB)",
                mintguard_broker::store::sqlite::MAX_BATCH,
                size(&db) / u64::try_from(seq.max(1)).unwrap_or(1),
                wal / 1024
            )
        }
        Some(_) => {
            let chains = broker.store.chains().await.unwrap();
            println!(
                "store: PostgreSQL, {} replica(s), each appending to a chain of its own; {} records written",
                stores.replicas,
                chains.iter().map(|c| c.seq).sum::<i64>()
            )
        }
    }
    drop(replicas);
    (via_broker, last_line)
}
